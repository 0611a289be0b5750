"""NG transports: move one request's bytes to rtpengine and its reply's bytes back.

A transport knows nothing about commands; :class:`~orchestrator.ng.client.NgClient`
encodes and decodes. ``request(cookie, message, timeout)`` returns the reply's *body*
(the bytes after ``cookie SP``). Backend errors are translated here::

    UdpTransport   one socket, many requests in flight (thread-safe), replies matched by
                   cookie, retransmission of the same bytes with backoff, then NgTimeout
    TcpTransport   TCP-NG (``listen-tcp-ng``), bencode only, one request at a time
    HttpTransport  ``POST /ng`` on ``listen-http`` (requests; imported on first use)
    MockTransport  calls a handler function with the decoded request (unit tests)
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from ..errors import NgProtocolError, NgTimeout, NgTransportError
from .codec import Encoding, StreamDecoder, decode_body, encode_body, split_cookie, to_text

if TYPE_CHECKING:
    import requests

__all__ = ["HttpTransport", "MockTransport", "TcpTransport", "Transport", "UdpTransport"]

_monotonic = time.monotonic


class Transport:
    """Base class: ``request`` one message, ``close`` when done."""

    kind = "base"
    encodings: frozenset[str] = frozenset({"bencode", "json"})

    def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
        raise NotImplementedError

    def request_many(self, items: list[tuple[bytes, bytes]], timeout: float,
                     window: int = 64,
                     decode: Callable[[int, bytes], Any] | None = None) -> list[Any]:
        """Several requests; each result is a reply body (or ``decode(index, body)`` if
        given) or the transport/protocol exception that request raised. The base
        implementation sends them one after another."""
        out: list[Any] = []
        for k, (cookie, message) in enumerate(items):
            try:
                body = self.request(cookie, message, timeout)
            except (NgTransportError, NgProtocolError) as exc:
                out.append(exc)
                continue
            out.append(body if decode is None else decode(k, body))
        return out

    def close(self) -> None:
        """Release sockets/sessions (idempotent)."""

    @property
    def label(self) -> str:
        return self.kind

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log() -> Any:
    import logging  # imported on demand: keeps `siprecctl ng ping` cold start short

    return logging.getLogger("orchestrator.ng")


# ----------------------------------------------------------------------------- UDP
def _resolve(host: str, port: int) -> tuple[int, Any]:
    """Numeric addresses without getaddrinfo (which loads the idna codec: ~3 ms of cold
    start for ``siprecctl ng ping``)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, port)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    return info[0], info[4]


class _Waiter:
    """One request in flight. ``wake`` is a binary semaphore (a lock that starts acquired):
    releasing it wakes the caller, because its reply arrived or because it should take over
    reading the socket. A second release before the caller woke is a no-op."""

    __slots__ = ("reply", "wake")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


def _wake(w: _Waiter) -> None:
    try:
        w.wake.release()
    except RuntimeError:  # already released, not yet consumed: the caller will wake anyway
        pass


# SO_RCVTIMEO as a struct timeval of two C longs: Linux (the kernel rounds up to a jiffy)
_KERNEL_TIMEOUT = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")
_TIMEVAL = struct.Struct("@ll")
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class UdpTransport(Transport):
    """NG over UDP (rtpengine ``listen-ng``): one connected socket shared by all threads.

    Leader/follower: the first waiting caller reads the socket and hands each reply to its
    owner by cookie (the reply goes into the owner's slot, and the owner is woken); when it
    leaves, it wakes the newest caller still waiting so that it takes over. A lone caller
    therefore reads its own reply without a thread switch, and no thread sits idle in
    ``recv``. Unanswered requests are sent again -- same cookie, same bytes, so rtpengine's
    cookie cache answers a duplicate without executing it twice (``cookie_cache.c``) --
    after ``first_retry`` seconds, then with the interval multiplied by ``backoff`` (capped
    at ``max_retry``), until the request's timeout expires (:class:`NgTimeout`).

    The socket stays in blocking mode: a receive timeout is set in the kernel
    (``SO_RCVTIMEO``) instead of Python's socket timeout, which would add a ``poll`` before
    every ``send`` and ``recv`` (two syscalls, two GIL releases).
    """

    kind = "udp"

    def __init__(self, host: str, port: int, *, first_retry: float = 0.5, backoff: float = 2.0,
                 max_retry: float = 2.0, bufsize: int = 65535) -> None:
        if first_retry <= 0 or backoff < 1:
            raise ValueError("first_retry must be > 0 and backoff >= 1")
        self.address = (host, port)
        self.first_retry = first_retry
        self.backoff = backoff
        self.max_retry = max_retry
        self.bufsize = bufsize  # rtpengine: MAX_UDP_LENGTH 0xffff
        self.retransmissions = 0  # total, for diagnostics and tests
        self._mutex = threading.Lock()  # socket creation and close
        self._reader = threading.Lock()  # held by the caller reading the socket (the leader)
        self._pending: dict[bytes, _Waiter] = {}  # cookie -> waiter (dict ops are atomic)
        self._sock: socket.socket | None = None
        self._closed = False
        self._kernel_timeout = _KERNEL_TIMEOUT
        self._armed = -1.0  # SO_RCVTIMEO currently set (seconds); changed by the reader only

    @property
    def label(self) -> str:
        return f"udp:{self.address[0]}:{self.address[1]}"

    def _socket(self) -> socket.socket:
        s = self._sock
        if s is not None:
            return s
        with self._mutex:
            if self._closed:
                raise NgTransportError(f"{self.label}: transport is closed")
            if self._sock is None:
                try:
                    family, sockaddr = _resolve(*self.address)
                    s = socket.socket(family, socket.SOCK_DGRAM)
                    # many replies in flight (a query reply is ~2 kB): room for a burst
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                    # connected: the kernel only passes us datagrams from this rtpengine
                    s.connect(sockaddr)
                    s.settimeout(None)  # blocking, whatever socket.setdefaulttimeout says
                except OSError as exc:
                    raise NgTransportError(f"{self.label}: {exc}") from exc
                if self._kernel_timeout:
                    try:
                        # a send never blocks for long on UDP; this bounds it anyway
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(1, 0))
                        self._arm(s, self.first_retry)
                    except OSError:  # unexpected struct timeval layout: Python timeouts
                        self._kernel_timeout = False
                self._sock = s
            return self._sock

    def _arm(self, sock: socket.socket, seconds: float) -> None:
        usec = max(int(seconds * 1e6), 1)  # zero would mean "wait forever"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        _TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000))
        self._armed = seconds

    def _recv(self, sock: socket.socket, remaining: float) -> bytes | None:
        """One datagram, or None if none came within about ``remaining`` seconds (reader
        only). The kernel timeout is re-armed only when it is off by more than a little."""
        try:
            if self._kernel_timeout:
                armed = self._armed
                if armed > remaining + 0.001 or armed < remaining * 0.5:
                    self._arm(sock, remaining)
                try:
                    return sock.recv(self.bufsize)
                except BlockingIOError:  # SO_RCVTIMEO expired
                    return None
            sock.settimeout(max(remaining, 1e-6))
            try:
                return sock.recv(self.bufsize)
            except TimeoutError:
                return None
        except OSError as exc:
            raise self._recv_error(exc) from exc

    def _recv_error(self, exc: OSError, what: str = "receive") -> NgTransportError:
        if isinstance(exc, ConnectionRefusedError):
            # ICMP port unreachable on the connected socket: nothing listens there
            return NgTransportError(f"{self.label}: connection refused (is rtpengine "
                                    f"listening?)")
        return NgTransportError(f"{self.label}: {what} failed: {exc}")

    def _send(self, sock: socket.socket, message: bytes) -> None:
        try:
            sock.send(message)
        except OSError as exc:
            raise NgTransportError(f"{self.label}: send failed: {exc}") from exc

    def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
        sock = self._sock or self._socket()
        w = _Waiter()
        pending = self._pending
        if pending.setdefault(cookie, w) is not w:
            raise ValueError(f"cookie {cookie!r} is already in flight")
        try:
            now = _monotonic()
            deadline = now + timeout
            interval = self.first_retry
            self._send(sock, message)
            next_send = now + interval
            while True:
                if w.reply is not None:
                    return w.reply[len(cookie) + 1:]
                now = _monotonic()
                if now >= deadline:
                    raise NgTimeout(f"{self.label}: no reply after {timeout:g} s")
                if now >= next_send:
                    self.retransmissions += 1
                    self._send(sock, message)
                    interval = min(interval * self.backoff, self.max_retry)
                    next_send = now + interval
                until = deadline if deadline < next_send else next_send
                if self._reader.acquire(False):
                    try:
                        self._lead(sock, w, until)
                    finally:
                        self._reader.release()
                else:
                    w.wake.acquire(True, until - now)
        finally:
            pending.pop(cookie, None)
            if not self._reader.locked():
                self._handover()

    def _lead(self, sock: socket.socket, w: _Waiter, until: float) -> None:
        """Leader: read replies and hand them to their owners until ours arrives or
        ``until``. Owners are woken when the socket has nothing more to read (checked with
        a non-blocking receive) rather than one by one: a woken owner needs the GIL, and
        the leader would otherwise take it back from every one of them."""
        pending = self._pending
        woken: list[_Waiter] = []
        try:
            while w.reply is None:
                if woken:
                    try:
                        data = sock.recv(self.bufsize, _DONTWAIT)
                    except BlockingIOError:
                        for o in woken:
                            _wake(o)
                        woken.clear()
                        continue
                    except OSError as exc:
                        raise self._recv_error(exc) from exc
                else:
                    remaining = until - _monotonic()
                    if remaining <= 0:
                        return
                    got = self._recv(sock, remaining)
                    if got is None:
                        continue
                    data = got
                sp = data.find(b" ", 0, 128)
                other = pending.get(data[:sp]) if sp > 0 else None
                if other is None:
                    self._unknown(data, sp)
                elif other.reply is None:
                    other.reply = data
                    if other is not w:
                        woken.append(other)
                        if not _DONTWAIT or len(woken) >= 32:  # do not hold owners long
                            for o in woken:
                                _wake(o)
                            woken.clear()
        finally:
            for o in woken:
                _wake(o)

    def _dispatch(self, data: bytes) -> None:
        """A reply read by ``request_many`` that belongs to a ``request`` caller."""
        sp = data.find(b" ", 0, 128)
        other = self._pending.get(data[:sp]) if sp > 0 else None
        if other is None:
            self._unknown(data, sp)
        elif other.reply is None:
            other.reply = data
            _wake(other)

    def _unknown(self, data: bytes, sp: int) -> None:
        # a late duplicate (answered retransmission) or garbage: not ours to keep
        _log().debug("%s: dropping reply with unknown cookie %r", self.label,
                     data[:max(sp, 0)][:64])

    def _handover(self) -> None:
        """Wake a caller still waiting for its reply so that it reads the socket: the newest
        one, whose reply is likely to come last (so leadership changes hands rarely)."""
        for other in reversed(list(self._pending.values())):
            if other.reply is None:
                _wake(other)
                return

    def request_many(self, items: list[tuple[bytes, bytes]], timeout: float,
                     window: int = 64,
                     decode: Callable[[int, bytes], Any] | None = None) -> list[Any]:
        """Pipelined: keep up to ``window`` requests in flight from this one thread, each
        retransmitted and timed out on its own schedule (``timeout`` per request).

        ``decode(index, body)``, if given, is applied to each reply as it arrives (so the
        work overlaps with rtpengine answering the next requests) and its result is stored
        instead of the body."""
        if window < 1:
            raise ValueError("window must be at least 1")
        sock = self._socket()
        results: list[Any] = [None] * len(items)
        if not self._reader.acquire(True, timeout):
            raise NgTimeout(f"{self.label}: socket busy for {timeout:g} s")
        try:
            self._pipeline(sock, items, results, timeout, window, decode)
        finally:
            self._reader.release()
            self._handover()
        return results

    def _pipeline(self, sock: socket.socket, items: list[tuple[bytes, bytes]],
                  results: list[Any], timeout: float, window: int,
                  decode: Callable[[int, bytes], Any] | None) -> None:
        n = len(items)
        pending = self._pending
        send, recv, bufsize = sock.send, sock.recv, self.bufsize
        kernel_timeout = self._kernel_timeout
        first = min(self.first_retry, timeout)
        # cookie -> [index, message, deadline, next send, retransmission interval]
        inflight: dict[bytes, list[Any]] = {}
        todo = 0
        next_check = float("inf")  # the earliest deadline or retransmission in flight
        try:
            while todo < n or inflight:
                now = _monotonic()
                if todo < n and len(inflight) < window:
                    stop = min(n, todo + window - len(inflight))
                    for k in range(todo, stop):
                        cookie, message = items[k]
                        if cookie in inflight or cookie in pending:
                            raise ValueError(f"cookie {cookie!r} is already in flight")
                        inflight[cookie] = [k, message, now + timeout, now + first, first]
                        send(message)
                    todo = stop
                    if now + first < next_check:
                        next_check = now + first
                if now >= next_check:
                    next_check = self._timers(sock, inflight, results, now, timeout)
                    if not inflight:
                        continue
                remaining = next_check - now
                if kernel_timeout:
                    armed = self._armed
                    if armed > remaining + 0.001 or armed < remaining * 0.5:
                        self._arm(sock, remaining)
                    try:
                        data = recv(bufsize)
                    except BlockingIOError:  # SO_RCVTIMEO expired
                        continue
                else:
                    got = self._recv(sock, remaining)
                    if got is None:
                        continue
                    data = got
                sp = data.find(b" ", 0, 128)
                st = inflight.pop(data[:sp], None) if sp > 0 else None
                if st is None:
                    self._dispatch(data)  # another thread's reply (or a late duplicate)
                elif decode is None:
                    results[st[0]] = data[sp + 1:]
                else:
                    results[st[0]] = decode(st[0], data[sp + 1:])
        except NgTransportError:
            raise
        except OSError as exc:
            raise self._recv_error(exc, "send/receive") from exc

    def _timers(self, sock: socket.socket, inflight: dict[bytes, list[Any]],
                results: list[Any], now: float, timeout: float) -> float:
        """Time out and retransmit what is due in a ``request_many`` window; returns when
        the next one is due."""
        nxt = float("inf")
        for cookie, st in list(inflight.items()):
            if now >= st[2]:
                results[st[0]] = NgTimeout(f"{self.label}: no reply after {timeout:g} s")
                del inflight[cookie]
                continue
            if now >= st[3]:
                self.retransmissions += 1
                self._send(sock, st[1])
                st[4] = min(st[4] * self.backoff, self.max_retry)
                st[3] = now + st[4]
            nxt = min(nxt, st[2], st[3])
        return nxt

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            s, self._sock = self._sock, None
        if s is not None:
            s.close()


# ----------------------------------------------------------------------------- TCP
class TcpTransport(Transport):
    """TCP-NG (rtpengine ``listen-tcp-ng``): bencode only, one request at a time.

    rtpengine finds message boundaries by validating bencode, so JSON gets no reply, and it
    closes a connection holding more than 1024 bytes of an incomplete message
    (``control_ng.c``, "Buffer length exceeded in control connection"). Each message is
    therefore sent with a single ``sendall``; if the daemon closes the connection anyway,
    the request is sent once more on a new connection with the same cookie (its cookie
    cache makes that safe). Messages with unknown cookies (unsolicited DTMF events when
    ``dtmf-log-ng-tcp`` is on) are skipped.
    """

    kind = "tcp"
    encodings = frozenset({"bencode"})

    def __init__(self, host: str, port: int, *, connect_timeout: float = 2.0) -> None:
        self.address = (host, port)
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._decoder = StreamDecoder()

    @property
    def label(self) -> str:
        return f"tcp:{self.address[0]}:{self.address[1]}"

    def _connect(self, timeout: float) -> socket.socket:
        if self._sock is None:
            try:
                s = socket.create_connection(self.address, min(timeout, self.connect_timeout))
            except TimeoutError as exc:
                raise NgTimeout(f"{self.label}: connect timed out") from exc
            except OSError as exc:
                raise NgTransportError(f"{self.label}: connect failed: {exc}") from exc
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = s
            self._decoder = StreamDecoder()
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
        if message[len(cookie) + 1:len(cookie) + 2] != b"d":
            raise NgTransportError(f"{self.label}: TCP-NG takes bencode only (rtpengine "
                                   f"cannot delimit JSON on a stream)")
        deadline = _monotonic() + timeout
        with self._lock:
            for attempt in (1, 2):
                sock = self._connect(deadline - _monotonic())
                try:
                    return self._exchange(sock, cookie, message, deadline)
                except _ConnectionLost as exc:
                    self._drop()
                    if attempt == 2 or _monotonic() >= deadline:
                        raise NgTransportError(f"{self.label}: {exc}") from exc
                    _log().info("%s: %s; resending on a new connection", self.label, exc)
                except BaseException:
                    self._drop()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self, sock: socket.socket, cookie: bytes, message: bytes,
                  deadline: float) -> bytes:
        try:
            sock.settimeout(max(deadline - _monotonic(), 0.001))
            sock.sendall(message)
            while True:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    raise NgTimeout(f"{self.label}: no reply in time")
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    hint = (" (rtpengine drops TCP-NG connections holding over 1024 bytes "
                            "of an incomplete message)" if len(message) > 1024 else "")
                    raise _ConnectionLost(f"connection closed by rtpengine{hint}")
                for ck, body in self._decoder.feed(data):
                    if ck == cookie:
                        return body
                    _log().debug("%s: skipping message with cookie %r", self.label, ck[:64])
        except TimeoutError as exc:
            raise NgTimeout(f"{self.label}: no reply in time") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _ConnectionLost(str(exc)) from exc
        except OSError as exc:
            raise NgTransportError(f"{self.label}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()


class _ConnectionLost(Exception):
    pass


# ----------------------------------------------------------------------------- HTTP
class HttpTransport(Transport):
    """``POST /ng`` with ``Content-Type: application/x-rtpengine-ng`` (rtpengine
    ``listen-http``); the body is ``cookie SP dictionary`` both ways."""

    kind = "http"

    def __init__(self, host: str, port: int, *, path: str = "/ng", scheme: str = "http",
                 connect_timeout: float = 2.0, verify: bool | str = True) -> None:
        import requests  # imported here: the UDP path must not pay for it

        self.address = (host, port)
        self.url = f"{scheme}://{host}:{port}{path}"
        self.connect_timeout = connect_timeout
        self._requests = requests
        self._session: requests.Session = requests.Session()
        self._session.trust_env = False  # no proxy/netrc lookups in the environment per call
        self._session.verify = verify
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.url

    def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
        rq = self._requests
        try:
            r = self._session.post(self.url, data=message,
                                   headers={"Content-Type": "application/x-rtpengine-ng"},
                                   timeout=(min(self.connect_timeout, timeout), timeout))
        except rq.Timeout as exc:
            raise NgTimeout(f"{self.label}: no reply in {timeout:g} s") from exc
        except rq.RequestException as exc:
            raise NgTransportError(f"{self.label}: {exc}") from exc
        if r.status_code != 200:
            # 10.5: status 600 "error" when the cookie is missing; 404 for unknown paths
            raise NgTransportError(f"{self.label}: HTTP {r.status_code} "
                                   f"{r.text[:200].strip()!r}")
        data = r.content
        ck, off = split_cookie(data)
        if ck != cookie:
            raise NgProtocolError(f"reply cookie {ck[:64]!r} does not match {cookie!r}",
                                  offset=0)
        return data[off:]

    def close(self) -> None:
        self._session.close()


# ----------------------------------------------------------------------------- mock
Handler = Callable[[dict[str, Any]], "dict[str, Any] | bytes"]


class MockTransport(Transport):
    """Calls ``handler(request)`` with the decoded request (keys and strings as ``str``).

    The handler returns a reply dictionary (encoded like the request), raw reply bytes
    (the body after the cookie, to test malformed replies), or raises a siprecctl error
    (e.g. :class:`NgTimeout`). Every decoded request is kept in ``requests``.
    """

    kind = "mock"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.cookies: list[bytes] = []

    def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
        ck, off = split_cookie(message)
        body, enc = decode_body(message, off)
        req = to_text(body)
        self.requests.append(req)
        self.cookies.append(ck)
        reply = self.handler(req)
        if isinstance(reply, bytes):
            return reply
        encoding: Encoding = enc
        return encode_body(reply, encoding)
