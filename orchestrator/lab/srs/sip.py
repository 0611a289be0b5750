"""Sans-IO SIP for the reference SRS (RFC 3261): no sockets here.

Header helpers (Via, URI, CSeq, tags), response and request building, stream framing for
TCP (RFC 3261 §18.3), the retransmission schedule of unreliable transports (RFC 3261 §17,
§13.3.1.4) and the UAS side of a dialog (RFC 3261 §12.1.1) with the requests the SRS sends
in it. Parsing of whole messages is :func:`orchestrator.siprec.parse_sip_message`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import SipError
from ...siprec.sip import SipMessage, parse_name_addr

__all__ = [
    "ALLOW",
    "BRANCH_COOKIE",
    "KNOWN_METHODS",
    "REASONS",
    "T1",
    "T2",
    "Dialog",
    "OutgoingRequest",
    "Retransmitter",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_message",
    "build_response",
    "lenient_message",
    "new_branch",
    "new_tag",
    "parse_cseq",
    "parse_uri",
    "parse_via",
    "request_problem",
    "split_commas",
    "tag_of",
    "top_via",
]

T1 = 0.5  # RFC 3261 §17.1.1.1: RTT estimate
T2 = 4.0  # maximum retransmission interval for non-INVITE requests and INVITE responses
BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7 magic cookie
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"
#: Methods the SRS recognises but does not support: 405, not 501 (RFC 3261 §8.2.1, §21.5.2).
KNOWN_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "REGISTER",
                           "INFO", "MESSAGE", "PRACK", "REFER", "SUBSCRIBE", "NOTIFY",
                           "PUBLISH"})
REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    415: "Unsupported Media Type", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 600: "Busy Everywhere",
    603: "Decline",
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets (RFC 3261 §7.3.1)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = angle = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _params(text: str) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for p in text.split(";"):
        p = p.strip()
        if p:
            k, eq, v = p.partition("=")
            out.append((k.strip().lower(), v.strip() if eq else None))
    return tuple(out)


def _param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    return next((v for k, v in params if k == name), None)


def _has_param(params: tuple[tuple[str, str | None], ...], name: str) -> bool:
    return any(k == name for k, _ in params)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=…;rport`` (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def has_rport(self) -> bool:
        return _has_param(self.params, "rport")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


_VIA = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+(\[[0-9A-Fa-f:.]+\]|[^\s;:\[\]]+)"
                  r"(?:\s*:\s*(\d{1,5}))?\s*((?:;.*)?)$")


def parse_via(value: str) -> Via:
    """The first Via value of a (possibly comma-combined) header value."""
    values = split_commas(value)
    if not values:
        raise SipError("empty Via header")
    m = _VIA.match(values[0])
    if m is None:
        raise SipError(f"malformed Via {values[0][:80]!r}")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipError(f"Via port {port} out of range")
    return Via(m.group(1).upper(), m.group(2), port, _params(m.group(4)))


def top_via(msg: SipMessage) -> Via:
    value = msg.header("via")
    if value is None:
        raise SipError("no Via header")
    return parse_via(value)


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:``/``sips:`` URI (RFC 3261 §19.1)."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def transport(self) -> str | None:
        t = _param(self.params, "transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        return _has_param(self.params, "lr")

    def default_port(self) -> int:
        return self.port or (5061 if self.scheme == "sips" else 5060)

    @property
    def bare_host(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


_URI = re.compile(r"^(sips?):(?:([^@;?]+)@)?(\[[0-9A-Fa-f:.]+\]|[^:;?@\[\]]+)(?::(\d{1,5}))?"
                  r"((?:;[^?]*)?)(?:\?.*)?$", re.IGNORECASE)


def parse_uri(uri: str) -> SipUri:
    """Parse a SIP URI; :class:`SipError` for anything else (tel:, garbage)."""
    m = _URI.match(uri.strip())
    if m is None:
        raise SipError(f"not a SIP URI: {uri[:80]!r}")
    port = int(m.group(4)) if m.group(4) else None
    if port is not None and not 0 < port < 65536:
        raise SipError(f"URI port {port} out of range")
    return SipUri(m.group(1).lower(), m.group(2), m.group(3), port, _params(m.group(5)))


def parse_cseq(value: str | None) -> tuple[int, str]:
    """``(number, METHOD)`` of a CSeq value (RFC 3261 §20.16)."""
    parts = (value or "").split()
    if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN.match(parts[1]):
        raise SipError(f"malformed CSeq {value!r}")
    number = int(parts[0])
    if number >= 2**31:
        raise SipError(f"CSeq {number} is not below 2**31")
    return number, parts[1].upper()


_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)


def tag_of(value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To value (lenient: works on malformed values too)."""
    if not value:
        return None
    params = value.rsplit(">", 1)[1] if "<" in value and ">" in value else value
    m = _TAG.search(params)
    return m.group(1) if m else None


def build_message(start_line: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """Serialize a message; adds Content-Length, refuses CR/LF inside header values."""
    out = [start_line]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise SipError(f"header {name} contains CR/LF")
        out.append(f"{name}: {value}")
    out.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8") + body


_REQUIRED = ("via", "from", "to", "call-id", "cseq")


def request_problem(msg: SipMessage) -> str | None:
    """Why a parsed request cannot be processed (RFC 3261 §8.1.1 mandatory headers), or None."""
    for name in _REQUIRED:
        if msg.header(name) is None:
            return f"missing {name} header"
    try:
        _number, method = parse_cseq(msg.header("cseq"))
        top_via(msg)
        parse_name_addr(msg.header("from") or "")
        parse_name_addr(msg.header("to") or "")
    except SipError as exc:
        return str(exc)
    if method != msg.method:
        return f"CSeq method {method} does not match the request method {msg.method}"
    return None


def lenient_message(data: bytes) -> SipMessage | None:
    """A best-effort parse of a malformed message: enough headers to answer 400, or None.

    Lines that are not ``name: value`` are skipped; the body is dropped.
    """
    head = re.split(rb"\r?\n\r?\n", data.lstrip(b"\r\n"), maxsplit=1)[0]
    lines = re.split(r"\r?\n", head.decode("utf-8", "replace"))
    start = lines[0].strip()
    if not re.match(r"^[A-Za-z]+ \S+ SIP/2\.0$", start):
        return None
    headers: list[tuple[str, str]] = []
    short = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if colon and name and " " not in name:
            headers.append((short.get(name, name), value.strip()))
    msg = SipMessage(start, tuple(headers), b"", len(lines) + 1, None)
    if any(msg.header(n) is None for n in _REQUIRED):
        return None
    return msg


def build_response(req: SipMessage, code: int, reason: str | None = None, *,
                   to_tag: str | None = None, headers: Sequence[tuple[str, str]] = (),
                   body: bytes = b"", content_type: str | None = None,
                   received: str | None = None, rport: int | None = None) -> bytes:
    """A response to ``req`` (RFC 3261 §8.2.6): Via/From/Call-ID/CSeq copied, To tagged.

    ``received``/``rport`` are added to the top Via when given (RFC 3261 §18.2.1, RFC 3581).
    A To that already carries a tag keeps it.
    """
    lines: list[tuple[str, str]] = []
    first = True
    for value in req.header_all("via"):
        for v in split_commas(value):
            if first:
                first = False
                via = parse_via(v) if (received or rport) else None
                if via is not None:
                    if received and via.host != received and "received=" not in v.lower():
                        v += f";received={received}"
                    if rport and via.has_rport:
                        v = re.sub(r";\s*rport(?=;|$)", f";rport={rport}", v, count=1)
            lines.append(("Via", v))
    lines.append(("From", req.header("from") or ""))
    to = req.header("to") or ""
    if to_tag and tag_of(to) is None and code != 100:
        to += f";tag={to_tag}"
    lines.append(("To", to))
    lines.append(("Call-ID", req.header("call-id") or ""))
    lines.append(("CSeq", req.header("cseq") or ""))
    lines.extend(headers)
    if body:
        lines.append(("Content-Type", content_type or "application/sdp"))
    return build_message(f"SIP/2.0 {code} {reason or REASONS.get(code, 'Unknown')}", lines, body)


class StreamFramer:
    """Split a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    :meth:`feed` returns the complete messages. A stream that cannot be framed (a header
    block without Content-Length, an oversize header block or body) sets :attr:`error` and
    :attr:`broken_head` (the offending header block, to answer 400 from); the messages
    framed before it are still returned, and any further :meth:`feed` raises
    :class:`SipError`. CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped.
    """

    max_header = 65536
    max_body = 1 << 20

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: str | None = None
        self.broken_head: bytes | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            raise SipError(f"stream already failed framing: {self.error}")
        self._buf += data
        out: list[bytes] = []
        while self.error is None:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            idx = self._buf.find(b"\r\n\r\n")
            if idx < 0:
                if len(self._buf) > self.max_header:
                    self._fail(bytes(self._buf[:self.max_header]),
                               f"header block longer than {self.max_header} bytes")
                break
            head = bytes(self._buf[:idx])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*$", head)
            if m is None:
                self._fail(head, "message on a stream transport without Content-Length "
                                 "(RFC 3261 §18.3)")
            elif not m.group(1).isdigit():
                self._fail(head, f"Content-Length {m.group(1)[:20]!r} is not a number")
            elif int(m.group(1)) > self.max_body:
                self._fail(head, f"Content-Length {int(m.group(1))} exceeds {self.max_body}")
            else:
                total = idx + 4 + int(m.group(1))
                if len(self._buf) < total:
                    break
                out.append(bytes(self._buf[:total]))
                del self._buf[:total]
        return out

    def _fail(self, head: bytes, message: str) -> None:
        self.broken_head = head + b"\r\n\r\n"
        self.error = message
        self._buf.clear()


class Retransmitter:
    """When to resend a message over an unreliable transport (sans-IO: pass ``now``).

    Intervals start at T1 and double; INVITE requests (Timer A, RFC 3261 §17.1.1.2) double
    without limit (``t2=None``), 2xx responses (§13.3.1.4), non-INVITE requests (Timer E,
    §17.1.2.2) and non-2xx INVITE responses (Timer G, §17.2.1) are capped at T2. After
    ``timeout`` (Timer B/F/H, 64*T1 by default) :meth:`poll` reports ``"expired"``.
    """

    def __init__(self, now: float, *, t1: float = T1, t2: float | None = T2,
                 timeout: float | None = None) -> None:
        self.t1 = t1
        self.t2 = t2
        self.start = now
        self.interval = t1
        self.next_at = now + t1
        self.deadline = now + (64 * t1 if timeout is None else timeout)
        self.sent = 1  # the original transmission

    def poll(self, now: float) -> str:
        """``"send"`` (retransmit now), ``"wait"`` or ``"expired"``."""
        if now >= self.deadline:
            return "expired"
        if now < self.next_at:
            return "wait"
        self.interval = self.interval * 2 if self.t2 is None else min(self.interval * 2, self.t2)
        self.next_at += self.interval
        self.sent += 1
        return "send"

    def wake_at(self) -> float:
        """When :meth:`poll` has something new to say."""
        return min(self.next_at, self.deadline)

    def schedule(self) -> list[float]:
        """Offsets from the start of every retransmission until expiry (for tests, logs)."""
        out: list[float] = []
        copy = Retransmitter(0.0, t1=self.t1, t2=self.t2, timeout=self.deadline - self.start)
        now = copy.wake_at()
        while (state := copy.poll(now)) != "expired":
            if state == "send":
                out.append(round(now, 9))
            now = copy.wake_at()
        return out


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """A request the SRS sends in a dialog, with what matching its responses needs."""

    data: bytes
    method: str
    cseq: int
    branch: str


@dataclass(slots=True)
class Dialog:
    """The UAS side of the recording session dialog (RFC 3261 §12.1.1).

    ``local_party``/``remote_party`` are the INVITE's To and From values: requests the SRS
    sends carry the first (with the SRS's tag) as From and the second as To.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str
    remote_party: str
    remote_target: str
    route_set: tuple[str, ...]
    remote_cseq: int
    transport: str
    local_cseq: int = 0

    @classmethod
    def from_invite(cls, msg: SipMessage, local_tag: str, transport: str) -> Dialog:
        """Dialog state from an initial INVITE; :class:`SipError` if Contact is unusable."""
        contact = msg.header("contact")
        if contact is None:
            raise SipError("INVITE without Contact: no remote target (RFC 3261 §8.1.1.8)")
        target = parse_name_addr(split_commas(contact)[0]).uri
        parse_uri(target)
        remote_tag = tag_of(msg.header("from"))
        if remote_tag is None:
            raise SipError("From has no tag (RFC 3261 §8.1.1.3)")
        routes = [r for v in msg.header_all("record-route") for r in split_commas(v)]
        number, _ = parse_cseq(msg.header("cseq"))
        return cls(call_id=msg.header("call-id") or "", local_tag=local_tag,
                   remote_tag=remote_tag, local_party=msg.header("to") or "",
                   remote_party=msg.header("from") or "", remote_target=target,
                   route_set=tuple(routes), remote_cseq=number, transport=transport)

    def refresh_target(self, msg: SipMessage) -> None:
        """Target refresh from a re-INVITE/UPDATE Contact (RFC 3261 §12.2.2)."""
        contact = msg.header("contact")
        if contact:
            try:
                uri = parse_name_addr(split_commas(contact)[0]).uri
                parse_uri(uri)
            except SipError:
                return
            self.remote_target = uri

    def next_hop(self) -> tuple[str, int]:
        """``(host, port)`` to send in-dialog requests to: the first route if there is a
        route set (loose routing, RFC 3261 §12.2.1.1), else the remote target."""
        uri = parse_uri(parse_name_addr(self.route_set[0]).uri) if self.route_set \
            else parse_uri(self.remote_target)
        return uri.bare_host, uri.default_port()

    def _common(self, method: str, cseq: int, branch: str, sent_by: tuple[str, int],
                to_value: str | None = None) -> list[tuple[str, str]]:
        transport = self.transport.upper()
        local = self.local_party if tag_of(self.local_party) else \
            f"{self.local_party};tag={self.local_tag}"
        headers = [("Via", f"SIP/2.0/{transport} {sent_by[0]}:{sent_by[1]};branch={branch};rport"),
                   ("Max-Forwards", "70")]
        headers += [("Route", r) for r in self.route_set]
        headers += [("From", local), ("To", to_value or self.remote_party),
                    ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        return headers

    def request(self, method: str, *, sent_by: tuple[str, int], contact: str | None = None,
                body: bytes = b"", content_type: str | None = None,
                headers: Sequence[tuple[str, str]] = ()) -> OutgoingRequest:
        """A new in-dialog request with the next local CSeq (RFC 3261 §12.2.1.1)."""
        if self.local_cseq == 0:
            self.local_cseq = 1
        else:
            self.local_cseq += 1
        branch = new_branch()
        lines = self._common(method, self.local_cseq, branch, sent_by)
        if contact:
            lines.append(("Contact", contact))
        lines.extend(headers)
        if body:
            lines.append(("Content-Type", content_type or "application/sdp"))
        data = build_message(f"{method} {self.remote_target} SIP/2.0", lines, body)
        return OutgoingRequest(data, method, self.local_cseq, branch)

    def ack(self, cseq: int, *, sent_by: tuple[str, int], branch: str | None = None,
            to_value: str | None = None) -> bytes:
        """ACK for a final response to an INVITE the SRS sent.

        2xx: a new transaction (new branch, RFC 3261 §13.2.2.4); non-2xx: same branch and the
        response's To (hop-by-hop, §17.1.1.3).
        """
        lines = self._common("ACK", cseq, branch or new_branch(), sent_by, to_value)
        return build_message(f"ACK {self.remote_target} SIP/2.0", lines)
