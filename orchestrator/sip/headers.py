"""SIP header values (RFC 3261 §20, §25): Via, URIs, name-addr, CSeq, tags (sans-IO)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from ..errors import SipError

__all__ = [
    "BRANCH_COOKIE",
    "NameAddr",
    "SipUri",
    "Via",
    "contact_uri",
    "format_name_addr",
    "new_branch",
    "new_tag",
    "parse_cseq",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "quote_string",
    "sip_safe",
    "split_commas",
    "tag_of",
    "unquote_string",
]

BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7 magic cookie
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")

Params = tuple[tuple[str, str | None], ...]


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def sip_safe(value: str, what: str) -> str:
    """``value`` unchanged, or :class:`SipError` if it could break a SIP message (CR, LF or
    NUL: a header injection or a truncated C string in the proxy)."""
    if "\r" in value or "\n" in value or "\0" in value:  # on every header of every message
        raise SipError(f"{what} contains CR, LF or NUL: {value[:80]!r}")
    return value


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


def _params(text: str, *, lower: bool = True) -> Params:
    out: list[tuple[str, str | None]] = []
    for p in text.split(";"):
        p = p.strip()
        if p:
            k, eq, v = p.partition("=")
            k = k.strip()
            out.append((k.lower() if lower else k, v.strip() if eq else None))
    return tuple(out)


def _param(params: Params, name: str) -> str | None:
    return next((v for k, v in params if k == name), None)


def _has_param(params: Params, name: str) -> bool:
    return any(k == name for k, _ in params)


# --------------------------------------------------------------------------- Via

@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=…;rport`` (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None
    params: Params = ()

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


# --------------------------------------------------------------------------- URIs

@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:``/``sips:`` URI (RFC 3261 §19.1)."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: Params = ()

    @property
    def transport(self) -> str | None:
        t = _param(self.params, "transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        """The ``lr`` parameter: a loose router (RFC 3261 §19.1.1)."""
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


# --------------------------------------------------------------------------- name-addr

@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/P-Asserted-Identity value: display name, URI, header parameters."""

    display: str | None
    uri: str
    params: Params = ()

    def param(self, name: str) -> str | None:
        return next((v for n, v in self.params if n.lower() == name.lower()), None)

    def format(self) -> str:
        """Back to a header value (:func:`format_name_addr`)."""
        return format_name_addr(self.uri, self.display, self.params)


def quote_string(text: str) -> str:
    """``text`` as a SIP quoted-string (RFC 3261 §25.1): ``"`` and ``\\`` (and control
    characters) as quoted-pairs; :class:`SipError` for CR, LF or NUL, which no quoted-pair
    may carry safely."""
    sip_safe(text, "quoted string")
    return '"' + re.sub(r'(["\\\x01-\x08\x0b\x0c\x0e-\x1f\x7f])', r"\\\1", text) + '"'


def unquote_string(quoted: str) -> str:
    """The text of a quoted-string (surrounding quotes removed, quoted-pairs resolved)."""
    return re.sub(r"\\(.)", r"\1", quoted[1:-1], flags=re.DOTALL)


def format_name_addr(uri: str, display: str | None = None, params: Params = ()) -> str:
    """``"Display" <uri>;k=v`` (RFC 3261 §20.10): the display name quoted and escaped, the
    URI in angle brackets (so its own parameters stay its own); :class:`SipError` if any part
    holds CR, LF or NUL or the URI would end the brackets."""
    sip_safe(uri, "URI")
    if not uri or re.search(r"[\s<>]", uri):
        raise SipError(f"URI {uri[:80]!r} cannot stand in a name-addr")
    out = f"{quote_string(display)} <{uri}>" if display else f"<{uri}>"
    for k, v in params:
        out += f";{sip_safe(k, 'parameter')}" + ("" if v is None else f"={sip_safe(v, k)}")
    return out


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
        display = unquote_string(m.group(0).strip())
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
    return NameAddr(display, uri, _params(params_text, lower=False))


def contact_uri(value: str) -> str:
    """The URI of the first Contact in a (possibly comma-joined) Contact value."""
    values = split_commas(value)
    if not values:
        raise SipError("empty Contact header")
    return parse_name_addr(values[0]).uri


_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)


def tag_of(value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To value (lenient: works on malformed values too;
    a ``tag`` inside the URI's angle brackets is the URI's, not the header's)."""
    if not value:
        return None
    params = value.rsplit(">", 1)[1] if "<" in value and ">" in value else value
    m = _TAG.search(params)
    return m.group(1) if m else None


def parse_cseq(value: str | None) -> tuple[int, str]:
    """``(number, METHOD)`` of a CSeq value (RFC 3261 §20.16)."""
    parts = (value or "").split()
    if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN.match(parts[1]):
        raise SipError(f"malformed CSeq {value!r}")
    number = int(parts[0])
    if number >= 2**31:
        raise SipError(f"CSeq {number} is not below 2**31")
    return number, parts[1].upper()
