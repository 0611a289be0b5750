"""SRS SDP offer reading and answer building (RFC 3264, RFC 7866 §7.1.1)."""

from __future__ import annotations

import pytest

from orchestrator.errors import SipError
from orchestrator.lab.srs.sdp import (
    AnswerStream,
    answer_direction,
    build_sdp,
    offer_direction,
    parse_offer,
)
from orchestrator.siprec import parse_sdp

OFFER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         b"m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
         b"a=label:caller\r\na=sendonly\r\n"
         b"m=audio 30002 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=label:callee\r\n"
         b"a=inactive\r\n"
         b"m=audio 30004 RTP/SAVP 0\r\na=label:3\r\na=sendonly\r\n"
         b"m=video 0 RTP/AVP 31\r\na=label:4\r\n")


def test_parse_offer_reads_each_m_line() -> None:
    streams = parse_offer(OFFER)
    assert [(s.index, s.label, s.direction, s.payload_type, s.codec, s.recordable)
            for s in streams] == [
        (0, "caller", "sendonly", 8, "PCMA/8000", True),      # static table
        (1, "callee", "inactive", 96, "opus/48000/2", True),  # from a=rtpmap
        (2, "3", "sendonly", 0, "PCMU/8000", False),          # SRTP: not recorded
        (3, "4", "sendrecv", 31, None, False),                # port 0: declined
    ]


def test_parse_offer_rejects_non_sdp() -> None:
    with pytest.raises(SipError):
        parse_offer(b"<xml/>")


@pytest.mark.parametrize(("offered", "answered"), [
    ("sendonly", "recvonly"), ("inactive", "inactive"), ("sendrecv", "recvonly"),
    ("recvonly", "inactive"),
])
def test_answer_direction(offered: str, answered: str) -> None:
    assert answer_direction(offered) == answered


@pytest.mark.parametrize(("answered", "ours"), [
    ("sendonly", "recvonly"), ("inactive", "inactive"), ("recvonly", "inactive"),
])
def test_offer_direction(answered: str, ours: str) -> None:
    assert offer_direction(answered) == ours


def test_build_sdp_answer_mirrors_the_offer() -> None:
    streams = parse_offer(OFFER)
    answer = build_sdp([
        AnswerStream("audio", 40000, "RTP/AVP", 8, "PCMA/8000", "caller", "recvonly"),
        AnswerStream("audio", 40002, "RTP/AVP", 96, "opus/48000/2", "callee", "inactive"),
        AnswerStream("audio", 0, "RTP/SAVP", "0", "PCMU/8000", "3", "inactive"),
        AnswerStream("video", 0, "RTP/AVP", "31", None, "4", "inactive"),
    ], address="127.0.0.1", session_id=77, version=3, username="srs1")
    text = answer.decode()
    assert text.startswith("v=0\r\no=srs1 77 3 IN IP4 127.0.0.1\r\n")
    assert text.endswith("\r\n") and "\n\n" not in text
    sdp = parse_sdp(answer)
    assert sdp.session_version == 3
    assert [(m.port, m.formats, m.label, sdp.effective_direction(m)) for m in sdp.media] == [
        (40000, ("8",), "caller", "recvonly"), (40002, ("96",), "callee", "inactive"),
        (0, ("0",), "3", "inactive"), (0, ("31",), "4", "inactive")]
    assert [m.media for m in sdp.media] == [s.media for s in streams]
    assert "a=rtpmap:96 opus/48000/2" in text and "a=rtpmap:0" not in text  # not for port 0
