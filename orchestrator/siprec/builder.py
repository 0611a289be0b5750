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
from datetime import UTC, datetime

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
)
from .rules import Finding, Severity

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


# --------------------------------------------------------------------------- self-check

def recording_findings(rec: Recording) -> list[Finding]:
    """What the strict validator (schema layer + rules engine) says about ``rec``'s
    document: the one judgement the builder, the validator and the reference SRS share."""
    from .validator import validate_metadata  # the validator imports this module's helpers

    return validate_metadata(_serialize(rec))


def check_recording(rec: Recording) -> None:
    """Raise :class:`MetadataError` naming every error (rule id, message) the strict
    validator would report on ``rec``'s document; warnings and infos pass."""
    _refuse_errors(recording_findings(rec))


def _refuse_errors(findings: list[Finding]) -> None:
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if errors:
        raise MetadataError("metadata model is invalid: " + "; ".join(
            f"{f.rule} line {f.line}: {f.message}" for f in errors))


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
    """Serialize ``rec`` as an RFC 7865 document (UTF-8, schema element order); with
    ``check`` (the default) refuse, with :class:`MetadataError`, a document the strict
    validator finds an error in, so the builder never emits one the official schema rejects."""
    data = _serialize(rec)
    if check:
        from .validator import validate_metadata

        _refuse_errors(validate_metadata(data))
    return data


def _serialize(rec: Recording) -> bytes:
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
                if n.lang is not None:
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


def _when(at: datetime | None) -> datetime:
    """The time of a change: the edge's event time when the caller has it (RFC 7865 §6.9:
    every tuple of a partial update carries one), else now, UTC."""
    if at is None:
        return datetime.now(UTC)
    if at.utcoffset() is None:
        raise MetadataError(f"time {at.isoformat()} has no timezone (xs:dateTime needs Z or ±hh:mm)")
    return at


def hold_update(snapshot: Recording, participant_id: str, at: datetime | None = None) -> Recording:
    """Partial update for a hold: the held participant stops sending, keeps receiving.

    Follows the RFC-style hold example: a partial ``participantstreamassoc`` replaces the
    participant's send/recv set, so the held party's ``<send>`` elements are omitted. The
    tuple's ``associate-time`` is ``at`` (pass the edge's event time), when this set starts.
    """
    assoc = _assoc_of(snapshot, participant_id)
    return Recording(datamode=DataMode.PARTIAL,
                     participant_stream_assocs=(ParticipantStreamAssoc(
                         participant_id=participant_id, recv=assoc.recv,
                         associate_time=_when(at)),))


def with_holds(snapshot: Recording, held: Iterable[str]) -> Recording:
    """``snapshot`` as it stands while the ``held`` participants are on hold: their
    ``<send>`` elements omitted, as :func:`hold_update` announced. A complete snapshot
    requested mid-call (RFC 7866 §9.2) describes the current state, not the first one."""
    ids = set(held)
    return replace(snapshot, participant_stream_assocs=tuple(
        replace(a, send=()) if a.participant_id in ids else a
        for a in snapshot.participant_stream_assocs))


def resume_update(snapshot: Recording, participant_id: str,
                  at: datetime | None = None) -> Recording:
    """Partial update for a resume: restore the participant's send/recv set of ``snapshot``,
    associated again at ``at`` (pass the edge's event time)."""
    assoc = _assoc_of(snapshot, participant_id)
    return Recording(datamode=DataMode.PARTIAL,
                     participant_stream_assocs=(ParticipantStreamAssoc(
                         participant_id=participant_id, send=assoc.send, recv=assoc.recv,
                         associate_time=_when(at)),))


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
