"""Scripted phones for the lab and the tests: a caller and a callee talking SIP over UDP
through a Kamailio edge, with 20 ms G.711 A-law RTP both ways, hold/resume re-INVITEs and
BYE. Unlike sipp scenarios, a test can act between steps (hold now, pause the recording,
count the packets each side sent after the answer)."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import LabError, SipError
from ..sip import (
    SipMessage,
    build_message,
    build_response,
    contact_uri,
    format_name_addr,
    new_branch,
    parse_sip_message,
    request_target,
    route_set,
    tag_of,
)

__all__ = ["CalleeServer", "LabCall", "RtpStream"]

PCMA_SILENCE = b"\xd5" * 160  # 20 ms of A-law silence


class RtpStream:
    """One side's RTP: sends a packet every 20 ms to ``target`` while ``sending``; counts
    what it sent and received."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self.sending = False
        self.sent = 0
        self.received = 0
        self._ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rtp-{self.port}")
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.sending and self.target is not None:
                hdr = struct.pack("!BBHII", 0x80, 8, self._seq & 0xFFFF, self._ts & 0xFFFFFFFF,
                                  self._ssrc)
                with contextlib.suppress(OSError):
                    self.sock.sendto(hdr + PCMA_SILENCE, self.target)
                    self.sent += 1
                self._seq += 1
                self._ts += 160
            while True:
                try:
                    self.sock.recv(2048)
                    self.received += 1
                except OSError:
                    break
            next_at += 0.02
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()


def _sdp(port: int, direction: str, version: int) -> str:
    return (f"v=0\r\no=lab {port} {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na={direction}\r\n")


def _media_target(sdp: bytes) -> tuple[tuple[str, int], str]:
    """(c= address, m= port) of the first audio stream, and its direction."""
    host, port, direction = "127.0.0.1", 0, "sendrecv"
    for line in sdp.decode("latin-1").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio ") and not port:
            port = int(line.split()[1])
        elif line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive") and line.startswith("a="):
            direction = line[2:]
    return (host, port), direction


_ANSWER = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
           "inactive": "inactive"}


def _response(req: SipMessage, *, to_tag: str, contact: str, body: str = "") -> bytes:
    """A 200 to ``req`` (RFC 3261 §8.2.6), Record-Route copied (§12.1.1)."""
    return build_response(req, 200, to_tag=to_tag, headers=[("Contact", f"<{contact}>")],
                          body=body.encode(), record_route=True)


@dataclass
class _Leg:
    rtp: RtpStream
    to_tag: str
    version: int = 1


class CalleeServer:
    """The callee of every lab call reaching ``(host, port)``: answers at once, RTP both ways."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.contact = f"sip:callee@{host}:{self.port}"
        self.legs: dict[str, _Leg] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="callee")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            try:
                msg = parse_sip_message(data)
            except SipError:
                continue
            if msg.method is None or msg.method == "ACK":
                continue
            call_id = msg.header("call-id") or ""
            leg = self.legs.get(call_id)
            body = ""
            if msg.method == "INVITE":
                if leg is None:
                    leg = self.legs[call_id] = _Leg(RtpStream(self.host), secrets.token_hex(4))
                else:
                    leg.version += 1
                target, direction = _media_target(msg.body)
                answer = _ANSWER[direction]
                leg.rtp.target = target
                leg.rtp.sending = answer in ("sendrecv", "sendonly")
                body = _sdp(leg.rtp.port, answer, leg.version)
            elif msg.method == "BYE" and leg is not None:
                leg.rtp.sending = False
            tag = leg.to_tag if leg else "none"
            with contextlib.suppress(OSError):
                self.sock.sendto(_response(msg, to_tag=tag, contact=self.contact, body=body),
                                 addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        for leg in self.legs.values():
            leg.rtp.close()
        self.sock.close()


@dataclass
class LabCall:
    """The caller side of one call through ``edge``; ``headers`` go into the INVITE."""

    edge: tuple[str, int]
    callee: CalleeServer
    headers: Mapping[str, str] = field(default_factory=dict)
    user: str = "callee"
    timeout: float = 5.0
    display: str = "Lab Caller"  # the From display name (quoted and escaped as SIP wants)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.call_id = f"lab-{secrets.token_hex(8)}@127.0.0.1"
        self.from_tag = secrets.token_hex(4)
        self.to_tag: str | None = None
        self.remote_target: str | None = None
        self.route: list[str] = []
        self.rtp = RtpStream()
        self._cseq = itertools.count(1)
        self._version = itertools.count(1)
        self.answered_at: float | None = None

    # -------------------------------------------------------------- SIP plumbing
    def _request(self, method: str, cseq: int, body: str = "", ruri: str | None = None) -> bytes:
        target = ruri or self.remote_target or f"sip:{self.user}@{self.edge[0]}:{self.edge[1]}"
        ruri, routes = request_target(self.route, target)
        to = f"<sip:{self.user}@{self.edge[0]}:{self.edge[1]}>"
        if self.to_tag:
            to += f";tag={self.to_tag}"
        me = f"sip:caller@127.0.0.1:{self.port}"
        headers = [("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch={new_branch()}"),
                   ("Max-Forwards", "70"),
                   ("From", format_name_addr(me, self.display, (("tag", self.from_tag),))),
                   ("To", to), ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}"),
                   ("Contact", f"<{me}>"), *(("Route", r) for r in routes)]
        if method == "INVITE" and cseq == 1:
            headers += list(self.headers.items())
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return build_message(f"{method} {ruri} SIP/2.0", headers, body.encode())

    def _send(self, data: bytes) -> None:
        self.sock.sendto(data, self.edge)

    def _final(self, cseq: int, method: str) -> SipMessage:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except OSError:
                continue
            msg = parse_sip_message(data)
            if msg.status is None:
                if msg.method in ("BYE", "INVITE", "UPDATE", "OPTIONS"):  # from the far end
                    self._send(_response(msg, to_tag=self.from_tag,
                                         contact=f"sip:caller@127.0.0.1:{self.port}"))
                continue
            if msg.header("cseq") != f"{cseq} {method}" or msg.status < 200:
                continue
            return msg
        raise LabError(f"call {self.call_id}: no final reply to {method} in {self.timeout:g} s")

    def _ack(self, cseq: int) -> None:
        self._send(self._request("ACK", cseq))

    # -------------------------------------------------------------- call control
    def start(self) -> None:
        """INVITE, wait for 200, ACK, then RTP both ways."""
        cseq = next(self._cseq)
        self._send(self._request("INVITE", cseq, _sdp(self.rtp.port, "sendrecv",
                                                      next(self._version))))
        ok = self._final(cseq, "INVITE")
        if ok.status != 200:
            raise LabError(f"call {self.call_id} rejected: {ok.start_line}")
        self.to_tag = tag_of(ok.header("to"))
        contact = ok.header("contact")
        self.remote_target = contact_uri(contact) if contact else None
        self.route = list(route_set(ok.header_all("record-route"), uac=True))
        self._ack(cseq)
        self.answered_at = time.time()
        self.rtp.target, _ = _media_target(ok.body)
        self.rtp.sending = True
        leg = self.callee.legs.get(self.call_id)
        if leg is None:
            raise LabError(f"call {self.call_id}: the callee did not see the INVITE")

    @property
    def callee_rtp(self) -> RtpStream:
        return self.callee.legs[self.call_id].rtp

    def reinvite(self, direction: str) -> None:
        cseq = next(self._cseq)
        self._send(self._request("INVITE", cseq, _sdp(self.rtp.port, direction,
                                                      next(self._version))))
        ok = self._final(cseq, "INVITE")
        if ok.status != 200:
            raise LabError(f"re-INVITE rejected: {ok.start_line}")
        self._ack(cseq)

    def hold(self) -> None:
        """Put the callee on hold (a=sendonly): the callee stops sending."""
        self.reinvite("sendonly")

    def resume(self) -> None:
        self.reinvite("sendrecv")

    def bye(self) -> None:
        self.rtp.sending = False
        cseq = next(self._cseq)
        self._send(self._request("BYE", cseq))
        self._final(cseq, "BYE")

    def close(self) -> None:
        self.rtp.close()
        self.sock.close()
