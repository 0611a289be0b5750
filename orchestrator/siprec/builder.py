"""Build RFC 7865 metadata documents from the model (sans-IO, lxml).

:func:`build_metadata` checks the model first (:func:`check_recording`) and refuses, with a
:class:`~orchestrator.errors.MetadataError`, anything the validator would report as an error,
so every document it emits validates. Text from the call (display names, header values) is
escaped by lxml; characters XML 1.0 cannot carry at all (NUL, most C0 controls, lone
surrogates) are replaced with U+FFFD rather than failing the recording.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from lxml import etree

from ..errors import MetadataError
from .model import (
    RECORDING_NS,
    XML_NS,
    DataMode,
    Extension,
    Participant,
    ParticipantSessionAssoc,
    ParticipantStreamAssoc,
    Reason,
    Recording,
    Session,
    SessionRecordingAssoc,
    SnapshotRequest,
    id_bytes,
)

__all__ = [
    "build_metadata",
    "build_snapshot_request",
    "check_recording",
    "end_of_call_update",
    "format_datetime",
    "hold_update",
    "resume_update",
    "transfer_update",
    "xml_text",
]

_NSMAP = {None: RECORDING_NS}
_R = "{" + RECORDING_NS + "}"
# XML 1.0 Char production, complemented: what may not appear in a document at all.
_XML_ILLEGAL = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_AOR_RE = re.compile(r"^(?:sips?|tel):[^\s<>\"\x00-\x1f\x7f]+$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^[!-~]+$")  # RFC 4574 label: a token; visible ASCII, no spaces


def xml_text(value: str) -> str:
    """``value`` with characters XML 1.0 cannot represent replaced by U+FFFD."""
    return _XML_ILLEGAL.sub("\ufffd", value)


def format_datetime(value: datetime) -> str:
    """``xs:dateTime`` with a timezone: ``Z`` for UTC, else ``±hh:mm`` (RFC 7865 §9 types)."""
    offset = value.utcoffset()
    if offset is None:
        raise MetadataError(f"time {value.isoformat()} has no timezone (xs:dateTime needs Z or ±hh:mm)")
    text = value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond
                                                else "seconds")
    total = int(offset.total_seconds())
    if total == 0:
        return text + "Z"
    if total % 60:
        raise MetadataError(f"time {value.isoformat()}: offset {offset} is not whole minutes")
    sign = "+" if total > 0 else "-"
    hours, minutes = divmod(abs(total) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


# --------------------------------------------------------------------------- model checks

def check_recording(rec: Recording) -> None:
    """Raise :class:`MetadataError` naming every problem that would make ``rec`` invalid."""
    problems: list[str] = []
    add = problems.append

    def check_id(kind: str, value: str) -> None:
        if id_bytes(value) is None:
            add(f"{kind} {value!r} is not base64Binary")

    def check_times(kind: str, start: datetime | None, end: datetime | None,
                    names: tuple[str, str] = ("associate-time", "disassociate-time")) -> None:
        for t in (start, end):
            if t is not None and t.utcoffset() is None:
                add(f"{kind}: time {t.isoformat()} has no timezone")
                return
        if start is not None and end is not None and end < start:
            add(f"{kind}: {names[1]} {format_datetime(end)} is before {names[0]} "
                f"{format_datetime(start)}")

    def check_unique(kind: str, ids: Iterable[str]) -> None:
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                add(f"duplicate {kind} {i!r}")
            seen.add(i)

    for g in rec.groups:
        check_id("group_id", g.group_id)
        check_times(f"group {g.group_id}", g.associate_time, g.disassociate_time)
    for s in rec.sessions:
        check_id("session_id", s.session_id)
        if s.group_ref is not None:
            check_id("group-ref", s.group_ref)
        check_times(f"session {s.session_id}", s.start_time, s.stop_time,
                    ("start-time", "stop-time"))
        for r in s.reasons:
            if r.cause is not None and not 0 <= r.cause <= 65535:
                add(f"session {s.session_id}: reason cause {r.cause} out of range")
    for p in rec.participants:
        check_id("participant_id", p.participant_id)
        for n in p.name_ids:
            if not _AOR_RE.match(n.aor):
                add(f"participant {p.participant_id}: aor {n.aor!r} is not a sip:, sips: or tel: URI")
            if n.lang is not None and not re.fullmatch(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*", n.lang):
                add(f"participant {p.participant_id}: xml:lang {n.lang!r} is not a language tag")
    labels: set[str] = set()
    for st in rec.streams:
        check_id("stream_id", st.stream_id)
        check_id("stream session_id", st.session_id)
        if not _LABEL_RE.match(st.label):
            add(f"stream {st.stream_id}: label {st.label!r} is not an SDP label token")
        elif st.label in labels:
            add(f"stream {st.stream_id}: label {st.label!r} used by two streams")
        labels.add(st.label)
    for a in rec.session_recording_assocs:
        check_id("sessionrecordingassoc session_id", a.session_id)
        check_times(f"sessionrecordingassoc {a.session_id}", a.associate_time, a.disassociate_time)
    for psa in rec.participant_session_assocs:
        check_id("participantsessionassoc participant_id", psa.participant_id)
        check_id("participantsessionassoc session_id", psa.session_id)
        check_times(f"participantsessionassoc {psa.participant_id}", psa.associate_time,
                    psa.disassociate_time)
        for prm in psa.params:
            if not prm.pname:
                add(f"participantsessionassoc {psa.participant_id}: param without pname")
    for pst in rec.participant_stream_assocs:
        check_id("participantstreamassoc participant_id", pst.participant_id)
        for sid in (*pst.send, *pst.recv):
            check_id("send/recv stream", sid)
        check_times(f"participantstreamassoc {pst.participant_id}", pst.associate_time,
                    pst.disassociate_time)
    for ext in _all_extensions(rec):
        if not ext.namespace or ext.namespace == RECORDING_NS:
            add(f"extension <{ext.name}> must be in a foreign namespace, not "
                f"{ext.namespace or 'no namespace'!r}")
    check_unique("group_id", (g.group_id for g in rec.groups))
    check_unique("session_id", (s.session_id for s in rec.sessions))
    check_unique("participant_id", (p.participant_id for p in rec.participants))
    check_unique("stream_id", (s.stream_id for s in rec.streams))

    if rec.datamode is DataMode.COMPLETE:
        # RFC 7865 §6: in a complete snapshot every reference resolves inside the document.
        groups = {g.group_id for g in rec.groups}
        sessions = {s.session_id for s in rec.sessions}
        participants = {p.participant_id for p in rec.participants}
        streams = {s.stream_id for s in rec.streams}
        for s in rec.sessions:
            if s.group_ref is not None and s.group_ref not in groups:
                add(f"session {s.session_id}: group-ref {s.group_ref!r} names no group")
        for st in rec.streams:
            if st.session_id not in sessions:
                add(f"stream {st.stream_id}: session_id {st.session_id!r} names no session")
        for a in rec.session_recording_assocs:
            if a.session_id not in sessions:
                add(f"sessionrecordingassoc: session_id {a.session_id!r} names no session")
        for psa in rec.participant_session_assocs:
            if psa.participant_id not in participants:
                add(f"participantsessionassoc: participant_id {psa.participant_id!r} names no "
                    "participant")
            if psa.session_id not in sessions:
                add(f"participantsessionassoc: session_id {psa.session_id!r} names no session")
        for pst in rec.participant_stream_assocs:
            if pst.participant_id not in participants:
                add(f"participantstreamassoc: participant_id {pst.participant_id!r} names no "
                    "participant")
            for sid in (*pst.send, *pst.recv):
                if sid not in streams:
                    add(f"participantstreamassoc {pst.participant_id}: stream {sid!r} names no "
                        "stream")
    if problems:
        raise MetadataError("metadata model is invalid: " + "; ".join(problems))


def _all_extensions(rec: Recording) -> Iterable[Extension]:
    holders: list[Iterable[Extension]] = [rec.extensions]
    for seq in (rec.groups, rec.sessions, rec.participants, rec.streams,
                rec.session_recording_assocs, rec.participant_session_assocs,
                rec.participant_stream_assocs):
        holders.extend(o.extensions for o in seq)
    for exts in holders:
        yield from exts  # only top-level extension elements are constrained (##other)


# --------------------------------------------------------------------------- XML output

def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _R + name)
    if text is not None:
        el.text = xml_text(text)
    return el


def _time(parent: etree._Element, name: str, value: datetime | None) -> None:
    if value is not None:
        _sub(parent, name, format_datetime(value))


def _extension(parent: etree._Element, ext: Extension) -> None:
    try:
        el = etree.SubElement(parent, f"{{{ext.namespace}}}{ext.name}", nsmap={None: ext.namespace})
        for key, val in ext.attributes.items():
            el.set(key, xml_text(val))
    except ValueError as exc:  # invalid element or attribute name
        raise MetadataError(f"extension <{ext.name}>: {exc}") from exc
    if ext.text is not None:
        el.text = xml_text(ext.text)
    for child in ext.children:
        _extension(el, child)


def _extensions(parent: etree._Element, exts: Iterable[Extension]) -> None:
    for ext in exts:
        _extension(parent, ext)


def build_metadata(rec: Recording, *, check: bool = True) -> bytes:
    """Serialize ``rec`` as an RFC 7865 document (UTF-8, schema element order)."""
    if check:
        check_recording(rec)
    root = etree.Element(_R + "recording", nsmap=_NSMAP)
    _sub(root, "datamode", rec.datamode.value)
    for g in rec.groups:
        el = _sub(root, "group")
        el.set("group_id", g.group_id)
        _time(el, "associate-time", g.associate_time)
        _time(el, "disassociate-time", g.disassociate_time)
        _extensions(el, g.extensions)
    for s in rec.sessions:
        el = _sub(root, "session")
        el.set("session_id", s.session_id)
        for sid in s.sip_session_ids:
            _sub(el, "sipSessionID", sid)
        for r in s.reasons:
            rel = _sub(el, "reason", r.text)
            rel.set("protocol", xml_text(r.protocol))
            if r.cause is not None:
                rel.set("cause", str(r.cause))
        if s.group_ref is not None:
            _sub(el, "group-ref", s.group_ref)
        _time(el, "start-time", s.start_time)
        _time(el, "stop-time", s.stop_time)
        _extensions(el, s.extensions)
    for p in rec.participants:
        el = _sub(root, "participant")
        el.set("participant_id", p.participant_id)
        for n in p.name_ids:
            nel = _sub(el, "nameID")
            nel.set("aor", xml_text(n.aor))
            if n.name is not None:
                name = _sub(nel, "name", n.name)
                if n.lang:
                    name.set(f"{{{XML_NS}}}lang", n.lang)
        _extensions(el, p.extensions)
    for st in rec.streams:
        el = _sub(root, "stream")
        el.set("stream_id", st.stream_id)
        el.set("session_id", st.session_id)
        _sub(el, "label", st.label)
        _extensions(el, st.extensions)
    for a in rec.session_recording_assocs:
        el = _sub(root, "sessionrecordingassoc")
        el.set("session_id", a.session_id)
        _time(el, "associate-time", a.associate_time)
        _time(el, "disassociate-time", a.disassociate_time)
        _extensions(el, a.extensions)
    for psa in rec.participant_session_assocs:
        el = _sub(root, "participantsessionassoc")
        el.set("participant_id", psa.participant_id)
        el.set("session_id", psa.session_id)
        _time(el, "associate-time", psa.associate_time)
        _time(el, "disassociate-time", psa.disassociate_time)
        for prm in psa.params:
            pel = _sub(el, "param")
            pel.set("pname", xml_text(prm.pname))
            if prm.pval is not None:
                pel.set("pval", xml_text(prm.pval))
        _extensions(el, psa.extensions)
    for pst in rec.participant_stream_assocs:
        el = _sub(root, "participantstreamassoc")
        el.set("participant_id", pst.participant_id)
        for sid in pst.send:
            _sub(el, "send", sid)
        for sid in pst.recv:
            _sub(el, "recv", sid)
        _time(el, "associate-time", pst.associate_time)
        _time(el, "disassociate-time", pst.disassociate_time)
        _extensions(el, pst.extensions)
    _extensions(root, rec.extensions)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def build_snapshot_request(req: SnapshotRequest) -> bytes:
    """Serialize an RFC 7865 §7 ``requestsnapshot`` body (``application/rs-metadata-request``)."""
    root = etree.Element(_R + "requestsnapshot", nsmap=_NSMAP)
    reason = _sub(root, "requestreason", req.reason)
    if req.lang:
        reason.set(f"{{{XML_NS}}}lang", req.lang)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


# --------------------------------------------------------------------------- partial updates

def _assoc_of(snapshot: Recording, participant_id: str) -> ParticipantStreamAssoc:
    assoc = snapshot.stream_assoc(participant_id)
    if assoc is None:
        raise MetadataError(f"participant {participant_id!r} has no participantstreamassoc")
    return assoc


def hold_update(snapshot: Recording, participant_id: str) -> Recording:
    """Partial update for a hold: the held participant stops sending, keeps receiving.

    Follows the RFC-style hold example: a partial ``participantstreamassoc`` replaces the
    participant's send/recv set, so the held party's ``<send>`` elements are omitted.
    """
    assoc = _assoc_of(snapshot, participant_id)
    return Recording(datamode=DataMode.PARTIAL,
                     participant_stream_assocs=(ParticipantStreamAssoc(
                         participant_id=participant_id, recv=assoc.recv),))


def with_holds(snapshot: Recording, held: Iterable[str]) -> Recording:
    """``snapshot`` as it stands while the ``held`` participants are on hold: their
    ``<send>`` elements omitted, as :func:`hold_update` announced. A complete snapshot
    requested mid-call (RFC 7866 §9.2) describes the current state, not the first one."""
    ids = set(held)
    return replace(snapshot, participant_stream_assocs=tuple(
        replace(a, send=()) if a.participant_id in ids else a
        for a in snapshot.participant_stream_assocs))


def resume_update(snapshot: Recording, participant_id: str) -> Recording:
    """Partial update for a resume: restore the participant's send/recv set of ``snapshot``."""
    assoc = _assoc_of(snapshot, participant_id)
    return Recording(datamode=DataMode.PARTIAL,
                     participant_stream_assocs=(ParticipantStreamAssoc(
                         participant_id=participant_id, send=assoc.send, recv=assoc.recv),))


def transfer_update(snapshot: Recording, old_participant_id: str, new: Participant,
                    at: datetime) -> Recording:
    """Partial update for a transfer: ``new`` takes over the streams of the old participant."""
    old_assoc = _assoc_of(snapshot, old_participant_id)
    old_sessions = [a for a in snapshot.participant_session_assocs
                    if a.participant_id == old_participant_id]
    if not old_sessions:
        raise MetadataError(f"participant {old_participant_id!r} has no participantsessionassoc")
    psas: list[ParticipantSessionAssoc] = []
    for a in old_sessions:
        psas.append(replace(a, disassociate_time=at, params=(), extensions=()))
        psas.append(ParticipantSessionAssoc(participant_id=new.participant_id,
                                            session_id=a.session_id, associate_time=at))
    return Recording(
        datamode=DataMode.PARTIAL,
        participants=(new,),
        participant_session_assocs=tuple(psas),
        participant_stream_assocs=(
            ParticipantStreamAssoc(participant_id=old_participant_id,
                                   associate_time=old_assoc.associate_time,
                                   disassociate_time=at),
            ParticipantStreamAssoc(participant_id=new.participant_id, send=old_assoc.send,
                                   recv=old_assoc.recv, associate_time=at),
        ))


def end_of_call_update(snapshot: Recording, at: datetime,
                       reason: Reason | None = None) -> Recording:
    """Partial update at the end of the call: stop-time and every disassociate-time."""
    return Recording(
        datamode=DataMode.PARTIAL,
        sessions=tuple(Session(session_id=s.session_id, reasons=(reason,) if reason else (),
                               start_time=s.start_time, stop_time=at)
                       for s in snapshot.sessions),
        session_recording_assocs=tuple(
            SessionRecordingAssoc(session_id=a.session_id, associate_time=a.associate_time,
                                  disassociate_time=at)
            for a in snapshot.session_recording_assocs),
        participant_session_assocs=tuple(
            ParticipantSessionAssoc(participant_id=a.participant_id, session_id=a.session_id,
                                    associate_time=a.associate_time, disassociate_time=at)
            for a in snapshot.participant_session_assocs if a.disassociate_time is None),
        participant_stream_assocs=tuple(
            replace(a, disassociate_time=at, extensions=())
            for a in snapshot.participant_stream_assocs if a.disassociate_time is None),
    )
