"""The Kamailio edge as shipped (the committed lab configs, nothing changed but the recording
directory): dialogs end for callees that honour Record-Route and for those that do not,
`ended` fires once per call and shm comes back; SIP-derived values with any bytes reach the
events and rtpengine's metadata intact; replies to a tm.t_uac_start INVITE (how the
controller sends a recording session's INVITE) reach the controller through reply_route,
and tm ACKs the 2xx by itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemons import Kamailio, Rtpengine
from orchestrator.kamailio.rpc import HttpRpcTransport, KamailioClient
from orchestrator.lab import sipp
from orchestrator.lab.events import EventReader
from orchestrator.recordings import check_metafile, decode_metadata, decode_value
from orchestrator.site import load
from tests.conftest import ROOT, lab_secrets

pytestmark = pytest.mark.integration

SITE = load()  # the lab site the committed configs are rendered from
EDGE = SITE.edges[0]
SIP = ("127.0.0.1", 5060)
NG = (SITE.media.nodes[0].ng.address, SITE.media.nodes[0].ng.port)
EVAPI = (EDGE.evapi.address, EDGE.evapi.port)
RPC_URL = f"http://{EDGE.jsonrpc.address}:{EDGE.jsonrpc.port}/RPC"
UAS_PORT = 5080  # the lab's trunk
DELETE_DELAY = SITE.media.delete_delay
# the raw-socket SRS takes the lab SRS's place (the edge sends recording sessions only there)
SRS_URI = SITE.recording.srs_groups[0].servers[0].uri
SRS = (SRS_URI.rsplit("@", 1)[1].split(":")[0], int(SRS_URI.rsplit(":", 1)[1]))

# Kamailio's shm after the 200-call soak may differ from before it by this much: what is left
# is allocator fragmentation and caches, not per-call state (a leaked dialog alone holds
# 9-15 KB, so 200 leaked calls would show 1.8 MB or more).
SHM_TOLERANCE = 64 * 1024


class Lab:
    def __init__(self, work: Path, kam: Kamailio, events: EventReader, rpc: KamailioClient,
                 rec: Path) -> None:
        self.work, self.kam, self.events, self.rpc, self.rec = work, kam, events, rpc, rec
        self.cwd = sipp.workdir(work / "sipp")
        self.uas: subprocess.Popen[bytes] | None = None

    def callee(self, kind: str | None) -> None:
        """Put a sipp callee of ``kind`` (``honours-rr`` / ``ignores-rr``) on the trunk, or
        none (a test's own socket takes the trunk's port)."""
        sipp.stop(self.uas)
        self.uas = None
        if kind is not None:
            self.uas = sipp.uas(self.cwd, "127.0.0.1", UAS_PORT,
                                record_route=kind == "honours-rr")
            time.sleep(0.3)

    def dialogs(self) -> list[dict[str, Any]]:
        return list(self.rpc.call("dlg.list") or [])

    def shm_free(self) -> int:
        return int(self.rpc.call("core.shmmem")["free"])


def poll(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    """``fn()`` until it returns something truthy; AssertionError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("edge")
    rec = work / "recordings"
    rec.mkdir()
    rtp = Rtpengine(ROOT / "rtpengine/rtp1/rtpengine.conf", work / "rtpengine", ng=NG,
                    overrides=[f"--recording-dir={rec}"])
    # the committed config, its secrets include pointed at this test's own secrets
    cfg, secrets = lab_secrets(work, (ROOT / "kamailio/edge1/kamailio.cfg").read_text())
    (work / "kamailio.cfg").write_text(cfg)
    kam = Kamailio(work / "kamailio.cfg", work / "kamailio",
                   ready_tcp=(EDGE.jsonrpc.address, EDGE.jsonrpc.port))
    with rtp.started(), kam.started():
        events = EventReader(EVAPI, secrets.evapi)
        events.start()
        rpc = KamailioClient(HttpRpcTransport(RPC_URL, secret=secrets.jsonrpc))
        state = Lab(work, kam, events, rpc, rec)
        try:
            yield state
        finally:
            state.callee(None)
            events.close()
            rpc.close()


# ------------------------------------------------------------------ dialogs and shm

def run_calls(lab: Lab, kind: str, calls: int, port: int) -> list[str]:
    """``calls`` sipp calls (20/s, 0.5 s each) to a callee of ``kind``; their Call-IDs."""
    lab.callee(kind)
    before = len(lab.events.events)
    argv = sipp.uac_argv(lab.cwd, f"{SIP[0]}:{SIP[1]}", local=("127.0.0.1", port),
                         calls=calls, rate=20, duration_ms=500)
    done = subprocess.run(argv, cwd=lab.cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=120, check=False)
    assert done.returncode == 0, f"sipp: {calls} calls to a callee that {kind}: failures"
    answered = [e["call_id"] for e in lab.events.events[before:] if e["event"] == "answered"]
    assert len(answered) == calls
    return answered


def test_dialogs_end_and_shm_returns_for_both_kinds_of_callee(lab: Lab) -> None:
    """Callees that ignore Record-Route (sipp's own uas) send their side's requests without
    our Route: before the fix every such dialog stayed in state 3 for 12 h."""
    for kind in ("ignores-rr", "honours-rr"):  # warm-up: first calls allocate caches
        run_calls(lab, kind, 10, 5180)
    poll("no dialog left after the warm-up", lambda: not lab.dialogs(), 15)
    time.sleep(6)  # tm's wait timer (5 s) releases the last transactions
    shm_before = lab.shm_free()

    calls = run_calls(lab, "ignores-rr", 100, 5181) + run_calls(lab, "honours-rr", 100, 5182)
    assert len(set(calls)) == 200
    poll("no dialog left after 200 calls", lambda: not lab.dialogs(), 15)

    def ended() -> list[dict[str, Any]]:
        return [e for e in lab.events.events if e["event"] == "ended" and e["call_id"] in calls]
    poll("an `ended` event for every call", lambda: len({e["call_id"] for e in ended()}) == 200,
         10)
    time.sleep(1)  # a second `ended` for a call would have arrived by now
    evs = ended()
    assert len(evs) == 200, "`ended` must fire exactly once per call"
    assert {e["by"] for e in evs} == {"caller"}

    free = poll("shm back near its start",
                lambda: (lambda f: f if f >= shm_before - SHM_TOLERANCE else 0)(lab.shm_free()),
                20)
    print(f"shm free before {shm_before}, after 200 calls {free} "
          f"(difference {shm_before - free} bytes)")


# ------------------------------------------------------------------ identity, any bytes

SDP = ("v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _hdr(msg: bytes, name: str) -> bytes:
    for line in msg.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip()
    raise AssertionError(f"no {name} in {msg!r}")


def _recv(sock: socket.socket, start: bytes) -> tuple[bytes, tuple[str, int]]:
    while True:
        data, addr = sock.recvfrom(65535)
        if data.startswith(start):
            return data, addr


def _reply(req: bytes, status: bytes, *, to_tag: bytes = b"callee1", extra: bytes = b"",
           body: bytes = b"") -> bytes:
    """A response to ``req`` (RFC 3261 §8.2.6: Via/From/To/Call-ID/CSeq copied, and the
    Record-Route too: this callee honours it)."""
    keep = [ln for ln in req.split(b"\r\n")
            if ln.lower().startswith((b"via:", b"record-route:"))]
    to = _hdr(req, "To") + (b"" if b";tag=" in _hdr(req, "To") else b";tag=" + to_tag)
    head = (b"SIP/2.0 " + status + b"\r\n" + b"\r\n".join(keep) + b"\r\nFrom: " +
            _hdr(req, "From") + b"\r\nTo: " + to + b"\r\nCall-ID: " + _hdr(req, "Call-ID") +
            b"\r\nCSeq: " + _hdr(req, "CSeq") + b"\r\n" + extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _invite(call_id: bytes, cport: int, *, from_hdr: bytes, headers: bytes = b"") -> bytes:
    return (b"INVITE sip:callee@127.0.0.1:%d SIP/2.0\r\n" % UAS_PORT +
            b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-%s\r\n" % (cport, os.urandom(6).hex().encode()) +
            b"From: " + from_hdr + b"\r\n"
            b"To: <sip:callee@127.0.0.1:%d>\r\n" % UAS_PORT +
            b"Call-ID: " + call_id + b"\r\nCSeq: 1 INVITE\r\n"
            b"Contact: <sip:caller@127.0.0.1:%d>\r\nMax-Forwards: 70\r\n" % cport + headers +
            b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(SDP) +
            SDP.encode())


def _in_dialog(method: bytes, call_id: bytes, cport: int, *, from_hdr: bytes, to: bytes,
               routes: list[bytes], cseq: int) -> bytes:
    return (method + b" sip:callee@127.0.0.1:%d SIP/2.0\r\n" % UAS_PORT +
            b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-%s\r\n" % (cport, os.urandom(6).hex().encode()) +
            b"".join(b"Route: " + r + b"\r\n" for r in routes) +
            b"From: " + from_hdr + b"\r\nTo: " + to + b"\r\nCall-ID: " + call_id +
            b"\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % (cseq, method))


@pytest.fixture
def phones(lab: Lab) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A caller socket and a callee socket on the trunk's port (no sipp callee meanwhile)."""
    lab.callee(None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee:
        caller.settimeout(5)
        callee.settimeout(5)
        caller.bind(("127.0.0.1", 0))
        callee.bind(("127.0.0.1", UAS_PORT))
        yield caller, callee


def establish(lab: Lab, phones: tuple[socket.socket, socket.socket], call_id: bytes,
              from_hdr: bytes, headers: bytes = b"") -> tuple[dict[str, Any], bytes, list[bytes]]:
    """INVITE, 200, ACK between the two sockets (the callee honours Record-Route); returns
    the `answered` event, the To header with its tag and the caller's route set."""
    caller, callee = phones
    cport = caller.getsockname()[1]
    caller.sendto(_invite(call_id, cport, from_hdr=from_hdr, headers=headers), SIP)
    req, addr = _recv(callee, b"INVITE ")
    callee.sendto(_reply(req, b"200 OK", extra=b"Contact: <sip:callee@127.0.0.1:%d>\r\n"
                         b"Content-Type: application/sdp\r\n" % UAS_PORT, body=SDP.encode()),
                  addr)
    ok, _ = _recv(caller, b"SIP/2.0 200")
    routes = [ln.split(b":", 1)[1].strip() for ln in ok.split(b"\r\n")
              if ln.lower().startswith(b"record-route:")]
    to = _hdr(ok, "To")
    caller.sendto(_in_dialog(b"ACK", call_id, cport, from_hdr=from_hdr, to=to, routes=routes,
                             cseq=1), SIP)
    ev = lab.events.wait_for(lambda e: e["event"] == "answered" and
                             e["call_id"] == call_id.decode())
    return ev, to, routes


def raw_call(lab: Lab, phones: tuple[socket.socket, socket.socket], call_id: bytes,
             from_hdr: bytes, headers: bytes = b"") -> dict[str, Any]:
    """A whole call between the two sockets, ended by the caller's BYE; returns the
    `answered` event."""
    caller, callee = phones
    cport = caller.getsockname()[1]
    ev, to, routes = establish(lab, phones, call_id, from_hdr, headers)
    caller.sendto(_in_dialog(b"BYE", call_id, cport, from_hdr=from_hdr, to=to, routes=routes,
                             cseq=2), SIP)
    bye, addr = _recv(callee, b"BYE ")
    callee.sendto(_reply(bye, b"200 OK"), addr)
    _recv(caller, b"SIP/2.0 200")
    lab.events.wait_for(lambda e: e["event"] == "ended" and e["call_id"] == call_id.decode())
    return ev


def test_identity_survives_any_bytes(lab: Lab, phones: tuple[socket.socket, socket.socket]
                                     ) -> None:
    call_id = b"bytes-%s@test" % os.urandom(4).hex().encode()
    # Latin-1 and a quoted-pair in the display name, an invalid byte in the URI, a control
    # character in the P-Asserted-Identity, all of it in the metadata header
    display = b'Caf\xe9 \\"Q\\" \\\\ x'
    from_uri = b"sip:+44\xff1@example.com"
    pai_uri = b"sip:ag\x01ent@example.com"
    customer = b"C-1 \xff\x01|x:y+%"
    session_id = b"ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000"
    from_hdr = b'"' + display + b'" <' + from_uri + b">;tag=caller1"
    headers = (b"P-Asserted-Identity: <" + pai_uri + b">\r\nX-Customer-Id: " + customer +
               b"\r\nSession-ID: " + session_id + b"\r\n")
    ev = raw_call(lab, phones, call_id, from_hdr, headers)
    assert decode_value(ev["from"]) == from_uri
    assert decode_value(ev["from_display"]) == b'Caf\xe9 "Q" \\ x'  # RFC 3261 §25.1 undone
    assert decode_value(ev["to"]) == b"sip:callee@127.0.0.1:%d" % UAS_PORT
    assert decode_value(ev["pai"]) == pai_uri
    assert decode_value(ev["headers"]["X-Customer-Id"]) == customer
    assert decode_value(ev["session_id"]) == session_id
    assert (ev["from_tag"], ev["to_tag"]) == ("caller1", "callee1")

    # rtpengine writes the metadata file once the call is gone (after its delete-delay)
    prefix = urllib.parse.quote(call_id.decode(), safe="")
    meta = poll("the recording's metadata file", lambda: next(
        iter((lab.rec / "metadata").glob(f"*{prefix}*")), None), DELETE_DELAY + 8)
    last = [ln for ln in meta.read_text().splitlines() if ln.startswith("call-id:")][-1]
    fields = dict(kv.split(":", 1) for kv in last.split("|"))
    raw = {k: decode_value(v) for k, v in fields.items()}
    assert raw["call-id"] == call_id and raw["from"] == from_uri and raw["pai"] == pai_uri
    assert raw["from-name"] == b'Caf\xe9 "Q" \\ x' and raw["x-customer-id"] == customer
    assert raw["session-id"] == session_id and raw["edge"] == b"edge1"
    assert decode_metadata(last)["from"] == "sip:+44%ff1@example.com"
    # no RTP was sent, so `collect` reports empty streams, but nothing about who called whom
    chk = check_metafile(meta)
    assert not [p for p in chk.problems if "identity" in p or "metadata" in p], chk.problems


@pytest.mark.parametrize(("from_hdr", "display"), [
    (b'"" <sip:a@example.com>;tag=d1', b""),
    (b'"A\\"B" <sip:a@example.com>;tag=d1', b'A"B'),
    (b'"\\\\" <sip:a@example.com>;tag=d1', b"\\"),
    (b"Lab Caller <sip:a@example.com>;tag=d1", b"Lab Caller"),
    (b"<sip:a@example.com>;tag=d1", None),
])
def test_display_names(lab: Lab, phones: tuple[socket.socket, socket.socket],
                       from_hdr: bytes, display: bytes | None) -> None:
    ev = raw_call(lab, phones, b"dn-%s@test" % os.urandom(4).hex().encode(), from_hdr)
    got = ev.get("from_display")
    assert (None if got is None else decode_value(got)) == display


def test_call_ended_by_the_edge_emits_one_ended_by_edge(
        lab: Lab, phones: tuple[socket.socket, socket.socket]) -> None:
    """dlg.end_dlg (how the controller ends a call whose recording is required and failed):
    both parties get a BYE, the dialog goes, one `ended` with by=edge."""
    caller, callee = phones
    call_id = b"end-%s@test" % os.urandom(4).hex().encode()
    ev, _, _ = establish(lab, phones, call_id,
                         b"<sip:caller@127.0.0.1:%d>;tag=caller1" % caller.getsockname()[1])
    lab.rpc.call("dlg.end_dlg", ev["h_entry"], ev["h_id"])
    for sock in (caller, callee):
        bye, addr = _recv(sock, b"BYE ")
        sock.sendto(_reply(bye, b"200 OK"), addr)
    ended = lab.events.wait_for(lambda e: e["event"] == "ended" and
                                e["call_id"] == call_id.decode())
    assert ended["by"] == "edge"
    poll("the dialog gone", lambda: not [d for d in lab.dialogs()
                                          if d.get("call-id") == call_id.decode()], 5)
    time.sleep(0.5)
    assert len([e for e in lab.events.events
                if e["event"] == "ended" and e["call_id"] == call_id.decode()]) == 1


@pytest.mark.parametrize(("from_hdr", "call_id", "status"), [
    (b"<sip:a@example.com>;tag=t\xff1", b"ok-%s@test", b"400 Bad From tag"),
    (b"<sip:a@example.com>", b"ok-%s@test", b"400 Bad From tag"),
    (b"<sip:a@example.com>;tag=t1", b"bad\x01-%s@test", b"400 Bad Call-ID"),
    (b'"' + b"x" * 1100 + b'" <sip:a@example.com>;tag=t1', b"ok-%s@test",
     b"400 From Too Long"),
])
def test_initial_invite_the_edge_cannot_key_or_carry_is_refused(
        lab: Lab, phones: tuple[socket.socket, socket.socket], from_hdr: bytes, call_id: bytes,
        status: bytes) -> None:
    caller, _ = phones
    cid = call_id % os.urandom(4).hex().encode()
    caller.sendto(_invite(cid, caller.getsockname()[1], from_hdr=from_hdr), SIP)
    reply, _ = _recv(caller, b"SIP/2.0 4")
    assert reply.split(b"\r\n", 1)[0] == b"SIP/2.0 " + status
    assert not [d for d in lab.dialogs() if d.get("call-id") == cid.decode("latin-1")]


# ------------------------------------------------------------------ tm.t_uac_start replies

def uac_start(lab: Lab, srs: socket.socket, cseq: int) -> tuple[str, bytes, tuple[str, int]]:
    """Have the edge send a recording session INVITE with tm.t_uac_start (asynchronous, as
    the controller does) to the SRS socket ``srs``; returns the Call-ID and the INVITE as
    the SRS got it, with its source."""
    call_id = f"siprec-{os.urandom(6).hex()}"
    hdrs = (f"From: <sip:siprec-src@{SIP[0]}:{SIP[1]}>\r\nTo: <{SRS_URI}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:siprec-src@{SIP[0]}:{SIP[1]}>;+sip.src\r\n"
            f"Content-Type: application/sdp\r\n")
    lab.rpc.call("tm.t_uac_start", "INVITE", SRS_URI, ".", ".", hdrs, SDP)
    invite, addr = _recv(srs, b"INVITE ")
    return call_id, invite, addr


def test_uac_start_replies_reach_the_controller_and_tm_acks_the_2xx(lab: Lab) -> None:
    """The recording session's INVITE sent asynchronously (tm.t_uac_start): its 180 and 200
    come back as rs_reply events with what confirming the dialog needs, and tm ACKs the 2xx
    (and its retransmission) by itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srs:
        srs.settimeout(5)
        srs.bind(SRS)
        sport = srs.getsockname()[1]
        call_id, invite, addr = uac_start(lab, srs, 7)
        from_tag = _hdr(invite, "From").split(b";tag=")[1].decode()
        srs.sendto(_reply(invite, b"180 Ringing", to_tag=b"srs1"), addr)
        # Record-Route as two header fields, the second with two values; the last value is
        # the route set's first hop (RFC 3261 §12.1.2: reversed), i.e. this socket
        rr = [b"<sip:127.0.0.1:%d;lr;hop=3>" % sport,
              b"<sip:127.0.0.1:%d;lr;hop=2>, <sip:127.0.0.1:%d;lr;hop=1>" % (sport, sport)]
        body = SDP.encode().replace(b"s=-", b"s=Caf\xe9")  # not UTF-8: must survive too
        ok = _reply(invite, b"200 OK", to_tag=b"srs1", body=body,
                    extra=b"".join(b"Record-Route: " + r + b"\r\n" for r in rr) +
                    b"Contact: <sip:srs@127.0.0.1:%d>;+sip.srs\r\n"
                    b"Session-ID: 47755a9de7794ba387653f2099600ef2;remote=ab30317f1a784dc4"
                    b"8ff824d0d3715d86\r\n"
                    b"Content-Type: application/sdp\r\n" % sport)
        srs.sendto(ok, addr)
        ack, _ = _recv(srs, b"ACK ")
        assert _hdr(ack, "CSeq") == b"7 ACK" and _hdr(ack, "Call-ID") == call_id.encode()
        assert _hdr(ack, "To").endswith(b";tag=srs1")
        assert ack.split(b" ", 2)[1] == b"sip:srs@127.0.0.1:%d" % sport  # remote target
        routes = [ln.split(b":", 1)[1].strip() for ln in ack.split(b"\r\n")
                  if ln.lower().startswith(b"route:")]
        hops = [b"".join(routes).count(b"hop=%d" % n) for n in (1, 2, 3)]
        assert hops == [1, 1, 1] and b"".join(routes).index(b"hop=1") < \
            b"".join(routes).index(b"hop=2") < b"".join(routes).index(b"hop=3"), routes
        srs.sendto(ok, addr)  # a retransmission of the 2xx (as if the ACK were lost)
        again, _ = _recv(srs, b"ACK ")
        assert _hdr(again, "CSeq") == b"7 ACK"
        with pytest.raises(TimeoutError):  # exactly one ACK each: nothing else comes
            srs.settimeout(1)
            _recv(srs, b"")

    def rs_replies() -> list[dict[str, Any]]:
        return [e for e in lab.events.events
                if e["event"] == "rs_reply" and e["call_id"] == call_id]
    poll("two rs_reply events", lambda: len(rs_replies()) >= 2, 5)
    # final replies only (the controller acts on those): the 180 is not relayed; the 2xx
    # and its retransmission are, as the same event
    time.sleep(0.3)  # a 180's event, if one were relayed, would be here by now
    evs = rs_replies()
    assert [(e["code"], e["method"], e["cseq"]) for e in evs] == [
        (200, "INVITE", 7), (200, "INVITE", 7)]
    final = evs[0]
    assert final == {**evs[1], "ts": final["ts"]}
    assert (final["from_tag"], final["to_tag"]) == (from_tag, "srs1")
    assert decode_value(final["contact"]) == b"<sip:srs@127.0.0.1:%d>;+sip.srs" % sport
    assert [decode_value(v) for v in final["record_route"]] == rr
    assert decode_value(final["content_type"]) == b"application/sdp"
    assert decode_value(final["body"]) == body
    assert decode_value(final["session_id"]) == (b"47755a9de7794ba387653f2099600ef2;remote="
                                                 b"ab30317f1a784dc48ff824d0d3715d86")
    assert float(final["ts"]) > 0 and json.dumps(final)


def test_rs_reply_with_a_body_too_big_for_an_event_says_so(lab: Lab) -> None:
    """A body that would not fit an event once encoded (over 16 KB) is not dropped silently:
    the event carries `body_error` instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srs:
        srs.settimeout(5)
        srs.bind(SRS)
        sport = srs.getsockname()[1]
        call_id, invite, addr = uac_start(lab, srs, 1)
        body = SDP.encode() + b"a=x-pad:" + b"p" * 17000 + b"\r\n"
        srs.sendto(_reply(invite, b"200 OK", to_tag=b"srs1", body=body,
                          extra=b"Contact: <sip:srs@127.0.0.1:%d>\r\n"
                          b"Content-Type: application/sdp\r\n" % sport), addr)
        _recv(srs, b"ACK ")
    ev = lab.events.wait_for(lambda e: e["event"] == "rs_reply" and e["call_id"] == call_id)
    assert ev["code"] == 200 and "body" not in ev
    assert ev["body_error"] == f"body of {len(body)} bytes is over the 16384-byte limit"
