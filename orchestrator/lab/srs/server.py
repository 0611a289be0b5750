"""The reference SIPREC recording server (SRS): the pieces wired together.

Two background threads, each an event loop over a selector (:mod:`.loop`): the SIP loop
(the sockets of :mod:`.transport` and every timer) and the media loop (the RTP sockets of
:mod:`.streams`). All session state is guarded by one lock; the SIP loop holds it while it
handles a message or a timer, the media loop while it counts a packet. Callers get deep
copies (:meth:`SrsServer.sessions`), never live objects.

A message goes: :mod:`.transport` (sockets, TCP framing) → :meth:`SrsServer._on_message`
(parsing) → :mod:`.transactions` (RFC 3261 §17) → :mod:`.uas` (the SRC's requests) or
:mod:`.uac` (responses to the SRS's own requests); sessions live in :mod:`.sessions`, their
media in :mod:`.streams`, their records in :mod:`.records`. The protocol pieces are sans-IO
(:mod:`orchestrator.sip`, :mod:`.sip`, :mod:`.sdp`, :mod:`.checks`, :mod:`.media`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import LabError, SipError
from ...sip import parse_sip_message, request_problem, top_via
from .config import Behaviour, SrsConfig
from .loop import EventLoop
from .session import SrsSession
from .sessions import SessionBook
from .streams import Streams
from .transactions import Transactions
from .transport import Peer, SipTransport
from .uac import SrsRequests
from .uas import SrsDialogs

__all__ = ["Behaviour", "SrsConfig", "SrsServer"]

log = logging.getLogger(__name__)


class SrsServer:
    """A SIPREC recording server in background threads; also a context manager.

    ``on_session_end`` is called (from a server thread, with a copy) when a session ends.
    """

    def __init__(self, config: SrsConfig, *,
                 on_session_end: Callable[[SrsSession], None] | None = None) -> None:
        self.config = config
        self._cond = threading.Condition(threading.RLock())
        self._sip = EventLoop(f"srs-{config.name}-sip", lock=self._cond)
        self._media = EventLoop(f"srs-{config.name}-media")
        self._transport = SipTransport(config, self._sip, on_message=self._on_message,
                                       on_broken=self._on_broken)
        self._tx = Transactions(config, self._sip, self._transport)
        self._streams = Streams(config, self._media, self._cond)
        self._book = SessionBook(config, self._streams, on_session_end)
        self._requests = SrsRequests(config, self._sip, self._transport, self._tx, self._book,
                                     self._streams)
        self._dialogs = SrsDialogs(config, self._sip, self._transport, self._tx, self._book,
                                   self._streams, self._requests)
        self._state = "new"

    # -- lifecycle

    def start(self) -> SrsServer:
        """Bind the SIP sockets and start the threads; :class:`LabError` if binding fails."""
        if self._state != "new":
            raise LabError(f"SRS {self.config.name} already {self._state}")
        try:
            Path(self.config.record_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"cannot create {self.config.record_dir}: {exc}") from exc
        self._transport.bind()
        self._transport.listen()
        self._sip.start()
        self._media.start()
        self._state = "running"
        log.info("SRS %s listening on %s:%s (%s)", self.config.name, self.address, self.port,
                 ",".join(self.config.transports))
        return self

    def stop(self) -> None:
        """Stop the threads, end open sessions (files finalised, JSON written), close sockets."""
        if self._state != "running":
            if self._state == "new":  # never started: just release the loops' sockets
                self._sip.stop()
                self._media.stop()
            self._state = "stopped"
            return
        self._state = "stopped"
        self._sip.stop()
        with self._cond:
            for call in list(self._book.calls.values()):
                if not call.record.ended:
                    self._book.end(call, "shutdown", "server stopped")
            self._transport.close()
            self._cond.notify_all()
        self._media.stop()

    def __enter__(self) -> SrsServer:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public views

    @property
    def address(self) -> str:
        return self._transport.address

    @property
    def port(self) -> int:
        """The SIP port (the one picked for ``port`` 0 once started)."""
        return self._transport.port

    @property
    def uri(self) -> str:
        """The SRS's SIP URI (``sip:srs@address:port``)."""
        return f"sip:srs@{self.address}:{self.port}"

    def sessions(self) -> list[SrsSession]:
        """Copies of every session seen, oldest first (thread-safe)."""
        with self._cond:
            return [copy.deepcopy(c.record) for c in self._book.calls.values()]

    def wait_for(self, predicate: Callable[[list[SrsSession]], bool],
                 timeout: float) -> list[SrsSession]:
        """Poll :meth:`sessions` until ``predicate`` is true; :class:`TimeoutError` if not."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.sessions()
            if predicate(snap):
                return snap
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                states = [(s.session_id, s.state) for s in snap]
                raise TimeoutError(f"SRS {self.config.name}: condition not met after "
                                   f"{timeout} s; sessions: {states}")
            with self._cond:
                self._cond.wait(min(remaining, 0.05))

    def _target_allowed(self, host: str) -> bool:
        return self._requests.target_allowed(host)

    # -- incoming messages (SIP loop, lock held)

    def _on_broken(self, head: bytes, peer: Peer, why: str) -> None:
        self._tx.answer_malformed(head, peer, why)

    def _on_message(self, data: bytes, peer: Peer) -> None:
        try:
            msg = parse_sip_message(data)
        except SipError as exc:
            log.warning("malformed SIP message from %s:%s: %s", *peer.addr, exc)
            self._tx.answer_malformed(data, peer, str(exc))
            return
        if peer.transport == "udp" and msg.declared_length is not None \
                and msg.declared_length != len(msg.body):
            # RFC 3261 §18.3: extra bytes are discarded; a short body is an error (400).
            if msg.declared_length > len(msg.body):
                if msg.status is None:
                    self._tx.answer_malformed(data, peer, "body shorter than Content-Length")
                return
            data = data[:len(data) - (len(msg.body) - msg.declared_length)]
            msg = parse_sip_message(data)
        if msg.status is not None:
            self._tx.on_response(msg, self._requests.on_stray_2xx)
            return
        problem = request_problem(msg)
        if problem is not None:
            log.warning("bad request from %s:%s: %s", *peer.addr, problem)
            self._tx.answer_malformed(data, peer, problem)
            return
        via = top_via(msg)
        if msg.method == "ACK":
            self._dialogs.on_ack(msg, via)
            return
        tx = self._tx.receive(msg, data, peer, via)
        if tx is not None:  # None: a retransmission, answered again by its transaction
            self._dialogs.on_request(tx, via)
