"""SIP messages (RFC 3261 §7): parsing, building, responses, stream framing (sans-IO)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SipError
from .headers import Via, parse_cseq, parse_name_addr, parse_via, sip_safe, split_commas, tag_of

__all__ = [
    "REASONS",
    "SipMessage",
    "StreamFramer",
    "build_headers",
    "build_message",
    "build_response",
    "lenient_message",
    "looks_like_sip",
    "parse_sip_message",
    "request_problem",
    "top_via",
]

REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    415: "Unsupported Media Type", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 600: "Busy Everywhere",
    603: "Decline",
}
# RFC 3261 §7.3.3 compact header forms.
_COMPACT = {"c": "content-type", "l": "content-length", "m": "contact", "f": "from",
            "t": "to", "i": "call-id", "k": "supported", "e": "content-encoding", "v": "via",
            "s": "subject"}
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3}) ?(.*)$")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")


@dataclass(frozen=True, slots=True)
class SipMessage:
    """A parsed SIP request or response; header names are stored lower-case, long form."""

    start_line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_line: int  # 1-based line number of the body's first line in the message
    declared_length: int | None
    header_lines: tuple[int, ...] = ()  # line number of each entry of ``headers``

    def line_of(self, name: str) -> int | None:
        """Line of the first ``name`` header (1, the start line, if there is none)."""
        name = name.lower()
        for (n, _v), line in zip(self.headers, self.header_lines, strict=False):
            if n == name:
                return line
        return 1

    @property
    def method(self) -> str | None:
        m = _REQUEST_LINE.match(self.start_line)
        return m.group(1).upper() if m else None

    @property
    def status(self) -> int | None:
        m = _STATUS_LINE.match(self.start_line)
        return int(m.group(1)) if m else None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]


def looks_like_sip(data: bytes) -> bool:
    first = data.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    return bool(_REQUEST_LINE.match(first) or _STATUS_LINE.match(first))


def parse_sip_message(data: bytes) -> SipMessage:
    """Parse a whole SIP message; :class:`SipError` if the start line or headers are malformed."""
    data = data.lstrip(b"\r\n")
    sep = re.search(rb"\r?\n\r?\n", data)
    if sep is None:
        head, body = data, b""
    else:
        head, body = data[:sep.start()], data[sep.end():]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipError(f"SIP headers are not UTF-8 (byte {exc.start})") from exc
    raw_lines = re.split(r"\r?\n", text)
    start = raw_lines[0]
    if not (_REQUEST_LINE.match(start) or _STATUS_LINE.match(start)):
        raise SipError(f"not a SIP message: start line {start[:80]!r}")
    headers: list[tuple[str, str]] = []
    lines: list[int] = []
    for no, line in enumerate(raw_lines[1:], 2):
        if line[:1] in (" ", "\t"):  # RFC 3261 §7.3.1 line folding
            if not headers:
                raise SipError(f"line {no}: continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise SipError(f"line {no}: malformed header line {line[:80]!r}")
        key = name.strip().lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
        lines.append(no)
    body_line = len(raw_lines) + 2 if sep is not None else len(raw_lines) + 1
    length: int | None = None
    for n, v in headers:
        if n == "content-length":
            if not v.isdigit():
                raise SipError(f"Content-Length {v!r} is not a number")
            length = int(v)
    return SipMessage(start, tuple(headers), body, body_line, length, tuple(lines))


def top_via(msg: SipMessage) -> Via:
    value = msg.header("via")
    if value is None:
        raise SipError("no Via header")
    return parse_via(value)


def request_problem(msg: SipMessage) -> str | None:
    """Why a parsed request cannot be processed (RFC 3261 §8.1.1 mandatory headers), or None."""
    for name in _REQUIRED:
        if msg.header(name) is None:
            return f"missing {name} header"
    for name, value in msg.headers:
        if "\0" in value:  # could not be copied into a response (build_message refuses it)
            return f"{name} header contains NUL"
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
    """A best-effort parse of a malformed request: enough headers to answer 400, or None.

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


def build_headers(headers: Sequence[tuple[str, str]]) -> str:
    """``Name: value\r\n`` lines; :class:`SipError` (:func:`sip_safe`) if a name or value
    holds CR, LF or NUL (a header injection)."""
    return "".join(f"{sip_safe(name, 'header name')}: {sip_safe(value, f'header {name}')}\r\n"
                   for name, value in headers)


def build_message(start_line: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """Serialize a message; adds Content-Length, refuses CR/LF/NUL in the start line and in
    header names and values."""
    head = (sip_safe(start_line, "start line") + "\r\n" + build_headers(headers)
            + f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("utf-8") + body


def build_response(req: SipMessage, code: int, reason: str | None = None, *,
                   to_tag: str | None = None, headers: Sequence[tuple[str, str]] = (),
                   body: bytes = b"", content_type: str | None = None,
                   received: str | None = None, rport: int | None = None,
                   record_route: bool = False) -> bytes:
    """A response to ``req`` (RFC 3261 §8.2.6): Via/From/Call-ID/CSeq copied, To tagged.

    ``received``/``rport`` are added to the top Via when given (RFC 3261 §18.2.1, RFC 3581).
    A To that already carries a tag keeps it. ``record_route`` copies the request's
    Record-Route (a dialog-creating response, RFC 3261 §12.1.1).
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
    if record_route:
        lines += [("Record-Route", v) for v in req.header_all("record-route")]
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
