"""RFC 7865/7866 to the letter, end to end: a recorded call with a Session-ID header, a hold
and a resume, captured (1) at a raw-socket SRS that answers everything and keeps every
request as it arrived, and (2) at the reference SRS. Every request passes the strict
profile (the schema layer of RFC 7865 §9 and the semantic rules), every association tuple
of the partial updates has its time, the call's Session-ID is the metadata's sipSessionID,
the recording session has a Session-ID of its own, and the session ends with a final
update in a re-INVITE and a BYE without a body (RFC 7866 §9.1)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from orchestrator.daemons import free_ports
from orchestrator.lab.srs import SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.sip import SipMessage, build_response, parse_sip_message
from orchestrator.siprec import RECORDING_NS, Profile, parse_siprec_body, validate_message
from orchestrator.site.loader import validate_data
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CALL_SESSION_ID = "6f1e2d3c4b5a49788796a5b4c3d2e1f0;remote=00000000000000000000000000000000"
NS = {"r": RECORDING_NS}


class RawSrs(threading.Thread):
    """An SRS reduced to its wire: 200 to every request (an SDP answer to INVITEs), every
    request kept as received."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port = port
        self.requests: list[tuple[bytes, SipMessage]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            msg = parse_sip_message(data)
            if msg.method is None or msg.method in ("ACK", "OPTIONS"):
                if msg.method == "OPTIONS":
                    self.sock.sendto(build_response(msg, 200, to_tag="raw"), peer)
                continue
            if not any(m.header("cseq") == msg.header("cseq") and
                       m.header("call-id") == msg.header("call-id") for _, m in self.requests):
                self.requests.append((data, msg))
            body, ctype = b"", None
            if msg.method == "INVITE":
                sdp = parse_siprec_body(msg.header("content-type") or "", msg.body).sdp or b""
                lines = [b"v=0", b"o=raw 1 1 IN IP4 127.0.0.1", b"s=-", b"c=IN IP4 127.0.0.1",
                         b"t=0 0"]
                for i, m in enumerate(x for x in sdp.split(b"\n") if x.startswith(b"m=")):
                    label = m.split()[0]
                    lines += [b"m=audio %d RTP/AVP 8" % (47000 + 2 * i), b"a=recvonly"]
                    del label
                body, ctype = b"\r\n".join(lines) + b"\r\n", "application/sdp"
            self.sock.sendto(build_response(
                msg, 200, to_tag="raw", body=body, content_type=ctype,
                headers=[("Contact", f"<sip:srs@127.0.0.1:{self.port}>"),
                         ("Session-ID", "0123456789abcdef0123456789abcdef;remote="
                          + (msg.header("session-id") or "0" * 32).split(";")[0])]), peer)

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.sock.close()


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    rules = [{"name": "raw", "match": {"header": {"name": "X-Srs", "pattern": "^raw$"}},
              "siprec": "raw", "local": False}]
    return {
        "version": 1, "name": "rfc",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"}],
            "jsonrpc": {"address": "127.0.0.1", "port": ports["rpc"], "allow": ["127.0.0.1/32"]},
            "evapi": {"address": "127.0.0.1", "port": ports["evapi"]},
            "run_dir": str(work / "run" / "edge1"),
        }],
        "media": {"recording": {"method": "pcap", "dir": str(work / "recordings")},
                  "delete_delay": 2,
                  "nodes": [{"name": "rtp1",
                             "ng": {"address": "127.0.0.1", "port": ports["ng"]},
                             "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                             "ports": {"port_min": 46400, "port_max": 46799}}]},
        "recording": {"default": True, "local": False, "siprec": "ref", "rules": rules,
                      "srs_groups": [
                          {"name": "ref", "servers": [{"uri": f"sip:srs@127.0.0.1:{ports['ref']}"}]},
                          {"name": "raw", "servers": [{"uri": f"sip:srs@127.0.0.1:{ports['raw']}"}],
                           "probe_interval": 0}]},
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


@pytest.fixture(scope="module")
def rfc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabStack, RawSrs]]:
    work = tmp_path_factory.mktemp("rfc")
    free = iter(free_ports(9))
    ports = {k: next(free) for k in ("sip", "callee", "rpc", "evapi", "ng", "api", "ref", "raw")}
    site = validate_data(_site(work, ports), file="rfc-site")
    ref = SrsConfig(address="127.0.0.1", port=ports["ref"], name="ref", record_dir=work / "ref",
                    rtp_port_min=46800, rtp_port_max=46999)
    ref.record_dir.mkdir(parents=True)
    raw = RawSrs(ports["raw"])
    raw.start()
    with LabStack(site, work, srs=[ref]) as st:
        st.callee = CalleeServer("127.0.0.1", ports["callee"])  # type: ignore[attr-defined]
        try:
            yield st, raw
        finally:
            st.callee.close()  # type: ignore[attr-defined]
            raw.close()


def one_call(stack: LabStack, **headers: str) -> LabCall:
    call = LabCall(stack.sip, stack.callee,  # type: ignore[attr-defined]
                   headers={"Session-ID": CALL_SESSION_ID, **headers})
    call.start()
    wait_for(lambda: any(s["state"] == "established"
                         for s in stack.api("GET", f"/calls/{call.call_id}")), 10,
             "the recording session")
    def updates() -> int:
        (sess,) = stack.api("GET", f"/calls/{call.call_id}")
        return sum(1 for h in sess["history"] if h["event"] == "update")

    call.hold()  # each change waits for the SRS to take the last: no coalescing here
    wait_for(lambda: updates() >= 1, 5, "the hold update")
    call.resume()
    wait_for(lambda: updates() >= 2, 5, "the resume update")
    call.bye()
    call.close()
    wait_for(lambda: all(s["state"] == "closed"
                         for s in stack.api("GET", f"/calls/{call.call_id}")), 10,
             "the session to close")
    return call


def metadata_of(msg: SipMessage) -> etree._Element | None:
    part = parse_siprec_body(msg.header("content-type") or "", msg.body)
    return etree.fromstring(part.metadata) if part.metadata else None


def test_at_a_raw_socket_srs(rfc: tuple[LabStack, RawSrs]) -> None:
    stack, raw = rfc
    one_call(stack, **{"X-Srs": "raw"})
    reqs = wait_for(lambda: len(raw.requests) >= 5 and raw.requests, 10, "five requests")
    assert [m.method for _, m in reqs] == ["INVITE", "INVITE", "INVITE", "INVITE", "BYE"]
    for data, msg in reqs:
        findings = [f for f in validate_message(data, profile=Profile.STRICT)
                    if f.severity.value in ("error", "warning")]
        assert findings == [], (msg.method, msg.header("cseq"), findings)
        sid = msg.header("session-id") or ""
        assert len(sid.split(";")[0]) == 32 and sid.split(";")[0] != "0" * 32
    invite = reqs[0][1]
    assert invite.header("supported") == "siprec" and "BYE" in (invite.header("allow") or "")
    assert "application/rs-metadata-request" in (invite.header("accept") or "")
    # the recorded call's Session-ID is the metadata's sipSessionID (RFC 7865 §6.3)
    doc = metadata_of(invite)
    assert doc is not None
    assert doc.findtext("r:session/r:sipSessionID", namespaces=NS) == CALL_SESSION_ID
    # the SRS's Session-ID, learnt from its 2xx, is the remote part of what follows
    assert all((m.header("session-id") or "").endswith(";remote=0123456789abcdef0123456789abcdef")
               for _, m in reqs[1:])
    # hold and resume: partial updates whose every tuple has its time (RFC 7865 §6.9)
    for _, msg in reqs[1:3]:
        doc = metadata_of(msg)
        assert doc is not None and doc.findtext("r:datamode", namespaces=NS) == "partial"
        tuples = doc.findall("r:participantstreamassoc", NS)
        assert tuples and all(t.find("r:associate-time", NS) is not None for t in tuples)
    # the end: a final update in a re-INVITE (stop-time, disassociate-times), then a bare BYE
    final = metadata_of(reqs[3][1])
    assert final is not None and final.find("r:session/r:stop-time", NS) is not None
    assert final.findall("r:participantsessionassoc/r:disassociate-time", NS)
    bye = reqs[4][1]
    assert bye.body == b"" and bye.header("content-type") is None


def test_at_the_reference_srs(rfc: tuple[LabStack, RawSrs]) -> None:
    stack, _ = rfc
    call = one_call(stack)
    (sess,) = stack.api("GET", f"/calls/{call.call_id}")
    s = wait_for(lambda: next((x for x in stack.srs["ref"].sessions()
                               if x.call_id == sess["rs_call_id"] and x.ended), None), 10,
                 "the reference SRS's session")
    bad = [f"{f.rule} {f.message}" for f in s.sip_findings + s.metadata_findings
           if f.severity.value in ("error", "warning")]
    assert bad == []
    assert s.bye_from == "src" and [r["datamode"] for r in s.reinvites] == [
        "partial", "partial", "partial"]  # hold, resume, the final update
