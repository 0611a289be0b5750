"""Build the metadata model of a call from its SIP identities and rtpengine's SIPREC reply.

rtpengine's ``subscribe request`` with flags ``all`` + ``SIPREC`` returns a sendonly SDP with
one ``a=label:N`` per leg and ``media-labels`` mapping each label to the call tag it comes
from (reference/rtpengine.md §3). A stream whose tag is the caller's From-tag is sent by the
caller and received by the callee, and the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import MetadataError, SipError
from .model import (
    DataMode,
    Group,
    NameID,
    Participant,
    ParticipantSessionAssoc,
    ParticipantStreamAssoc,
    Recording,
    Session,
    SessionRecordingAssoc,
    Stream,
    new_id,
)
from .sip import NameAddr, parse_name_addr

__all__ = ["CallInfo", "participant_from_header", "recording_from_call"]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the SRC knows about the communication session being recorded."""

    # header values, or already parsed (the controller has display name and URI apart)
    from_header: str | NameAddr
    to_header: str | NameAddr
    from_tag: str
    to_tag: str
    p_asserted_identity: str | NameAddr | None = None
    sip_session_id: str | None = None  # RFC 7989 Session-ID header of the call, if any
    start_time: datetime | None = None
    group_id: str | None = None  # keep the group across transfers (AudioCodes, Oracle)
    lang: str | None = None


def participant_from_header(value: str | NameAddr, *, lang: str | None = None,
                            participant_id: str | None = None) -> Participant:
    """A participant from a From/To/P-Asserted-Identity value (display name + URI)."""
    addr = value if isinstance(value, NameAddr) else parse_name_addr(value)
    return Participant(participant_id or new_id(),
                       (NameID(addr.uri, addr.display, lang if addr.display is not None else None),))


def recording_from_call(call: CallInfo, subscribe_reply: Mapping[str, Any]) -> Recording:
    """A complete snapshot: 2 participants, one stream per rtpengine label (in label order).

    The caller's identity comes from P-Asserted-Identity when present, else From; the callee's
    from To. Raises :class:`MetadataError` if the reply has no ``media-labels`` or a label
    belongs to neither tag, :class:`SipError` if an identity header is malformed.
    """
    labels = subscribe_reply.get("media-labels")
    if not isinstance(labels, Mapping) or not labels:
        raise MetadataError("subscribe reply has no media-labels (was the SIPREC flag set?)")
    at = call.start_time or datetime.now(UTC)
    if at.utcoffset() is None:
        raise MetadataError("call start time has no timezone")
    try:
        caller = participant_from_header(call.p_asserted_identity or call.from_header,
                                         lang=call.lang)
        callee = participant_from_header(call.to_header, lang=call.lang)
    except SipError as exc:
        raise SipError(f"cannot take a participant from the call's headers: {exc}") from exc
    group = Group(call.group_id or new_id(), associate_time=at)
    session = Session(new_id(), sip_session_ids=(call.sip_session_id,) if call.sip_session_id
                      else (), group_ref=group.group_id, start_time=at)
    streams: list[Stream] = []
    caller_sends: list[str] = []
    callee_sends: list[str] = []
    # Deterministic order: numeric labels numerically, others lexically (pain point §4.2).
    for label in sorted(labels, key=lambda s: (not str(s).isdigit(), int(s) if str(s).isdigit()
                                               else 0, str(s))):
        info = labels[label]
        tag = info.get("tag") if isinstance(info, Mapping) else None
        stream = Stream(new_id(), session.session_id, str(label))
        if tag == call.from_tag:
            caller_sends.append(stream.stream_id)
        elif tag == call.to_tag:
            callee_sends.append(stream.stream_id)
        else:
            raise MetadataError(f"media label {label!r} belongs to tag {tag!r}, neither the "
                                f"From-tag {call.from_tag!r} nor the To-tag {call.to_tag!r}")
        streams.append(stream)
    return Recording(
        datamode=DataMode.COMPLETE,
        groups=(group,),
        sessions=(session,),
        participants=(caller, callee),
        streams=tuple(streams),
        session_recording_assocs=(SessionRecordingAssoc(session.session_id, associate_time=at),),
        participant_session_assocs=tuple(
            ParticipantSessionAssoc(p.participant_id, session.session_id, associate_time=at)
            for p in (caller, callee)),
        participant_stream_assocs=(
            ParticipantStreamAssoc(caller.participant_id, tuple(caller_sends),
                                   tuple(callee_sends), associate_time=at),
            ParticipantStreamAssoc(callee.participant_id, tuple(callee_sends),
                                   tuple(caller_sends), associate_time=at),
        ),
    )
