"""RFC 7866 / RFC 3261 checks of a recording session request itself (sans-IO): the SIP
envelope (R01, R02, R05, R06, R07, R30–R32) and the body's MIME structure (R03–R05, R07).

The SDP (R08–R11) and the metadata (R12–R29) are checked by the validator on the parts
:func:`split_body` finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SipError
from .multipart import (
    LEGACY_METADATA_TYPE,
    METADATA_TYPE,
    METADATA_TYPES,
    SNAPSHOT_REQUEST_TYPE,
    parse_content_type,
    parse_multipart,
)
from .rules import Finding, Severity
from .session_id import parse_session_id
from .sip import SipMessage, parse_name_addr

__all__ = ["Body", "check_envelope", "is_initial", "split_body"]

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


def is_initial(msg: SipMessage) -> bool:
    """An INVITE that starts a dialog: no To tag (RFC 3261 §12.1; a re-INVITE has one)."""
    if msg.method != "INVITE":
        return False
    to = msg.header("to")
    try:
        return to is None or parse_name_addr(to).param("tag") is None
    except SipError:
        return True


def _tokens(msg: SipMessage, name: str) -> list[str]:
    return [t.strip().lower() for v in msg.header_all(name) for t in v.split(",") if t.strip()]


def check_envelope(msg: SipMessage, source: str | None) -> list[Finding]:
    """R01, R02, R06, R07, R30, R31 on the request's headers."""
    out: list[Finding] = []
    if msg.declared_length is not None and msg.declared_length != len(msg.body):
        out.append(Finding("R07", E, msg.line_of("content-length"),
                           f"Content-Length is {msg.declared_length} but the body has "
                           f"{len(msg.body)} bytes", source))
    method = msg.method
    if method is None:
        return out
    # RFC 7989 §7: every request of a session carries its Session-ID
    sid = msg.header("session-id")
    if sid is None:
        out.append(Finding("R30", W, 1, f"{method} has no Session-ID header (RFC 7989): the "
                           "recording session's requests carry the session identifier", source))
    else:
        try:
            parse_session_id(sid)
        except SipError as exc:
            out.append(Finding("R30", E, msg.line_of("session-id"), str(exc), source))
    if method != "INVITE":
        return out
    initial = is_initial(msg)
    if initial and "siprec" not in _tokens(msg, "require"):
        out.append(Finding("R01", E, msg.line_of("require"),
                           "INVITE lacks Require: siprec (RFC 7866 §6.1.1)", source))
    contact = msg.header("contact") or ""
    params = [p.strip() for p in contact.split(">", 1)[-1].split(";")[1:]]
    if "+sip.src" not in [p.split("=")[0].lower() for p in params]:
        wrong = [p for p in params if p.lower() in ("src", "+sip-src", "+sip-rec")]
        hint = f" (found ;{wrong[0]}, a pre-RFC or misspelt tag)" if wrong else ""
        out.append(Finding("R02", E, msg.line_of("contact"),
                           f"Contact lacks the +sip.src feature tag{hint} (RFC 7866 §6.1.1)",
                           source))
    if SNAPSHOT_REQUEST_TYPE not in _tokens(msg, "accept"):
        what = "INVITE" if initial else "re-INVITE"
        out.append(Finding("R06", W, msg.line_of("accept"),
                           f"{what}: Accept does not list {SNAPSHOT_REQUEST_TYPE}: the SRS cannot "
                           "ask this SRC for a snapshot (RFC 7866 §9.2; RFC 3261 §13.2.1, "
                           "§14.1)", source))
    if initial:
        # RFC 3261 §13.2.1: Allow and Supported SHOULD be present in the INVITE
        for name in ("Allow", "Supported"):
            if not msg.header_all(name):
                out.append(Finding("R31", W, 1, f"INVITE has no {name} header (RFC 3261 "
                                   f"§13.2.1: it SHOULD be present in the INVITE)", source))
    return out


@dataclass(frozen=True, slots=True)
class Body:
    """What :func:`split_body` found: findings, the SDP part and the metadata part (each with
    the line of its first line in the message), or a snapshot request body."""

    findings: list[Finding]
    sdp: tuple[bytes, int] | None = None
    metadata: tuple[bytes, int, str] | None = None
    snapshot_request: tuple[bytes, int] | None = None


def split_body(msg: SipMessage, source: str | None) -> Body:
    """R03–R05, R07 and R32 on the body; the parts for the SDP and metadata checks."""
    out: list[Finding] = []
    ctype = msg.header("content-type")
    if not msg.body.strip():
        if msg.method != "BYE":  # a BYE without a body is what RFC 7866 expects
            out.append(Finding("R03", INFO, msg.body_line,
                               "no body: the request carries neither SDP nor metadata", source))
        return Body(out)
    if ctype is None:
        out.append(Finding("R03", E, None, "body without a Content-Type header", source))
        return Body(out)
    mime, _ = parse_content_type(ctype)
    sdp: tuple[bytes, int] | None = None
    meta: tuple[bytes, int, str] | None = None
    disposition: str | None = None
    if mime == "application/sdp":
        sdp = (msg.body, msg.body_line)
        if msg.method != "BYE":
            out.append(Finding("R03", INFO, msg.body_line,
                               "SDP without metadata (allowed: metadata may follow in a later "
                               "request, RFC 7866 §9.1)", source))
    elif mime == SNAPSHOT_REQUEST_TYPE:
        return Body(out, snapshot_request=(msg.body, msg.body_line))
    elif mime in METADATA_TYPES:
        meta = (msg.body, msg.body_line, mime)
        cd = msg.header("content-disposition")
        disposition = cd.split(";")[0].strip().lower() if cd else None
        if disposition != "recording-session":
            # a warning: the type alone tells a bare body is metadata (in a multipart body
            # the disposition is what marks the metadata part: an error there)
            out.append(Finding("R05", W, msg.line_of("content-type"),
                               f"{msg.method or 'message'} body {mime} has "
                               + ("no Content-Disposition" if cd is None
                                  else f"Content-Disposition {disposition}")
                               + "; RFC 7866 marks metadata with Content-Disposition: "
                                 "recording-session (without it the default disposition is "
                                 "'render', RFC 3261 §20.11, and an SRS may answer 415)",
                               source))
    elif mime.startswith("multipart/"):
        try:
            parts, problems = parse_multipart(ctype, msg.body)
        except SipError as exc:
            return Body(out + [Finding("R03", E, msg.body_line, str(exc), source)])
        for p in problems:
            out.append(Finding("R07", E, msg.body_line, p, source))
        if mime != "multipart/mixed":
            out.append(Finding("R03", E, None,
                               f"Content-Type is {mime}; SIPREC uses multipart/mixed", source))
        sdps = [p for p in parts if p.content_type == "application/sdp"]
        metas = [p for p in parts if p.content_type in METADATA_TYPES
                 or p.disposition == "recording-session"
                 and p.content_type != SNAPSHOT_REQUEST_TYPE]
        if len(sdps) != 1 and not (msg.method == "BYE" and not sdps):
            out.append(Finding("R03", E, msg.body_line,
                               f"expected exactly one application/sdp part, found {len(sdps)}",
                               source))
        if len(metas) > 1:
            out.append(Finding("R03", E, msg.body_line,
                               f"expected at most one metadata part, found {len(metas)}", source))
        if sdps:
            sdp = (sdps[0].body, msg.body_line + sdps[0].line - 1)
        if metas:
            mp = metas[0]
            line = msg.body_line + mp.line - 1
            meta = (mp.body, line, mp.content_type)
            if mp.disposition != "recording-session":
                out.append(Finding("R05", E, line - 1,
                                   "metadata part lacks Content-Disposition: recording-session "
                                   "(RFC 7866 §9)", source))
    else:
        out.append(Finding("R03", E, None, f"unexpected Content-Type {mime}", source))
        return Body(out)
    if meta is not None:
        mt = meta[2]
        if mt == LEGACY_METADATA_TYPE:
            out.append(Finding("R04", W, meta[1] - 1,
                               f"metadata Content-Type is {LEGACY_METADATA_TYPE}; RFC 9806 "
                               f"registers {METADATA_TYPE} (accepted, but send the new one)",
                               source))
        elif mt != METADATA_TYPE:
            out.append(Finding("R04", E, meta[1] - 1,
                               f"metadata part has Content-Type {mt}, expected {METADATA_TYPE}",
                               source))
        if msg.method == "BYE":
            out.append(Finding("R32", W, msg.line_of("content-type"),
                               "BYE carries metadata: RFC 7866 §9.1 sends metadata in INVITE or "
                               "UPDATE requests; send the final update (stop-time, "
                               "disassociate-time) in a re-INVITE or UPDATE before the BYE",
                               source))
    return Body(out, sdp, meta)
