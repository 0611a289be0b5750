"""The requests the reference SRS sends in a session (RFC 7866): BYE, snapshot request
re-INVITEs (§9.2) and session refreshes, and what their final responses mean."""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import time
from typing import Any

from ...errors import LabError, SipError
from ...sip import SipMessage, parse_cseq
from ...siprec.builder import build_snapshot_request
from ...siprec.model import SnapshotRequest
from ...siprec.multipart import build_multipart, snapshot_request_headers
from ...siprec.rules import Severity
from .config import SrsConfig
from .loop import EventLoop
from .sessions import SessionBook, split_body
from .state import AGENT, Call, ClientTx
from .streams import Streams
from .transactions import Transactions
from .transport import Peer, SipTransport

__all__ = ["SrsRequests"]

log = logging.getLogger(__name__)


class SrsRequests:
    """The SRS as the UAC of in-dialog requests, and the behaviours that send them."""

    def __init__(self, config: SrsConfig, loop: EventLoop, transport: SipTransport,
                 transactions: Transactions, book: SessionBook, streams: Streams) -> None:
        self.config = config
        self._loop = loop
        self._transport = transport
        self._tx = transactions
        self._book = book
        self._streams = streams

    def target_allowed(self, host: str) -> bool:
        """Only loopback and private addresses, unless ``allow_public_targets``."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
            except (OSError, IndexError, ValueError):
                return False
        return self.config.allow_public_targets or ip.is_loopback or ip.is_private

    def schedule(self, call: Call) -> None:
        """After the ACK: the BYE, snapshot request and refresh the behaviour asks for."""
        b = self.config.behaviour
        if b.bye_after is not None:
            call.timers.append(self._loop.call_later(b.bye_after, self.send_bye, call,
                                                     "bye_after behaviour"))
        if b.snapshot_after is not None:
            call.timers.append(self._loop.call_later(b.snapshot_after, self.send_reinvite,
                                                     call, "snapshot"))
        if b.refresh_after is not None:
            call.timers.append(self._loop.call_later(b.refresh_after, self.send_reinvite,
                                                     call, "refresh"))

    def _request(self, call: Call, method: str, kind: str, body: bytes = b"",
                 content_type: str | None = None, attempt: int = 1) -> ClientTx | None:
        d = call.dialog
        if d is None:
            return None
        try:
            host, port = d.next_hop()
        except SipError as exc:
            call.finding("S05", Severity.ERROR, f"cannot send {method}: {exc}")
            return None
        if not self.target_allowed(host):
            call.finding("S05", Severity.ERROR, f"not sending {method} to {host}: not a "
                         "loopback or private address (allow_public_targets is off)")
            return None
        transport = call.record.transport
        if transport == "tcp":
            conn = call.conn if call.conn is not None and not call.conn.closed else None
            if conn is None:
                try:
                    conn = self._transport.connect(host, port)
                except LabError as exc:
                    call.finding("S05", Severity.ERROR, f"cannot send {method}: {exc}")
                    return None
                call.conn = conn
            peer = Peer("tcp", conn.addr, conn)
        else:
            peer = Peer("udp", (host, port))
        req = d.request(method, sent_by=(self._transport.address, self._transport.port),
                        contact=self._transport.contact(transport) if method == "INVITE"
                        else None, body=body, content_type=content_type,
                        headers=[("User-Agent", AGENT)])
        return self._tx.send_request(call, req, peer, kind, attempt, self._on_final)

    def _on_final(self, tx: ClientTx, msg: SipMessage | None, error: str | None) -> None:
        d = tx.call.dialog
        if msg is not None and tx.req.method == "INVITE" and d is not None:
            number, _ = parse_cseq(msg.header("cseq"))  # checked when it was matched
            sent_by = (self._transport.address, self._transport.port)
            if (msg.status or 0) < 300:
                ack = d.ack(number, sent_by=sent_by)
                tx.call.acks[number] = (ack, tx.peer)
            else:
                ack = d.ack(number, sent_by=sent_by, branch=tx.req.branch,
                            to_value=msg.header("to"))
            self._transport.send(tx.peer, ack)
        self._result(tx, msg, error)

    def on_stray_2xx(self, msg: SipMessage, cseq: int) -> None:
        """A retransmitted 2xx to the SRS's INVITE: ACK it again (RFC 3261 §13.2.2.4)."""
        call = self._book.of_response(msg)
        if call is not None and cseq in call.acks:
            self._transport.send(call.acks[cseq][1], call.acks[cseq][0])

    def _result(self, tx: ClientTx, msg: SipMessage | None, error: str | None) -> None:
        call, rec = tx.call, tx.call.record
        status = msg.status if msg is not None else None
        what = f"{tx.req.method} ({tx.kind})"
        if tx.kind == "bye":
            rec.bye_status = status
            if status is None or status >= 300:
                call.finding("S05", Severity.WARNING,
                             f"the SRC answered the SRS's BYE with {status or error}")
            self._book.write(call)
            return
        entry: dict[str, Any] = {"at": time.time(), "method": "INVITE", "from": "srs",
                                 "kind": tx.kind, "status": status, "had_sdp": False,
                                 "had_metadata": False, "datamode": None}
        if msg is not None and status is not None and 200 <= status < 300:
            if msg.body.strip():
                sdp, meta, _problem = split_body(msg)
                entry["had_sdp"] = sdp is not None
                if sdp is not None:
                    self._streams.apply_answer(call, sdp)
                if meta is not None:
                    entry["had_metadata"] = True
                    rec.metadata_findings.extend(call.validator.validate(meta, source="200"))
                    entry["datamode"] = self._book.record_metadata(call, meta, in_request=False)
                    if tx.kind == "snapshot":
                        call.finding("S04", Severity.WARNING,
                                     "metadata came in the 200 to the snapshot request; RFC "
                                     "7866 §9.2 expects the snapshot in a new request")
            else:
                call.finding("S05", Severity.ERROR, f"the SRC's 2xx to the SRS's {what} has no "
                             "SDP answer (RFC 3261 §14.1)")
        elif status == 491 and tx.attempt < 3:
            # RFC 3261 §14.1: the SRS did not choose the Call-ID, so it waits 0–2 s.
            call.timers.append(self._loop.call_later(random.uniform(0.0, 2.0),
                                                     self.send_reinvite, call, tx.kind,
                                                     tx.attempt + 1))
        elif status in (408, 481) or status is None:
            call.finding("S05", Severity.ERROR, f"the SRS's {what} got {status or error}")
            if status == 481:  # RFC 3261 §12.2.1.2: the dialog is gone
                self._book.end(call, "timeout", f"481 to the SRS's {what}")
            else:
                self.send_bye(call, f"{status or error} for the SRS's {what}")
        else:
            call.finding("S05", Severity.WARNING, f"the SRC answered the SRS's {what} with "
                         f"{status}")
        entry["directions"] = {s.stats.label: s.stats.direction for s in call.slots}
        rec.reinvites.append(entry)
        if rec.ended:
            self._book.write(call)

    def send_bye(self, call: Call, reason: str) -> None:
        if call.record.state != "confirmed":
            return
        self._request(call, "BYE", "bye")
        call.record.bye_from = "srs"
        if not call.record.ended:
            self._book.end(call, "bye", f"BYE from the SRS: {reason}")

    def send_reinvite(self, call: Call, kind: str, attempt: int = 1) -> None:
        rec = call.record
        if rec.state != "confirmed":
            return
        if call.invite_client is not None or call.pending_2xx:
            # RFC 3261 §14.1: one INVITE transaction at a time per dialog; try again shortly.
            call.timers.append(self._loop.call_later(self.config.t1, self.send_reinvite, call,
                                                     kind, attempt))
            return
        if kind == "refresh" and self.config.behaviour.move_on_refresh:
            self._streams.move(call)
        sdp = self._streams.our_sdp(call)
        if kind == "snapshot":
            request = build_snapshot_request(SnapshotRequest(
                reason=f"SRS {self.config.name} requests a complete metadata snapshot",
                lang="en"))
            ctype, body = build_multipart([([("Content-Type", "application/sdp")], sdp),
                                           (snapshot_request_headers(), request)])
        else:
            ctype, body = "application/sdp", sdp
        tx = self._request(call, "INVITE", kind, body, ctype, attempt)
        if tx is not None and kind == "snapshot":
            rec.snapshot_requests_sent += 1
            if rec.snapshot_requested_at is None:
                rec.snapshot_requested_at = time.time()
