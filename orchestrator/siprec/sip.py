"""Minimal SIP message parsing for metadata validation: start line, headers, body (sans-IO)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SipError

__all__ = ["NameAddr", "SipMessage", "looks_like_sip", "parse_name_addr", "parse_sip_message"]

# RFC 3261 §7.3.3 compact header forms.
_COMPACT = {"c": "content-type", "l": "content-length", "m": "contact", "f": "from",
            "t": "to", "i": "call-id", "k": "supported", "e": "content-encoding", "v": "via",
            "s": "subject"}
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3}) ?(.*)$")


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


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/P-Asserted-Identity value: display name, URI and header parameters."""

    display: str | None
    uri: str
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        return next((v for n, v in self.params if n.lower() == name.lower()), None)


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1], flags=re.DOTALL)


def parse_name_addr(value: str) -> NameAddr:
    """Parse ``"Display" <uri>;params`` or a bare ``uri;params`` (RFC 3261 §20.10/§25.1).

    The display name is taken as given (it may hold any character: it ends up escaped in
    XML); the URI must not contain whitespace or angle brackets.
    """
    value = value.strip()
    display: str | None = None
    rest: str
    if value.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"\s*', value, re.DOTALL)
        if m is None:
            raise SipError(f"unterminated quoted display name in {value[:80]!r}")
        display = _unquote(m.group(0).strip())
        rest = value[m.end():]
    else:
        lt = value.find("<")
        if lt > 0:
            display = value[:lt].strip() or None
            rest = value[lt:]
        else:
            rest = value
    if rest.startswith("<"):
        gt = rest.find(">")
        if gt < 0:
            raise SipError(f"missing '>' in {value[:80]!r}")
        uri, params_text = rest[1:gt].strip(), rest[gt + 1:]
    else:
        if display is not None:
            raise SipError(f"display name without <uri> in {value[:80]!r}")
        uri, _, params_text = rest.partition(";")
        params_text = ";" + params_text if params_text else ""
        uri = uri.strip()
    if not uri or re.search(r"[\s<>\"]", uri) or ":" not in uri:
        raise SipError(f"malformed URI {uri[:80]!r}")
    params: list[tuple[str, str | None]] = []
    for p in params_text.split(";"):
        p = p.strip()
        if p:
            k, eq, v = p.partition("=")
            params.append((k.strip(), v.strip() if eq else None))
    return NameAddr(display, uri, tuple(params))
