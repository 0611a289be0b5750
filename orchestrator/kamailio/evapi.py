"""evapi: Kamailio's event socket. Netstring framing (sans-IO) and a reconnecting client.

The generated config sets ``netstring_format 1``: each event Kamailio relays is framed as
``<len>:<json>,`` and commands sent back are parsed the same way, so commands written
back-to-back are split correctly even when TCP delivers them in one read (evapi 5.6 loops
over the netstrings in its buffer; without netstrings one read is one message).

Authentication (README "Security"): the client's first message is
``{"cmd":"auth","secret":…}``; the edge answers ``{"event":"auth","result":"ok"}`` to the
one controller it accepts, ``"refused"`` (with a ``reason``) to any other while that one is
connected, and nothing at all to a wrong secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import EvapiProtocolError, EvapiRefused, KamailioUnreachable

__all__ = ["EvapiClient", "NetstringDecoder", "encode_netstring"]

log = logging.getLogger(__name__)

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
MAX_FRAME = 1 << 20  # evapi's own read buffer is far smaller; anything bigger is garbage


def encode_netstring(payload: bytes) -> bytes:
    """``<len>:<payload>,``"""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Fed bytes, returns complete payloads. Raises :class:`EvapiProtocolError` on garbage."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self.offset = 0  # bytes consumed so far, for error messages

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            # evapi tolerates whitespace between frames; so do we
            start = 0
            while start < len(self._buf) and self._buf[start] in b" \t\r\n":
                start += 1
            del self._buf[:start]
            self.offset += start
            colon = self._buf.find(b":", 0, 13)
            if colon < 0:
                pending = bytes(self._buf)
                if pending and (not pending.isdigit() or len(pending) > 12):
                    self._fail(0, f"expected a netstring length, got {pending[:12]!r}")
                return out
            digits = bytes(self._buf[:colon])
            if not digits.isdigit():
                self._fail(0, f"bad netstring length {digits[:12]!r}")
            size = int(digits)
            if size > self._max:
                self._fail(0, f"netstring of {size} bytes exceeds {self._max}")
            end = colon + 1 + size
            if len(self._buf) < end + 1:
                return out
            if self._buf[end] != ord(","):
                self._fail(end, "netstring does not end with ','")
            out.append(bytes(self._buf[colon + 1:end]))
            del self._buf[:end + 1]
            self.offset += end + 1

    def _fail(self, at: int, msg: str) -> None:
        pos = self.offset + at
        self._buf.clear()
        raise EvapiProtocolError(f"evapi: {msg} (at offset {pos})")


def decode_event(payload: bytes) -> dict[str, Any]:
    """One event's JSON object; :class:`EvapiProtocolError` when it is not one."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvapiProtocolError(f"evapi: event is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EvapiProtocolError(f"evapi: event is a JSON {type(doc).__name__}, not an object")
    return doc


class EvapiClient:
    """One TCP connection to an edge's evapi socket, authenticated, kept up with backoff.

    ``on_event(event)`` runs in the reader thread for every event (keep it short: hand work
    to other threads). ``on_state(connected)`` reports connection changes. :meth:`send` is
    thread-safe, waits at most ``send_timeout`` (for the lock and for the socket) and raises
    :class:`KamailioUnreachable` while disconnected; a send that times out drops the
    connection, which is then re-established. When the edge refuses this client's first
    connection because another controller is connected, the client stops and
    :attr:`refused` says why; a refused *re*connection is retried (the edge may still hold
    this client's previous connection).
    """

    def __init__(self, addr: tuple[str, int], on_event: Callable[[dict[str, Any]], None], *,
                 secret: str | None = None, on_state: Callable[[bool], None] | None = None,
                 name: str = "evapi", connect_timeout: float = 2.0, send_timeout: float = 2.0,
                 auth_timeout: float = 5.0, backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        self.addr = addr
        self.name = name
        self._secret = secret
        self._on_event = on_event
        self._on_state = on_state
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._auth_timeout = auth_timeout
        self._backoff = backoff
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._settled = threading.Event()  # connected, or refused for good
        self._thread: threading.Thread | None = None
        self.refused: EvapiRefused | None = None
        self.reconnects = 0
        self.malformed = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"evapi-{self.name}", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (and authenticated); False on timeout or refusal."""
        self._settled.wait(timeout)
        return self._connected.is_set()

    def send(self, command: dict[str, Any]) -> None:
        """Send one JSON command (one netstring)."""
        frame = encode_netstring(json.dumps(command, separators=(",", ":")).encode())
        where = f"evapi {self.addr[0]}:{self.addr[1]}"
        if not self._send_lock.acquire(timeout=self._send_timeout):
            raise KamailioUnreachable(f"{where}: another send is blocked for more than "
                                      f"{self._send_timeout:g} s")
        try:
            sock = self._sock
            if sock is None or not self._connected.is_set():
                raise KamailioUnreachable(f"{where} not connected")
            try:
                sock.sendall(frame)
            except OSError as exc:
                # a partial frame may have gone out: this connection cannot be used again
                self._drop(sock)
                why = "Kamailio is not reading" if isinstance(exc, TimeoutError) else str(exc)
                raise KamailioUnreachable(f"{where}: send failed ({why}); reconnecting") \
                    from exc
        finally:
            self._send_lock.release()

    def close(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            self._drop(sock)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    @staticmethod
    def _drop(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _set_state(self, up: bool) -> None:
        if up:
            self._connected.set()
            self._settled.set()
        else:
            self._connected.clear()
            if self.refused is None:
                self._settled.clear()
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:  # a metrics hook must not kill the reader
                log.exception("evapi %s: state callback failed", self.name)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=self._connect_timeout)
        # every blocking call on this socket (sendall above, recv below) is bounded
        sock.settimeout(self._send_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a vanished edge (no FIN) is noticed in about 20 s
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, val in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
        return sock

    def _authenticate(self, sock: socket.socket, decoder: NetstringDecoder) -> list[bytes]:
        """Send the secret; return the frames that followed the edge's "ok" (normally none).
        Raises :class:`EvapiRefused` when another controller holds the edge, and
        :class:`KamailioUnreachable` when no answer comes (wrong secret, or a config
        without evapi authentication)."""
        if self._secret is None:
            return []
        sock.sendall(encode_netstring(json.dumps(
            {"cmd": "auth", "secret": self._secret}, separators=(",", ":")).encode()))
        deadline = time.monotonic() + self._auth_timeout
        # the edge tags the connection at once but sends its answer from a timer route: on a
        # busy edge, events for this connection may arrive before it. They are ours: keep
        # them, in order, for after the answer.
        early: list[bytes] = []
        while time.monotonic() < deadline and not self._stop.is_set():
            sock.settimeout(max(0.01, min(deadline - time.monotonic(), self._send_timeout)))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            finally:
                sock.settimeout(self._send_timeout)
            if not data:
                raise KamailioUnreachable("the edge closed the connection during "
                                          "authentication")
            frames = decoder.feed(data)
            for i, frame in enumerate(frames):
                ev = decode_event(frame)
                if ev.get("event") != "auth":
                    if len(early) >= 10_000:
                        raise EvapiProtocolError("evapi: no auth answer among 10,000 events")
                    early.append(frame)
                    continue
                if ev.get("result") == "ok":
                    return early + frames[i + 1:]
                raise EvapiRefused(f"edge {ev.get('edge', self.name)} refused this "
                                   f"controller: "
                                   f"{str(ev.get('reason', ev.get('result')))[:300]}")
        raise KamailioUnreachable(f"no answer to the evapi authentication in "
                                  f"{self._auth_timeout:g} s (wrong secret, or a kamailio.cfg "
                                  f"rendered before evapi authentication?)")

    def _run(self) -> None:
        delay = self._backoff[0]
        first = True
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except OSError as exc:
                log.warning("evapi %s: cannot connect to %s:%d: %s (retry in %.1f s)",
                            self.name, *self.addr, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            decoder = NetstringDecoder()
            try:
                pending = self._authenticate(sock, decoder)
            except EvapiRefused as exc:
                sock.close()
                if first:  # another controller holds the edge: this one must not run
                    log.error("evapi %s: %s", self.name, exc)
                    self.refused = exc
                    self._settled.set()
                    self._stop.set()
                    return
                # we were the controller: the edge may still hold our old connection (it
                # notices a vanished peer only when the peer's FIN arrives): keep trying
                log.error("evapi %s: %s (retry in %.1f s)", self.name, exc, self._backoff[1])
                self._stop.wait(self._backoff[1])
                continue
            except (OSError, KamailioUnreachable, EvapiProtocolError) as exc:
                log.error("evapi %s: %s:%d: %s (retry in %.1f s)", self.name, *self.addr,
                          exc, delay)
                sock.close()
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            self._sock = sock
            if not first:
                self.reconnects += 1
            first = False
            delay = self._backoff[0]
            log.info("evapi %s: connected to %s:%d", self.name, *self.addr)
            self._set_state(True)
            self._deliver(pending)
            self._read(sock, decoder)
            self._set_state(False)
            self._sock = None  # a send racing with this fails on the closed socket
            with contextlib.suppress(OSError):
                sock.close()
            if not self._stop.is_set():
                log.warning("evapi %s: connection to %s:%d lost", self.name, *self.addr)

    def _deliver(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                event = decode_event(frame)
            except EvapiProtocolError as exc:
                self.malformed += 1
                log.error("%s", exc)
                continue
            try:
                self._on_event(event)
            except Exception:
                log.exception("evapi %s: event handler failed for %s", self.name,
                              event.get("event"))

    def _read(self, sock: socket.socket, decoder: NetstringDecoder) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue  # idle: TCP keepalive notices a dead peer
            except OSError:
                return
            if not data:
                return
            if _QUICKACK is not None:
                # evapi does not set TCP_NODELAY: Kamailio holds an event back (Nagle) until
                # the previous one is ACKed, and Linux delays that ACK up to 40 ms. Measured:
                # an SRS's 200 relayed right after its 100 reached us ~35 ms late. Quick ACKs
                # (re-armed after every read, the kernel clears them) remove the stall.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            try:
                frames = decoder.feed(data)
            except EvapiProtocolError as exc:
                self.malformed += 1
                log.error("%s; dropping the connection", exc)
                return
            self._deliver(frames)
