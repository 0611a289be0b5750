"""The reference SRS driven by a small test SRC over raw UDP and TCP sockets on loopback.

The SRC builds its SIPREC INVITE with the project's builders (``recording_from_call``,
``build_metadata``, ``build_siprec_body``) and checks the SRS's answers on the wire; the
session records, JSON files, pcaps and WAVs are checked after each call.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.daemons import free_port, free_ports
from orchestrator.lab.srs import Behaviour, SrsConfig, SrsServer, SrsSession
from orchestrator.recordings.pcap import summarize_pcap
from orchestrator.siprec import (
    CallInfo,
    Recording,
    build_metadata,
    build_siprec_body,
    hold_update,
    parse_name_addr,
    parse_sdp,
    parse_sip_message,
    recording_from_call,
)
from orchestrator.siprec.multipart import parse_multipart
from orchestrator.siprec.sip import SipMessage
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
TIMERS = {"t1": 0.05, "t2": 0.4, "timer_b": 1.0}


# --------------------------------------------------------------------------- the test SRC

def offer_sdp(version: int = 1, directions: tuple[str, ...] = ("sendonly", "sendonly"),
              labels: tuple[str, ...] = ("1", "2")) -> bytes:
    lines = ["v=0", f"o=- 4242 {version} IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0"]
    for i, (label, direction) in enumerate(zip(labels, directions, strict=True)):
        lines += [f"m=audio {30000 + 2 * i} RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
                  "a=rtpmap:101 telephone-event/8000", f"a=label:{label}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def snapshot() -> Recording:
    call = CallInfo(from_header='"Alice" <sip:alice@example.com>;tag=ft1',
                    to_header="<sip:bob@example.com>;tag=tt1", from_tag="ft1", to_tag="tt1",
                    start_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    return recording_from_call(call, {"media-labels": {"1": {"tag": "ft1"},
                                                       "2": {"tag": "tt1"}}})


def rtp(seq: int, ssrc: int, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + b"\xff" * 160


class Src:
    """A minimal SRC: one socket, hand-built requests, responses read back and parsed."""

    def __init__(self, srs: SrsServer, transport: str = "udp") -> None:
        self.srs = srs
        self.transport = transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((HOST, 0))
        else:
            self.sock = socket.create_connection((HOST, srs.port), timeout=2)
        self.port = self.sock.getsockname()[1]
        self.buf = b""
        self.call_id = "siprec-" + secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)
        self.to_tag: str | None = None
        self.cseq = 0
        self.rec = snapshot()  # the metadata model of this SRC's call
        self.contact_uri = f"sip:siprec-src@{HOST}:{self.port}" + \
            (";transport=tcp" if transport == "tcp" else "")

    def close(self) -> None:
        self.sock.close()

    # -- wire

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, (HOST, self.srs.port))
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 2.0) -> SipMessage:
        """The next message; TimeoutError if none arrives in time."""
        self.sock.settimeout(timeout)
        if self.transport == "udp":
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                raise TimeoutError("no SIP message from the SRS") from None
            return parse_sip_message(data)
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(rb"\r\n\r\n", self.buf)
            if m is not None:
                cl = re.search(rb"(?im)^content-length:\s*(\d+)", self.buf[:m.start()])
                total = m.end() + (int(cl.group(1)) if cl else 0)
                if len(self.buf) >= total:
                    data, self.buf = self.buf[:total], self.buf[total:]
                    return parse_sip_message(data)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no SIP message from the SRS")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65535)
            except TimeoutError:
                raise TimeoutError("no SIP message from the SRS") from None
            if not chunk:
                raise TimeoutError("the SRS closed the connection")
            self.buf += chunk

    def expect(self, status: int | None = None, method: str | None = None,
               timeout: float = 2.0) -> SipMessage:
        """The next message, which must have this status or method (skipping nothing)."""
        msg = self.recv(timeout)
        if status is not None:
            assert msg.status == status, msg.start_line
        if method is not None:
            assert msg.method == method, msg.start_line
        return msg

    def request(self, method: str, *, body: bytes = b"", ctype: str | None = None,
                headers: list[tuple[str, str]] | None = None, cseq: int | None = None,
                branch: str | None = None, in_dialog: bool = True) -> str:
        """Send a request; returns its branch."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        to = f"<{self.srs.uri}>"
        if in_dialog and self.to_tag:
            to += f";tag={self.to_tag}"
        uri = self.srs.uri + (";transport=tcp" if self.transport == "tcp" else "")
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/{self.transport.upper()} {HOST}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:siprec-src@{HOST}>;tag={self.from_tag}",
                 f"To: {to}", f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <{self.contact_uri}>;+sip.src"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        if body:
            lines.append(f"Content-Type: {ctype or 'application/sdp'}")
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return branch

    def invite(self, *, sdp: bytes | None = None, metadata: bytes | None = None,
               require: bool = True, branch: str | None = None) -> str:
        ctype, body = build_siprec_body(sdp or offer_sdp(),
                                        metadata if metadata is not None
                                        else build_metadata(self.rec))
        headers = [("Accept", "application/sdp, application/rs-metadata+xml, "
                              "application/rs-metadata-request")]
        if require:
            headers.insert(0, ("Require", "siprec"))
        return self.request("INVITE", body=body, ctype=ctype, headers=headers, branch=branch,
                            in_dialog=False)

    def ack(self, cseq: int | None = None, branch: str | None = None) -> None:
        self.request("ACK", cseq=cseq or self.cseq, branch=branch)

    def answer(self, req: SipMessage, code: int = 200, body: bytes = b"") -> None:
        """Answer a request from the SRS (Via/From/To/Call-ID/CSeq copied)."""
        lines = [f"SIP/2.0 {code} OK"]
        lines += [f"Via: {v}" for v in req.header_all("via")]
        lines += [f"From: {req.header('from')}", f"To: {req.header('to')}",
                  f"Call-ID: {req.header('call-id')}", f"CSeq: {req.header('cseq')}",
                  f"Contact: <{self.contact_uri}>;+sip.src"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def establish(self) -> SipMessage:
        """INVITE → 100 → 200 → ACK; returns the 200."""
        self.invite()
        self.expect(100)
        ok = self.expect(200)
        self.to_tag = parse_name_addr(ok.header("to") or "").param("tag")
        self.ack()
        return ok


def answered_ports(msg: SipMessage) -> dict[str, int]:
    sdp = parse_sdp(msg.body)
    return {m.label or "": m.port for m in sdp.media}


def directions(msg: SipMessage) -> dict[str, str]:
    sdp = parse_sdp(msg.body)
    return {m.label or "": sdp.effective_direction(m) for m in sdp.media}


@pytest.fixture
def make_srs(tmp_path: Path) -> Iterator[Callable[..., SrsServer]]:
    servers: list[SrsServer] = []

    def make(transports: tuple[str, ...] = ("udp", "tcp"),
             on_end: Callable[[SrsSession], None] | None = None,
             **behaviour: object) -> SrsServer:
        base = free_port("udp") & ~1
        cfg = SrsConfig(address=HOST, port=free_ports(1)[0], transports=transports,
                        record_dir=tmp_path / "rec", rtp_address=HOST, rtp_port_min=base,
                        rtp_port_max=min(base + 60, 65534), name="srs1",
                        behaviour=Behaviour(**behaviour), **TIMERS)  # type: ignore[arg-type]
        srs = SrsServer(cfg, on_session_end=on_end)
        try:
            srs.start()
        except Exception:  # the free port was taken meanwhile: one retry on port 0
            srs = SrsServer(SrsConfig(**{**cfg.__dict__, "port": 0}), on_session_end=on_end)
            srs.start()
        servers.append(srs)
        return srs

    yield make
    for s in servers:
        s.stop()


def one(srs: SrsServer, pred: Callable[[SrsSession], bool], timeout: float = 2.0) -> SrsSession:
    sessions = srs.wait_for(lambda ss: len(ss) == 1 and pred(ss[0]), timeout)
    return sessions[0]


# --------------------------------------------------------------------------- tests

def test_basic_flow_pause_and_bye_over_udp(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs)
    ok = src.establish()
    # RFC 7866 §6.1.1 / §7.1.1: +sip.srs Contact, one recvonly m-line per offered one
    assert re.search(r"<sip:srs@127\.0\.0\.1:\d+>;\+sip\.srs", ok.header("contact") or "")
    assert src.to_tag
    ports = answered_ports(ok)
    assert list(ports) == ["1", "2"]
    assert directions(ok) == {"1": "recvonly", "2": "recvonly"}
    assert all(srs.config.rtp_port_min <= p <= srs.config.rtp_port_max for p in ports.values())
    assert "a=rtpmap:0 PCMU/8000" in ok.body.decode()
    one(srs, lambda s: s.acked_at is not None)

    media = {lb: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for lb in ports}
    for i, (lb, s) in enumerate(media.items()):
        for seq in range(5):
            s.sendto(rtp(seq, 1000 + i), (HOST, ports[lb]))
    s1 = one(srs, lambda s: all(st.packets == 5 for st in s.labels.values()))
    assert s1.labels["1"].ssrcs == [1000] and s1.labels["2"].ssrcs == [1001]

    # pause stream 2 (RFC 7866 §7.1.1.1) with a partial metadata update
    callee = src.rec.participants[1].participant_id
    ctype, body = build_siprec_body(offer_sdp(2, ("sendonly", "inactive")),
                                    build_metadata(hold_update(src.rec, callee), check=False))
    src.request("INVITE", body=body, ctype=ctype)
    re_ok = src.expect(200)
    assert directions(re_ok) == {"1": "recvonly", "2": "inactive"}
    assert answered_ports(re_ok) == ports  # same ports for the same m-lines
    src.ack()
    time.sleep(0.1)  # nothing sent while paused: nothing must be counted
    paused = one(srs, lambda s: len(s.reinvites) == 1)
    assert paused.labels["2"].direction == "inactive"
    assert paused.labels["2"].packets_while_inactive == 0
    for seq in range(5, 8):
        media["2"].sendto(rtp(seq, 1001), (HOST, ports["2"]))
    one(srs, lambda s: s.labels["2"].packets_while_inactive == 3)

    src.request("BYE")
    src.expect(200)
    done = one(srs, lambda s: s.state == "terminated")
    for s in media.values():
        s.close()
    src.close()

    assert done.bye_from == "src"
    assert done.labels["2"].packets == 5  # the leaked packets are not recorded
    assert [m for m, _ in done.metadata_docs] == ["complete", "partial"]
    assert done.reinvites[0]["directions"] == {"1": "recvonly", "2": "inactive"}
    assert done.reinvites[0]["datamode"] == "partial"
    assert not [f for f in done.sip_findings if f.severity == "error"], done.sip_findings
    assert not [f for f in done.metadata_findings if f.severity == "error"], \
        done.metadata_findings
    assert done.labels["1"].participants[0]["aor"] == "sip:alice@example.com"
    record = json.loads(Path(done.json_path or "").read_text())
    assert record["packets"] == {"1": 5, "2": 5}
    assert record["labels"]["2"]["packets_while_inactive"] == 3
    assert record["state"] == "terminated"
    pcap = summarize_pcap(Path(done.labels["1"].pcap_path or "").read_bytes())
    assert pcap.linktype == 101 and pcap.packets == 5 and not pcap.truncated
    assert pcap.dst_ports == {ports["1"]: 5}
    with wave.open(done.labels["1"].wav_path or "") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert w.getnframes() == 5 * 160


def test_basic_flow_over_tcp(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs, "tcp")
    ok = src.establish()
    assert re.search(r"<sip:srs@127\.0\.0\.1:\d+;transport=tcp>;\+sip\.srs",
                     ok.header("contact") or "")
    ports = answered_ports(ok)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for seq in range(4):
            s.sendto(rtp(seq, 7), (HOST, ports["1"]))
    one(srs, lambda s: s.labels["1"].packets == 4)
    src.request("BYE")
    src.expect(200)
    done = one(srs, lambda s: s.state == "terminated")
    src.close()
    assert done.transport == "tcp"
    assert json.loads(Path(done.json_path or "").read_text())["packets"] == {"1": 4, "2": 0}


def test_200_is_retransmitted_until_ack(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs)
    branch = src.invite()
    src.expect(100)
    first = src.expect(200)
    again = src.expect(200, timeout=0.5)  # T1 = 50 ms
    assert again.body == first.body
    # a retransmitted INVITE gets the same final response
    src.invite(branch=branch)
    src.cseq = 1
    assert src.expect(200, timeout=0.5).header("to") == first.header("to")
    src.to_tag = parse_name_addr(first.header("to") or "").param("tag")
    src.ack(cseq=1)
    one(srs, lambda s: s.acked_at is not None)
    with pytest.raises(TimeoutError):  # drain what was in flight, then silence
        while True:
            src.recv(timeout=0.3)
    src.close()


def test_reject_mode_and_timer_g(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(reject=503)
    src = Src(srs)
    branch = src.invite()
    src.expect(100)
    first = src.expect(503)
    assert parse_name_addr(first.header("to") or "").param("tag")
    src.expect(503, timeout=0.5)  # retransmitted until the ACK (RFC 3261 §17.2.1)
    src.to_tag = parse_name_addr(first.header("to") or "").param("tag")
    src.ack(cseq=1, branch=branch)
    s = one(srs, lambda s: s.state == "rejected")
    assert s.final_status == 503
    with pytest.raises(TimeoutError):
        while True:
            src.recv(timeout=0.4)
    src.close()
    assert Path(s.json_path or "").exists()


def test_no_answer_mode(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(no_answer=True)
    src = Src(srs)
    src.invite()
    with pytest.raises(TimeoutError):
        src.recv(timeout=1.0)
    s = one(srs, lambda s: s.ignored)
    assert s.state == "early"
    assert [m for m, _ in s.metadata_docs] == ["complete"]  # checked, though unanswered
    assert not [f for f in s.sip_findings if f.severity == "error"]
    src.close()


def test_answer_delay(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(answer_delay=0.3)
    src = Src(srs)
    t0 = time.monotonic()
    src.invite()
    src.expect(100)
    ringing = src.expect(180)
    ok = src.expect(200, timeout=2)
    assert time.monotonic() - t0 >= 0.3
    assert ringing.header("to") == ok.header("to")  # same To-tag
    src.to_tag = parse_name_addr(ok.header("to") or "").param("tag")
    src.ack()
    one(srs, lambda s: s.state == "confirmed" and s.acked_at is not None)
    src.close()


def test_reinvite_delay_and_an_overlapping_invite_is_a_finding(
        make_srs: Callable[..., SrsServer]) -> None:
    """``reinvite_delay``: the SRC's re-INVITE gets a 100, its 200 that much later; a second
    re-INVITE while the first is pending breaks RFC 3261 §14.1: 500 + Retry-After (§14.2)
    and finding S07, the first still answered."""
    srs = make_srs(reinvite_delay=0.4)
    src = Src(srs)
    src.establish()
    t0 = time.monotonic()
    ctype, body = build_siprec_body(offer_sdp(2), build_metadata(src.rec))
    src.request("INVITE", body=body, ctype=ctype)
    src.expect(100)
    branch = src.request("INVITE", body=body, ctype=ctype)  # the overlap
    refused = src.expect(500)
    assert refused.header("retry-after") == "1"
    src.ack(cseq=src.cseq, branch=branch)  # a non-2xx final is ACKed in its transaction
    ok = src.recv(2)
    while ok.status != 200:  # the 500's retransmissions before our ACK arrived
        ok = src.recv(2)
    assert time.monotonic() - t0 >= 0.4 and (ok.header("cseq") or "").startswith(f"{src.cseq - 1} ")
    src.ack(cseq=src.cseq - 1)
    s = one(srs, lambda s: any(f.rule == "S07" for f in s.sip_findings))
    assert [f.rule for f in s.sip_findings if f.rule == "S07"] == ["S07"]
    assert len(s.reinvites) == 1
    src.close()


def test_cancel(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(answer_delay=5.0)
    src = Src(srs)
    branch = src.invite()
    src.expect(100)
    src.expect(180)
    src.request("CANCEL", cseq=1, branch=branch, in_dialog=False)
    replies = {m.header("cseq"): m.status for m in (src.recv(), src.recv())}
    assert replies == {"1 CANCEL": 200, "1 INVITE": 487}
    src.ack(cseq=1, branch=branch)
    s = one(srs, lambda s: s.state == "cancelled")
    assert s.final_status == 487 and s.labels == {}
    src.close()


def test_bye_after(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(bye_after=0.2)
    src = Src(srs)
    src.establish()
    bye = src.expect(method="BYE")
    assert bye.start_line == f"BYE {src.contact_uri} SIP/2.0"
    assert parse_name_addr(bye.header("from") or "").param("tag") == src.to_tag
    assert parse_name_addr(bye.header("to") or "").param("tag") == src.from_tag
    assert bye.header("call-id") == src.call_id
    assert re.search(r"branch=z9hG4bK", bye.header("via") or "")
    src.answer(bye)
    s = one(srs, lambda s: s.bye_status == 200)
    assert s.state == "terminated" and s.bye_from == "srs"
    src.close()


def test_snapshot_after(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(snapshot_after=0.2)
    src = Src(srs)
    src.establish()
    req = src.expect(method="INVITE")
    ctype = req.header("content-type") or ""
    parts, problems = parse_multipart(ctype, req.body)
    assert not problems
    kinds = {p.content_type: p for p in parts}
    assert set(kinds) == {"application/sdp", "application/rs-metadata-request"}
    assert kinds["application/rs-metadata-request"].disposition == "recording-session"
    assert b"requestsnapshot" in kinds["application/rs-metadata-request"].body
    assert directions(SipMessage("", (), kinds["application/sdp"].body, 1, None)) == \
        {"1": "recvonly", "2": "recvonly"}
    src.answer(req, body=offer_sdp(1))
    ack = src.expect(method="ACK")
    assert ack.header("cseq") == req.header("cseq").replace("INVITE", "ACK")  # type: ignore[union-attr]
    s = one(srs, lambda s: s.snapshot_requests_sent == 1 and len(s.reinvites) == 1)
    assert not s.snapshot_received_after_request
    # RFC 7866 §9.2: the SRC sends a complete snapshot in a new request
    ctype2, body2 = build_siprec_body(offer_sdp(2), build_metadata(src.rec))
    src.request("UPDATE", body=body2, ctype=ctype2)
    src.expect(200)
    s = one(srs, lambda s: s.snapshot_received_after_request)
    assert [m for m, _ in s.metadata_docs] == ["complete", "complete"]
    src.close()


def test_refresh_after(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(refresh_after=0.2)
    src = Src(srs)
    ok = src.establish()
    req = src.expect(method="INVITE")
    assert req.header("content-type") == "application/sdp"
    assert req.body == ok.body  # an unchanged SDP keeps its o= version (RFC 3264 §8)
    assert (req.header("contact") or "").endswith(";+sip.srs")
    src.answer(req, body=offer_sdp(1))
    src.expect(method="ACK")
    s = one(srs, lambda s: len(s.reinvites) == 1)
    assert s.reinvites[0]["from"] == "srs" and s.reinvites[0]["status"] == 200
    assert s.state == "confirmed"
    src.close()


def test_unanswered_refresh_ends_with_bye(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(refresh_after=0.05)
    src = Src(srs)
    src.establish()
    first = src.expect(method="INVITE")
    again = src.expect(method="INVITE", timeout=0.5)  # Timer A
    assert again.header("via") == first.header("via")
    bye = None
    deadline = time.monotonic() + 3
    while bye is None and time.monotonic() < deadline:  # after Timer B (1 s here)
        msg = src.recv(timeout=3)
        bye = msg if msg.method == "BYE" else None
    assert bye is not None
    src.answer(bye)
    s = one(srs, lambda s: s.bye_status == 200)
    assert any(f.rule == "S05" for f in s.sip_findings)
    src.close()


def test_missing_require_gets_420(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs)
    src.invite(require=False)
    src.expect(100)
    src.expect(420)
    s = one(srs, lambda s: s.state == "rejected")
    assert s.final_status == 420
    assert any(f.rule == "R01" for f in s.sip_findings)
    src.close()


def test_malformed_and_unknown_requests(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs)
    src.send(b"\x00\x01 not SIP at all")
    bad = (f"OPTIONS {srs.uri} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{src.port};branch=z9hG4bKx1\r\n"
           f"From: <sip:a@{HOST}>;tag=1\r\nTo: <{srs.uri}>\r\nCall-ID: bad1\r\n"
           "CSeq: 1 OPTIONS\r\nthis line is broken\r\nContent-Length: 0\r\n\r\n").encode()
    src.send(bad)
    assert src.expect(400).header("call-id") == "bad1"
    src.request("OPTIONS", in_dialog=False)
    assert src.expect(200).header("allow")
    src.request("BYE", in_dialog=False)
    src.expect(481)
    src.establish()
    src.request("INFO")
    src.expect(405)
    src.request("FOO")
    src.expect(501)
    src.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_runs_until_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    base = free_port() & ~1
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "srs", "--listen", f"{HOST}:{port}",
         "--dir", str(tmp_path), "--rtp-ports", f"{base}-{base + 9}", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline().decode()
        assert f"listening on sip:srs@{HOST}:{port}" in banner
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # it answers meanwhile
            s.settimeout(2)
            s.sendto(f"OPTIONS sip:srs@{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:9;"
                     "branch=z9hG4bKo1;rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:srs@b>\r\n"
                     "Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode(),
                     (HOST, port))
            assert s.recv(65535).startswith(b"SIP/2.0 200 OK")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out == b""  # no session, nothing on stdout


def _raw(srs: SrsServer, src: Src, first: str, *, body: bytes = b"", ctype: str | None = None,
         length: int | None = None, contact: bool = True, call_id: str = "m1") -> bytes:
    lines = [first, f"Via: SIP/2.0/{src.transport.upper()} {HOST}:{src.port};branch=z9hG4bK"
             f"{secrets.token_hex(4)};rport", f"From: <sip:src@{HOST}>;tag=mf",
             f"To: <{srs.uri}>", f"Call-ID: {call_id}", f"CSeq: 1 {first.split()[0]}",
             "Require: siprec"]
    if contact:
        lines.append(f"Contact: <sip:src@{HOST}:{src.port}>;+sip.src")
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_malformed_inputs_get_400_or_488_and_no_thread_error(
        make_srs: Callable[..., SrsServer], caplog: pytest.LogCaptureFixture) -> None:
    srs = make_srs()
    src = Src(srs)
    invite = f"INVITE {srs.uri} SIP/2.0"
    no_m = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    cases = [
        (_raw(srs, src, invite, body=b"--x\r\n", ctype="multipart/mixed", call_id="a"), 400),
        (_raw(srs, src, invite, body=no_m, ctype="application/sdp", call_id="b"), 488),
        (_raw(srs, src, invite, body=offer_sdp(), ctype="application/sdp", contact=False,
              call_id="c"), 400),
        (_raw(srs, src, invite, body=b"v=0\r\n", ctype="application/sdp", length=500,
              call_id="d"), 400),
        (_raw(srs, src, invite, body=b"m=audio x RTP/AVP 0\r\n", ctype="application/sdp",
              call_id="e"), 400),
        (_raw(srs, src, invite, call_id="f"), 488),
    ]
    for data, status in cases:
        src.send(data)
        msg = src.recv()
        while msg.status == 100:
            msg = src.recv()
        assert msg.status == status, (data[:60], msg.start_line)
    for junk in (b"SIP/2.0 200 OK\r\n\r\n", b"SIP/2.0 200 OK\r\nVia: x\r\nCSeq: 1 INVITE\r\n\r\n",
                 b"\r\n\r\n", bytes(range(256)), b"INVITE sip:x SIP/2.0\r\n\r\n"):
        src.send(junk)
    src.request("OPTIONS", in_dialog=False)
    assert src.expect(200).header("cseq") == "1 OPTIONS"
    # TCP: a header block without Content-Length gets 400 and the connection is closed
    tcp = Src(srs, "tcp")
    tcp.send(f"OPTIONS {srs.uri} SIP/2.0\r\nVia: SIP/2.0/TCP {HOST}:{tcp.port};branch=z9hG4bKt"
             f"\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS"
             "\r\n\r\n".encode())
    assert tcp.expect(400).header("call-id") == "t1"
    with pytest.raises(TimeoutError, match="closed"):
        tcp.recv(timeout=1)
    tcp.close()
    src.close()
    assert all(s.state == "rejected" for s in srs.sessions())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_metadata_only_update_and_offerless_reinvite(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs()
    src = Src(srs)
    ok = src.establish()
    partial = build_metadata(hold_update(src.rec, src.rec.participants[0].participant_id),
                             check=False)
    src.request("UPDATE", body=partial, ctype="application/rs-metadata+xml")
    upd = src.expect(200)
    assert upd.body == b""  # no offer, no answer
    src.request("INVITE", body=partial, ctype="application/rs-metadata+xml")
    reinv = src.expect(200)
    assert reinv.body == ok.body  # RFC 3261 §14.2: the 2xx carries an offer, unchanged SDP
    src.ack()
    s = one(srs, lambda s: len(s.reinvites) == 2)
    assert [(r["method"], r["had_sdp"], r["datamode"]) for r in s.reinvites] == \
        [("UPDATE", False, "partial"), ("INVITE", False, "partial")]
    assert not [f for f in s.metadata_findings if f.severity == "error"], s.metadata_findings
    src.close()


def test_tcp_bye_reconnects_when_the_src_closed_its_connection(
        make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(bye_after=0.3)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(3)
    src = Src(srs, "tcp")
    src.contact_uri = f"sip:siprec-src@{HOST}:{listener.getsockname()[1]};transport=tcp"
    src.establish()
    one(srs, lambda s: s.acked_at is not None)
    src.sock.close()
    conn, _ = listener.accept()  # the SRS connects to the Contact to send its BYE
    src.sock, src.buf = conn, b""
    bye = src.expect(method="BYE")
    assert (bye.header("via") or "").startswith("SIP/2.0/TCP ")
    src.answer(bye)
    s = one(srs, lambda s: s.bye_status == 200)
    assert s.bye_from == "srs"
    conn.close()
    listener.close()


def test_stop_ends_open_sessions_and_writes_their_json(
        make_srs: Callable[..., SrsServer]) -> None:
    ended: list[SrsSession] = []
    srs = make_srs(on_end=ended.append)
    src = Src(srs)
    src.establish()
    one(srs, lambda s: s.acked_at is not None)
    srs.stop()
    s = srs.sessions()[0]
    assert (s.state, s.end_reason, s.bye_from) == ("terminated", "server stopped", None)
    record = json.loads(Path(s.json_path or "").read_text())
    assert record["state"] == "terminated" and record["acked_at"] is not None
    assert [e.session_id for e in ended] == [s.session_id]
    assert summarize_pcap(Path(s.labels["1"].pcap_path or "").read_bytes()).packets == 0
    src.close()


def test_stop_from_the_session_end_callback(tmp_path: Path) -> None:
    base = free_port() & ~1
    cfg = SrsConfig(address=HOST, port=0, record_dir=tmp_path, rtp_port_min=base,
                    rtp_port_max=base + 9, name="cb", behaviour=Behaviour(reject=486),
                    **TIMERS)  # type: ignore[arg-type]
    srs = SrsServer(cfg, on_session_end=lambda s: srs.stop())
    srs.start()
    src = Src(srs)
    src.invite()
    src.expect(100)
    src.expect(486)

    def srs_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("srs-cb-")]

    deadline = time.monotonic() + 2
    while srs_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srs_threads() == []
    assert srs.sessions()[0].state == "rejected"
    src.close()


def test_only_max_sessions_are_kept_in_memory(tmp_path: Path) -> None:
    base = free_port() & ~1
    cfg = SrsConfig(address=HOST, port=0, record_dir=tmp_path, rtp_port_min=base,
                    rtp_port_max=base + 9, max_sessions=2, behaviour=Behaviour(reject=480),
                    **TIMERS)  # type: ignore[arg-type]
    with SrsServer(cfg) as srs:
        call_ids = []
        for _ in range(4):
            src = Src(srs)
            call_ids.append(src.call_id)
            src.invite()
            src.expect(100)
            src.expect(480)
            src.close()
        kept = srs.wait_for(lambda ss: all(s.ended for s in ss), 2)
    assert [s.call_id for s in kept] == call_ids[-2:]
    assert len(list(tmp_path.glob("*.json"))) == 4  # the files stay


def test_glare_retransmitted_2xx_and_481_after_bye(make_srs: Callable[..., SrsServer]) -> None:
    srs = make_srs(refresh_after=0.05)
    src = Src(srs)
    src.establish()
    theirs = src.expect(method="INVITE")
    # RFC 3261 §14.2: the SRC's re-INVITE while the SRS's is pending gets 491
    branch = src.request("INVITE", body=offer_sdp(2), ctype="application/sdp")
    msg = src.recv()
    while msg.method == "INVITE":  # Timer A retransmissions of the SRS's re-INVITE
        msg = src.recv()
    assert msg.status == 491
    src.ack(branch=branch)  # hop-by-hop ACK of a non-2xx: same branch (RFC 3261 §17.1.1.3)

    def next_not_invite(timeout: float = 2.0) -> SipMessage:
        m = src.recv(timeout)
        while m.method == "INVITE":  # a Timer A retransmission still in flight
            m = src.recv(timeout)
        return m

    src.answer(theirs, body=offer_sdp(1))
    got = [next_not_invite()]
    src.answer(theirs, body=offer_sdp(1))  # a retransmitted 2xx is ACKed again
    got.append(next_not_invite())
    with pytest.raises(TimeoutError):  # and nothing else: no 491 retransmissions
        got.append(next_not_invite(timeout=0.3))
    assert [m.method for m in got] == ["ACK", "ACK"]
    assert got[0].header("cseq") == got[1].header("cseq") == \
        (theirs.header("cseq") or "").replace("INVITE", "ACK")
    s = one(srs, lambda s: len(s.reinvites) == 1)
    assert s.reinvites[0]["status"] == 200
    src.request("BYE")
    src.expect(200)
    src.request("INVITE", body=offer_sdp(3), ctype="application/sdp")
    src.expect(481)
    src.close()
