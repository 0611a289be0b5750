"""Validate SIPREC metadata: the project's RFC 7865 XML Schema plus semantic rules (sans-IO).

The schema (``schema/recording.xsd``) checks structure and types with lxml; the semantic pass
checks what a schema cannot (references, uniqueness, labels against the SDP, time order,
completeness) and gives people-readable messages. A :class:`RecordingSessionValidator` keeps
the accumulated state of one recording session, so partial updates (RFC 7865 §6.1
``datamode=partial``) are checked against what earlier documents established.

Profiles: ``strict`` (RFC 7865) and ``legacy`` (the pre-RFC draft format some SBCs still send:
detected in both profiles, validated leniently only under ``legacy``).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from lxml import etree

from ..errors import SipError
from .model import LEGACY_NS, RECORDING_NS, XML_NS, id_bytes
from .multipart import (
    LEGACY_METADATA_TYPE,
    METADATA_TYPE,
    METADATA_TYPES,
    SNAPSHOT_REQUEST_TYPE,
    parse_content_type,
    parse_multipart,
)
from .parse import parse_datetime, safe_parser
from .rules import Finding, Severity
from .sdp import Sdp, check_offer, parse_sdp
from .sip import SipMessage, looks_like_sip, parse_sip_message

__all__ = [
    "Profile",
    "RecordingSessionValidator",
    "has_errors",
    "schema",
    "validate_input",
    "validate_message",
    "validate_metadata",
]

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
_R = "{" + RECORDING_NS + "}"
_L = "{" + LEGACY_NS + "}"
_LANG = "{" + XML_NS + "}lang"
_KNOWN = frozenset({
    "recording", "datamode", "group", "session", "participant", "stream",
    "sessionrecordingassoc", "participantsessionassoc", "participantstreamassoc",
    "associate-time", "disassociate-time", "sipSessionID", "reason", "group-ref", "start-time",
    "stop-time", "nameID", "name", "param", "label", "send", "recv", "requestsnapshot",
    "requestreason"})
_AOR_OK = re.compile(r"^(?:sips?|tel):[^\s<>\"]+$", re.IGNORECASE)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+$")
_BARE_AOR = re.compile(r"^[^\s<>\"@:]+@[^\s<>\"@]+$")
_SESSION_ID = re.compile(r"^[0-9a-fA-F]{32}(;\s*remote=[0-9a-fA-F]{32})?(;.*)?$")
_PARSER = safe_parser()
_R_DATAMODE, _R_GROUP, _R_SESSION = _R + "datamode", _R + "group", _R + "session"
_R_PARTICIPANT, _R_STREAM, _R_SRA = _R + "participant", _R + "stream", _R + "sessionrecordingassoc"
_R_PSA, _R_PST = _R + "participantsessionassoc", _R + "participantstreamassoc"
_R_ASSOC_T, _R_DISASSOC_T = _R + "associate-time", _R + "disassociate-time"
_R_NAMEID, _R_LABEL, _R_SEND, _R_RECV = _R + "nameID", _R + "label", _R + "send", _R + "recv"
_R_NAME, _R_SIPSESSIONID, _R_GROUPREF = _R + "name", _R + "sipSessionID", _R + "group-ref"
_R_START_T, _R_STOP_T = _R + "start-time", _R + "stop-time"


class Profile(enum.StrEnum):
    STRICT = "strict"
    LEGACY = "legacy"


@functools.cache
def schema() -> etree.XMLSchema:
    """The project's RFC 7865 schema (package data, loaded once, never from the network)."""
    base = resources.files("orchestrator.siprec") / "schema"
    xml_xsd = (base / "xml.xsd").read_bytes()
    rec_xsd = (base / "recording.xsd").read_bytes()

    class _Local(etree.Resolver):
        def resolve(self, url, pubid, context):  # type: ignore[no-untyped-def]
            if url.endswith("xml.xsd"):
                return self.resolve_string(xml_xsd, context)
            return None

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    parser.resolvers.add(_Local())
    return etree.XMLSchema(etree.fromstring(rec_xsd, parser, base_url="recording.xsd"))


_LABEL_LINE = re.compile(r"^a=label:([^\r\n]*)", re.MULTILINE)


def _labels_of(sdp: bytes | str) -> list[str]:
    """The SDP's ``a=label`` values (all that metadata checking needs from it)."""
    text = sdp.decode("utf-8", "replace") if isinstance(sdp, bytes) else sdp
    return [lb.strip() for lb in _LABEL_LINE.findall(text)]


def _schema_valid(root: etree._Element) -> bool:
    try:
        return bool(schema().validate(root))
    except etree.Error:  # e.g. unexpanded entity references: libxml2 gives up
        return False


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


# --------------------------------------------------------------------------- state

@dataclass(slots=True)
class _Assoc:
    line: int | None
    assoc: str | None = None  # xs:dateTime text, parsed only to compare
    disassoc: str | None = None


@dataclass(slots=True)
class _StreamAssoc(_Assoc):
    send: list[tuple[str, int | None]] = field(default_factory=list)
    recv: list[tuple[str, int | None]] = field(default_factory=list)
    replaced: bool = False


@dataclass
class _Doc:
    """What one document (or the accumulated recording session) says, keyed by ID."""

    groups: dict[str, _Assoc] = field(default_factory=dict)
    sessions: dict[str, _Assoc] = field(default_factory=dict)  # assoc=start, disassoc=stop
    group_refs: list[tuple[str, str, int | None]] = field(default_factory=list)
    participants: dict[str, int | None] = field(default_factory=dict)
    streams: dict[str, tuple[str | None, str | None, int | None]] = field(default_factory=dict)
    sras: dict[str, _Assoc] = field(default_factory=dict)
    psas: dict[tuple[str, str], _Assoc] = field(default_factory=dict)
    psts: dict[str, _StreamAssoc] = field(default_factory=dict)

    def merge(self, doc: _Doc) -> None:
        """Apply a partial update (RFC 7865 §6.1): given fields override, objects accumulate."""
        _merge_assocs(self.groups, doc.groups)
        _merge_assocs(self.sessions, doc.sessions)
        _merge_assocs(self.sras, doc.sras)
        _merge_assocs(self.psas, doc.psas)
        self.group_refs.extend(doc.group_refs)
        self.participants.update(doc.participants)
        self.streams.update(doc.streams)
        for pid, pst in doc.psts.items():
            old_pst = self.psts.get(pid)
            # A partial participantstreamassoc replaces the send/recv set (R28).
            self.psts[pid] = _StreamAssoc(
                pst.line, pst.assoc or (old_pst.assoc if old_pst else None),
                pst.disassoc or (old_pst.disassoc if old_pst else None),
                list(pst.send), list(pst.recv))


def _merge_assocs(mine: dict[Any, _Assoc], theirs: dict[Any, _Assoc]) -> None:
    for key, new in theirs.items():
        old = mine.get(key)
        if old is None:
            mine[key] = _Assoc(new.line, new.assoc, new.disassoc)
        else:
            old.assoc = new.assoc or old.assoc
            old.disassoc = new.disassoc or old.disassoc


# --------------------------------------------------------------------------- validator

class RecordingSessionValidator:
    """Validate the metadata documents of one recording session, in order."""

    def __init__(self, profile: Profile | str = Profile.STRICT) -> None:
        self.profile = Profile(profile)
        self.state: _Doc | None = None
        self.sdp_labels: list[str] | None = None
        self.sdp_version: int | None = None
        self._sdp_text: bytes | str | None = None
        self._sdp_text_labels: list[str] = []

    # -- public entry points

    def validate(self, data: bytes, *, sdp: bytes | str | Sdp | None = None,
                 source: str | None = None, line_offset: int = 0) -> list[Finding]:
        """Findings for one metadata document (with the RS SDP of the same request, if any)."""
        if isinstance(sdp, Sdp):
            self.sdp_labels = sdp.labels
        elif sdp is not None:
            if sdp != self._sdp_text:  # re-INVITEs often repeat the SDP unchanged
                self._sdp_text = sdp
                self._sdp_text_labels = _labels_of(sdp)
            self.sdp_labels = self._sdp_text_labels
        run = _Run(self, source, line_offset)
        run.document(data)
        return run.findings

    def validate_message(self, data: bytes, *, source: str | None = None) -> list[Finding]:
        """Findings for a whole SIP message (a recording session INVITE/re-INVITE/UPDATE)."""
        out: list[Finding] = []
        try:
            msg = parse_sip_message(data)
        except SipError as exc:
            return [Finding("R07", E, None, f"not a parseable SIP message: {exc}", source)]
        out.extend(_check_envelope(msg, source))
        ctype = msg.header("content-type")
        if not msg.body.strip():
            out.append(Finding("R03", INFO, msg.body_line,
                               "no body: the request carries neither SDP nor metadata", source))
            return out
        if ctype is None:
            out.append(Finding("R03", E, None, "body without a Content-Type header", source))
            return out
        mime, _ = parse_content_type(ctype)
        sdp_part: tuple[bytes, int] | None = None
        meta_part: tuple[bytes, int, str] | None = None
        if mime == "application/sdp":
            sdp_part = (msg.body, msg.body_line)
            out.append(Finding("R03", INFO, msg.body_line,
                               "SDP without metadata (allowed: metadata may follow in a later "
                               "request, RFC 7866 §9.1)", source))
        elif mime in (SNAPSHOT_REQUEST_TYPE,):
            return out + self._snapshot_request(msg.body, msg.body_line, msg, source)
        elif mime in METADATA_TYPES:
            meta_part = (msg.body, msg.body_line, mime)
        elif mime.startswith("multipart/"):
            try:
                parts, problems = parse_multipart(ctype, msg.body)
            except SipError as exc:
                return out + [Finding("R03", E, msg.body_line, str(exc), source)]
            for p in problems:
                out.append(Finding("R07", E, msg.body_line, p, source))
            if mime != "multipart/mixed":
                out.append(Finding("R03", E, None,
                                   f"Content-Type is {mime}; SIPREC uses multipart/mixed", source))
            sdps = [p for p in parts if p.content_type == "application/sdp"]
            metas = [p for p in parts if p.content_type in METADATA_TYPES
                     or p.disposition == "recording-session"
                     and p.content_type != SNAPSHOT_REQUEST_TYPE]
            if len(sdps) != 1:
                out.append(Finding("R03", E, msg.body_line,
                                   f"expected exactly one application/sdp part, found "
                                   f"{len(sdps)}", source))
            if len(metas) > 1:
                out.append(Finding("R03", E, msg.body_line,
                                   f"expected at most one metadata part, found {len(metas)}",
                                   source))
            if sdps:
                sdp_part = (sdps[0].body, msg.body_line + sdps[0].line - 1)
            if metas:
                mp = metas[0]
                line = msg.body_line + mp.line - 1
                meta_part = (mp.body, line, mp.content_type)
                if mp.disposition != "recording-session":
                    out.append(Finding("R05", E, line - 1,
                                       "metadata part lacks Content-Disposition: "
                                       "recording-session (RFC 7866 §9)", source))
        else:
            out.append(Finding("R03", E, None, f"unexpected Content-Type {mime}", source))
            return out
        if meta_part is not None:
            mt = meta_part[2]
            if mt == LEGACY_METADATA_TYPE:
                out.append(Finding("R04", W, meta_part[1] - 1,
                                   f"metadata Content-Type is {LEGACY_METADATA_TYPE}; RFC 9806 "
                                   f"registers {METADATA_TYPE} (accepted, but send the new one)",
                                   source))
            elif mt != METADATA_TYPE:
                out.append(Finding("R04", E, meta_part[1] - 1,
                                   f"metadata part has Content-Type {mt}, expected "
                                   f"{METADATA_TYPE}", source))
        sdp: Sdp | None = None
        if sdp_part is not None:
            try:
                sdp = parse_sdp(sdp_part[0])
            except SipError as exc:
                out.append(Finding("R08", E, sdp_part[1], f"SDP part: {exc}", source))
            if sdp is not None and msg.method is not None:
                out.extend(check_offer(sdp, line_offset=sdp_part[1] - 1, source=source))
                if sdp.session_version is not None:
                    if self.sdp_version is not None and sdp.session_version <= self.sdp_version:
                        out.append(Finding("R11", E, sdp_part[1],
                                           f"o= session-version {sdp.session_version} does not "
                                           f"increase (previous offer had {self.sdp_version})",
                                           source))
                    self.sdp_version = sdp.session_version
        if meta_part is not None:
            out.extend(self.validate(meta_part[0], sdp=sdp, source=source,
                                     line_offset=meta_part[1] - 1))
        elif sdp is not None:
            self.sdp_labels = sdp.labels
        return out

    def _snapshot_request(self, body: bytes, line: int, msg: SipMessage | None,
                          source: str | None) -> list[Finding]:
        run = _Run(self, source, line - 1)
        run.document(body)
        return run.findings


def _check_envelope(msg: SipMessage, source: str | None) -> list[Finding]:
    """Rules R01, R02, R06, R07 on the recording session request itself."""
    out: list[Finding] = []
    if msg.declared_length is not None and msg.declared_length != len(msg.body):
        out.append(Finding("R07", E, msg.line_of("content-length"),
                           f"Content-Length is {msg.declared_length} but the body has "
                           f"{len(msg.body)} bytes", source))
    if msg.method != "INVITE":
        return out
    tags = [t.strip().lower() for v in msg.header_all("require") for t in v.split(",")]
    if "siprec" not in tags:
        out.append(Finding("R01", E, msg.line_of("require"), "INVITE lacks Require: siprec (RFC 7866 §6.1.1)",
                           source))
    contact = msg.header("contact") or ""
    params = [p.strip() for p in contact.split(">", 1)[-1].split(";")[1:]]
    if "+sip.src" not in [p.split("=")[0].lower() for p in params]:
        wrong = [p for p in params if p.lower() in ("src", "+sip-src", "+sip-rec")]
        hint = f" (found ;{wrong[0]}, a pre-RFC or misspelt tag)" if wrong else ""
        out.append(Finding("R02", E, msg.line_of("contact"),
                           f"Contact lacks the +sip.src feature tag{hint} (RFC 7866 §6.1.1)",
                           source))
    accept = ",".join(msg.header_all("accept")).lower()
    if SNAPSHOT_REQUEST_TYPE not in accept:
        out.append(Finding("R06", W, msg.line_of("accept"),
                           f"Accept does not list {SNAPSHOT_REQUEST_TYPE}: the SRS cannot ask "
                           "this SRC for a snapshot", source))
    return out


def _clean(message: str) -> str:
    message = message.replace("{" + RECORDING_NS + "}", "")
    message = re.sub(r"Element '([^']+)'", r"<\1>", message)
    return message.rstrip(".")


_B64_16 = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")
_DT_ZONED = re.compile(r"-?\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


def _dt(text: str | None) -> datetime | None:
    """A checked xs:dateTime string as a datetime (None if absent or unparseable)."""
    if text is None:
        return None
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def _zoned(text: str | None) -> bool:
    """True for an absent time or one (already schema-checked) that carries a timezone."""
    return text is None or text[-1] == "Z" or text[-3] == ":" and text[-6] in "+-"


def _before(a: str | None, b: str | None) -> bool:
    """True if time ``a`` is strictly before time ``b`` (both given and comparable)."""
    da, db = _dt(a), _dt(b)
    if da is None or db is None:
        return False
    try:
        return da < db
    except TypeError:  # one zoned, one not: R20 already reported the unzoned one
        return False


def _clean_complete(doc: _Doc, sdp: list[str] | None) -> bool:
    """True if a complete snapshot passes R17, R18 (labels), R22 and R23 without a finding:
    one pass over the collected objects (the hot path; the detailed checks explain failures)."""
    groups, sessions, participants, streams = doc.groups, doc.sessions, doc.participants, \
        doc.streams
    for _sid, ref, _line in doc.group_refs:
        if ref not in groups:
            return False
    labels = set()
    for label, session, _line in streams.values():
        if session not in sessions or label in labels:
            return False
        labels.add(label)
    if sdp is not None and (len(sdp) != len(labels) or not labels.issuperset(sdp)):
        return False
    sras = doc.sras
    if len(sras) != len(sessions):
        return False
    for sid in sras:
        if sid not in sessions:
            return False
    in_session = set()
    for pid, sid in doc.psas:
        if pid not in participants or sid not in sessions:
            return False
        in_session.add(pid)
    if len(in_session) != len(participants):
        return False
    senders: set[str] = set()
    for pid, pst in doc.psts.items():
        if pid not in participants:
            return False
        own = set()
        for ref, _line in pst.send:
            if ref not in streams or ref in senders:
                return False
            own.add(ref)
        for ref, _line in pst.recv:
            if ref not in streams or ref in own:
                return False
        senders |= own
    return len(senders) == len(streams)


class _Run:
    """One document's validation. When the schema passes, checks it already guarantees
    (base64 lexical form, xs:dateTime syntax, element order) are skipped: the hot path."""

    __slots__ = ("_good_ids", "_seen", "findings", "offset", "ok", "source", "v")

    def __init__(self, v: RecordingSessionValidator, source: str | None, offset: int) -> None:
        self.v = v
        self.source = source
        self.offset = offset
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, int | None]] = set()
        self._good_ids: set[str] = set()
        self.ok = False

    def add(self, rule: str, sev: Severity, el: etree._Element | int | None, msg: str) -> None:
        if isinstance(el, int) or el is None:
            line = el
        else:
            line = el.sourceline
        if line is not None:
            line += self.offset
        self._seen.add((rule, line))
        self.findings.append(Finding(rule, sev, line, msg, self.source))

    # -- document level

    def document(self, data: bytes) -> None:
        try:
            root = etree.fromstring(data, _PARSER)
        except etree.XMLSyntaxError as exc:
            line = exc.position[0] if exc.position else None
            self.add("R12", E, line, f"not well-formed XML: {exc.msg}")
            return
        except ValueError as exc:
            self.add("R12", E, 1, f"not parseable XML: {exc}")
            return
        if root is None:
            self.add("R12", E, 1, "empty document")
            return
        if root.getroottree().docinfo.doctype:
            self.add("R12", E, 1, "the document has a DOCTYPE; metadata must not use DTDs "
                     "(entities are never expanded here)")
        tag = root.tag if isinstance(root.tag, str) else ""
        if tag == _R + "requestsnapshot":
            self.snapshot_request(root)
            return
        if tag == _R + "recording":
            self.ok = _schema_valid(root)
            legacy = [] if self.ok else _legacy_markers(root)
        else:
            legacy = _legacy_markers(root)
        if legacy:
            self.add("R26", INFO, root, "pre-RFC draft metadata format detected ("
                     + ", ".join(legacy) + ")")
            if self.v.profile is Profile.LEGACY:
                self.legacy(root)
                return
            if tag != _R + "recording":
                self.add("R12", E, root, f"root element {_qname(root)} is in the pre-RFC draft "
                         f"namespace; RFC 7865 requires {RECORDING_NS} (use --profile legacy to "
                         "validate it leniently)")
                return
        elif tag != _R + "recording":
            self.add("R12", E, root, f"root element is {_qname(root)}; expected <recording> in "
                     f"{RECORDING_NS}")
            return
        fast = self.fast_semantic(root) if self.ok else None
        if fast is None:
            self._good_ids.clear()
            doc, partial = self.semantic(root)
        else:
            doc, partial = fast
        if not self.ok:
            self.xsd_errors()
        self.stateful(doc, partial, root)

    def xsd_errors(self) -> None:
        for entry in schema().error_log:
            msg = entry.message
            line = entry.line + self.offset if entry.line else None
            rule = "R14"
            if "xs:base64Binary" in msg:
                rule = "R15"
            elif "xs:dateTime" in msg:
                rule = "R20"
            elif "datamode" in msg and "enumeration" in msg:
                rule = "R13"
            elif "is not allowed" in msg and "attribute" in msg:
                rule = "R25"
            elif "This element is not expected" in msg:
                m = re.match(r"Element '(\{([^}]*)\})?([^']+)'", msg)
                if m and (m.group(2) != RECORDING_NS or m.group(3) not in _KNOWN):
                    rule = "R25"
            elif "Missing child element" in msg and "label" in msg:
                rule = "R18"
            elif "is required but missing" in msg and (rule, line) in self._seen:
                continue
            if (rule, line) in self._seen:
                continue  # the semantic pass already said it, in plainer words
            self._seen.add((rule, line))
            self.findings.append(Finding(rule, E, line, _clean(msg), self.source))

    # -- the semantic pass over an RFC 7865 document

    def fast_semantic(self, root: etree._Element) -> tuple[_Doc, bool] | None:
        """The hot path for schema-valid documents: collect the objects and prove the
        per-element rules hold, in one inlined loop. ``None`` as soon as anything looks off;
        the caller then runs :meth:`semantic`, which explains what."""
        doc = _Doc()
        partial = False
        good = self._good_ids
        b64 = _B64_16.fullmatch
        kind_of: dict[str, str] = {}
        groups, sessions, participants = doc.groups, doc.sessions, doc.participants
        streams, psts = doc.streams, doc.psts
        STREAM, PST, PARTICIPANT, PSA, SRA = _R_STREAM, _R_PST, _R_PARTICIPANT, _R_PSA, _R_SRA
        SEND, RECV, ASSOC_T, DISASSOC_T = _R_SEND, _R_RECV, _R_ASSOC_T, _R_DISASSOC_T
        zoned, before, LABEL = _zoned, _before, _R_LABEL
        for el in root:
            tag = el.tag
            if tag == STREAM:
                sid = el.get("stream_id")
                session = el.get("session_id")
                if sid in kind_of or not b64(sid) or not (session in good or b64(session)):
                    return None
                kind_of[sid] = "stream"
                good.add(sid)
                good.add(session)
                first = el[0]  # the schema puts <label> first; a comment may precede it
                label = first.text if first.tag == LABEL else el.findtext(LABEL)
                streams[sid] = ((label or "").strip(), session, el.sourceline)
            elif tag == PST:
                pid = el.get("participant_id")
                if not (pid in good or b64(pid)):
                    return None
                sa = _StreamAssoc(el.sourceline)
                send, recv = sa.send, sa.recv
                for c in el:
                    ctag = c.tag
                    if ctag == SEND:
                        ref = c.text
                        if ref not in good:
                            return None  # not a stream ID seen above: let the slow pass say
                        send.append((ref, c.sourceline))
                    elif ctag == RECV:
                        ref = c.text
                        if ref not in good:
                            return None
                        recv.append((ref, c.sourceline))
                    elif ctag == ASSOC_T:
                        sa.assoc = c.text
                    elif ctag == DISASSOC_T:
                        sa.disassoc = c.text
                if pid in psts or not zoned(sa.assoc) or sa.disassoc is not None and (
                        not zoned(sa.disassoc) or before(sa.disassoc, sa.assoc)):
                    return None
                psts[pid] = sa
            elif tag == PARTICIPANT:
                pid = el.get("participant_id")
                if pid in kind_of or not b64(pid):
                    return None
                kind_of[pid] = "participant"
                good.add(pid)
                participants[pid] = el.sourceline
                for c in el:
                    if c.tag == _R_NAMEID:
                        aor = c.get("aor")
                        if not _AOR_OK.match(aor):
                            return None
                        for name in c:  # <name>, at most one; lacking xml:lang is an info
                            if name.get(_LANG) is None:
                                return None
            elif tag == PSA or tag == SRA or tag == _R_GROUP:
                a = _Assoc(el.sourceline)
                for c in el:
                    ctag = c.tag
                    if ctag == ASSOC_T:
                        a.assoc = c.text
                    elif ctag == DISASSOC_T:
                        a.disassoc = c.text
                if not zoned(a.assoc) or a.disassoc is not None and (
                        not zoned(a.disassoc) or before(a.disassoc, a.assoc)):
                    return None
                if tag == PSA:
                    pid, sid = el.get("participant_id"), el.get("session_id")
                    if (pid, sid) in doc.psas or not (pid in good or b64(pid)) \
                            or not (sid in good or b64(sid)):
                        return None
                    doc.psas[(pid, sid)] = a
                elif tag == SRA:
                    sid = el.get("session_id")
                    if sid in doc.sras or not (sid in good or b64(sid)):
                        return None
                    doc.sras[sid] = a
                else:
                    gid = el.get("group_id")
                    if gid in kind_of or not b64(gid):
                        return None
                    kind_of[gid] = "group"
                    good.add(gid)
                    groups[gid] = a
            elif tag == _R_SESSION:
                sid = el.get("session_id")
                if sid in kind_of or not (sid in good or b64(sid)):
                    return None
                kind_of[sid] = "session"
                good.add(sid)
                a = _Assoc(el.sourceline)
                for c in el:
                    ctag = c.tag
                    if ctag == _R_SIPSESSIONID:
                        if not _SESSION_ID.match((c.text or "").strip()):
                            return None
                    elif ctag == _R_GROUPREF:
                        ref = c.text
                        if not (ref in good or b64(ref)):
                            return None
                        doc.group_refs.append((sid, ref, c.sourceline))
                    elif ctag == _R_START_T:
                        a.assoc = c.text
                    elif ctag == _R_STOP_T:
                        a.disassoc = c.text
                if not zoned(a.assoc) or a.disassoc is not None and (
                        not zoned(a.disassoc) or before(a.disassoc, a.assoc)):
                    return None
                sessions[sid] = a
            elif tag == _R_DATAMODE:
                partial = el.text == "partial"
        if not partial and _clean_complete(doc, self.v.sdp_labels):
            return doc, partial
        if not partial:
            self.references(doc, doc, "document")
            self.completeness(doc)
        self.labels(doc, partial)
        self.streams_plausible(doc)
        return doc, partial

    def semantic(self, root: etree._Element) -> tuple[_Doc, bool]:
        doc = _Doc()
        partial = False
        ids_by_value: dict[str, str] = {}
        add = self.add
        ok = self.ok
        if not ok:
            for an, av in root.attrib.items():
                if not an.startswith("{"):
                    add("R25", E, root, f"<recording> has attribute {an}={av!r}; RFC 7865 allows "
                        "only attributes in a foreign namespace")
        for el in root:
            tag = el.tag
            if tag == _R_STREAM:
                self.stream(el, doc, ids_by_value)
            elif tag == _R_PST:
                self.pst(el, doc)
            elif tag == _R_PARTICIPANT:
                pid = self.id_attr(el, "participant_id", "participant", doc.participants,
                                   ids_by_value)
                if pid is not None:
                    doc.participants[pid] = el.sourceline
                self.participant(el)
            elif tag == _R_PSA:
                pid = self.ref_attr(el, "participant_id", "participantsessionassoc")
                sid = self.ref_attr(el, "session_id", "participantsessionassoc")
                a = self.assoc(el, "participantsessionassoc", pid, params=True)
                if pid is not None and sid is not None:
                    if (pid, sid) in doc.psas:
                        add("R16", W, el, f"second participantsessionassoc for participant "
                            f"{pid} in session {sid}")
                    doc.psas[(pid, sid)] = a
            elif tag == _R_SRA:
                sid = self.ref_attr(el, "session_id", "sessionrecordingassoc")
                a = self.assoc(el, "sessionrecordingassoc", sid)
                if sid is not None:
                    if sid in doc.sras:
                        add("R16", W, el, f"second sessionrecordingassoc for session {sid}")
                    doc.sras[sid] = a
            elif tag == _R_SESSION:
                self.session(el, doc, ids_by_value)
            elif tag == _R_GROUP:
                gid = self.id_attr(el, "group_id", "group", doc.groups, ids_by_value)
                a = self.assoc(el, "group", gid)
                if gid is not None:
                    doc.groups[gid] = a
            elif tag == _R_DATAMODE:
                mode = (el.text or "").strip()
                if mode == "partial":
                    partial = True
                elif mode != "complete":
                    add("R13", E, el, f"datamode is {mode!r}; it must be 'complete' or 'partial'")
            elif not isinstance(tag, str) or ok:
                continue
            elif tag.startswith(_R):
                add("R25", E, el, f"<{tag[len(_R):]}> is not an RFC 7865 element; extensions "
                    "must be in a foreign namespace")
            elif not tag.startswith("{"):
                add("R25", E, el, f"<{tag}> has no namespace; extensions must be in a foreign "
                    "namespace")
        if not partial:
            self.references(doc, doc, "document")
            self.completeness(doc)
        self.labels(doc, partial)
        self.streams_plausible(doc)
        return doc, partial

    def id_attr(self, el: etree._Element, name: str, kind: str, seen: dict,
                ids_by_value: dict[str, str]) -> str | None:
        value = el.get(name)
        if value is None:
            self.add("R14", E, el, f"<{kind}> has no {name} attribute (required)")
            return None
        self.check_b64(el, f"{kind} {name}", value)
        if value in seen:
            self.add("R16", E, el, f"{name} {value} is used by two <{kind}> elements")
        other = ids_by_value.get(value)
        if other is not None and other != kind:
            self.add("R16", W, el, f"{name} {value} is also the ID of a <{other}>")
        ids_by_value[value] = kind
        return value

    def ref_attr(self, el: etree._Element, name: str, kind: str) -> str | None:
        value = el.get(name)
        if value is None:
            self.add("R14", E, el, f"<{kind}> has no {name} attribute (required)")
            return None
        self.check_b64(el, f"{kind} {name}", value)
        return value

    def check_b64(self, el: etree._Element | int | None, what: str, value: str) -> None:
        good = self._good_ids
        if value in good:
            return
        if _B64_16.fullmatch(value):
            good.add(value)
            return
        raw = id_bytes(value)
        if raw is None:
            self.add("R15", E, el, f"{what} {value!r} is not base64Binary (length a multiple of "
                     "4, alphabet A-Z a-z 0-9 + /, '=' padding only)")
        elif len(raw) != 16:
            self.add("R15", W, el, f"{what} {value!r} decodes to {len(raw)} bytes, not the 16 "
                     "of a UUID (RFC 7865 recommends base64 of a 128-bit UUID)")

    def time(self, el: etree._Element, what: str) -> str | None:
        """The time's text if it is a zoned xs:dateTime; else report R20 (and maybe return)."""
        text = el.text
        if text is not None and (self.ok or _DT_ZONED.fullmatch(text)) and (
                text[-1] == "Z" or text[-3] == ":" and text[-6] in "+-"):
            return text
        text = (text or "").strip()
        try:
            value = parse_datetime(text)
        except ValueError:
            hint = ""
            if re.search(r"[+-]\d{4}$", text):
                hint = " (the timezone needs a colon: ±hh:mm)"
            self.add("R20", E, el, f"{what} {text!r} is not an xs:dateTime{hint}")
            return None
        if value.tzinfo is None:
            sev = INFO if self.v.profile is Profile.LEGACY else W
            self.add("R20", sev, el, f"{what} {text} has no timezone; add Z or ±hh:mm")
        return text

    def assoc(self, el: etree._Element, kind: str, key: str | None,
              params: bool = False) -> _Assoc:
        a = _Assoc(el.sourceline)
        ok = self.ok
        for c in el:
            tag = c.tag
            if tag == _R_ASSOC_T:
                a.assoc = self.time(c, f"{kind} associate-time")
            elif tag == _R_DISASSOC_T:
                a.disassoc = self.time(c, f"{kind} disassociate-time")
            elif ok or params and tag == _R + "param":
                continue
            elif isinstance(tag, str):
                self.foreign(c, kind)
        if a.disassoc is not None:
            self.order(el, kind, key, a.assoc, a.disassoc, "associate-time", "disassociate-time")
        return a

    def order(self, el: etree._Element, kind: str, key: str | None, start: str | None,
              end: str | None, n1: str, n2: str) -> None:
        if _before(end, start):
            self.add("R21", E, el, f"{kind} {key or ''}: {n2} {end} is before "
                     f"{n1} {start}".replace("  ", " "))

    def foreign(self, c: etree._Element, parent: str) -> None:
        tag = c.tag
        if tag.startswith(_R):
            name = tag[len(_R):]
            if name in _KNOWN:
                return  # misplaced known element: the schema pass reports the order
            self.add("R25", E, c, f"<{name}> in <{parent}> is not an RFC 7865 element; "
                     "extensions must be in a foreign namespace")
        elif not tag.startswith("{"):
            self.add("R25", E, c, f"<{tag}> in <{parent}> has no namespace; extensions must be "
                     "in a foreign namespace")

    def session(self, el: etree._Element, doc: _Doc, ids: dict[str, str]) -> None:
        sid = self.id_attr(el, "session_id", "session", doc.sessions, ids)
        a = _Assoc(el.sourceline)
        ok = self.ok
        for c in el:
            tag = c.tag
            if tag == _R + "sipSessionID":
                text = (c.text or "").strip()
                if not _SESSION_ID.match(text):
                    self.add("R24", W, c, f"sipSessionID {text!r} does not look like an RFC 7989 "
                             "Session-ID (32 hex digits, optional ;remote=); is it a Call-ID?")
            elif tag == _R + "group-ref":
                ref = (c.text or "").strip()
                self.check_b64(c, "group-ref", ref)
                if sid is not None:
                    doc.group_refs.append((sid, ref, c.sourceline))
            elif tag == _R + "start-time":
                a.assoc = self.time(c, "session start-time")
            elif tag == _R + "stop-time":
                a.disassoc = self.time(c, "session stop-time")
            elif ok or tag == _R + "reason":
                continue
            elif isinstance(tag, str):
                self.foreign(c, "session")
        if a.disassoc is not None:
            self.order(el, "session", sid, a.assoc, a.disassoc, "start-time", "stop-time")
        if sid is not None:
            doc.sessions[sid] = a

    def participant(self, el: etree._Element) -> None:
        lenient = self.v.profile is Profile.LEGACY
        ok = self.ok
        for c in el:
            tag = c.tag
            if tag == _R_NAMEID:
                aor = c.get("aor")
                if aor is None:
                    continue  # the schema pass reports the missing attribute
                if _AOR_OK.match(aor):
                    pass
                elif _BARE_AOR.match(aor):
                    self.add("R19", INFO if lenient else W, c,
                             f"aor {aor!r} has no URI scheme; write sip:{aor}")
                elif _URI.match(aor):
                    self.add("R19", W, c, f"aor {aor!r} is not a sip:, sips: or tel: URI")
                else:
                    self.add("R19", E, c, f"aor {aor!r} is not a URI")
                name = c.find(_R + "name")
                if name is not None and name.get(_LANG) is None:
                    self.add("R19", INFO, name, "name has no xml:lang")
            elif not ok and isinstance(tag, str):
                self.foreign(c, "participant")

    def stream(self, el: etree._Element, doc: _Doc, ids: dict[str, str]) -> None:
        sid = self.id_attr(el, "stream_id", "stream", doc.streams, ids)
        session = self.ref_attr(el, "session_id", "stream")
        label: str | None
        if self.ok:  # the schema guarantees exactly one <label>
            label = (el.findtext(_R_LABEL) or "").strip()
        else:
            labels = []
            for c in el:
                tag = c.tag
                if tag == _R_LABEL:
                    labels.append((c.text or "").strip())
                elif isinstance(tag, str):
                    self.foreign(c, "stream")
            if len(labels) != 1:
                self.add("R18", E, el, f"stream {sid} has {len(labels)} <label> elements; "
                         "exactly one is required (it names the SDP a=label of its m-line)")
            label = labels[0] if labels else None
        if sid is not None:
            doc.streams[sid] = (label, session, el.sourceline)

    def pst(self, el: etree._Element, doc: _Doc) -> None:
        pid = self.ref_attr(el, "participant_id", "participantstreamassoc")
        a = _StreamAssoc(el.sourceline)
        ok = self.ok
        for c in el:
            tag = c.tag
            if tag == _R_SEND:
                ref = (c.text or "").strip()
                self.check_b64(c, "send", ref)
                a.send.append((ref, c.sourceline))
            elif tag == _R_RECV:
                ref = (c.text or "").strip()
                self.check_b64(c, "recv", ref)
                a.recv.append((ref, c.sourceline))
            elif tag == _R_ASSOC_T:
                a.assoc = self.time(c, "participantstreamassoc associate-time")
            elif tag == _R_DISASSOC_T:
                a.disassoc = self.time(c, "participantstreamassoc disassociate-time")
            elif not ok and isinstance(tag, str):
                self.foreign(c, "participantstreamassoc")
        if a.disassoc is not None:
            self.order(el, "participantstreamassoc", pid, a.assoc, a.disassoc, "associate-time",
                       "disassociate-time")
        if pid is not None:
            if pid in doc.psts:
                self.add("R16", E, el, f"two participantstreamassoc elements for participant "
                         f"{pid}")
            doc.psts[pid] = a

    # -- cross-object checks

    def references(self, doc: _Doc, known: _Doc, where: str) -> None:
        """R17: every reference in ``doc`` names an object in ``known``."""
        add = self.add
        for sid, ref, line in doc.group_refs:
            if ref not in known.groups:
                add("R17", E, line, f"session {sid}: group-ref {ref} names no <group> in the "
                    f"{where}")
        for sid, (_label, session, line) in doc.streams.items():
            if session is not None and session not in known.sessions:
                add("R17", E, line, f"stream {sid}: session_id {session} names no <session> "
                    f"in the {where}")
        for sid, sra in doc.sras.items():
            if sid not in known.sessions:
                add("R17", E, sra.line, f"sessionrecordingassoc: session_id {sid} names no "
                    f"<session> in the {where}")
        for (pid, sid), psa in doc.psas.items():
            if pid not in known.participants:
                add("R17", E, psa.line, f"participantsessionassoc: participant_id {pid} names "
                    f"no <participant> in the {where}")
            if sid not in known.sessions:
                add("R17", E, psa.line, f"participantsessionassoc: session_id {sid} names no "
                    f"<session> in the {where}")
        for pid, pst in doc.psts.items():
            if pid not in known.participants:
                add("R17", E, pst.line, f"participantstreamassoc: participant_id {pid} names "
                    f"no <participant> in the {where}")
            for ref, line in (*pst.send, *pst.recv):
                if ref not in known.streams:
                    add("R17", E, line, f"participant {pid}: stream {ref} names no <stream> in "
                        f"the {where}")

    def completeness(self, doc: _Doc) -> None:
        """R22 (warnings): a complete snapshot ties every object to the recording."""
        add = self.add
        for sid, s in doc.sessions.items():
            if sid not in doc.sras:
                add("R22", W, s.line, f"session {sid} has no sessionrecordingassoc: the SRS is "
                    "not told it is being recorded")
        in_session = {pid for pid, _sid in doc.psas}
        for pid, line in doc.participants.items():
            if pid not in in_session:
                add("R22", W, line, f"participant {pid} has no participantsessionassoc")
        senders: dict[str, int] = {}
        for pst in doc.psts.values():
            for ref, _line in pst.send:
                senders[ref] = senders.get(ref, 0) + 1
        for sid, (label, _session, line) in doc.streams.items():
            n = senders.get(sid, 0)
            if n == 0:
                add("R22", W, line, f"stream {sid} (label {label}) has no sender "
                    "(no participant <send>s it)")
            elif n > 1:
                add("R23", INFO, line, f"stream {sid} (label {label}) has {n} senders: a mixed "
                    "stream")

    def streams_plausible(self, doc: _Doc) -> None:
        for pid, pst in doc.psts.items():
            both = {r for r, _ in pst.send} & {r for r, _ in pst.recv}
            for ref in sorted(both):
                self.add("R23", W, pst.line, f"participant {pid} both sends and receives stream "
                         f"{ref}")

    def labels(self, doc: _Doc, partial: bool) -> None:
        seen: dict[str, str] = {}
        for sid, (label, _session, line) in doc.streams.items():
            if label is None:
                continue
            if label in seen:
                self.add("R18", W, line, f"label {label!r} is used by streams {seen[label]} and "
                         f"{sid}")
            seen[label] = sid
        sdp = self.v.sdp_labels
        if sdp is None:
            return
        sdp_set = set(sdp)
        for sid, (label, _session, line) in doc.streams.items():
            if label is not None and label not in sdp_set:
                self.add("R18", E, line, f"stream {sid} has label {label!r}, but the SDP has no "
                         f"a=label:{label} (SDP labels: {', '.join(sdp) or 'none'})")
        if not partial:
            meta = {lb for lb, _s, _l in doc.streams.values()}
            for lb in sdp:
                if lb not in meta:
                    self.add("R18", W, None, f"SDP a=label:{lb} has no <stream> in the metadata")

    # -- state across documents of one recording session

    def stateful(self, doc: _Doc, partial: bool, root: etree._Element) -> None:
        v = self.v
        if not partial:
            v.state = doc
            return
        state = v.state
        if state is None:
            self.add("R28", INFO, root, "partial update without an earlier complete snapshot: "
                     "references to earlier objects are not checked")
            v.state = doc
            return
        known = _Doc()
        known.merge(state)
        known.merge(doc)
        self.references(doc, known, "recording session")
        add = self.add
        for key, a in doc.psas.items():
            old = state.psas.get(key)
            if old is None:
                continue
            if a.assoc is None and _before(a.disassoc, old.assoc):
                add("R21", E, a.line, f"participant {key[0]}: disassociate-time {a.disassoc} "
                    f"is before its associate-time {old.assoc}")
            if old.disassoc is not None and a.disassoc is not None and (
                    a.assoc is None or not _before(old.disassoc, a.assoc)):
                add("R21", W, a.line, f"participant {key[0]} is disassociated again without "
                    "a re-association in between")
        for sid, s in doc.sessions.items():
            old = state.sessions.get(sid)
            if old is not None and s.assoc is None and _before(s.disassoc, old.assoc):
                add("R21", E, s.line, f"session {sid}: stop-time {s.disassoc} is before its "
                    f"start-time {old.assoc}")
        labels = {sid: lb for sid, (lb, _s, _l) in known.streams.items()}
        for pid, pst in doc.psts.items():
            old_pst = state.psts.get(pid)
            if old_pst is None:
                continue
            dropped = [r for r, _ in old_pst.send if r not in {x for x, _ in pst.send}]
            if dropped and pst.disassoc is None:
                names = ", ".join(str(labels.get(r, r)) for r in dropped)
                add("R28", INFO, pst.line, f"partial update replaces the send/recv set of "
                    f"participant {pid}: it no longer sends stream(s) labelled {names} "
                    "(hold or mute?)")
        state.merge(doc)

    # -- snapshot request, legacy

    def snapshot_request(self, root: etree._Element) -> None:
        """R27: RFC 7865 §7 ``requestsnapshot`` with a ``requestreason``."""
        if not _schema_valid(root):
            for entry in schema().error_log:
                line = entry.line + self.offset if entry.line else None
                self.findings.append(Finding("R27", E, line, _clean(entry.message), self.source))
        if root.find(_R + "requestreason") is None:
            self.add("R27", W, root, "requestsnapshot has no <requestreason>")
        self.add("R27", INFO, root, "snapshot request: the SRC's next metadata must be "
                 "datamode=complete")

    def legacy(self, root: etree._Element) -> None:
        """Lenient checks of the pre-RFC draft format (reference/siprec.md §2.3 rule 26)."""
        ns = etree.QName(root).namespace or ""
        p = "{" + ns + "}" if ns else ""
        if etree.QName(root).localname != "recording":
            self.add("R12", E, root, f"root element is {_qname(root)}, expected <recording>")
            return
        ids: dict[str, dict[str, int | None]] = {"session": {}, "participant": {}, "stream": {}}
        refs: list[tuple[str, str, int | None]] = []
        labels: list[tuple[str, int | None]] = []
        complete = True
        for el in root.iter():
            if not isinstance(el.tag, str):
                continue
            local = etree.QName(el).localname
            if local in ("dataMode", "datamode") and el.tag.startswith(p):
                mode = (el.text or "").strip()
                complete = mode != "partial"
                if mode not in ("complete", "partial"):
                    self.add("R13", E, el, f"{local} is {mode!r}; it must be 'complete' or "
                             "'partial'")
            elif local in ids and el.getparent() is root:
                value = el.get("id") or el.get(f"{local}_id")
                if value is None:
                    self.add("R14", E, el, f"<{local}> has no id attribute")
                    continue
                if value in ids[local]:
                    self.add("R16", E, el, f"{local} id {value} is used twice")
                ids[local][value] = el.sourceline
                session = el.get("session") or el.get("session_id")
                if local != "session" and session:
                    refs.append(("session", session, el.sourceline))
            elif local in ("send", "recv") and el.tag.startswith(p):
                refs.append(("stream", (el.text or "").strip(), el.sourceline))
            elif local == "nameID" and el.tag.startswith(p):
                aor = el.get("aor") or ""
                if not _AOR_OK.match(aor):
                    self.add("R19", INFO if _BARE_AOR.match(aor) else E, el,
                             f"aor {aor!r} is not a sip:, sips: or tel: URI")
            elif local == "label" and el.tag.startswith(p):
                labels.append(((el.text or "").strip(), el.sourceline))
            elif local in ("associate-time", "disassociate-time", "start-time", "stop-time"):
                self.time(el, local)
        if complete:
            for kind, ref, line in refs:
                if ref not in ids[kind]:
                    self.add("R17", E, line, f"reference to {kind} {ref!r}, which the document "
                             "does not define")
        sdp = self.v.sdp_labels
        if sdp is not None:
            for label, line in labels:
                if label not in sdp:
                    self.add("R18", E, line, f"stream label {label!r} is not an a=label of the "
                             "SDP")


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _qname(el: etree._Element) -> str:
    if not isinstance(el.tag, str):
        return "<?>"
    q = etree.QName(el)
    return f"<{q.localname}> in {q.namespace!r}" if q.namespace else f"<{q.localname}> (no namespace)"


def _legacy_markers(root: etree._Element) -> list[str]:
    """Markers of the pre-RFC draft format; empty for an RFC 7865 document."""
    markers: list[str] = []
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag == _L + "recording":
        markers.append(f"namespace {LEGACY_NS} without :1")
    ns = _L if tag.startswith(_L) else _R
    for el in root:
        t = el.tag
        if not isinstance(t, str) or not t.startswith(ns):
            continue
        local = t[len(ns):]
        if local == "dataMode":
            markers.append("<dataMode>")
        elif local == "extensiondata":
            markers.append("<extensiondata>")
        elif local in ("session", "participant", "stream") and el.get("id") is not None:
            markers.append(f"<{local} id=…>")
        if local == "participant" and el.find(ns + "send") is not None:
            markers.append("<send> inside <participant>")
        if local == "stream" and el.find(ns + "mode") is not None:
            markers.append("<mode> inside <stream>")
    return list(dict.fromkeys(markers))


# --------------------------------------------------------------------------- one-shot helpers

def validate_metadata(data: bytes, *, profile: Profile | str = Profile.STRICT,
                      sdp: bytes | str | Sdp | None = None,
                      source: str | None = None) -> list[Finding]:
    """Findings for one metadata document on its own (no earlier state)."""
    return RecordingSessionValidator(profile).validate(data, sdp=sdp, source=source)


def validate_message(data: bytes, *, profile: Profile | str = Profile.STRICT,
                     source: str | None = None) -> list[Finding]:
    """Findings for one whole SIP message carrying SDP and/or metadata."""
    return RecordingSessionValidator(profile).validate_message(data, source=source)


def validate_input(data: bytes, validator: RecordingSessionValidator,
                   source: str | None = None) -> list[Finding]:
    """Validate XML or a whole SIP message, whichever ``data`` is."""
    if looks_like_sip(data):
        return validator.validate_message(data, source=source)
    return validator.validate(data, source=source)
