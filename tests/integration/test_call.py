"""Real calls through the committed lab configs: sipp UAC → Kamailio → sipp UAS, media
through rtpengine, local recording on and off, with a callee that honours Record-Route and
one that does not. The daemons run exactly as rendered (only the recording directory is
the test's) and are shared by the module."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from orchestrator.daemons import Kamailio, Rtpengine
from orchestrator.errors import NgError
from orchestrator.kamailio.rpc import HttpRpcTransport, KamailioClient
from orchestrator.lab import sipp
from orchestrator.lab.events import EventReader
from orchestrator.ng import NgClient
from orchestrator.recordings import decode_metadata, decode_text
from orchestrator.site import load
from tests.conftest import ROOT, lab_secrets, wait_for

pytestmark = pytest.mark.integration

SIP = ("127.0.0.1", 5060)  # from the lab site (kamailio/edge1/kamailio.cfg)
NG = ("127.0.0.1", 2223)
EVAPI = ("127.0.0.1", 8448)
UAS_PORT = 5080
DELETE_DELAY = load().media.delete_delay  # the lab site's, as rendered


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("call")
    rec = work / "recordings"
    rec.mkdir()
    rtp = Rtpengine(ROOT / "rtpengine/rtp1/rtpengine.conf", work / "rtpengine", ng=NG,
                    overrides=[f"--recording-dir={rec}"])
    cfg, secrets = lab_secrets(work, (ROOT / "kamailio/edge1/kamailio.cfg").read_text())
    (work / "kamailio.cfg").write_text(cfg)
    kam = Kamailio(work / "kamailio.cfg", work / "kamailio", ready_tcp=("127.0.0.1", 5071))
    cwd = sipp.workdir(work / "sipp")
    with rtp.started(), kam.started():
        uas = sipp.uas(cwd, "127.0.0.1", UAS_PORT)
        events = EventReader(EVAPI, secrets.evapi)
        events.start()
        time.sleep(0.3)
        state = {"rec": rec, "cwd": cwd, "events": events, "kam": kam, "uas": uas,
                 "secrets": secrets}
        try:
            yield state
        finally:
            sipp.stop(state["uas"])
            events.close()


def rtpengine_forgets(call_id: str, timeout: float) -> bool:
    """True once rtpengine answers "Unknown call-ID" (a deleted call lingers for the
    rendered delete-delay first)."""
    deadline = time.monotonic() + timeout
    with NgClient(NG) as client:
        while True:
            try:
                client.query(call_id)
            except NgError as exc:
                if "Unknown call" in str(exc):
                    return True
                raise
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def place_call(lab, *, record: str, customer: str, local_port: int, duration_ms: int = 3000):
    argv = sipp.uac_argv(lab["cwd"], f"{SIP[0]}:{SIP[1]}", local=("127.0.0.1", local_port),
                         record=record, customer=customer, duration_ms=duration_ms)
    return subprocess.Popen(argv, cwd=lab["cwd"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_file(directory: Path, needle: str, timeout: float = 10.0) -> Path:
    return wait_for(lambda: next((p for p in directory.glob("*") if needle in p.name), None),
                    timeout, f"a file with {needle!r} in {directory}")


def use_callee(lab, kind: str) -> None:
    """The trunk's sipp callee: ``honours-rr`` copies Record-Route into its replies,
    ``ignores-rr`` (sipp's built-in uas, like many PBXs) does not."""
    sipp.stop(lab["uas"])
    lab["uas"] = sipp.uas(lab["cwd"], "127.0.0.1", UAS_PORT, record_route=kind == "honours-rr")
    time.sleep(0.3)


def dialog_gone(lab, call_id: str, timeout: float = 10.0) -> bool:
    with KamailioClient(HttpRpcTransport("http://127.0.0.1:5071/RPC",
                                         secret=lab["secrets"].jsonrpc)) as rpc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [d for d in rpc.call("dlg.list") or [] if d.get("call-id") == call_id]:
                return True
            time.sleep(0.2)
    return False


def with_customer(customer: str):
    return lambda e: (e["event"] == "answered" and
                      decode_text(e["headers"].get("X-Customer-Id", "")) == customer)


@pytest.mark.parametrize("callee", ["ignores-rr", "honours-rr"])
def test_recorded_call(lab, callee: str) -> None:
    use_callee(lab, callee)
    customer = f'C-1001 <"&>|x {callee}'
    uac = place_call(lab, record="yes", customer=customer, local_port=5170)
    answered = lab["events"].wait_for(with_customer(customer))
    call_id = answered["call_id"]
    assert answered["record_local"] is True and answered["rule"] == "default"
    assert decode_text(answered["from_display"]) == "Lab Caller" and answered["to_tag"]
    assert answered["rtpengine"] == "udp:127.0.0.1:2223"

    def packets_per_tag() -> dict[str, int] | None:  # media flowing both ways (UAS echoes)
        with NgClient(NG) as client:
            per_tag = {t.tag: t.packets for t in client.query(call_id).legs}
        return per_tag if len(per_tag) >= 2 and all(per_tag.values()) else None

    per_tag = wait_for(packets_per_tag, 5, "RTP on both legs")
    assert set(per_tag) == {answered["from_tag"], answered["to_tag"]}
    assert all(n > 0 for n in per_tag.values()), per_tag
    assert uac.wait(30) == 0, "sipp UAC reported a failed call"
    ended = lab["events"].wait_for(lambda e: e["event"] == "ended" and e["call_id"] == call_id)
    assert ended["by"] == "caller"
    assert dialog_gone(lab, call_id), "the dialog must end with the BYE, whatever the callee"

    prefix = urllib.parse.quote(call_id, safe="")
    # rtpengine finalises the recording once the call is gone, after its delete-delay
    meta = wait_file(lab["rec"] / "metadata", prefix, timeout=DELETE_DELAY + 8)
    pcap = wait_file(lab["rec"] / "pcaps", prefix)
    text = meta.read_text()
    assert text.splitlines()[0] == str(pcap)
    last = [ln for ln in text.splitlines() if ln.startswith("call-id:")][-1]
    fields = decode_metadata(last)
    assert fields["call-id"] == call_id
    assert fields["x-customer-id"] == customer  # encoded, intact
    assert fields["from"].startswith("sip:caller@") and fields["from-name"] == "Lab Caller"
    assert fields["edge"] == "edge1" and fields["rule"] == "default"
    assert len([e for e in lab["events"].events
                if e["event"] == "ended" and e["call_id"] == call_id]) == 1
    assert "SDP mode: offer" in text and "SDP mode: answer" in text
    assert pcap.stat().st_size > 24 + 100 * 16, "pcap holds (almost) no packets"


def test_opted_out_call_is_not_recorded(lab) -> None:
    customer = "C-2002"
    uac = place_call(lab, record="no", customer=customer, local_port=5171, duration_ms=1000)
    answered = lab["events"].wait_for(with_customer(customer))
    assert answered["record_local"] is False and answered["rule"] == "opt-out"
    assert uac.wait(30) == 0
    lab["events"].wait_for(lambda e: e["event"] == "ended" and
                           e["call_id"] == answered["call_id"])
    prefix = urllib.parse.quote(answered["call_id"], safe="")

    def deleted() -> bool:  # rtpengine writes a recording's files by the call's deletion
        with NgClient(NG) as client:
            try:
                client.query(answered["call_id"])
            except NgError:
                return True
        return False

    wait_for(deleted, DELETE_DELAY + 5, "rtpengine to delete the call")
    found = [p for d in ("metadata", "pcaps", "tmp") for p in (lab["rec"] / d).glob(f"*{prefix}*")]
    assert found == []


SDP = ("v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _hdr(msg: str, name: str) -> str:
    for line in msg.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {msg!r}")


def _reply(req: str, code: str, to_tag: str = "callee1") -> bytes:
    """A response to ``req`` (Via/From/To/Call-ID/CSeq copied, RFC 3261 §8.2.6)."""
    vias = [ln for ln in req.split("\r\n") if ln.lower().startswith("via:")]
    to = _hdr(req, "To") + ("" if ";tag=" in _hdr(req, "To") else f";tag={to_tag}")
    return ("SIP/2.0 " + code + "\r\n" + "\r\n".join(vias) +
            f"\r\nFrom: {_hdr(req, 'From')}\r\nTo: {to}\r\nCall-ID: {_hdr(req, 'Call-ID')}"
            f"\r\nCSeq: {_hdr(req, 'CSeq')}\r\nContent-Length: 0\r\n\r\n").encode()


def _recv_request(sock: socket.socket, method: str) -> tuple[str, tuple[str, int]]:
    while True:
        data, addr = sock.recvfrom(65535)
        msg = data.decode()
        if msg.startswith(method + " "):
            return msg, addr


@pytest.mark.parametrize("how", ["busy", "cancel"])
def test_failed_call_frees_media(lab, how: str) -> None:
    """A rejected or cancelled INVITE: a failed event; rtpengine forgets the call within
    its delete-delay."""
    call_id = f"fail-{how}-{os.urandom(4).hex()}@test"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee:
        caller.settimeout(5)
        callee.settimeout(5)
        caller.bind(("127.0.0.1", 0))
        # The lab's trunk is 127.0.0.1:5080 where the module's sipp UAS answers every call;
        # this test needs a callee that refuses, so it takes the trunk's place meanwhile.
        sipp.stop(lab["uas"])
        callee.bind(("127.0.0.1", UAS_PORT))
        cport, tport = caller.getsockname()[1], UAS_PORT
        invite = (f"INVITE sip:callee@127.0.0.1:{tport} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bK-{how}1\r\n"
                  f"From: <sip:caller@127.0.0.1:{cport}>;tag=caller1\r\n"
                  f"To: <sip:callee@127.0.0.1:{tport}>\r\nCall-ID: {call_id}\r\n"
                  f"CSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{cport}>\r\n"
                  f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(SDP)}\r\n\r\n{SDP}")
        caller.sendto(invite.encode(), SIP)
        req, addr = _recv_request(callee, "INVITE")
        with NgClient(NG) as client:
            client.query(call_id)  # anchored (raises NgError if rtpengine does not know it)
        if how == "busy":
            callee.sendto(_reply(req, "486 Busy Here"), addr)
            expected = 486
        else:
            callee.sendto(_reply(req, "180 Ringing"), addr)
            cancel = (f"CANCEL sip:callee@127.0.0.1:{tport} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bK-{how}1\r\n"
                      f"From: <sip:caller@127.0.0.1:{cport}>;tag=caller1\r\n"
                      f"To: <sip:callee@127.0.0.1:{tport}>\r\nCall-ID: {call_id}\r\n"
                      f"CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            caller.sendto(cancel.encode(), SIP)
            creq, caddr = _recv_request(callee, "CANCEL")
            callee.sendto(_reply(creq, "200 OK"), caddr)
            callee.sendto(_reply(req, "487 Request Terminated"), addr)
            expected = 487
        failed = lab["events"].wait_for(lambda e: e["event"] == "failed" and
                                        e["call_id"] == call_id)
        assert failed["code"] == expected
        assert rtpengine_forgets(call_id, DELETE_DELAY + 1), \
            f"rtpengine still holds {call_id} {DELETE_DELAY + 1} s after the failure"
    lab["uas"] = sipp.uas(lab["cwd"], "127.0.0.1", UAS_PORT)
    time.sleep(0.2)


def _request(method: str, ruri: str, *, cport: int, call_id: str, cseq: int, to: str,
             routes: list[str] = (), body: str = "", branch: str | None = None) -> bytes:
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{cport};branch={branch or 'z9hG4bK-' + os.urandom(6).hex()}",
             *[f"Route: {r}" for r in routes],
             f"From: <sip:caller@127.0.0.1:{cport}>;tag=caller1", f"To: {to}",
             f"Call-ID: {call_id}", f"CSeq: {cseq} {'ACK' if method == 'ACK' else method}",
             f"Contact: <sip:caller@127.0.0.1:{cport}>", "Max-Forwards: 70"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _answer(req: str, code: str, *, body: str = "", contact: int = UAS_PORT) -> bytes:
    rr = [ln for ln in req.split("\r\n") if ln.lower().startswith("record-route:")]
    head = _reply(req, code).decode().split("\r\nContent-Length: 0\r\n\r\n")[0]
    extra = rr + [f"Contact: <sip:callee@127.0.0.1:{contact}>"]
    if body:
        extra.append("Content-Type: application/sdp")
    return (head + "\r\n" + "\r\n".join(extra) +
            f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def _recv_response(sock: socket.socket, code: str) -> str:
    while True:
        msg = sock.recv(65535).decode()
        if msg.startswith(f"SIP/2.0 {code}"):
            return msg


def test_hold_and_resume_reinvite_events(lab) -> None:
    """A call through the edge, then re-INVITEs with a=sendonly and a=sendrecv: one
    `reinvite` event each, with hold true then false; media re-anchored each time."""
    call_id = f"hold-{os.urandom(4).hex()}@test"
    hold_sdp = SDP + "a=sendonly\r\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee:
        caller.settimeout(5)
        callee.settimeout(5)
        caller.bind(("127.0.0.1", 0))
        sipp.stop(lab["uas"])  # the test callee takes the trunk's place (see above)
        callee.bind(("127.0.0.1", UAS_PORT))
        cport = caller.getsockname()[1]
        to = f"<sip:callee@127.0.0.1:{UAS_PORT}>"
        ruri = f"sip:callee@127.0.0.1:{UAS_PORT}"
        caller.sendto(_request("INVITE", ruri, cport=cport, call_id=call_id, cseq=1, to=to,
                               body=SDP), SIP)
        req, addr = _recv_request(callee, "INVITE")
        callee.sendto(_answer(req, "200 OK", body=SDP), addr)
        ok = _recv_response(caller, "200")
        routes = [ln.split(":", 1)[1].strip() for ln in ok.split("\r\n")
                  if ln.lower().startswith("record-route:")]
        assert routes, "the edge must record-route"
        to_tagged = _hdr(ok, "To")
        caller.sendto(_request("ACK", ruri, cport=cport, call_id=call_id, cseq=1,
                               to=to_tagged, routes=routes), SIP)
        _recv_request(callee, "ACK")
        for cseq, body, hold in ((2, hold_sdp, True), (3, SDP, False)):
            caller.sendto(_request("INVITE", ruri, cport=cport, call_id=call_id, cseq=cseq,
                                   to=to_tagged, routes=routes, body=body), SIP)
            req, addr = _recv_request(callee, "INVITE")
            assert ("a=sendonly" in req) is hold
            callee.sendto(_answer(req, "200 OK", body=SDP), addr)
            _recv_response(caller, "200")
            caller.sendto(_request("ACK", ruri, cport=cport, call_id=call_id, cseq=cseq,
                                   to=to_tagged, routes=routes), SIP)
            _recv_request(callee, "ACK")
            ev = lab["events"].wait_for(lambda e, c=cseq: e["event"] == "reinvite" and
                                        e["call_id"] == call_id and
                                        len([x for x in lab["events"].events
                                             if x["event"] == "reinvite" and
                                             x["call_id"] == call_id]) >= c - 1)
        reinvites = [e for e in lab["events"].events
                     if e["event"] == "reinvite" and e["call_id"] == call_id]
        assert [e["hold"] for e in reinvites] == [True, False]
        assert ev["to_tag"] == "callee1" and ev["from_tag"] == "caller1"
        caller.sendto(_request("BYE", ruri, cport=cport, call_id=call_id, cseq=4,
                               to=to_tagged, routes=routes), SIP)
        req, addr = _recv_request(callee, "BYE")
        callee.sendto(_reply(req, "200 OK"), addr)
        _recv_response(caller, "200")
        ended = lab["events"].wait_for(lambda e: e["event"] == "ended" and
                                       e["call_id"] == call_id)
        assert ended["by"] == "caller"
    lab["uas"] = sipp.uas(lab["cwd"], "127.0.0.1", UAS_PORT)
    time.sleep(0.2)
