"""The edge's evapi events, typed once at the boundary (the generated config's route[EVENT],
route[RS_INDLG] and reply_route say what each carries).

Every SIP-derived value arrives percent-encoded (:mod:`.encoding`; any byte survives) and is
decoded here: URIs with :func:`~.encoding.decode_uri` (bytes outside printable ASCII stay
``%xx``, so a URI stays a URI), display names and header values with
:func:`~.encoding.decode_text` (readable, XML-safe, the original bytes recoverable), bodies
and values that go back into SIP with :func:`~.encoding.decode_value` (the exact bytes).

``parse_event(doc)`` turns one decoded JSON object into a frozen dataclass, or raises
:class:`EvapiProtocolError` naming the event and the field. Everything downstream (the
controller's per-call core) works on these types, never on raw dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import EvapiProtocolError
from .encoding import decode_text, decode_uri, decode_value

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallEvent",
    "CallReinvite",
    "EdgeEvent",
    "RsError",
    "RsReply",
    "RsRequest",
    "parse_event",
]


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The call's dialog is confirmed; carries its identities and the policy decision."""

    edge: str
    call_id: str
    ts: float  # Kamailio's clock (seconds)
    from_tag: str
    to_tag: str
    from_uri: str
    to_uri: str
    from_display: str | None = None
    to_display: str | None = None
    pai: str | None = None  # the P-Asserted-Identity URI
    pai_display: str | None = None
    ruri: str | None = None
    trunk: str | None = None
    rtpengine: str | None = None  # the node URL rtpengine_offer used, e.g. udp:127.0.0.1:2223
    rule: str | None = None
    record_local: bool = False
    siprec: str | None = None  # SRS group the policy chose, None = no SIPREC
    session_id: str | None = None  # RFC 7989 Session-ID of the call
    h_entry: int | None = None
    h_id: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallReinvite:
    """A re-INVITE/UPDATE of the call was answered; ``hold`` when its SDP put media on hold."""

    edge: str
    call_id: str
    ts: float
    hold: bool
    by: str  # caller | callee


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over: BYE (``event=ended``, ``by``) or the INVITE failed (``code``)."""

    edge: str
    call_id: str
    ts: float
    by: str | None = None
    code: int | None = None  # set for a failed INVITE

    @property
    def failed(self) -> bool:
        return self.code is not None

    def describe(self) -> str:
        if self.code is not None:
            return f"call failed ({self.code})"
        return "call ended" + (f" by {self.by}" if self.by else "")


@dataclass(frozen=True, slots=True)
class RsReply:
    """A reply to a request the controller had Kamailio send on a recording session."""

    edge: str
    rs_call_id: str
    method: str
    cseq: int
    code: int
    reason: str = ""
    to_tag: str | None = None
    from_tag: str | None = None
    contact: str | None = None
    content_type: str | None = None
    body: bytes = b""
    record_route: tuple[str, ...] = ()  # Record-Route header values, in the order received
    session_id: str | None = None  # the reply's RFC 7989 Session-ID header
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class RsRequest:
    """A request the SRS sent on a recording session (the edge answered it already)."""

    edge: str
    rs_call_id: str
    method: str
    cseq: int = 0
    content_type: str | None = None
    body: bytes = b""
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class RsError:
    """The edge could not send a request the controller asked for (t_uac_send failed)."""

    edge: str
    rs_call_id: str
    method: str
    ts: float = 0.0


CallEvent = CallAnswered | CallReinvite | CallEnded
EdgeEvent = CallEvent | RsReply | RsRequest | RsError


class _Fields:
    """Typed access to one event's fields; every problem names the event and the key."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.kind = str(doc.get("event", "?"))

    def _bad(self, key: str, expected: str) -> EvapiProtocolError:
        got = self.doc.get(key)
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return EvapiProtocolError(f"evapi event {self.kind!r}: field {key!r} must be "
                                  f"{expected}, got {shown}")

    def text(self, key: str) -> str:
        v = self.doc.get(key)
        if not isinstance(v, str) or not v:
            raise self._bad(key, "a non-empty string")
        return v

    def opt_text(self, key: str) -> str | None:
        v = self.doc.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def _what(self, key: str) -> str:
        return f"evapi event {self.kind!r}: field {key!r}"

    def uri(self, key: str) -> str | None:
        """An edge-encoded URI, decoded (a URI again)."""
        v = self.opt_text(key)
        return None if v is None else decode_uri(v, what=self._what(key),
                                                 error=EvapiProtocolError)

    def enc_text(self, key: str) -> str | None:
        """An edge-encoded display name or header value, as readable text."""
        v = self.opt_text(key)
        return None if v is None else decode_text(v, what=self._what(key),
                                                  error=EvapiProtocolError)

    def sip_value(self, key: str) -> str | None:
        """An edge-encoded value that goes back into SIP as it came (Contact, reason...)."""
        v = self.opt_text(key)
        return None if v is None else decode_value(
            v, what=self._what(key), error=EvapiProtocolError).decode("utf-8",
                                                                     "surrogateescape")

    def integer(self, key: str) -> int:
        v = self.doc.get(key)
        if isinstance(v, bool):
            raise self._bad(key, "an integer")
        if isinstance(v, int):
            return v
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        raise self._bad(key, "an integer")

    def opt_int(self, key: str) -> int | None:
        return None if self.doc.get(key) in (None, "") else self.integer(key)

    def ts(self) -> float:
        v = self.doc.get("ts")
        if v is None or v == "":
            return 0.0
        try:
            return float(v)
        except (TypeError, ValueError):
            raise self._bad("ts", "a number of seconds") from None

    def boolean(self, key: str) -> bool:
        v = self.doc.get(key, False)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def body(self) -> bytes:
        if self.doc.get("body_error"):
            raise EvapiProtocolError(f"evapi event {self.kind!r}: the edge could not relay "
                                     f"the body ({self.doc.get('body_error')})")
        v = self.doc.get("body")
        if v is None or v == "":
            return b""
        if not isinstance(v, str):
            raise self._bad("body", "a string")
        return decode_value(v, what=self._what("body"), error=EvapiProtocolError)

    def headers(self) -> dict[str, str]:
        v = self.doc.get("headers") or {}
        if not isinstance(v, Mapping) or not all(isinstance(x, str) for x in v.values()):
            raise self._bad("headers", "an object of strings")
        return {str(k): decode_text(x, what=self._what(f"headers.{k}"),
                                    error=EvapiProtocolError) for k, x in v.items()}

    def route(self) -> tuple[str, ...]:
        v = self.doc.get("record_route")
        if v is None or v == "":
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise self._bad("record_route", "a string or a list of strings")
        return tuple(decode_value(x, what=self._what("record_route"),
                                  error=EvapiProtocolError).decode("utf-8", "surrogateescape")
                     for x in items)


def parse_event(doc: Mapping[str, Any]) -> EdgeEvent | None:
    """The typed event of one evapi JSON object; ``None`` for kinds the controller ignores."""
    f = _Fields(doc)
    kind = f.kind
    if kind == "answered":
        return CallAnswered(
            edge=f.text("edge"), call_id=f.text("call_id"), ts=f.ts(),
            from_tag=f.text("from_tag"), to_tag=f.text("to_tag"),
            from_uri=f.uri("from") or "", to_uri=f.uri("to") or "",
            from_display=f.enc_text("from_display"), to_display=f.enc_text("to_display"),
            pai=f.uri("pai"), pai_display=f.enc_text("pai_display"), ruri=f.uri("ruri"),
            trunk=f.opt_text("trunk"),
            rtpengine=f.opt_text("rtpengine"), rule=f.opt_text("rule"),
            record_local=f.boolean("record_local"), siprec=f.opt_text("siprec"),
            session_id=f.enc_text("session_id"), h_entry=f.opt_int("h_entry"),
            h_id=f.opt_int("h_id"), headers=f.headers())
    if kind == "reinvite":
        by = f.opt_text("by") or "caller"
        return CallReinvite(edge=f.text("edge"), call_id=f.text("call_id"), ts=f.ts(),
                            hold=f.boolean("hold"), by=by)
    if kind == "ended":
        return CallEnded(edge=f.text("edge"), call_id=f.text("call_id"), ts=f.ts(),
                         by=f.opt_text("by"))
    if kind == "failed":
        return CallEnded(edge=f.text("edge"), call_id=f.text("call_id"), ts=f.ts(),
                         by=f.opt_text("by"), code=f.integer("code"))
    if kind == "rs_reply":
        return RsReply(edge=f.text("edge"), rs_call_id=f.text("call_id"),
                       method=f.text("method"), cseq=f.integer("cseq"), code=f.integer("code"),
                       reason=f.sip_value("reason") or "", to_tag=f.opt_text("to_tag"),
                       from_tag=f.opt_text("from_tag"), contact=f.sip_value("contact"),
                       content_type=f.sip_value("content_type"), body=f.body(),
                       record_route=f.route(), session_id=f.sip_value("session_id"),
                       ts=f.ts())
    if kind == "rs_request":
        return RsRequest(edge=f.text("edge"), rs_call_id=f.text("call_id"),
                         method=f.text("method"), cseq=f.opt_int("cseq") or 0,
                         content_type=f.sip_value("content_type"), body=f.body(), ts=f.ts())
    if kind == "rs_error":
        return RsError(edge=f.text("edge"), rs_call_id=f.text("call_id"),
                       method=f.opt_text("method") or "?", ts=f.ts())
    return None
