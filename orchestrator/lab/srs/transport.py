"""The reference SRS's SIP transport (RFC 3261 §18): a UDP socket and a TCP listener on the
same address and port, TCP connections (accepted, or opened to send a request) framed by
Content-Length. Runs on the SIP :class:`~.loop.EventLoop`; hands whole messages on."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import LabError
from ...sip import StreamFramer, Via
from .config import SrsConfig
from .loop import EventLoop

__all__ = ["Conn", "Peer", "SipTransport"]

log = logging.getLogger(__name__)


SIP_RCVBUF = 4 * 2**20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's; typeshed lacks the name


def _large_receive_buffer(sock: socket.socket) -> None:
    """A 4 MiB receive buffer for the SIP socket: a stall of this one-threaded server under
    a burst of INVITEs (3–4 KB each) overflowed the default (measured in the scale lab at
    130 calls/s: 360 datagrams dropped, ACKs among them). As root beyond net.core.rmem_max
    (SO_RCVBUFFORCE), else up to it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, SIP_RCVBUF)
    except OSError:  # not root
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SIP_RCVBUF)


class Conn:
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
class Peer:
    """Where to send: UDP address, or a TCP connection."""

    transport: str
    addr: tuple[str, int]
    conn: Conn | None = None


class SipTransport:
    """The SIP sockets. ``on_message(data, peer)`` gets every message (a UDP datagram, or a
    message framed off a TCP stream); ``on_broken(head, peer, why)`` a TCP stream that
    cannot be framed (the connection is closed right after)."""

    def __init__(self, config: SrsConfig, loop: EventLoop, *,
                 on_message: Callable[[bytes, Peer], None],
                 on_broken: Callable[[bytes, Peer, str], None]) -> None:
        self.config = config
        self._loop = loop
        self._on_message = on_message
        self._on_broken = on_broken
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._conns: set[Conn] = set()
        self.address = config.address
        self.port = config.port

    # -- lifecycle

    def bind(self) -> None:
        """Bind the configured transports; port 0 picks one free on both UDP and TCP."""
        cfg = self.config
        for _attempt in range(20):
            udp = tcp = None
            try:
                if "udp" in cfg.transports:
                    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    _large_receive_buffer(udp)
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

    def listen(self) -> None:
        """Watch the bound sockets on the loop."""
        if self._udp is not None:
            self._loop.add_reader(self._udp, self._on_udp)
        if self._tcp is not None:
            self._loop.add_reader(self._tcp, self._on_accept)

    def close(self) -> None:
        for conn in list(self._conns):
            self.close_conn(conn)
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()

    # -- sending

    def send(self, peer: Peer, data: bytes) -> bool:
        if peer.transport == "tcp":
            if peer.conn is None or not peer.conn.send(data):
                if peer.conn is not None:
                    self.close_conn(peer.conn)
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

    def connect(self, host: str, port: int) -> Conn:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError as exc:
            raise LabError(f"cannot connect to {host}:{port} over TCP: {exc}") from exc
        return self._add_conn(sock, (host, port))

    def contact(self, transport: str) -> str:
        """The SRS's Contact for a session on ``transport`` (RFC 7866 §6.1.1: +sip.srs)."""
        tp = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:srs@{self.address}:{self.port}{tp}>;+sip.srs"

    @staticmethod
    def reply_peer(via: Via, peer: Peer) -> Peer:
        """RFC 3261 §18.2.2 / RFC 3581: TCP on the same connection; UDP to the source IP and
        the rport or sent-by port."""
        if peer.transport == "tcp":
            return peer
        port = peer.addr[1] if via.has_rport else (via.port or 5060)
        return Peer("udp", (peer.addr[0], port))

    # -- receiving

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
                self._on_message(data, Peer("udp", addr[:2]))

    def _on_accept(self) -> None:
        assert self._tcp is not None
        try:
            sock, addr = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._add_conn(sock, addr[:2])

    def _add_conn(self, sock: socket.socket, addr: tuple[str, int]) -> Conn:
        sock.settimeout(2.0)  # bounds sendall; reads only happen when readable
        conn = Conn(sock, addr)
        self._conns.add(conn)
        self._loop.add_reader(sock, lambda: self._on_tcp(conn))
        return conn

    def close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._loop.remove(conn.sock)

    def _on_tcp(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self.close_conn(conn)
            return
        peer = Peer("tcp", conn.addr, conn)
        for message in conn.framer.feed(data):
            self._on_message(message, peer)
        if conn.framer.error is not None:
            log.warning("TCP %s:%s: %s; closing", *conn.addr, conn.framer.error)
            self._on_broken(conn.framer.broken_head or b"", peer, conn.framer.error)
            self.close_conn(conn)
