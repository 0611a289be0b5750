"""The SIP toolkit (orchestrator.sip): header helpers, responses, stream framing,
retransmission timing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import SipError
from orchestrator.sip import (
    Retransmitter,
    StreamFramer,
    build_message,
    build_response,
    lenient_message,
    parse_cseq,
    parse_name_addr,
    parse_sip_message,
    parse_uri,
    parse_via,
    request_problem,
    split_commas,
    tag_of,
)

INVITE = (
    b"INVITE sip:srs@127.0.0.1:5090 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:siprec-src@127.0.0.1>;tag=src1\r\n"
    b"To: <sip:srs@127.0.0.1:5090>\r\n"
    b"Call-ID: siprec-1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:siprec-src@127.0.0.1:5060>;+sip.src\r\n"
    b"Record-Route: <sip:10.0.0.9;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# --------------------------------------------------------------------------- header helpers

@pytest.mark.parametrize(("value", "expected"), [
    ("SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK1;rport",
     ("UDP", "1.2.3.4", 5060, "z9hG4bK1", True)),
    ("SIP/2.0/tcp host.example;branch=z9hG4bK2", ("TCP", "host.example", None, "z9hG4bK2", False)),
    ("SIP / 2.0 / UDP [2001:db8::1]:5070 ;branch=z9hG4bK3",
     ("UDP", "[2001:db8::1]", 5070, "z9hG4bK3", False)),
    ("SIP/2.0/UDP a:1;branch=z9hG4bK4, SIP/2.0/UDP b:2", ("UDP", "a", 1, "z9hG4bK4", False)),
])
def test_parse_via(value: str, expected: tuple[object, ...]) -> None:
    v = parse_via(value)
    assert (v.transport, v.host, v.port, v.branch, v.has_rport) == expected


@pytest.mark.parametrize("value", ["", "SIP/2.0 1.2.3.4", "HTTP/1.1/TCP a:1", "SIP/2.0/UDP a:99999"])
def test_parse_via_rejects(value: str) -> None:
    with pytest.raises(SipError):
        parse_via(value)


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:srs@127.0.0.1:5090", ("sip", "srs", "127.0.0.1", 5090, None, 5090)),
    ("sip:127.0.0.1;transport=TCP;lr", ("sip", None, "127.0.0.1", None, "tcp", 5060)),
    ("sips:a@example.com", ("sips", "a", "example.com", None, None, 5061)),
    ("SIP:x@[::1]:5062?Subject=hi", ("sip", "x", "[::1]", 5062, None, 5062)),
])
def test_parse_uri(uri: str, expected: tuple[object, ...]) -> None:
    u = parse_uri(uri)
    assert (u.scheme, u.user, u.host, u.port, u.transport, u.default_port()) == expected


@pytest.mark.parametrize("uri", ["tel:+1555", "sip:", "sip:a@b:0", "mailto:x@y"])
def test_parse_uri_rejects(uri: str) -> None:
    with pytest.raises(SipError):
        parse_uri(uri)


@pytest.mark.parametrize(("value", "expected"), [
    ("1 INVITE", (1, "INVITE")), ("  42   bye ", (42, "BYE")),
])
def test_parse_cseq(value: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(value) == expected


@pytest.mark.parametrize("value", [None, "", "x INVITE", "1", "1 IN VITE", "2147483648 ACK"])
def test_parse_cseq_rejects(value: str | None) -> None:
    with pytest.raises(SipError):
        parse_cseq(value)


@pytest.mark.parametrize(("value", "tag"), [
    ("<sip:a@b>;tag=xyz", "xyz"), ('"x;tag=no" <sip:a@b;tag=no>;tag=yes', "yes"),
    ("sip:a@b;tag=bare", "bare"), ("<sip:a@b>", None), (None, None),
])
def test_tag_of(value: str | None, tag: str | None) -> None:
    assert tag_of(value) == tag


def test_split_commas_respects_quotes_and_brackets() -> None:
    assert split_commas('"a, b" <sip:x@y>, <sip:z@w;p=1,2>') == \
        ['"a, b" <sip:x@y>', "<sip:z@w;p=1,2>"]


def test_build_message_refuses_header_injection() -> None:
    with pytest.raises(SipError):
        build_message("SIP/2.0 200 OK", [("X", "a\r\nInjected: yes")])


# --------------------------------------------------------------------------- responses

def test_response_copies_headers_tags_to_and_marks_via() -> None:
    req = parse_sip_message(INVITE)
    data = build_response(req, 200, to_tag="srs9", headers=[("Contact", "<sip:srs@h>")],
                          body=b"v=0\r\n", received="127.0.0.1", rport=40000)
    resp = parse_sip_message(data)
    assert resp.status == 200 and resp.start_line == "SIP/2.0 200 OK"
    assert resp.header_all("via") == [
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport=40000;received=127.0.0.1",
        "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef"]
    assert parse_name_addr(resp.header("to") or "").param("tag") == "srs9"
    assert (resp.header("from"), resp.header("call-id"), resp.header("cseq")) == \
        ("<sip:siprec-src@127.0.0.1>;tag=src1", "siprec-1", "7 INVITE")
    assert resp.header("content-type") == "application/sdp"
    assert resp.declared_length == len(resp.body) == 5


def test_100_has_no_to_tag_and_existing_tags_are_kept() -> None:
    req = parse_sip_message(INVITE)
    assert tag_of(parse_sip_message(build_response(req, 100, to_tag="t")).header("to")) is None
    in_dialog = parse_sip_message(INVITE.replace(b"To: <sip:srs@127.0.0.1:5090>",
                                                 b"To: <sip:srs@127.0.0.1:5090>;tag=old"))
    assert tag_of(parse_sip_message(build_response(in_dialog, 200, to_tag="new"))
                  .header("to")) == "old"


@pytest.mark.parametrize(("mutation", "problem"), [
    ((b"Call-ID: siprec-1\r\n", b""), "missing call-id header"),
    ((b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), "does not match"),
    ((b"CSeq: 7 INVITE", b"CSeq: seven INVITE"), "malformed CSeq"),
    ((b"From: <sip:siprec-src@127.0.0.1>", b"From: <sip:siprec-src@127.0.0.1"), "missing '>'"),
    ((b"SIP/2.0/UDP 10.0.0.5:5060", b"SIP/3.0/UDP 10.0.0.5:5060"), "malformed Via"),
])
def test_request_problem(mutation: tuple[bytes, bytes], problem: str) -> None:
    msg = parse_sip_message(INVITE.replace(*mutation))
    assert problem in (request_problem(msg) or "")


def test_request_problem_none_for_a_good_request() -> None:
    assert request_problem(parse_sip_message(INVITE)) is None


def test_lenient_message_skips_bad_lines_and_needs_the_reply_headers() -> None:
    broken = INVITE.replace(b"Max-Forwards: 70\r\n", b"this is not a header\r\n")
    with pytest.raises(SipError):
        parse_sip_message(broken)
    msg = lenient_message(broken)
    assert msg is not None and msg.method == "INVITE" and msg.header("call-id") == "siprec-1"
    assert parse_sip_message(build_response(msg, 400)).status == 400
    assert lenient_message(INVITE.replace(b"CSeq: 7 INVITE\r\n", b"")) is None
    assert lenient_message(b"\x00garbage") is None
    assert lenient_message(b"SIP/2.0 200 OK\r\n\r\n") is None  # never answer a response


# --------------------------------------------------------------------------- TCP framing

def test_framer_splits_by_content_length_across_chunks() -> None:
    body_msg = INVITE.replace(b"Content-Length: 0", b"Content-Length: 4") + b"abcd"
    stream = b"\r\n\r\n" + INVITE + body_msg + INVITE[:30]
    f = StreamFramer()
    out = []
    for i in range(0, len(stream), 7):  # byte-dribbled
        out += f.feed(stream[i:i + 7])
    assert out == [INVITE, body_msg]
    assert f.feed(INVITE[30:]) == [INVITE]


@pytest.mark.parametrize(("data", "error"), [
    (b"OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n", "without Content-Length"),
    (b"OPTIONS sip:a SIP/2.0\r\nContent-Length: x1\r\n\r\n", "not a number"),
    (b"OPTIONS sip:a SIP/2.0\r\nl: 99999999\r\n\r\n", "exceeds"),
])
def test_framer_errors_keep_earlier_messages_and_the_bad_head(data: bytes, error: str) -> None:
    f = StreamFramer()
    assert f.feed(INVITE + data) == [INVITE]
    assert error in (f.error or "")
    assert f.broken_head is not None and f.broken_head.startswith(b"OPTIONS sip:a")
    with pytest.raises(SipError):
        f.feed(b"more")


def test_framer_bounds_the_header_block() -> None:
    f = StreamFramer()
    f.max_header = 100
    assert f.feed(b"X" * 101) == []
    assert "header block longer" in (f.error or "")


# --------------------------------------------------------------------------- retransmission

def test_2xx_retransmission_doubles_to_t2_until_64_t1() -> None:
    # RFC 3261 §13.3.1.4: T1, 2T1, 4T1, then T2 (4 s) until 64*T1 = 32 s
    assert Retransmitter(100.0).schedule() == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5,
                                               27.5, 31.5]


def test_invite_timer_a_doubles_without_cap_until_timer_b() -> None:
    # RFC 3261 §17.1.1.2: Timer A doubles; Timer B = 64*T1
    assert Retransmitter(0.0, t2=None).schedule() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert Retransmitter(0.0, t1=0.05, t2=None, timeout=1.0).schedule() == \
        [0.05, 0.15, 0.35, 0.75]


def test_retransmitter_poll_sequence() -> None:
    r = Retransmitter(10.0, t1=1.0, t2=2.0, timeout=6.0)
    table = [(10.5, "wait"), (11.0, "send"), (11.5, "wait"), (13.0, "send"), (14.9, "wait"),
             (15.0, "send"), (16.0, "expired")]
    assert [(now, r.poll(now)) for now, _ in table] == table
    assert r.sent == 4


def test_retransmitter_catches_up_one_step_per_poll() -> None:
    r = Retransmitter(0.0, t1=1.0, t2=4.0, timeout=64.0)
    assert r.poll(10.0) == "send"  # a late poll sends once and moves on by one interval
    assert r.next_at == 3.0 and r.wake_at() == 3.0


# --------------------------------------------------------------------------- fuzz

@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_framer_never_raises_anything_but_sip_error(chunks: list[bytes]) -> None:
    f = StreamFramer()
    for chunk in chunks:
        try:
            for m in f.feed(chunk):
                assert b"\r\n\r\n" in m
        except SipError:
            assert f.error is not None
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"", INVITE[:120], INVITE]))
def test_lenient_message_and_request_problem_never_crash(junk: bytes, prefix: bytes) -> None:
    data = prefix + junk
    msg = lenient_message(data)
    if msg is not None:
        build_response(msg, 400)
    try:
        parsed = parse_sip_message(data)
    except SipError:
        return
    if parsed.method is not None:
        request_problem(parsed)
