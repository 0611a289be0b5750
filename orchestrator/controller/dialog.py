"""The recording session's SIP dialog, SRC side (sans-IO): headers in, header blocks out.

Kamailio sends the requests: the INVITE through ``tm.t_uac_wait`` (JSON-RPC), in-dialog
requests through ``t_uac_send()`` (an evapi command). Both take a header block; this module
builds those blocks and keeps the dialog state (tags, CSeq, remote target) RFC 3261 §12
asks for. Nothing here touches a socket.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from ..errors import SipError
from ..kamailio.events import RsReply
from ..sip import (
    NameAddr,
    build_headers,
    format_name_addr,
    is_loose_router,
    new_tag,
    parse_name_addr,
    route_set,
    route_uri,
    sip_safe,
)
from ..siprec.rs import rs_headers
from ..siprec.sdp import parse_sdp
from ..siprec.session_id import SessionId

__all__ = ["RsDialog", "name_addr", "new_rs_call_id", "options_headers", "sip_safe"]

RS_CALL_ID_PREFIX = "siprec-"  # the generated config recognises RS traffic by this prefix
SRC_USER = "siprec-src"  # Request-URI user of the SRS's in-dialog requests (our Contact)


def new_rs_call_id() -> str:
    return f"{RS_CALL_ID_PREFIX}{secrets.token_hex(12)}"


def options_headers(call_id: str, local_uri: str, remote_uri: str, contact: str) -> str:
    """Header block of an out-of-dialog OPTIONS probe (RFC 3261 §11)."""
    return _block([("From", f"<{local_uri}>;tag={new_tag()}"), ("To", f"<{remote_uri}>"),
                   ("Call-ID", call_id), ("CSeq", "1 OPTIONS"),
                   ("Contact", f"<{contact}>;+sip.src"), ("Accept", "application/sdp")])


# what a URI (RFC 3986 — the xs:anyURI of RFC 7865's aor — and RFC 3261) may not carry as it
# is: anything but unreserved, sub-delims, ":@/?" and a '%' that starts an escape ('#' and
# '[]' only stand in places a sip: URI's user/host parsing does not give them)
_UNSAFE_URI = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]|%(?![0-9A-Fa-f]{2})")
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def party(display: str | None, uri: str | None) -> NameAddr:
    """A call party as the edge relayed it (display name and URI apart, nothing to parse):
    characters no name-addr may carry are percent-encoded (recoverable) instead of dropping
    the identity; no URI at all is ``sip:unknown@invalid``."""
    uri = _UNSAFE_URI.sub(lambda m: f"%{ord(m.group()):02X}", uri or "") or \
        "sip:unknown@invalid"
    if display:
        display = _UNSAFE_TEXT.sub(lambda m: f"%{ord(m.group()):02X}", display)
    return NameAddr(display or None, uri)


def name_addr(display: str | None, uri: str | None) -> str:
    """``"display" <uri>`` (RFC 3261 §20.10, the display name a quoted-string with
    quoted-pairs, §25.1) of :func:`party`."""
    p = party(display, uri)
    return format_name_addr(p.uri, p.display)


_TRANSPORT = re.compile(r";\s*transport=(\w+)", re.I)


@dataclass
class RsDialog:
    """SRC side of one recording session dialog (RFC 7866 §6.1: From = SRC, To = SRS)."""

    call_id: str
    local_uri: str  # sip:siprec-src@edge
    remote_uri: str  # the SRS URI
    contact: str  # our Contact URI (the edge's SIP listener)
    transport: str = "udp"
    local_tag: str | None = None  # our From tag (new dialogs make one)
    remote_tag: str | None = None
    remote_target: str | None = None  # the SRS's Contact
    cseq: int = 1
    invite_cseq: int = 1
    route_set: list[str] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)
    # RFC 7989: the recording session's own Session-ID (ours; the SRS's once it answered)
    session_id: SessionId = field(default_factory=SessionId.new)

    def __post_init__(self) -> None:
        for what, v in (("Call-ID", self.call_id), ("SRS URI", self.remote_uri),
                        ("Contact", self.contact), ("From URI", self.local_uri)):
            sip_safe(v, what)
        if self.local_tag is None:
            self.local_tag = new_tag()

    @property
    def confirmed(self) -> bool:
        return self.remote_tag is not None

    def request_uri(self) -> str:
        uri = self.remote_target or self.remote_uri
        # keep the session on the transport the SRS was reached over
        if self.transport != "udp" and not _TRANSPORT.search(uri):
            uri += f";transport={self.transport}"
        return uri

    def invite_headers(self, content_type: str) -> str:
        """The initial INVITE's header block, for the edge's ``t_uac_send`` (an evapi
        command), which keeps our From tag. (``tm.t_uac_start`` over JSON-RPC would double a
        given tag in 5.6.3, and costs an HTTP request per INVITE.)"""
        hdrs = [
            ("From", f"<{self.local_uri}>;tag={self.local_tag}"),
            ("To", f"<{self.remote_uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} INVITE"),
            # RFC 7866 §6.1.1: +sip.src in the Contact and the siprec option tag
            ("Contact", f"<{self.contact}>;+sip.src"),
            # RFC 7866 §6.1.1 Require: siprec; Supported/Allow/Accept (RFC 3261 §13.2.1);
            # Session-ID (RFC 7989 §7, the SRS's part null until it answers)
            *rs_headers("INVITE", self.session_id),
            *self.extra,
            ("Content-Type", content_type),
        ]
        self.invite_cseq = self.cseq
        return _block(hdrs)

    def confirm_from(self, reply: RsReply) -> None:
        """Take tags, remote target and route set from the 2xx to the INVITE (RFC 3261
        §12.1.2), as the edge relayed it."""
        if not reply.to_tag:
            raise SipError("2xx to the recording session INVITE has no To tag")
        if not reply.from_tag:
            raise SipError("2xx to the recording session INVITE has no From tag")
        self.remote_tag = sip_safe(reply.to_tag, "To tag")  # our From tag stays ours
        if reply.contact:
            self.remote_target = sip_safe(parse_name_addr(reply.contact).uri, "Contact")
        # RFC 3261 §12.1.2: the UAC's route set is the Record-Route, reversed
        self.route_set = [sip_safe(r, "Record-Route")
                          for r in route_set(reply.record_route, uac=True)]
        try:  # RFC 7989 §7: the SRS's own UUID becomes our "remote"
            self.session_id = self.session_id.learn(reply.session_id)
        except SipError:
            pass  # a malformed Session-ID from the SRS: keep ours, the session still works

    def nexthop(self) -> str:
        """Where an in-dialog request goes first: a loose router of the route set, or ''
        (the Request-URI). Strict routers (no ;lr) are not supported."""
        if self.route_set and is_loose_router(self.route_set[0]):
            return route_uri(self.route_set[0])
        return ""

    def request(self, method: str, content_type: str | None = None,
                extra: list[tuple[str, str]] | None = None) -> tuple[str, str, int]:
        """An in-dialog request: (Request-URI, header block, CSeq number), with the headers
        RFC 7866/3261/7989 expect for ``method`` (``rs_headers``) and ``extra``."""
        if not self.confirmed:
            raise SipError(f"cannot send {method}: the recording session is not established")
        self.cseq += 1
        hdrs = [
            ("From", f"<{self.local_uri}>;tag={self.local_tag}"),
            ("To", f"<{self.remote_uri}>;tag={self.remote_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
            ("Contact", f"<{self.contact}>;+sip.src"),
            *(("Route", r if "<" in r else f"<{r}>") for r in self.route_set),
        ]
        hdrs += rs_headers(method, self.session_id)
        hdrs += extra or []
        if content_type:
            hdrs.append(("Content-Type", content_type))
        return self.request_uri(), _block(hdrs), self.cseq

    def to_dict(self) -> dict[str, object]:
        return {"call_id": self.call_id, "local_uri": self.local_uri,
                "remote_uri": self.remote_uri, "contact": self.contact,
                "transport": self.transport, "local_tag": self.local_tag,
                "remote_tag": self.remote_tag, "remote_target": self.remote_target,
                "cseq": self.cseq, "invite_cseq": self.invite_cseq,
                "route_set": list(self.route_set),
                "session_id": [self.session_id.local, self.session_id.remote]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> RsDialog:
        def s(k: str) -> str | None:
            v = d.get(k)
            return None if v is None else str(v)
        return cls(call_id=str(d["call_id"]), local_uri=str(d["local_uri"]),
                   remote_uri=str(d["remote_uri"]), contact=str(d["contact"]),
                   transport=str(d.get("transport") or "udp"), local_tag=s("local_tag"),
                   remote_tag=s("remote_tag"), remote_target=s("remote_target"),
                   cseq=int(str(d.get("cseq", 1))), invite_cseq=int(str(d.get("invite_cseq", 1))),
                   route_set=[str(u) for u in _list(d.get("route_set"))],
                   session_id=SessionId(*(str(x) for x in _list(d.get("session_id"))))
                   if d.get("session_id") else SessionId.new())


def _block(hdrs: list[tuple[str, str]]) -> str:
    return build_headers(hdrs)


# ------------------------------------------------------------------------------ SDP helpers
_DIRECTION = re.compile(rb"^a=(sendrecv|sendonly|recvonly|inactive)(?=\r?$)", re.M)
_ORIGIN = re.compile(rb"^(o=\S+ \S+ )(\d+)( .*)$", re.M)


def set_direction(sdp: bytes, direction: str) -> bytes:
    """Every media section's direction attribute set to ``direction`` (RFC 7866 §7.1.1.1:
    pause = a=inactive, resume = a=sendonly); sections without one get it appended."""
    new = direction.encode()
    parts = re.split(rb"(?=^m=)", sdp, flags=re.M)
    out = [parts[0]]  # the session part is left alone
    for section in parts[1:]:
        if _DIRECTION.search(section):
            section = _DIRECTION.sub(b"a=" + new, section)
        else:
            section = section.rstrip(b"\r\n") + b"\r\na=" + new + b"\r\n"
        out.append(section)
    return b"".join(out)


def bump_version(sdp: bytes) -> bytes:
    """The o= session version plus one (RFC 3264 §8: every new offer increments it)."""
    m = _ORIGIN.search(sdp)
    if m is None:
        raise SipError("SDP has no o= line")
    return sdp[:m.start()] + m.group(1) + str(int(m.group(2)) + 1).encode() + m.group(3) \
        + sdp[m.end():]


def with_origin(sdp: bytes, previous: bytes) -> bytes:
    """``sdp`` with the o= line of ``previous`` (a re-offer keeps the origin, RFC 3264 §8)."""
    new, old = _ORIGIN.search(sdp), _ORIGIN.search(previous)
    if new is None or old is None:
        raise SipError("SDP has no o= line")
    return sdp[:new.start()] + old.group(0) + sdp[new.end():]


def media_targets(sdp: bytes) -> list[tuple[str, str, int]]:
    """``(media, address, port)`` per m= section: where that side receives each stream (a
    section's own c= line, else the session's)."""
    return [(m.media, m.address or "", m.port) for m in parse_sdp(sdp).media]


def _list(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else []
