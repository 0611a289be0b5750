"""The recording session's requests as RFC 3261, RFC 7866 and RFC 7989 expect them (sans-IO).

The controller's dialog code builds From/To/Call-ID/CSeq/Contact/Route; this module gives the
rest: the capability headers (:func:`rs_headers`), the bodies (:func:`request_body`) and the
end of the session (:func:`final_update`, :func:`bye`).

Where the end-of-session metadata goes (README, "End of the recording session"): RFC 7866
§9.1 carries metadata in INVITE and UPDATE requests, each metadata body marked with the
``recording-session`` disposition; nothing there puts metadata in a BYE, and an SRS that
does not expect a body in a BYE may answer 415 and leave the dialog up (RFC 3261 §21.4.16).
So the final update (``stop-time``, ``disassociate-time``) goes in a re-INVITE — or an
UPDATE when the SRS allows it — before a BYE without a body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..errors import MetadataError
from .builder import build_metadata, end_of_call_update
from .model import Reason, Recording
from .multipart import METADATA_TYPE, SNAPSHOT_REQUEST_TYPE, build_siprec_body
from .session_id import SessionId

__all__ = ["RS_ACCEPT", "RS_ALLOW", "RS_SUPPORTED", "RsRequest", "bye", "final_update",
           "request_body", "rs_headers"]

#: What the SRC answers within the recording session (the edge answers the SRS's re-INVITE,
#: UPDATE, BYE and OPTIONS; tm handles ACK and CANCEL).
RS_ALLOW = "INVITE, ACK, CANCEL, BYE, UPDATE, OPTIONS"
#: RFC 3261 §13.2.1 Accept: the types the SRC takes in responses and in the SRS's requests:
#: SDP answers/offers, the SRS's snapshot request (RFC 7866 §9.2), alone or with an SDP.
RS_ACCEPT = f"application/sdp, {SNAPSHOT_REQUEST_TYPE}, multipart/mixed"
#: RFC 3261 §13.2.1 Supported: the extensions the SRC understands.
RS_SUPPORTED = "siprec"
_CAPABILITIES = frozenset({"INVITE", "UPDATE"})


def rs_headers(method: str, session_id: SessionId | None = None) -> list[tuple[str, str]]:
    """Headers a recording session request carries besides the dialog's own.

    * INVITE (initial and re-INVITE) and UPDATE: ``Require: siprec`` (RFC 7866 §6.1.1),
      ``Supported`` and ``Allow`` (RFC 3261 §13.2.1 SHOULD, §14.1 for re-INVITEs; RFC 3311
      §5.1 for UPDATE), ``Accept`` listing ``application/rs-metadata-request`` so the SRS may
      ask for a snapshot (RFC 7866 §9.2).
    * Every request: ``Session-ID`` (RFC 7989 §7) when ``session_id`` is given.
    """
    method = method.upper()
    out: list[tuple[str, str]] = []
    if method in _CAPABILITIES:
        out += [("Require", "siprec"), ("Supported", RS_SUPPORTED), ("Allow", RS_ALLOW),
                ("Accept", RS_ACCEPT)]
    if session_id is not None:
        out.append(("Session-ID", session_id.header))
    return out


def request_body(sdp: bytes | None, metadata: bytes | None,
                 boundary: str | None = None) -> tuple[str, bytes, list[tuple[str, str]]]:
    """``(content_type, body, headers)``: SDP and/or metadata as RFC 7866 §9 wants them.

    SDP and metadata: multipart/mixed, the metadata part with ``Content-Disposition:
    recording-session``. Metadata alone (an UPDATE): the body is the metadata and the
    request itself carries ``Content-Disposition: recording-session``. SDP alone: plain SDP.
    """
    if sdp is not None:
        ctype, body = build_siprec_body(sdp, metadata, boundary)
        return ctype, body, []
    if metadata is None:
        raise MetadataError("a request body needs SDP or metadata")
    return METADATA_TYPE, metadata, [("Content-Disposition", "recording-session")]


@dataclass(frozen=True, slots=True)
class RsRequest:
    """One request of the recording session: method, body and the headers to add."""

    method: str
    content_type: str | None
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def final_update(snapshot: Recording, at: datetime, *, sdp: bytes | None,
                 method: str = "INVITE", reason: Reason | None = None,
                 session_id: SessionId | None = None,
                 boundary: str | None = None) -> RsRequest:
    """The request that ends the session's metadata, sent before the BYE: a partial update
    with ``stop-time`` and every ``disassociate-time`` at ``at`` (the edge's event time).

    ``method`` INVITE (a re-INVITE: ``sdp`` is the current offer, repeated unchanged with its
    o= version, RFC 3264 §8) or UPDATE (``sdp`` may be None: metadata only; RFC 3311 needs
    UPDATE in the SRS's Allow). ``snapshot`` is the session's current complete snapshot
    (e.g. :func:`~.builder.with_holds` of the first one while a party is held).
    """
    method = method.upper()
    if method not in _CAPABILITIES:
        raise MetadataError(f"the final update goes in a re-INVITE or UPDATE, not {method}")
    if method == "INVITE" and sdp is None:
        raise MetadataError("a re-INVITE carrying the final update needs the current SDP offer")
    metadata = build_metadata(end_of_call_update(snapshot, at, reason))
    ctype, body, extra = request_body(sdp, metadata, boundary)
    return RsRequest(method, ctype, body, rs_headers(method, session_id) + extra)


def bye(session_id: SessionId | None = None) -> RsRequest:
    """The BYE that ends the recording session, after :func:`final_update`: no body."""
    return RsRequest("BYE", None, b"", rs_headers("BYE", session_id))
