"""The reference SRS reports each RFC 7865/7866 deviation of issue 13 as a finding.

"Before": the messages today's controller sends, built with its own dialog code
(``RsDialog.invite_headers`` / ``RsDialog.request``, as ``controller/service.py`` calls them,
plus what Kamailio's tm adds: Via, Max-Forwards, the From tag, Content-Length) and its
metadata calls (``recording_from_call`` without a Session-ID, hold/resume partial updates
without times, ``end_of_call_update`` alone in the BYE). "After": the same dialog with the
builder API of ``orchestrator.siprec.rs`` (capability headers, RFC 7989 Session-ID,
sipSessionID, timed partial updates, the final update in a re-INVITE before a body-less BYE).
Each message goes through the SRS's ``check_request`` (what the server calls on every
INVITE, re-INVITE and BYE) and, end to end, through a running reference SRS.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.controller.dialog import RsDialog
from orchestrator.daemons import free_port
from orchestrator.kamailio.events import RsReply
from orchestrator.lab.srs import SrsConfig, SrsServer
from orchestrator.lab.srs.checks import check_request
from orchestrator.siprec import (
    CallInfo,
    DataMode,
    ParticipantStreamAssoc,
    Recording,
    RecordingSessionValidator,
    SessionId,
    build_metadata,
    build_siprec_body,
    bye,
    end_of_call_update,
    final_update,
    hold_update,
    parse_sip_message,
    recording_from_call,
    resume_update,
    rs_headers,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
CALL_SESSION_ID = "ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2"
SRS_UUID = "a5f2b1c0d9e84f7a8b6c5d4e3f2a1b0c"
REPLY = {"media-labels": {"0": {"tag": "ft"}, "1": {"tag": "tt"}}}


def offer(port: int = 30000) -> bytes:
    return (b"v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + f"m=audio {port} RTP/AVP 0\r\na=label:0\r\na=sendonly\r\n"
              f"m=audio {port + 2} RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n".encode())


def call(session_id: str | None) -> CallInfo:
    return CallInfo('"Alice" <sip:alice@example.com>;tag=ft', "<sip:bob@example.com>;tag=tt",
                    "ft", "tt", sip_session_id=session_id, start_time=T0)


OLD_LACKED = {"Supported", "Allow", "Session-ID"}
OLD_ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata-request"


class Capture:
    """One recording session's requests, as the controller's dialog builds them and
    Kamailio sends them."""

    def __init__(self, srs_uri: str, *, after: bool, sdp: bytes) -> None:
        self.after = after
        self.sdp = sdp
        self.dialog = RsDialog(call_id="siprec-0123456789abcdef", remote_uri=srs_uri,
                               local_uri="sip:siprec-src@127.0.0.1",
                               contact="sip:siprec-src@127.0.0.1:5060")
        self.session_id = SessionId("5b0a9c1f0e3d4c2b8a7f6e5d4c3b2a19") if after else None
        self.rec = recording_from_call(call(CALL_SESSION_ID if after else None), REPLY)
        self.caller, self.callee = (p.participant_id for p in self.rec.participants)
        self.branch = 0
        self.tag = "after" if after else "before"  # distinct transactions (RFC 3261 §17.2.3)

    def _wire(self, method: str, ruri: str, block: str, body: bytes,
              extra: list[tuple[str, str]]) -> bytes:
        self.branch += 1
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{self.tag}{self.branch};rport",
                 "Max-Forwards: 70"]
        names = set()
        for line in block.rstrip("\r\n").split("\r\n"):
            name = line.split(":", 1)[0]
            if not self.after and name in OLD_LACKED:
                continue  # what the controller sent before it used siprec.rs
            if not self.after and name == "Accept":
                if method != "INVITE" or ";tag=" in block.split("To:", 1)[1].split("\r\n")[0]:
                    continue  # no Accept on re-INVITEs before
                line = f"Accept: {OLD_ACCEPT}"
            if name == "From" and method == "INVITE" and ";tag=" not in line:
                line += ";tag=tm-generated"  # tm adds the From tag to t_uac_wait's INVITE
            override = next((v for n, v in extra if n == name), None)
            lines.append(f"{name}: {override}" if override is not None else line)
            names.add(name)
        lines += [f"{n}: {v}" for n, v in extra if n not in names]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self) -> bytes:
        ctype, body = build_siprec_body(self.sdp, build_metadata(self.rec))
        extra = rs_headers("INVITE", self.session_id) if self.after else []
        return self._wire("INVITE", self.dialog.request_uri(),
                          self.dialog.invite_headers(ctype), body, extra)

    def confirm(self, to_tag: str = "srs-tag", contact: str | None = None) -> None:
        self.dialog.confirm_from(RsReply(
            edge="e", rs_call_id=self.dialog.call_id, method="INVITE", cseq=1, code=200,
            reason="OK", to_tag=to_tag, from_tag="tm-generated",
            contact=f"<{contact or self.dialog.remote_uri}>", content_type="application/sdp"))
        if self.session_id is not None:
            self.session_id = self.session_id.learn(f"{SRS_UUID};remote={self.session_id.local}")

    def _in_dialog(self, method: str, ctype: str | None, body: bytes,
                   extra: list[tuple[str, str]]) -> bytes:
        ruri, block, _cseq = self.dialog.request(method, ctype if body else None)
        return self._wire(method, ruri, block, body, extra)

    def hold(self, at: datetime) -> bytes:
        if self.after:
            update = hold_update(self.rec, self.callee, at)
        else:  # what hold_update made before: no time in the tuple
            assoc = self.rec.stream_assoc(self.callee)
            assert assoc is not None
            update = Recording(datamode=DataMode.PARTIAL, participant_stream_assocs=(
                ParticipantStreamAssoc(self.callee, recv=assoc.recv),))
        ctype, body = build_siprec_body(self.sdp, build_metadata(update, check=False))
        return self._in_dialog("INVITE", ctype, body,
                               rs_headers("INVITE", self.session_id) if self.after else [])

    def resume(self, at: datetime) -> bytes:
        update = resume_update(self.rec, self.callee, at)
        if not self.after:
            update = replace(update, participant_stream_assocs=tuple(
                replace(a, associate_time=None) for a in update.participant_stream_assocs))
        ctype, body = build_siprec_body(self.sdp, build_metadata(update, check=False))
        return self._in_dialog("INVITE", ctype, body,
                               rs_headers("INVITE", self.session_id) if self.after else [])

    def final(self, at: datetime) -> bytes:
        req = final_update(self.rec, at, sdp=self.sdp, session_id=self.session_id)
        ct = req.content_type
        assert ct is not None
        return self._in_dialog(req.method, ct, req.body,
                               [h for h in req.headers if h[0] != "Content-Type"])

    def bye(self, at: datetime) -> bytes:
        if self.after:
            req = bye(self.session_id)
            return self._in_dialog("BYE", None, req.body, req.headers)
        body = build_metadata(end_of_call_update(self.rec, at))  # today: metadata in the BYE
        return self._in_dialog("BYE", "application/rs-metadata+xml", body, [])


def rules(findings: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(f.rule, f.severity.value) for f in findings]


def run(after: bool) -> list[tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
    """(sip, metadata) findings per request: INVITE, hold, resume, [final update], BYE."""
    cap = Capture("sip:srs@127.0.0.1:5090", after=after, sdp=offer())
    v = RecordingSessionValidator()
    out = []

    def check(raw: bytes, initial: bool, source: str) -> None:
        msg = parse_sip_message(raw)
        assert msg.declared_length == len(msg.body)
        sip, meta = check_request(v, raw, initial=initial, source=source, sdp=cap.sdp,
                                  previous_sdp=cap.sdp if not initial else None)
        out.append((rules(sip), rules(meta)))

    check(cap.invite(), True, "INVITE")
    cap.confirm()
    check(cap.hold(T0 + timedelta(seconds=20)), False, "re-INVITE hold")
    check(cap.resume(T0 + timedelta(seconds=40)), False, "re-INVITE resume")
    if after:
        check(cap.final(T0 + timedelta(minutes=2)), False, "re-INVITE final")
    check(cap.bye(T0 + timedelta(minutes=2)), False, "BYE")
    return out


W, INFO = "warning", "info"


def test_before_every_deviation_is_a_finding() -> None:
    invite, hold, resume, bye_ = run(after=False)
    # no Session-ID (R30); no Allow / Supported (R31); no sipSessionID (R24); the display
    # name's language is not known to the SRC (R19 info, before and after)
    assert invite == ([("R30", W), ("R31", W), ("R31", W)], [("R24", INFO), ("R19", INFO)])
    # re-INVITEs: no Session-ID, no Accept (R06); tuples without times (R29)
    assert hold == ([("R30", W), ("R06", W)], [("R28", INFO), ("R29", W)])
    assert resume == ([("R30", W), ("R06", W)], [("R29", W)])
    # BYE: no Session-ID, metadata without the recording-session disposition (R05), metadata
    # in a BYE at all (R32); a BYE's findings are filed with the metadata findings
    assert bye_ == ([], [("R30", W), ("R05", W), ("R32", W)])


def test_after_nothing_but_the_hold_note() -> None:
    invite, hold, resume, final, bye_ = run(after=True)
    assert invite == ([], [("R19", INFO)])
    assert hold == ([], [("R28", INFO)])  # "no longer sends stream(s) labelled 1 (hold or mute?)"
    assert resume == ([], [])
    assert final == ([], [])
    assert bye_ == ([], [])


def test_after_messages_carry_what_rfc_3261_7866_7989_ask() -> None:
    cap = Capture("sip:srs@127.0.0.1:5090", after=True, sdp=offer())
    inv = parse_sip_message(cap.invite())
    assert inv.header("session-id") == "5b0a9c1f0e3d4c2b8a7f6e5d4c3b2a19;remote=" + "0" * 32
    assert inv.header("supported") == "siprec"
    assert inv.header("allow") == "INVITE, ACK, CANCEL, BYE, UPDATE, OPTIONS"
    assert inv.header("accept") == ("application/sdp, application/rs-metadata-request, "
                                    "multipart/mixed")
    assert b"<sipSessionID>" + CALL_SESSION_ID.encode() + b"</sipSessionID>" in inv.body
    cap.confirm()
    fin = parse_sip_message(cap.final(T0 + timedelta(minutes=2)))
    assert fin.method == "INVITE"
    assert fin.header("session-id") == f"5b0a9c1f0e3d4c2b8a7f6e5d4c3b2a19;remote={SRS_UUID}"
    assert b"Content-Disposition: recording-session" in fin.body
    assert b"<stop-time>2024-05-01T10:02:00Z</stop-time>" in fin.body
    assert fin.body.count(b"<disassociate-time>2024-05-01T10:02:00Z</disassociate-time>") == 5
    b = parse_sip_message(cap.bye(T0 + timedelta(minutes=2)))
    assert (b.method, b.body, b.header("content-type")) == ("BYE", b"", None)


def test_reference_srs_records_the_findings_end_to_end(tmp_path: Path) -> None:
    """The same captures sent to a running reference SRS over UDP on loopback."""
    base = free_port("udp") & ~1
    cfg = SrsConfig(address="127.0.0.1", port=0, transports=("udp",), record_dir=tmp_path,
                    rtp_address="127.0.0.1", rtp_port_min=base,
                    rtp_port_max=min(base + 40, 65534), name="srs1")
    with SrsServer(cfg) as srs, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        results = {}
        for after in (False, True):
            cap = Capture(srs.uri, after=after, sdp=offer())
            cap.dialog.call_id += "-after" if after else "-before"

            def exchange(raw: bytes) -> list[bytes]:
                sock.sendto(raw, ("127.0.0.1", srs.port))
                got = []
                while True:
                    data = sock.recv(65535)
                    got.append(data)
                    if not data.startswith(b"SIP/2.0 1"):
                        return got

            ok = exchange(cap.invite())[-1]
            assert ok.startswith(b"SIP/2.0 200"), ok[:60]
            to = parse_sip_message(ok).header("to") or ""
            cap.confirm(to_tag=to.split("tag=")[1].split(";")[0])
            cap.dialog.cseq, ack_cseq = cap.dialog.cseq, cap.dialog.cseq
            sock.sendto(cap._wire("ACK", cap.dialog.request_uri(), cap.dialog.request("ACK")[1]
                                  .replace(f"CSeq: {ack_cseq + 1} ACK", f"CSeq: {ack_cseq} ACK"),
                                  b"", []), ("127.0.0.1", srs.port))
            for raw in (cap.hold(T0 + timedelta(seconds=20)),
                        cap.resume(T0 + timedelta(seconds=40)),
                        *([cap.final(T0 + timedelta(minutes=2))] if after else []),
                        cap.bye(T0 + timedelta(minutes=2))):
                reply = exchange(raw)[-1]
                assert reply.startswith(b"SIP/2.0 200"), reply[:80]
                req = parse_sip_message(raw)
                if req.method == "INVITE":  # ACK the 2xx (RFC 3261 §13.2.2.4): same CSeq
                    number = (req.header("cseq") or "").split()[0]
                    ack = raw.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"ACK sip", 1)
                    ack = ack.replace(f"CSeq: {number} INVITE".encode(),
                                      f"CSeq: {number} ACK".encode())
                    ack = ack.split(b"\r\nContent-Type")[0] + b"\r\nContent-Length: 0\r\n\r\n"
                    sock.sendto(ack, ("127.0.0.1", srs.port))
            sessions = srs.wait_for(lambda ss, cid=cap.dialog.call_id: any(
                s.call_id == cid and s.state == "terminated" for s in ss), 5)
            s = next(x for x in sessions if x.call_id == cap.dialog.call_id)
            results[after] = (sorted({f.rule for f in s.sip_findings}),
                              sorted({f.rule for f in s.metadata_findings}))
    assert results[False] == (["R06", "R30", "R31"],
                              ["R05", "R19", "R24", "R28", "R29", "R30", "R32"])
    assert results[True] == ([], ["R19", "R28"])
