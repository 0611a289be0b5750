"""The reference SRS's transaction layer (RFC 3261 §17), on the SIP loop.

Server transactions: one per request (keyed by branch, sent-by and method, §17.2.3), the
last response repeated for a retransmitted request, non-2xx final responses to an INVITE
retransmitted until the ACK (Timer G). The 2xx to an INVITE is the UAS core's to
retransmit (§13.3.1.4): :meth:`Transactions.retransmit_2xx`. Client transactions: the
requests the SRS sends, retransmitted (Timer A/E) until a final response or Timer B/F.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from ...errors import SipError
from ...sip import (
    BRANCH_COOKIE,
    SipMessage,
    Via,
    build_response,
    lenient_message,
    parse_cseq,
    tag_of,
    top_via,
)
from .config import SrsConfig
from .loop import EventLoop
from .sip import OutgoingRequest
from .state import AGENT, Call, ClientTx, FinalHandler, Pending2xx, ServerTx
from .transport import Peer, SipTransport

__all__ = ["Transactions", "warning"]

log = logging.getLogger(__name__)


def warning(agent: str, text: str) -> tuple[str, str]:
    """A Warning header (RFC 3261 §20.43, code 399: miscellaneous)."""
    text = re.sub(r"[\r\n\"\\]", "'", text)[:200]
    return ("Warning", f'399 {agent} "{text}"')


class Transactions:
    """Server and client transactions over one :class:`~.transport.SipTransport`."""

    def __init__(self, config: SrsConfig, loop: EventLoop, transport: SipTransport) -> None:
        self.config = config
        self.timers = config.timers
        self._loop = loop
        self._transport = transport
        self._server: dict[tuple[Any, ...], ServerTx] = {}
        self._client: dict[str, ClientTx] = {}

    # -- server transactions

    @staticmethod
    def key(msg: SipMessage, via: Via, method: str) -> tuple[Any, ...]:
        """RFC 3261 §17.2.3: branch + sent-by + method (ACK/CANCEL look up the INVITE)."""
        branch = via.branch or ""
        if branch.startswith(BRANCH_COOKIE):
            return (branch, via.sent_by.lower(), method)
        # RFC 2543 peers: no usable branch
        return (msg.header("call-id"), tag_of(msg.header("from")),
                parse_cseq(msg.header("cseq"))[0], via.sent_by.lower(), method)

    def receive(self, msg: SipMessage, data: bytes, peer: Peer, via: Via) -> ServerTx | None:
        """The new server transaction of a request (not ACK), or None for a retransmission,
        which gets the last response again (RFC 3261 §17.2)."""
        method = msg.method or ""
        key = self.key(msg, via, method)
        tx = self._server.get(key)
        if tx is not None:
            if tx.last_response is not None and not tx.ignored:
                self._transport.send(tx.peer, tx.last_response)
            return None
        tx = ServerTx(key, msg, data, self._transport.reply_peer(via, peer), method, peer.addr)
        self._server[key] = tx
        return tx

    def invite_of(self, msg: SipMessage, via: Via) -> ServerTx | None:
        """The INVITE transaction an ACK or CANCEL belongs to (same branch and sent-by)."""
        return self._server.get(self.key(msg, via, "INVITE"))

    def respond(self, tx: ServerTx, code: int, reason: str | None = None, *,
                to_tag: str | None = None, headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", content_type: str | None = None) -> None:
        hdrs = [("Server", AGENT), *(headers or [])]
        udp = tx.peer.transport == "udp"
        data = build_response(tx.request, code, reason, to_tag=to_tag, headers=hdrs, body=body,
                              content_type=content_type,
                              received=tx.source[0] if udp else None,
                              rport=tx.source[1] if udp else None)
        tx.last_response = data
        self._transport.send(tx.peer, data)
        if code < 200:
            return
        tx.final = code
        if tx.method == "INVITE" and code >= 300 and udp:
            # RFC 3261 §17.2.1: Timer G retransmits a non-2xx final response until the ACK.
            tx.retrans = self.timers.invite_response(time.monotonic())
            tx.timer = self._loop.call_at(tx.retrans.wake_at(), self._tick_server, tx)
        # Keep the transaction to absorb retransmissions (Timer J/I, RFC 3261 §17.2).
        self._loop.call_later(self.timers.timer_h, self._forget, tx)

    def absorb_ack(self, msg: SipMessage, via: Via) -> ServerTx | None:
        """The INVITE transaction if ``msg`` is the ACK of its non-2xx final response: that
        ends its Timer G (RFC 3261 §17.2.1) and the ACK goes no further; else None."""
        tx = self.invite_of(msg, via)
        if tx is None or tx.final is None or tx.final < 300:
            return None
        tx.retrans = None
        if tx.timer is not None:
            tx.timer.cancel()
        return tx

    def answer_malformed(self, data: bytes, peer: Peer, why: str) -> None:
        """400 to a request that cannot be parsed or processed, if it has the headers a
        response needs (never to an ACK or a response)."""
        msg = lenient_message(data)
        if msg is None or msg.method == "ACK":
            return
        try:
            reply = build_response(msg, 400, headers=[("Server", AGENT),
                                                      warning(self.config.name, why)])
        except SipError:
            return
        self._transport.send(peer, reply)

    def _forget(self, tx: ServerTx) -> None:
        if self._server.get(tx.key) is tx:
            del self._server[tx.key]
        if tx.timer is not None:
            tx.timer.cancel()

    def _tick_server(self, tx: ServerTx) -> None:
        if tx.retrans is None or tx.last_response is None:
            return
        state = tx.retrans.poll(time.monotonic())
        if state == "expired":
            tx.retrans = None
            return
        if state == "send":
            self._transport.send(tx.peer, tx.last_response)
        tx.timer = self._loop.call_at(tx.retrans.wake_at(), self._tick_server, tx)

    # -- the 2xx to an INVITE (UAS core)

    def retransmit_2xx(self, call: Call, cseq: int, data: bytes, *, initial: bool,
                       on_no_ack: Callable[[Call, Pending2xx], None]) -> None:
        """Retransmit a 2xx to an INVITE until its ACK (RFC 3261 §13.3.1.4); without one
        after 64*T1, ``on_no_ack``. Over TCP nothing is retransmitted but the ACK is still
        awaited."""
        retrans = self.timers.invite_response(time.monotonic(),
                                              reliable=call.tx.peer.transport != "udp")
        p = Pending2xx(cseq, data, call.tx.peer, initial, retrans)
        old = call.pending_2xx.pop(cseq, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        call.pending_2xx[cseq] = p
        p.timer = self._loop.call_at(retrans.wake_at(), self._tick_2xx, call, p, on_no_ack)

    def _tick_2xx(self, call: Call, p: Pending2xx,
                  on_no_ack: Callable[[Call, Pending2xx], None]) -> None:
        if call.pending_2xx.get(p.cseq) is not p:
            return
        state = p.retrans.poll(time.monotonic())
        if state == "expired":
            del call.pending_2xx[p.cseq]
            on_no_ack(call, p)
            return
        if state == "send":
            self._transport.send(p.peer, p.data)
        p.timer = self._loop.call_at(p.retrans.wake_at(), self._tick_2xx, call, p, on_no_ack)

    @staticmethod
    def acked(call: Call, cseq: int) -> Pending2xx | None:
        """The 2xx an ACK with ``cseq`` acknowledges (its retransmission stops), or None
        for a retransmitted ACK."""
        p = call.pending_2xx.pop(cseq, None)
        if p is not None and p.timer is not None:
            p.timer.cancel()
        return p

    # -- client transactions

    def send_request(self, call: Call, req: OutgoingRequest, peer: Peer, kind: str,
                     attempt: int, on_final: FinalHandler) -> ClientTx | None:
        """Send ``req`` and retransmit it until a final response; ``on_final`` gets that
        response, or None and the reason (transport error, Timer B/F). None if the first
        send already failed (``on_final`` has been called)."""
        tx = ClientTx(req, peer, call, kind, on_final, attempt)
        self._client[req.branch] = tx
        if req.method == "INVITE":
            call.invite_client = tx
        tx.retrans = self.timers.request(req.method, time.monotonic(),
                                         reliable=peer.transport != "udp")
        log.info("session %s: sending %s (%s)", call.record.session_id, req.method, kind)
        if not self._transport.send(peer, req.data):
            self._done(tx)
            on_final(tx, None, "transport error")
            return None
        tx.timer = self._loop.call_at(tx.retrans.wake_at(), self._tick_client, tx)
        return tx

    def _tick_client(self, tx: ClientTx) -> None:
        if self._client.get(tx.req.branch) is not tx or tx.retrans is None:
            return
        state = tx.retrans.poll(time.monotonic())
        if state == "expired":
            self._done(tx)
            tx.on_final(tx, None, f"no final response within {self.timers.timer_b:g} s "
                                  "(Timer B/F)")
            return
        if state == "send":
            self._transport.send(tx.peer, tx.req.data)
        tx.timer = self._loop.call_at(tx.retrans.wake_at(), self._tick_client, tx)

    def _done(self, tx: ClientTx) -> None:
        self._client.pop(tx.req.branch, None)
        if tx.timer is not None:
            tx.timer.cancel()
        if tx.call.invite_client is tx:
            tx.call.invite_client = None

    def on_response(self, msg: SipMessage,
                    on_stray_2xx: Callable[[SipMessage, int], None]) -> None:
        """Match a response to its client transaction (top Via branch and CSeq method). A
        2xx to an INVITE that matches none (a retransmission after the transaction ended)
        goes to ``on_stray_2xx`` with its CSeq number, to be ACKed again."""
        try:
            via = top_via(msg)
            number, method = parse_cseq(msg.header("cseq"))
        except SipError as exc:
            log.warning("unusable response dropped: %s", exc)
            return
        status = msg.status or 0
        tx = self._client.get(via.branch or "")
        if tx is None or tx.req.method != method:
            if method == "INVITE" and 200 <= status < 300:
                on_stray_2xx(msg, number)
            return
        if status < 200:
            if method == "INVITE" and tx.retrans is not None:
                tx.retrans.stop_retransmitting()  # Proceeding: stop Timer A
            return
        self._done(tx)
        tx.on_final(tx, msg, None)
