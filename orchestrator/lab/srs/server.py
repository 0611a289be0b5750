"""The reference SIPREC recording server (SRS): transports, sessions, RTP, misbehaviour.

Two background threads, each an event loop over a selector: the SIP loop (the UDP socket,
the TCP listener and connections, and every timer) and the media loop (the RTP sockets).
All session state is guarded by one lock; the SIP loop holds it while it handles a message
or a timer, the media loop while it counts a packet. Callers get deep copies
(:meth:`SrsServer.sessions`), never live objects.

The protocol pieces are sans-IO in :mod:`.sip`, :mod:`.sdp`, :mod:`.checks` and
:mod:`.media`; this module only wires them to sockets and clocks.
"""

from __future__ import annotations

import copy
import functools
import heapq
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import selectors
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import LabError, RecordingError, SipError, SiprecctlError
from ...siprec.builder import build_snapshot_request
from ...siprec.model import SnapshotRequest
from ...siprec.multipart import (
    METADATA_TYPES,
    SNAPSHOT_REQUEST_TYPE,
    build_multipart,
    parse_content_type,
    parse_multipart,
    parse_siprec_body,
    snapshot_request_headers,
)
from ...siprec.rules import Severity
from ...siprec.sip import SipMessage, parse_sip_message
from ...siprec.validator import Profile, RecordingSessionValidator
from .checks import ParticipantMap, check_request, metadata_datamode, require_tags
from .media import RtpPortPool, StreamRecorder
from .sdp import (
    AnswerStream,
    OfferedStream,
    answer_direction,
    build_sdp,
    offer_direction,
    parse_offer,
)
from .session import SrsFinding, SrsSession, StreamStats, next_state
from .sip import (
    ALLOW,
    BRANCH_COOKIE,
    KNOWN_METHODS,
    Dialog,
    OutgoingRequest,
    Retransmitter,
    StreamFramer,
    Via,
    build_response,
    lenient_message,
    new_tag,
    parse_cseq,
    request_problem,
    tag_of,
    top_via,
)

__all__ = ["Behaviour", "SrsConfig", "SrsServer"]

log = logging.getLogger(__name__)

AGENT = "siprecctl-srs"
ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TRANSPORTS = frozenset({"udp", "tcp"})


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Behaviour:
    """How the SRS (mis)behaves, for testing an SRC. Times are seconds.

    ``reject``: answer every INVITE with this code; ``no_answer``: ignore INVITEs (no 100,
    nothing); ``answer_delay``: send 100 + 180, then the final answer after this delay;
    ``bye_after``/``snapshot_after``/``refresh_after``: after the ACK, send a BYE, a snapshot
    request re-INVITE (RFC 7866 §9.2) or a session refresh re-INVITE; ``move_on_refresh``:
    that refresh offers new RTP ports (the old ones are closed), as an SRS that moves a
    session to another media node does.
    """

    reject: int | None = None
    no_answer: bool = False
    answer_delay: float = 0.0
    bye_after: float | None = None
    snapshot_after: float | None = None
    refresh_after: float | None = None
    move_on_refresh: bool = False

    def __post_init__(self) -> None:
        if self.reject is not None and not 300 <= self.reject <= 699:
            raise LabError(f"behaviour.reject: {self.reject} is not a final non-2xx code "
                           "(300-699)")
        if self.answer_delay < 0:
            raise LabError("behaviour.answer_delay: must not be negative")
        for name in ("bye_after", "snapshot_after", "refresh_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LabError(f"behaviour.{name}: must not be negative")


@dataclass(frozen=True)
class SrsConfig:
    """Where the SRS listens and records, and how it behaves.

    ``port`` 0 picks a free port (read it back from :attr:`SrsServer.port`). ``t1``/``t2``
    are RFC 3261's timers; ``timer_b`` is how long the SRS's own requests wait for a final
    response (Timer B/F). ``allow_public_targets`` lets the SRS send requests to a Contact
    outside loopback and private ranges. At most ``max_sessions`` sessions are kept in memory
    (the oldest ended ones are dropped; their files stay).
    """

    address: str = "127.0.0.1"
    port: int = 5090
    transports: tuple[str, ...] = ("udp", "tcp")
    record_dir: Path = Path("srs-recordings")
    rtp_address: str = "127.0.0.1"
    rtp_port_min: int = 40000
    rtp_port_max: int = 40999
    name: str = "srs"
    behaviour: Behaviour = field(default_factory=Behaviour)
    t1: float = 0.5
    t2: float = 4.0
    timer_b: float = 32.0
    allow_public_targets: bool = False
    max_sessions: int = 10000

    def __post_init__(self) -> None:
        for what, addr in (("address", self.address), ("rtp_address", self.rtp_address)):
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                raise LabError(f"{what}: {addr!r} is not an IPv4 address") from None
        if not 0 <= self.port < 65536:
            raise LabError(f"port: {self.port} is not within 0-65535")
        if not self.transports or not set(self.transports) <= _TRANSPORTS:
            raise LabError(f"transports: {self.transports!r}; expected udp and/or tcp")
        if not 0 < self.rtp_port_min <= self.rtp_port_max < 65536:
            raise LabError(f"rtp ports: {self.rtp_port_min}-{self.rtp_port_max} is not a "
                           "range within 1-65535")
        if not _NAME.match(self.name):
            raise LabError(f"name: {self.name!r}; expected letters, digits, '.', '_' or '-'")
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.timer_b > 0):
            raise LabError("timers: need t1 > 0, t2 >= t1 and timer_b > 0")
        if self.max_sessions < 1:
            raise LabError("max_sessions: must be at least 1")


# --------------------------------------------------------------------------- event loop

class _Timer:
    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when, self.fn, self.args = when, fn, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """A selector loop in its own thread: readers, timers and calls from other threads.

    With ``lock``, every callback runs holding it and notifies it afterwards. A callback
    that raises is logged, never fatal.
    """

    def __init__(self, name: str, lock: threading.Condition | None = None) -> None:
        self.name = name
        self._lock = lock
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers: list[tuple[float, int, _Timer]] = []
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._tlock = threading.Lock()
        self._seq = itertools.count()
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._tlock:
            self._calls.append((fn, args))
        self._wake()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        return self.call_at(time.monotonic() + max(delay, 0.0), fn, *args)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        t = _Timer(when, fn, args)
        with self._tlock:
            heapq.heappush(self._timers, (when, next(self._seq), t))
        if not self.in_loop():
            self._wake()
        return t

    def add_reader(self, sock: socket.socket, fn: Callable[[], None]) -> None:
        if not self.in_loop():
            self.call_soon(self.add_reader, sock, fn)
            return
        if sock.fileno() >= 0 and not self._closed:
            self._sel.register(sock, selectors.EVENT_READ, fn)

    def remove(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` and close it."""
        if not self.in_loop() and self._thread.is_alive():
            self.call_soon(self.remove, sock)
            return
        if not self._closed:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full: a wake-up is already pending; or closed at stop
            pass

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._cleanup()

    def _loop(self) -> None:
        while not self._stopping:
            with self._tlock:
                if self._calls:
                    timeout: float | None = 0.0
                elif self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                else:
                    timeout = None
            for key, _events in self._sel.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._guard(key.data)
            now = time.monotonic()
            due: list[_Timer] = []
            with self._tlock:
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                calls = list(self._calls)
                self._calls.clear()
            for t in due:
                if not t.cancelled:
                    self._guard(t.fn, *t.args)
            for fn, args in calls:
                self._guard(fn, *args)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            if self._lock is None:
                fn(*args)
            else:
                with self._lock:
                    fn(*args)
                    self._lock.notify_all()
        except Exception:  # never let one message or packet kill the thread
            log.exception("%s: error in %s", self.name, getattr(fn, "__name__", fn))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; from another thread this waits for it and closes its sockets."""
        self._stopping = True
        if self.in_loop():
            return  # _run cleans up when the current callback returns
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
        else:
            self._cleanup()

    def _cleanup(self) -> None:
        with self._tlock:
            if self._closed:
                return
            self._closed = True
        for key in list(self._sel.get_map().values()):
            fileobj = key.fileobj
            if isinstance(fileobj, socket.socket):
                fileobj.close()
        self._sel.close()
        self._wake_w.close()


# --------------------------------------------------------------------------- internals

class _Conn:
    """A TCP connection (accepted, or opened by the SRS to send a request)."""

    def __init__(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        self.sock = sock
        self.addr = addr
        self.framer = StreamFramer()
        self.closed = False

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
        except OSError as exc:
            log.warning("TCP send to %s:%s failed: %s", *self.addr, exc)
            return False
        return True


@dataclass(frozen=True)
class _Peer:
    """Where to send: UDP address, or a TCP connection."""

    transport: str
    addr: tuple[str, int]
    conn: _Conn | None = None


@dataclass(eq=False)
class _ServerTx:
    key: tuple[Any, ...]
    request: SipMessage
    raw: bytes
    peer: _Peer
    method: str
    source: tuple[str, int]
    last_response: bytes | None = None
    final: int | None = None
    ignored: bool = False
    call: _Call | None = None
    retrans: Retransmitter | None = None
    timer: _Timer | None = None


@dataclass(eq=False)
class _ClientTx:
    req: OutgoingRequest
    peer: _Peer
    call: _Call
    kind: str  # "bye" | "refresh" | "snapshot"
    attempt: int = 1
    retrans: Retransmitter | None = None
    timer: _Timer | None = None
    deadline: float = 0.0


@dataclass(eq=False)
class _Pending2xx:
    cseq: int
    data: bytes
    peer: _Peer
    initial: bool
    retrans: Retransmitter
    timer: _Timer | None = None


@dataclass(eq=False)
class _Slot:
    """One m-line of the recording session, by index (RFC 3264 §8: positions are stable)."""

    offered: OfferedStream
    stats: StreamStats
    recorder: StreamRecorder | None


@dataclass(eq=False)
class _Call:
    record: SrsSession
    tx: _ServerTx
    local_tag: str
    validator: RecordingSessionValidator
    conn: _Conn | None
    dialog: Dialog | None = None
    offer: list[OfferedStream] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)
    sdp_session_id: int = 0
    sdp_version: int = 1
    last_sdp: bytes | None = None
    last_offer_sdp: bytes | None = None
    pending_2xx: dict[int, _Pending2xx] = field(default_factory=dict)
    invite_client: _ClientTx | None = None
    acks: dict[int, tuple[bytes, _Peer]] = field(default_factory=dict)
    timers: list[_Timer] = field(default_factory=list)
    participants: ParticipantMap = field(default_factory=ParticipantMap)

    def finding(self, rule: str, severity: Severity, message: str,
                source: str | None = None) -> None:
        self.record.sip_findings.append(SrsFinding(rule, severity, None, message, source))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "_"


def _warning(agent: str, text: str) -> tuple[str, str]:
    """A Warning header (RFC 3261 §20.43, code 399: miscellaneous)."""
    text = re.sub(r"[\r\n\"\\]", "'", text)[:200]
    return ("Warning", f'399 {agent} "{text}"')


# --------------------------------------------------------------------------- the server

class SrsServer:
    """A SIPREC recording server in background threads; also a context manager.

    ``on_session_end`` is called (from a server thread, with a copy) when a session ends.
    """

    def __init__(self, config: SrsConfig, *,
                 on_session_end: Callable[[SrsSession], None] | None = None) -> None:
        self.config = config
        self._on_end = on_session_end
        self._cond = threading.Condition(threading.RLock())
        self._sip = _Loop(f"srs-{config.name}-sip", lock=self._cond)
        self._media = _Loop(f"srs-{config.name}-media")
        self._pool = RtpPortPool(config.rtp_address, config.rtp_port_min, config.rtp_port_max)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._calls: dict[str, _Call] = {}
        self._by_dialog: dict[tuple[str, str, str], _Call] = {}
        self._server_txs: dict[tuple[Any, ...], _ServerTx] = {}
        self._client_txs: dict[str, _ClientTx] = {}
        self._state = "new"
        self.address = config.address
        self.port = config.port

    # -- lifecycle

    def start(self) -> SrsServer:
        """Bind the SIP sockets and start the threads; :class:`LabError` if binding fails."""
        if self._state != "new":
            raise LabError(f"SRS {self.config.name} already {self._state}")
        try:
            Path(self.config.record_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"cannot create {self.config.record_dir}: {exc}") from exc
        self._bind()
        if self._udp is not None:
            self._sip.add_reader(self._udp, self._on_udp)
        if self._tcp is not None:
            self._sip.add_reader(self._tcp, self._on_accept)
        self._sip.start()
        self._media.start()
        self._state = "running"
        log.info("SRS %s listening on %s:%s (%s)", self.config.name, self.address, self.port,
                 ",".join(self.config.transports))
        return self

    def _bind(self) -> None:
        cfg = self.config
        for _attempt in range(20):
            udp = tcp = None
            try:
                if "udp" in cfg.transports:
                    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    udp.bind((cfg.address, self.port))
                    self.port = udp.getsockname()[1]
                if "tcp" in cfg.transports:
                    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((cfg.address, self.port))
                    self.port = tcp.getsockname()[1]
                    tcp.listen(64)
            except OSError as exc:
                for s in (udp, tcp):
                    if s is not None:
                        s.close()
                if cfg.port == 0:  # the UDP port picked for us was taken on TCP: retry
                    self.port = 0
                    continue
                raise LabError(f"cannot bind SIP {cfg.address}:{cfg.port}: {exc}") from exc
            for s in (udp, tcp):
                if s is not None:
                    s.setblocking(False)
            self._udp, self._tcp = udp, tcp
            return
        raise LabError(f"no port free on both UDP and TCP at {cfg.address}")

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
            for call in list(self._calls.values()):
                if not call.record.ended:
                    self._end(call, "shutdown", "server stopped")
            for conn in list(self._conns):
                self._close_conn(conn)
            for s in (self._udp, self._tcp):
                if s is not None:
                    s.close()
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
    def uri(self) -> str:
        """The SRS's SIP URI (``sip:srs@address:port``)."""
        return f"sip:srs@{self.address}:{self.port}"

    def sessions(self) -> list[SrsSession]:
        """Copies of every session seen, oldest first (thread-safe)."""
        with self._cond:
            return [copy.deepcopy(c.record) for c in self._calls.values()]

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

    # -- sending

    def _send(self, peer: _Peer, data: bytes) -> bool:
        if peer.transport == "tcp":
            if peer.conn is None or not peer.conn.send(data):
                if peer.conn is not None:
                    self._close_conn(peer.conn)
                return False
            return True
        if self._udp is None:
            return False
        try:
            self._udp.sendto(data, peer.addr)
        except OSError as exc:
            log.warning("UDP send to %s:%s failed: %s", *peer.addr, exc)
            return False
        return True

    def _contact(self, transport: str) -> str:
        tp = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:srs@{self.address}:{self.port}{tp}>;+sip.srs"

    def _respond(self, tx: _ServerTx, code: int, reason: str | None = None, *,
                 to_tag: str | None = None, headers: list[tuple[str, str]] | None = None,
                 body: bytes = b"", content_type: str | None = None) -> None:
        hdrs = [("Server", AGENT), *(headers or [])]
        udp = tx.peer.transport == "udp"
        data = build_response(tx.request, code, reason, to_tag=to_tag, headers=hdrs, body=body,
                              content_type=content_type,
                              received=tx.source[0] if udp else None,
                              rport=tx.source[1] if udp else None)
        tx.last_response = data
        self._send(tx.peer, data)
        if code < 200:
            return
        tx.final = code
        if tx.method == "INVITE" and code >= 300 and udp:
            # RFC 3261 §17.2.1: Timer G retransmits a non-2xx final response until the ACK.
            tx.retrans = Retransmitter(time.monotonic(), t1=self.config.t1, t2=self.config.t2)
            tx.timer = self._sip.call_at(tx.retrans.wake_at(), self._tick_server_tx, tx)
        # Keep the transaction to absorb retransmissions (Timer J/I, RFC 3261 §17.2).
        self._sip.call_later(64 * self.config.t1, self._forget_tx, tx)

    def _forget_tx(self, tx: _ServerTx) -> None:
        if self._server_txs.get(tx.key) is tx:
            del self._server_txs[tx.key]
        if tx.timer is not None:
            tx.timer.cancel()

    def _tick_server_tx(self, tx: _ServerTx) -> None:
        if tx.retrans is None or tx.last_response is None:
            return
        state = tx.retrans.poll(time.monotonic())
        if state == "expired":
            tx.retrans = None
            return
        if state == "send":
            self._send(tx.peer, tx.last_response)
        tx.timer = self._sip.call_at(tx.retrans.wake_at(), self._tick_server_tx, tx)

    # -- transports

    def _on_udp(self) -> None:
        assert self._udp is not None
        for _ in range(64):
            try:
                data, addr = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on Linux
                log.debug("UDP receive error: %s", exc)
                return
            if data.strip(b"\r\n\x00 "):  # skip CRLF keep-alives
                self._on_message(data, _Peer("udp", addr[:2]))

    def _on_accept(self) -> None:
        assert self._tcp is not None
        try:
            sock, addr = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._add_conn(sock, addr[:2])

    def _add_conn(self, sock: socket.socket, addr: tuple[str, int]) -> _Conn:
        sock.settimeout(2.0)  # bounds sendall; reads only happen when readable
        conn = _Conn(sock, addr)
        self._conns.add(conn)
        self._sip.add_reader(sock, lambda: self._on_tcp(conn))
        return conn

    def _close_conn(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._sip.remove(conn.sock)

    def _on_tcp(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_conn(conn)
            return
        peer = _Peer("tcp", conn.addr, conn)
        for message in conn.framer.feed(data):
            self._on_message(message, peer)
        if conn.framer.error is not None:
            log.warning("TCP %s:%s: %s; closing", *conn.addr, conn.framer.error)
            self._answer_malformed(conn.framer.broken_head or b"", peer, conn.framer.error)
            self._close_conn(conn)

    def _connect(self, host: str, port: int) -> _Conn:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError as exc:
            raise LabError(f"cannot connect to {host}:{port} over TCP: {exc}") from exc
        return self._add_conn(sock, (host, port))

    # -- incoming messages

    def _answer_malformed(self, data: bytes, peer: _Peer, why: str) -> None:
        msg = lenient_message(data)
        if msg is None or msg.method == "ACK":
            return
        try:
            reply = build_response(msg, 400, headers=[("Server", AGENT),
                                                      _warning(self.config.name, why)])
        except SipError:
            return
        self._send(peer, reply)

    def _on_message(self, data: bytes, peer: _Peer) -> None:
        try:
            msg = parse_sip_message(data)
        except SipError as exc:
            log.warning("malformed SIP message from %s:%s: %s", *peer.addr, exc)
            self._answer_malformed(data, peer, str(exc))
            return
        if peer.transport == "udp" and msg.declared_length is not None \
                and msg.declared_length != len(msg.body):
            # RFC 3261 §18.3: extra bytes are discarded; a short body is an error (400).
            if msg.declared_length > len(msg.body):
                if msg.status is None:
                    self._answer_malformed(data, peer, "body shorter than Content-Length")
                return
            data = data[:len(data) - (len(msg.body) - msg.declared_length)]
            msg = parse_sip_message(data)
        if msg.status is not None:
            self._on_response(msg)
            return
        problem = request_problem(msg)
        if problem is not None:
            log.warning("bad request from %s:%s: %s", *peer.addr, problem)
            self._answer_malformed(data, peer, problem)
            return
        via = top_via(msg)
        method = msg.method or ""
        if method == "ACK":
            self._on_ack(msg, via)
            return
        key = self._tx_key(msg, via, method)
        tx = self._server_txs.get(key)
        if tx is not None:  # a retransmission: repeat the last response (RFC 3261 §17.2)
            if tx.last_response is not None and not tx.ignored:
                self._send(tx.peer, tx.last_response)
            return
        tx = _ServerTx(key, msg, data, self._reply_peer(via, peer), method, peer.addr)
        self._server_txs[key] = tx
        if method == "CANCEL":
            self._on_cancel(tx, via)
        elif tag_of(msg.header("to")):
            self._in_dialog(tx)
        elif method == "INVITE":
            self._on_invite(tx)
        elif method == "OPTIONS":
            self._respond(tx, 200, headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        elif method == "BYE":
            self._respond(tx, 481)
        else:
            self._respond(tx, 405 if method in KNOWN_METHODS else 501,
                          headers=[("Allow", ALLOW)])

    @staticmethod
    def _tx_key(msg: SipMessage, via: Via, method: str) -> tuple[Any, ...]:
        """RFC 3261 §17.2.3: branch + sent-by + method (ACK/CANCEL look up the INVITE)."""
        branch = via.branch or ""
        if branch.startswith(BRANCH_COOKIE):
            return (branch, via.sent_by.lower(), method)
        # RFC 2543 peers: no usable branch
        return (msg.header("call-id"), tag_of(msg.header("from")),
                parse_cseq(msg.header("cseq"))[0], via.sent_by.lower(), method)

    @staticmethod
    def _reply_peer(via: Via, peer: _Peer) -> _Peer:
        """RFC 3261 §18.2.2 / RFC 3581: TCP on the same connection; UDP to the source IP and
        the rport or sent-by port."""
        if peer.transport == "tcp":
            return peer
        port = peer.addr[1] if via.has_rport else (via.port or 5060)
        return _Peer("udp", (peer.addr[0], port))

    # -- initial INVITE

    def _new_session_id(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return f"{self.config.name}-{stamp}-{os.urandom(4).hex()}"

    def _on_invite(self, tx: _ServerTx) -> None:
        msg = tx.request
        b = self.config.behaviour
        rec = SrsSession(session_id=self._new_session_id(), call_id=msg.header("call-id") or "",
                         transport=tx.peer.transport, remote=f"{tx.source[0]}:{tx.source[1]}",
                         started_at=time.time())
        call = _Call(rec, tx, new_tag(), RecordingSessionValidator(Profile.STRICT),
                     tx.peer.conn, sdp_session_id=int.from_bytes(os.urandom(4), "big"))
        tx.call = call
        self._calls[rec.session_id] = call
        log.info("session %s: INVITE %s from %s", rec.session_id, rec.call_id, rec.remote)
        self._forget_old_sessions()
        if not b.no_answer:
            self._respond(tx, 100)
        sdp, meta, problem = self._split_body(msg)
        sip_f, meta_f = check_request(call.validator, tx.raw, initial=True, source="INVITE",
                                      sdp=sdp)
        rec.sip_findings.extend(sip_f)
        rec.metadata_findings.extend(meta_f)
        if b.no_answer:  # checked and recorded, but nothing goes on the wire
            rec.ignored = True
            tx.ignored = True
            if meta is not None:
                self._record_metadata(call, meta, in_request=True)
            return
        tags = require_tags(msg)
        unknown = [t for t in tags if t != "siprec"]
        if unknown:
            call.finding("S03", Severity.WARNING, f"Require lists option tags the SRS does not "
                         f"support: {', '.join(unknown)} (accepted anyway)", "INVITE")
        if meta is not None:
            self._record_metadata(call, meta, in_request=True)
        if "siprec" not in tags:
            # RFC 7866 §6.1.1: without the siprec option tag this is not a recording session.
            self._reject(call, 420, "Require lacks the siprec option tag (RFC 7866 §6.1.1)")
            return
        if b.reject is not None:
            self._reject(call, b.reject, "rejected by the configured behaviour")
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
            self._reject(call, 488 if "no SDP" in problem or "no m-line" in problem else 400,
                         problem)
            return
        call.last_offer_sdp = sdp
        if b.answer_delay > 0:
            self._respond(tx, 180, to_tag=call.local_tag)
            call.timers.append(self._sip.call_later(b.answer_delay, self._answer, call))
        else:
            self._answer(call)

    def _forget_old_sessions(self) -> None:
        """Keep at most ``max_sessions`` in memory, dropping the oldest ended ones."""
        excess = len(self._calls) - self.config.max_sessions
        if excess <= 0:
            return
        for sid in [sid for sid, c in self._calls.items() if c.record.ended][:excess]:
            del self._calls[sid]

    @staticmethod
    def _split_body(msg: SipMessage) -> tuple[bytes | None, bytes | None, str | None]:
        """``(sdp, metadata, problem)`` of a request body; problem is None if it is usable.

        ``problem`` mentions "no SDP" when the body is fine but carries no offer.
        """
        if not msg.body.strip():
            return None, None, "no SDP offer: the request has no body"
        ctype = msg.header("content-type")
        if ctype is None:
            return None, None, "body without Content-Type"
        mime, _ = parse_content_type(ctype)
        if mime == SNAPSHOT_REQUEST_TYPE:
            return None, None, "a snapshot request is for the SRC, not the SRS (RFC 7866 §9.2)"
        try:
            body = parse_siprec_body(ctype, msg.body)
        except SipError as exc:
            meta_only = SrsServer._metadata_only(ctype, msg.body)
            if meta_only is not None:
                return None, meta_only, "no SDP offer in the multipart body"
            return None, None, str(exc)
        sdp = body.sdp if body.sdp.strip() else None
        if sdp is None and mime not in METADATA_TYPES:
            return None, body.metadata, f"no SDP offer in a {mime} body"
        return sdp, body.metadata, None if sdp is not None else "no SDP offer"

    @staticmethod
    def _metadata_only(ctype: str, body: bytes) -> bytes | None:
        """The metadata of a multipart body with no SDP part and one metadata part."""
        try:
            parts, _problems = parse_multipart(ctype, body)
        except SipError:
            return None
        metas = [p for p in parts if p.content_type in METADATA_TYPES]
        if len(metas) == 1 and not any(p.content_type == "application/sdp" for p in parts):
            return metas[0].body
        return None

    def _reject(self, call: _Call, code: int, why: str) -> None:
        self._respond(call.tx, code, to_tag=call.local_tag,
                      headers=[_warning(self.config.name, why)])
        call.record.final_status = code
        self._end(call, "reject", f"{code}: {why}")

    def _answer(self, call: _Call) -> None:
        rec = call.record
        if rec.state != "early" or call.dialog is None:
            return
        try:
            for o in call.offer:  # appended one by one: _end closes what was opened
                call.slots.append(self._new_slot(call, o))
        except SiprecctlError as exc:
            log.error("session %s: %s", rec.session_id, exc)
            call.finding("S02", Severity.ERROR, f"cannot receive the media: {exc}")
            self._reject(call, 503, str(exc))
            return
        body = self._our_sdp(call)
        self._respond(call.tx, 200, to_tag=call.local_tag, body=body,
                      content_type="application/sdp",
                      headers=[("Contact", self._contact(rec.transport)), ("Allow", ALLOW),
                               ("Accept", ACCEPT)])
        rec.state = next_state(rec.state, "answer")
        rec.answered_at = time.time()
        rec.final_status = 200
        d = call.dialog
        self._by_dialog[(d.call_id, d.local_tag, d.remote_tag)] = call
        assert call.tx.last_response is not None
        self._await_ack(call, d.remote_cseq, call.tx.last_response, initial=True)

    # -- media

    def _new_slot(self, call: _Call, o: OfferedStream) -> _Slot:
        rec = call.record
        key = o.label if o.label is not None else f"m{o.index}"
        if key in rec.labels:
            key = f"{key}#{o.index}"
        stats = StreamStats(label=key, port=0, payload_type=o.payload_type, codec=o.codec,
                            direction="inactive")
        recorder = None
        if o.recordable:
            sock = self._pool.bind()
            stats.port = sock.getsockname()[1]
            stats.direction = answer_direction(o.direction)
            try:
                recorder = StreamRecorder(sock, stats, record_dir=Path(self.config.record_dir),
                                          basename=f"{rec.session_id}-{_safe(key)}")
            except BaseException:
                sock.close()
                raise
            self._media.add_reader(sock, lambda: self._on_rtp(recorder))
        elif o.port != 0:
            call.finding("S02", Severity.WARNING,
                         f"m-line {o.index + 1} ({o.media} {o.proto} {' '.join(o.formats)}) "
                         "declined: the SRS records RTP/AVP only")
        rec.labels[key] = stats
        by_label = call.participants.by_label()
        stats.participants = by_label.get(key, [])
        return _Slot(o, stats, recorder)

    def _move_media(self, call: _Call) -> None:
        """Every live stream to a new RTP port; the old sockets are closed."""
        for slot in call.slots:
            recorder = slot.recorder
            if recorder is None or recorder.closed:
                continue
            old = recorder.rebind(self._pool.bind())
            self._media.remove(old)
            self._media.add_reader(recorder.sock, functools.partial(self._on_rtp, recorder))
            log.info("session %s: %s moved to port %d", call.record.session_id,
                     slot.stats.label, slot.stats.port)

    def _on_rtp(self, recorder: StreamRecorder | None) -> None:
        """Media loop: drain the socket, count each packet under the lock."""
        if recorder is None:
            return
        for _ in range(64):
            try:
                data, src = recorder.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with self._cond:
                recorder.on_datagram(data, src[:2])

    def _our_sdp(self, call: _Call) -> bytes:
        """The SRS's current SDP; o= version bumped only when it changes (RFC 3264 §8)."""
        streams = []
        for slot in call.slots:
            o = slot.offered
            live = slot.recorder is not None and o.recordable
            pt: int | str = o.formats[0] if o.formats else "0"
            codec = o.codec
            if live and str(slot.stats.payload_type) in o.formats:
                # keep the payload type being recorded while the offer still lists it
                assert slot.stats.payload_type is not None
                pt, codec = slot.stats.payload_type, slot.stats.codec
            streams.append(AnswerStream(o.media, slot.stats.port if live else 0, o.proto, pt,
                                        codec, o.label, slot.stats.direction if live
                                        else "inactive"))

        def build() -> bytes:
            return build_sdp(streams, address=self.config.rtp_address,
                             session_id=call.sdp_session_id, version=call.sdp_version,
                             username=self.config.name)

        body = build()
        if call.last_sdp is not None and body != call.last_sdp:
            call.sdp_version += 1
            body = build()
        call.last_sdp = body
        return body

    def _apply_offer(self, call: _Call, offered: list[OfferedStream]) -> None:
        """Match a re-offer to the slots by m-line index; new m-lines get new ports."""
        for o in offered:
            if o.index < len(call.slots) and call.slots[o.index].offered.label == o.label:
                slot = call.slots[o.index]
                slot.offered = o
                if slot.recorder is None and o.recordable:  # a declined stream now offered
                    call.record.labels.pop(slot.stats.label, None)
                    call.slots[o.index] = self._new_slot(call, o)
                    continue
                slot.stats.direction = answer_direction(o.direction) if o.recordable \
                    else "inactive"
            elif o.index < len(call.slots):  # the label changed: a different stream
                call.slots[o.index].stats.direction = "inactive"
                call.slots[o.index] = self._new_slot(call, o)
            else:
                call.slots.append(self._new_slot(call, o))

    # -- ACK, CANCEL and in-dialog requests

    def _await_ack(self, call: _Call, cseq: int, data: bytes, *, initial: bool) -> None:
        """Retransmit a 2xx to an INVITE until its ACK (RFC 3261 §13.3.1.4).

        Over TCP nothing is retransmitted but the ACK is still awaited for 64*T1.
        """
        t1 = self.config.t1
        retrans = Retransmitter(time.monotonic(), t1=t1, t2=self.config.t2)
        if call.tx.peer.transport != "udp":
            retrans.next_at = retrans.deadline
        p = _Pending2xx(cseq, data, call.tx.peer, initial, retrans)
        old = call.pending_2xx.pop(cseq, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        call.pending_2xx[cseq] = p
        p.timer = self._sip.call_at(retrans.wake_at(), self._tick_2xx, call, p)

    def _tick_2xx(self, call: _Call, p: _Pending2xx) -> None:
        if call.pending_2xx.get(p.cseq) is not p:
            return
        state = p.retrans.poll(time.monotonic())
        if state == "expired":
            del call.pending_2xx[p.cseq]
            call.finding("S01", Severity.ERROR, f"no ACK for the 2xx to INVITE CSeq {p.cseq} "
                         f"within {64 * self.config.t1:g} s (RFC 3261 §13.3.1.4)")
            self._send_bye(call, "no ACK for the 2xx")
            return
        if state == "send":
            self._send(p.peer, p.data)
        p.timer = self._sip.call_at(p.retrans.wake_at(), self._tick_2xx, call, p)

    def _on_ack(self, msg: SipMessage, via: Via) -> None:
        tx = self._server_txs.get(self._tx_key(msg, via, "INVITE"))
        if tx is not None and tx.final is not None and tx.final >= 300:
            # ACK of a non-2xx final response: same transaction (RFC 3261 §17.2.1)
            tx.retrans = None
            if tx.timer is not None:
                tx.timer.cancel()
            return
        key = (msg.header("call-id") or "", tag_of(msg.header("to")) or "",
               tag_of(msg.header("from")) or "")
        call = self._by_dialog.get(key)
        if call is None:
            log.debug("ACK outside any dialog absorbed (Call-ID %s)", key[0])
            return
        number, _ = parse_cseq(msg.header("cseq"))
        p = call.pending_2xx.pop(number, None)
        if p is None:
            return  # a retransmitted ACK
        if p.timer is not None:
            p.timer.cancel()
        if p.initial:
            call.record.acked_at = time.time()
            self._schedule_behaviour(call)
        sdp, _meta, _problem = self._split_body(msg) if msg.body.strip() else (None, None, None)
        if sdp is not None:  # the answer to the SRS's offer in an offerless re-INVITE
            self._apply_answer(call, sdp)

    def _schedule_behaviour(self, call: _Call) -> None:
        b = self.config.behaviour
        if b.bye_after is not None:
            call.timers.append(self._sip.call_later(b.bye_after, self._send_bye, call,
                                                    "bye_after behaviour"))
        if b.snapshot_after is not None:
            call.timers.append(self._sip.call_later(b.snapshot_after, self._send_reinvite,
                                                    call, "snapshot"))
        if b.refresh_after is not None:
            call.timers.append(self._sip.call_later(b.refresh_after, self._send_reinvite,
                                                    call, "refresh"))

    def _on_cancel(self, tx: _ServerTx, via: Via) -> None:
        inv = self._server_txs.get(self._tx_key(tx.request, via, "INVITE"))
        if inv is None:
            self._respond(tx, 481)
            return
        if inv.ignored:  # no_answer: a dead SRS answers nothing
            tx.ignored = True
            return
        call = inv.call
        # RFC 3261 §9.2: 200 to the CANCEL; 487 to the INVITE if it has no final response yet.
        self._respond(tx, 200, to_tag=call.local_tag if call else None)
        if inv.final is None and call is not None:
            self._respond(inv, 487, to_tag=call.local_tag)
            call.record.final_status = 487
            self._end(call, "cancel", "CANCEL from the SRC")

    def _in_dialog(self, tx: _ServerTx) -> None:
        msg = tx.request
        key = (msg.header("call-id") or "", tag_of(msg.header("to")) or "",
               tag_of(msg.header("from")) or "")
        call = self._by_dialog.get(key)
        if call is None or call.record.ended or call.dialog is None:
            self._respond(tx, 481)
            return
        number, _ = parse_cseq(msg.header("cseq"))
        d = call.dialog
        if number < d.remote_cseq:
            self._respond(tx, 500, "CSeq Out of Order")  # RFC 3261 §12.2.2
            return
        d.remote_cseq = number
        method = tx.method
        if method == "BYE":
            self._on_bye(call, tx)
        elif method in ("INVITE", "UPDATE"):
            self._on_reoffer(call, tx)
        elif method == "OPTIONS":
            self._respond(tx, 200, to_tag=call.local_tag,
                          headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
        else:
            self._respond(tx, 405 if method in KNOWN_METHODS else 501,
                          headers=[("Allow", ALLOW)])

    def _on_bye(self, call: _Call, tx: _ServerTx) -> None:
        msg = tx.request
        if msg.body.strip():  # some SRCs send final metadata with the BYE
            sdp, meta, _problem = self._split_body(msg)
            if meta is not None:
                _sip, meta_f = check_request(call.validator, tx.raw, initial=False, source="BYE")
                call.record.metadata_findings.extend(meta_f)
                self._record_metadata(call, meta, in_request=True)
        self._respond(tx, 200, to_tag=call.local_tag)
        call.record.bye_from = "src"
        self._end(call, "bye", "BYE from the SRC")

    def _on_reoffer(self, call: _Call, tx: _ServerTx) -> None:
        """re-INVITE or UPDATE from the SRC: new offer and/or metadata (RFC 7866 §7.1.1.1,
        §9.1)."""
        msg, method, rec = tx.request, tx.method, call.record
        number, _ = parse_cseq(msg.header("cseq"))
        source = f"{method} CSeq {number}"
        if method == "INVITE" and call.invite_client is not None:
            self._respond(tx, 491)  # RFC 3261 §14.2: glare with the SRS's own re-INVITE
            return
        sdp = meta = None
        if msg.body.strip():
            sdp, meta, problem = self._split_body(msg)
            if problem is not None and "no SDP" not in problem:
                call.finding("S06", Severity.ERROR, problem, source)
                self._respond(tx, 400, headers=[_warning(self.config.name, problem)])
                return
        offered = None
        if sdp is not None:
            try:
                offered = parse_offer(sdp)
            except SipError as exc:
                call.finding("S06", Severity.ERROR, f"SDP: {exc}", source)
                self._respond(tx, 400, headers=[_warning(self.config.name, f"SDP: {exc}")])
                return
            if len(offered) < len(call.slots):
                why = (f"the offer has {len(offered)} m-lines, fewer than the {len(call.slots)} "
                       "before (RFC 3264 §8: m-lines are never removed)")
                call.finding("S06", Severity.ERROR, why, source)
                self._respond(tx, 488, headers=[_warning(self.config.name, why)])
                return
        if msg.body.strip():
            sip_f, meta_f = check_request(call.validator, tx.raw, initial=False, source=source,
                                          sdp=sdp, previous_sdp=call.last_offer_sdp)
            rec.sip_findings.extend(sip_f)
            rec.metadata_findings.extend(meta_f)
        if call.dialog is not None:
            call.dialog.refresh_target(msg)
        datamode = self._record_metadata(call, meta, in_request=True) if meta is not None \
            else None
        body = b""
        if offered is not None:
            try:
                self._apply_offer(call, offered)
            except SiprecctlError as exc:
                call.finding("S02", Severity.ERROR, f"cannot receive the media: {exc}", source)
                self._respond(tx, 500, headers=[_warning(self.config.name, str(exc))])
                return
            call.last_offer_sdp = sdp
            body = self._our_sdp(call)
        elif method == "INVITE":
            # RFC 3261 §14.2: no offer in the re-INVITE, so the 2xx carries one.
            body = self._our_sdp(call)
        rec.reinvites.append({
            "at": time.time(), "method": method, "from": "src", "kind": None, "status": 200,
            "had_sdp": sdp is not None, "had_metadata": meta is not None, "datamode": datamode,
            "directions": {s.stats.label: s.stats.direction for s in call.slots}})
        self._respond(tx, 200, to_tag=call.local_tag, body=body,
                      content_type="application/sdp" if body else None,
                      headers=[("Contact", self._contact(rec.transport)), ("Allow", ALLOW)])
        if method == "INVITE":
            assert tx.last_response is not None
            self._await_ack(call, number, tx.last_response, initial=False)

    def _apply_answer(self, call: _Call, sdp: bytes) -> None:
        """The SRC's answer to an SRS offer: its direction decides the SRS's."""
        try:
            answered = parse_offer(sdp)
        except SipError as exc:
            call.finding("S05", Severity.ERROR, f"unreadable SDP answer from the SRC: {exc}")
            return
        for a in answered:
            if a.index < len(call.slots):
                slot = call.slots[a.index]
                if slot.recorder is not None and slot.stats.direction != "inactive":
                    slot.stats.direction = offer_direction(a.direction) if a.port else "inactive"

    def _record_metadata(self, call: _Call, data: bytes, *, in_request: bool) -> str:
        rec = call.record
        mode, model = metadata_datamode(data)
        now = time.time()
        rec.metadata_docs.append((mode, now))
        if model is not None:
            call.participants.apply(model)
            by_label = call.participants.by_label()
            for label, stats in rec.labels.items():
                stats.participants = by_label.get(label, [])
        if in_request and mode == "complete" and rec.snapshot_requested_at is not None:
            rec.snapshot_received_after_request = True
        return mode

    # -- requests the SRS sends

    def _target_allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
            except (OSError, IndexError, ValueError):
                return False
        return self.config.allow_public_targets or ip.is_loopback or ip.is_private

    def _srs_request(self, call: _Call, method: str, kind: str, body: bytes = b"",
                     content_type: str | None = None, attempt: int = 1) -> _ClientTx | None:
        d = call.dialog
        if d is None:
            return None
        try:
            host, port = d.next_hop()
        except SipError as exc:
            call.finding("S05", Severity.ERROR, f"cannot send {method}: {exc}")
            return None
        if not self._target_allowed(host):
            call.finding("S05", Severity.ERROR, f"not sending {method} to {host}: not a "
                         "loopback or private address (allow_public_targets is off)")
            return None
        transport = call.record.transport
        if transport == "tcp":
            conn = call.conn if call.conn is not None and not call.conn.closed else None
            if conn is None:
                try:
                    conn = self._connect(host, port)
                except LabError as exc:
                    call.finding("S05", Severity.ERROR, f"cannot send {method}: {exc}")
                    return None
                call.conn = conn
            peer = _Peer("tcp", conn.addr, conn)
        else:
            peer = _Peer("udp", (host, port))
        req = d.request(method, sent_by=(self.address, self.port),
                        contact=self._contact(transport) if method == "INVITE" else None,
                        body=body, content_type=content_type,
                        headers=[("User-Agent", AGENT)])
        tx = _ClientTx(req, peer, call, kind, attempt)
        self._client_txs[req.branch] = tx
        if method == "INVITE":
            call.invite_client = tx
        retrans = Retransmitter(time.monotonic(), t1=self.config.t1,
                                t2=None if method == "INVITE" else self.config.t2,
                                timeout=self.config.timer_b)
        if transport != "udp":
            retrans.next_at = retrans.deadline  # reliable transport: Timer B/F only
        tx.retrans = retrans
        log.info("session %s: sending %s (%s)", call.record.session_id, method, kind)
        if not self._send(peer, req.data):
            self._client_done(tx)
            self._client_result(tx, None, "transport error")
            return None
        tx.timer = self._sip.call_at(retrans.wake_at(), self._tick_client, tx)
        return tx

    def _tick_client(self, tx: _ClientTx) -> None:
        if self._client_txs.get(tx.req.branch) is not tx or tx.retrans is None:
            return
        state = tx.retrans.poll(time.monotonic())
        if state == "expired":
            self._client_done(tx)
            self._client_result(tx, None, f"no final response within {self.config.timer_b:g} s "
                                          "(Timer B/F)")
            return
        if state == "send":
            self._send(tx.peer, tx.req.data)
        tx.timer = self._sip.call_at(tx.retrans.wake_at(), self._tick_client, tx)

    def _client_done(self, tx: _ClientTx) -> None:
        self._client_txs.pop(tx.req.branch, None)
        if tx.timer is not None:
            tx.timer.cancel()
        if tx.call.invite_client is tx:
            tx.call.invite_client = None

    def _on_response(self, msg: SipMessage) -> None:
        try:
            via = top_via(msg)
            number, method = parse_cseq(msg.header("cseq"))
        except SipError as exc:
            log.warning("unusable response dropped: %s", exc)
            return
        status = msg.status or 0
        tx = self._client_txs.get(via.branch or "")
        if tx is None or tx.req.method != method:
            if method == "INVITE" and 200 <= status < 300:
                # A retransmitted 2xx: ACK it again (RFC 3261 §13.2.2.4).
                key = (msg.header("call-id") or "", tag_of(msg.header("from")) or "",
                       tag_of(msg.header("to")) or "")
                call = self._by_dialog.get(key)
                if call is not None and number in call.acks:
                    self._send(call.acks[number][1], call.acks[number][0])
            return
        if status < 200:
            if method == "INVITE" and tx.retrans is not None:
                tx.retrans.next_at = tx.retrans.deadline  # Proceeding: stop Timer A
            return
        self._client_done(tx)
        d = tx.call.dialog
        if method == "INVITE" and d is not None:
            if status < 300:
                ack = d.ack(number, sent_by=(self.address, self.port))
                tx.call.acks[number] = (ack, tx.peer)
            else:
                ack = d.ack(number, sent_by=(self.address, self.port), branch=tx.req.branch,
                            to_value=msg.header("to"))
            self._send(tx.peer, ack)
        self._client_result(tx, msg, None)

    def _client_result(self, tx: _ClientTx, msg: SipMessage | None, error: str | None) -> None:
        call, rec = tx.call, tx.call.record
        status = msg.status if msg is not None else None
        what = f"{tx.req.method} ({tx.kind})"
        if tx.kind == "bye":
            rec.bye_status = status
            if status is None or status >= 300:
                call.finding("S05", Severity.WARNING,
                             f"the SRC answered the SRS's BYE with {status or error}")
            self._write_json(call)
            return
        entry: dict[str, Any] = {"at": time.time(), "method": "INVITE", "from": "srs",
                                 "kind": tx.kind, "status": status, "had_sdp": False,
                                 "had_metadata": False, "datamode": None}
        if msg is not None and status is not None and 200 <= status < 300:
            if msg.body.strip():
                sdp, meta, _problem = self._split_body(msg)
                entry["had_sdp"] = sdp is not None
                if sdp is not None:
                    self._apply_answer(call, sdp)
                if meta is not None:
                    entry["had_metadata"] = True
                    rec.metadata_findings.extend(call.validator.validate(meta, source="200"))
                    entry["datamode"] = self._record_metadata(call, meta, in_request=False)
                    if tx.kind == "snapshot":
                        call.finding("S04", Severity.WARNING,
                                     "metadata came in the 200 to the snapshot request; RFC "
                                     "7866 §9.2 expects the snapshot in a new request")
            else:
                call.finding("S05", Severity.ERROR, f"the SRC's 2xx to the SRS's {what} has no "
                             "SDP answer (RFC 3261 §14.1)")
        elif status == 491 and tx.attempt < 3:
            # RFC 3261 §14.1: the SRS did not choose the Call-ID, so it waits 0–2 s.
            call.timers.append(self._sip.call_later(random.uniform(0.0, 2.0),
                                                    self._send_reinvite, call, tx.kind,
                                                    tx.attempt + 1))
        elif status in (408, 481) or status is None:
            call.finding("S05", Severity.ERROR, f"the SRS's {what} got {status or error}")
            if status == 481:  # RFC 3261 §12.2.1.2: the dialog is gone
                self._end(call, "timeout", f"481 to the SRS's {what}")
            else:
                self._send_bye(call, f"{status or error} for the SRS's {what}")
        else:
            call.finding("S05", Severity.WARNING, f"the SRC answered the SRS's {what} with "
                         f"{status}")
        entry["directions"] = {s.stats.label: s.stats.direction for s in call.slots}
        rec.reinvites.append(entry)
        if rec.ended:
            self._write_json(call)

    def _send_bye(self, call: _Call, reason: str) -> None:
        if call.record.state != "confirmed":
            return
        self._srs_request(call, "BYE", "bye")
        call.record.bye_from = "srs"
        if not call.record.ended:
            self._end(call, "bye", f"BYE from the SRS: {reason}")

    def _send_reinvite(self, call: _Call, kind: str, attempt: int = 1) -> None:
        rec = call.record
        if rec.state != "confirmed":
            return
        if call.invite_client is not None or call.pending_2xx:
            # RFC 3261 §14.1: one INVITE transaction at a time per dialog; try again shortly.
            call.timers.append(self._sip.call_later(self.config.t1, self._send_reinvite, call,
                                                    kind, attempt))
            return
        if kind == "refresh" and self.config.behaviour.move_on_refresh:
            self._move_media(call)
        sdp = self._our_sdp(call)
        if kind == "snapshot":
            request = build_snapshot_request(SnapshotRequest(
                reason=f"SRS {self.config.name} requests a complete metadata snapshot",
                lang="en"))
            ctype, body = build_multipart([([("Content-Type", "application/sdp")], sdp),
                                           (snapshot_request_headers(), request)])
        else:
            ctype, body = "application/sdp", sdp
        tx = self._srs_request(call, "INVITE", kind, body, ctype, attempt)
        if tx is not None and kind == "snapshot":
            rec.snapshot_requests_sent += 1
            if rec.snapshot_requested_at is None:
                rec.snapshot_requested_at = time.time()

    # -- the end of a session

    def _end(self, call: _Call, event: str, reason: str) -> None:
        rec = call.record
        rec.state = next_state(rec.state, event)
        rec.ended_at = time.time()
        rec.end_reason = reason
        for t in call.timers:
            t.cancel()
        for p in call.pending_2xx.values():
            if p.timer is not None:
                p.timer.cancel()
        call.pending_2xx.clear()
        if call.dialog is not None:
            d = call.dialog
            self._by_dialog.pop((d.call_id, d.local_tag, d.remote_tag), None)
        for slot in call.slots:
            if slot.recorder is not None and not slot.recorder.closed:
                try:
                    slot.recorder.close()
                except OSError as exc:
                    log.error("session %s: closing %s: %s", rec.session_id, slot.stats.label,
                              exc)
                self._media.remove(slot.recorder.sock)
            slot.stats.direction = "inactive"
        log.info("session %s: %s (%s)", rec.session_id, rec.state, reason)
        self._write_json(call)
        if self._on_end is not None:
            try:
                self._on_end(copy.deepcopy(rec))
            except Exception:
                log.exception("on_session_end callback failed")

    def _write_json(self, call: _Call) -> None:
        """``<record_dir>/<session_id>.json``, atomically (temp file + link/rename in the
        same directory); the first write never replaces an existing file."""
        rec = call.record
        directory = Path(self.config.record_dir)
        try:
            if rec.json_path is not None:
                self._atomic_write(directory, Path(rec.json_path), rec, replace=True)
                return
            for n in range(1000):
                path = directory / (f"{rec.session_id}.json" if n == 0
                                    else f"{rec.session_id}-{n}.json")
                rec.json_path = str(path)
                if self._atomic_write(directory, path, rec, replace=False):
                    return
            raise RecordingError(f"no free file name for {rec.session_id}.json")
        except (OSError, RecordingError) as exc:
            log.error("session %s: cannot write its JSON record: %s", rec.session_id, exc)

    @staticmethod
    def _atomic_write(directory: Path, path: Path, rec: SrsSession, *, replace: bool) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=f".{rec.session_id}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(rec.to_dict(), f, indent=2, sort_keys=True)
                f.write("\n")
            if replace:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # fails if the name exists: never overwrite
            except FileExistsError:
                return False
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
