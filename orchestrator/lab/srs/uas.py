"""The reference SRS as the UAS of recording sessions (RFC 7866, RFC 3261): the initial
INVITE and its answer, ACK, CANCEL, and the SRC's in-dialog requests (BYE, re-INVITE,
UPDATE, OPTIONS)."""

from __future__ import annotations

import logging
import os
import time

from ...errors import SipError, SiprecctlError
from ...sip import SipMessage, Via, new_tag, parse_cseq, tag_of
from ...siprec.rules import Severity
from ...siprec.validator import Profile, RecordingSessionValidator
from .checks import check_request, require_tags
from .config import SrsConfig
from .loop import EventLoop
from .sdp import parse_offer
from .session import SrsSession, next_state
from .sessions import SessionBook, split_body
from .sip import ALLOW, KNOWN_METHODS, Dialog
from .state import ACCEPT, Call, Pending2xx, ServerTx
from .streams import Streams
from .transactions import Transactions, warning
from .transport import SipTransport
from .uac import SrsRequests

__all__ = ["SrsDialogs"]

log = logging.getLogger(__name__)


class SrsDialogs:
    """Requests from SRCs, each in its server transaction."""

    def __init__(self, config: SrsConfig, loop: EventLoop, transport: SipTransport,
                 transactions: Transactions, book: SessionBook, streams: Streams,
                 requests: SrsRequests) -> None:
        self.config = config
        self._loop = loop
        self._transport = transport
        self._tx = transactions
        self._book = book
        self._streams = streams
        self._requests = requests

    def on_request(self, tx: ServerTx, via: Via) -> None:
        """A new request (not ACK) outside or inside a dialog."""
        msg, method = tx.request, tx.method
        if method == "CANCEL":
            self._on_cancel(tx, via)
        elif tag_of(msg.header("to")):
            self._in_dialog(tx)
        elif method == "INVITE":
            self._on_invite(tx)
        elif method == "OPTIONS":
            self._tx.respond(tx, 200, headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        elif method == "BYE":
            self._tx.respond(tx, 481)
        else:
            self._tx.respond(tx, 405 if method in KNOWN_METHODS else 501,
                             headers=[("Allow", ALLOW)])

    # -- initial INVITE

    def _on_invite(self, tx: ServerTx) -> None:
        msg = tx.request
        b = self.config.behaviour
        rec = SrsSession(session_id=self._book.new_session_id(),
                         call_id=msg.header("call-id") or "", transport=tx.peer.transport,
                         remote=f"{tx.source[0]}:{tx.source[1]}", started_at=time.time())
        call = Call(rec, tx, new_tag(), RecordingSessionValidator(Profile.STRICT),
                    tx.peer.conn, sdp_session_id=int.from_bytes(os.urandom(4), "big"))
        tx.call = call
        self._book.add(call)
        log.info("session %s: INVITE %s from %s", rec.session_id, rec.call_id, rec.remote)
        if not b.no_answer:
            self._tx.respond(tx, 100)
        sdp, meta, problem = split_body(msg)
        sip_f, meta_f = check_request(call.validator, tx.raw, initial=True, source="INVITE",
                                      sdp=sdp)
        rec.sip_findings.extend(sip_f)
        rec.metadata_findings.extend(meta_f)
        if b.no_answer:  # checked and recorded, but nothing goes on the wire
            rec.ignored = True
            tx.ignored = True
            if meta is not None:
                self._book.record_metadata(call, meta, in_request=True)
            return
        tags = require_tags(msg)
        unknown = [t for t in tags if t != "siprec"]
        if unknown:
            call.finding("S03", Severity.WARNING, f"Require lists option tags the SRS does not "
                         f"support: {', '.join(unknown)} (accepted anyway)", "INVITE")
        if meta is not None:
            self._book.record_metadata(call, meta, in_request=True)
        if "siprec" not in tags:
            # RFC 7866 §6.1.1: without the siprec option tag this is not a recording session.
            self.reject(call, 420, "Require lacks the siprec option tag (RFC 7866 §6.1.1)")
            return
        if b.reject is not None:
            self.reject(call, b.reject, "rejected by the configured behaviour")
            return
        if problem is None and sdp is not None:
            try:
                call.offer = parse_offer(sdp)
            except SipError as exc:
                problem = f"SDP: {exc}"
            else:
                if not call.offer:
                    problem = "the SDP offer has no m-line"
        if problem is None:
            try:
                call.dialog = Dialog.from_invite(msg, call.local_tag, rec.transport)
            except SipError as exc:
                problem = str(exc)
        if problem is not None:
            call.finding("S06", Severity.ERROR, problem, "INVITE")
            self.reject(call, 488 if "no SDP" in problem or "no m-line" in problem else 400,
                        problem)
            return
        call.last_offer_sdp = sdp
        if b.answer_delay > 0:
            self._tx.respond(tx, 180, to_tag=call.local_tag)
            call.timers.append(self._loop.call_later(b.answer_delay, self._answer, call))
        else:
            self._answer(call)

    def reject(self, call: Call, code: int, why: str) -> None:
        self._tx.respond(call.tx, code, to_tag=call.local_tag,
                         headers=[warning(self.config.name, why)])
        call.record.final_status = code
        self._book.end(call, "reject", f"{code}: {why}")

    def _answer(self, call: Call) -> None:
        rec = call.record
        if rec.state != "early" or call.dialog is None:
            return
        try:
            for o in call.offer:  # appended one by one: _end closes what was opened
                call.slots.append(self._streams.new_slot(call, o))
        except SiprecctlError as exc:
            log.error("session %s: %s", rec.session_id, exc)
            call.finding("S02", Severity.ERROR, f"cannot receive the media: {exc}")
            self.reject(call, 503, str(exc))
            return
        body = self._streams.our_sdp(call)
        self._tx.respond(call.tx, 200, to_tag=call.local_tag, body=body,
                         content_type="application/sdp",
                         headers=[("Contact", self._transport.contact(rec.transport)),
                                  ("Allow", ALLOW), ("Accept", ACCEPT)])
        rec.state = next_state(rec.state, "answer")
        rec.answered_at = time.time()
        rec.final_status = 200
        d = call.dialog
        self._book.confirmed(call)
        assert call.tx.last_response is not None
        self._tx.retransmit_2xx(call, d.remote_cseq, call.tx.last_response, initial=True,
                                on_no_ack=self._no_ack)

    def _no_ack(self, call: Call, p: Pending2xx) -> None:
        call.finding("S01", Severity.ERROR, f"no ACK for the 2xx to INVITE CSeq {p.cseq} "
                     f"within {64 * self.config.t1:g} s (RFC 3261 §13.3.1.4)")
        self._requests.send_bye(call, "no ACK for the 2xx")

    # -- ACK, CANCEL and in-dialog requests

    def on_ack(self, msg: SipMessage, via: Via) -> None:
        tx = self._tx.absorb_ack(msg, via)
        if tx is not None:  # ACK of a non-2xx final response: same transaction (§17.2.1)
            if tx.call is not None and tx.call.record.acked_at is None:
                tx.call.record.acked_at = time.time()  # e.g. the 487 after a CANCEL
            return
        call = self._book.of_request(msg)
        if call is None:
            log.debug("ACK outside any dialog absorbed (Call-ID %s)", msg.header("call-id"))
            return
        number, _ = parse_cseq(msg.header("cseq"))
        p = self._tx.acked(call, number)
        if p is None:
            return  # a retransmitted ACK
        if p.initial:
            call.record.acked_at = time.time()
            self._requests.schedule(call)
        sdp, _meta, _problem = split_body(msg) if msg.body.strip() else (None, None, None)
        if sdp is not None:  # the answer to the SRS's offer in an offerless re-INVITE
            self._streams.apply_answer(call, sdp)

    def _on_cancel(self, tx: ServerTx, via: Via) -> None:
        inv = self._tx.invite_of(tx.request, via)
        if inv is None:
            self._tx.respond(tx, 481)
            return
        if inv.ignored:  # no_answer: a dead SRS answers nothing
            tx.ignored = True
            return
        call = inv.call
        # RFC 3261 §9.2: 200 to the CANCEL; 487 to the INVITE if it has no final response yet.
        self._tx.respond(tx, 200, to_tag=call.local_tag if call else None)
        if inv.final is None and call is not None:
            self._tx.respond(inv, 487, to_tag=call.local_tag)
            call.record.final_status = 487
            self._book.end(call, "cancel", "CANCEL from the SRC")

    def _in_dialog(self, tx: ServerTx) -> None:
        msg = tx.request
        call = self._book.of_request(msg)
        if call is None or call.record.ended or call.dialog is None:
            self._tx.respond(tx, 481)
            return
        number, _ = parse_cseq(msg.header("cseq"))
        d = call.dialog
        if number < d.remote_cseq:
            self._tx.respond(tx, 500, "CSeq Out of Order")  # RFC 3261 §12.2.2
            return
        d.remote_cseq = number
        method = tx.method
        if method == "BYE":
            self._on_bye(call, tx)
        elif method in ("INVITE", "UPDATE"):
            self._on_reoffer(call, tx)
        elif method == "OPTIONS":
            self._tx.respond(tx, 200, to_tag=call.local_tag,
                             headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        else:
            self._tx.respond(tx, 405 if method in KNOWN_METHODS else 501,
                             headers=[("Allow", ALLOW)])

    def _on_bye(self, call: Call, tx: ServerTx) -> None:
        msg = tx.request
        if msg.body.strip():  # some SRCs send final metadata with the BYE
            sdp, meta, _problem = split_body(msg)
            if meta is not None:
                _sip, meta_f = check_request(call.validator, tx.raw, initial=False, source="BYE")
                call.record.metadata_findings.extend(meta_f)
                self._book.record_metadata(call, meta, in_request=True)
        self._tx.respond(tx, 200, to_tag=call.local_tag)
        call.record.bye_from = "src"
        self._book.end(call, "bye", "BYE from the SRC")

    def _on_reoffer(self, call: Call, tx: ServerTx) -> None:
        """re-INVITE or UPDATE from the SRC: new offer and/or metadata (RFC 7866 §7.1.1.1,
        §9.1)."""
        msg, method = tx.request, tx.method
        number, _ = parse_cseq(msg.header("cseq"))
        source = f"{method} CSeq {number}"
        if method == "INVITE" and call.invite_client is not None:
            self._tx.respond(tx, 491)  # RFC 3261 §14.2: glare with the SRS's own re-INVITE
            return
        if method == "INVITE" and call.invite_server is not None:
            # RFC 3261 §14.1: the SRC must not start an INVITE transaction while one is
            # pending; §14.2: the UAS answers the second one 500 with a Retry-After
            call.finding("S07", Severity.ERROR, "re-INVITE while CSeq "
                         f"{parse_cseq(call.invite_server.request.header('cseq'))[0]} is "
                         "still pending", source)
            self._tx.respond(tx, 500, headers=[("Retry-After", "1")])
            return
        delay = self.config.behaviour.reinvite_delay
        if method == "INVITE" and delay > 0:
            call.invite_server = tx
            self._tx.respond(tx, 100)
            call.timers.append(self._loop.call_later(delay, self._delayed_reoffer, call, tx))
            return
        self._answer_reoffer(call, tx)

    def _delayed_reoffer(self, call: Call, tx: ServerTx) -> None:
        call.invite_server = None
        if not call.record.ended:
            self._answer_reoffer(call, tx)

    def _answer_reoffer(self, call: Call, tx: ServerTx) -> None:
        msg, method, rec = tx.request, tx.method, call.record
        number, _ = parse_cseq(msg.header("cseq"))
        source = f"{method} CSeq {number}"
        sdp = meta = None
        if msg.body.strip():
            sdp, meta, problem = split_body(msg)
            if problem is not None and "no SDP" not in problem:
                call.finding("S06", Severity.ERROR, problem, source)
                self._tx.respond(tx, 400, headers=[warning(self.config.name, problem)])
                return
        offered = None
        if sdp is not None:
            try:
                offered = parse_offer(sdp)
            except SipError as exc:
                call.finding("S06", Severity.ERROR, f"SDP: {exc}", source)
                self._tx.respond(tx, 400, headers=[warning(self.config.name, f"SDP: {exc}")])
                return
            if len(offered) < len(call.slots):
                why = (f"the offer has {len(offered)} m-lines, fewer than the {len(call.slots)} "
                       "before (RFC 3264 §8: m-lines are never removed)")
                call.finding("S06", Severity.ERROR, why, source)
                self._tx.respond(tx, 488, headers=[warning(self.config.name, why)])
                return
        if msg.body.strip():
            sip_f, meta_f = check_request(call.validator, tx.raw, initial=False, source=source,
                                          sdp=sdp, previous_sdp=call.last_offer_sdp)
            rec.sip_findings.extend(sip_f)
            rec.metadata_findings.extend(meta_f)
        if call.dialog is not None:
            call.dialog.refresh_target(msg)
        datamode = self._book.record_metadata(call, meta, in_request=True) if meta is not None \
            else None
        body = b""
        if offered is not None:
            try:
                self._streams.apply_offer(call, offered)
            except SiprecctlError as exc:
                call.finding("S02", Severity.ERROR, f"cannot receive the media: {exc}", source)
                self._tx.respond(tx, 500, headers=[warning(self.config.name, str(exc))])
                return
            call.last_offer_sdp = sdp
            body = self._streams.our_sdp(call)
        elif method == "INVITE":
            # RFC 3261 §14.2: no offer in the re-INVITE, so the 2xx carries one.
            body = self._streams.our_sdp(call)
        rec.reinvites.append({
            "at": time.time(), "method": method, "from": "src", "kind": None, "status": 200,
            "had_sdp": sdp is not None, "had_metadata": meta is not None, "datamode": datamode,
            "directions": {s.stats.label: s.stats.direction for s in call.slots}})
        self._tx.respond(tx, 200, to_tag=call.local_tag, body=body,
                         content_type="application/sdp" if body else None,
                         headers=[("Contact", self._transport.contact(rec.transport)),
                                  ("Allow", ALLOW)])
        if method == "INVITE":
            assert tx.last_response is not None
            self._tx.retransmit_2xx(call, number, tx.last_response, initial=False,
                                    on_no_ack=self._no_ack)

