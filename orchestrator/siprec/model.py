"""A typed model of RFC 7865 recording metadata (sans-IO).

Objects mirror the RFC 7865 §6 model: a recording session (``recording``) holds communication
session groups, communication sessions, participants, streams and the three association
elements. IDs are ``xs:base64Binary`` strings (RFC 7865 §6: base64 of a 128-bit UUID is the
recommended form, see :func:`new_id`); times are timezone-aware :class:`datetime.datetime`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

RECORDING_NS = "urn:ietf:params:xml:ns:recording:1"
#: The pre-RFC draft namespace still sent by some SBCs (Oracle/Acme, AudioCodes legacy).
LEGACY_NS = "urn:ietf:params:xml:ns:recording"
XML_NS = "http://www.w3.org/XML/1998/namespace"

__all__ = [
    "LEGACY_NS",
    "RECORDING_NS",
    "XML_NS",
    "DataMode",
    "Extension",
    "Group",
    "NameID",
    "Param",
    "Participant",
    "ParticipantSessionAssoc",
    "ParticipantStreamAssoc",
    "Reason",
    "Recording",
    "Session",
    "SessionRecordingAssoc",
    "SnapshotRequest",
    "Stream",
    "id_bytes",
    "new_id",
    "replace",
]


class DataMode(enum.StrEnum):
    """RFC 7865 §6.1: a full snapshot or a partial update."""

    COMPLETE = "complete"
    PARTIAL = "partial"


def new_id() -> str:
    """A new metadata ID: base64 of a random 128-bit UUID (24 characters ending in ``==``)."""
    return base64.b64encode(uuid.uuid4().bytes).decode("ascii")


def id_bytes(value: str) -> bytes | None:
    """Decode an ``xs:base64Binary`` ID strictly; ``None`` if it is not valid base64Binary."""
    compact = "".join(value.split())  # XML Schema base64Binary allows embedded whitespace
    if not compact or len(compact) % 4:
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Extension:
    """An extension element in a foreign namespace (RFC 7865 §6: ``xs:any ##other``)."""

    namespace: str
    name: str
    text: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    children: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """Communication session group (RFC 7865 §6.2)."""

    group_id: str
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a communication session ended (RFC 7865 §6.3, ``reason``)."""

    cause: int  # RFC 7865 §9: required, an xs:short (a SIP status code or Q.850 cause)
    text: str = ""
    protocol: str = "SIP"


@dataclass(frozen=True, slots=True)
class Session:
    """Communication session, the recorded call (RFC 7865 §6.3)."""

    session_id: str
    sip_session_ids: tuple[str, ...] = ()
    reasons: tuple[Reason, ...] = ()
    group_ref: str | None = None
    start_time: datetime | None = None
    stop_time: datetime | None = None
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionRecordingAssoc:
    """Association of a communication session with the recording session (RFC 7865 §6.4)."""

    session_id: str
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class NameID:
    """A participant's address of record and display name (RFC 7865 §6.5)."""

    aor: str
    name: str | None = None
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    """A party of the communication session (RFC 7865 §6.5)."""

    participant_id: str
    name_ids: tuple[NameID, ...] = ()
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class Param:
    """A Contact feature parameter of a participant (RFC 7865 §6.6.1, RFC 3840 §9); RFC 7865
    §9 requires a value (``pval``)."""

    pname: str
    pval: str


@dataclass(frozen=True, slots=True)
class ParticipantSessionAssoc:
    """A participant's membership of a communication session (RFC 7865 §6.6)."""

    participant_id: str
    session_id: str
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    params: tuple[Param, ...] = ()
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class Stream:
    """A media stream sent to the SRS; ``label`` matches the RS SDP ``a=label`` (RFC 7865 §6.7)."""

    stream_id: str
    session_id: str
    label: str
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class ParticipantStreamAssoc:
    """Which streams a participant sends and receives (RFC 7865 §6.8)."""

    participant_id: str
    send: tuple[str, ...] = ()
    recv: tuple[str, ...] = ()
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    extensions: tuple[Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class Recording:
    """One metadata document: a complete snapshot or a partial update (RFC 7865 §6.1)."""

    datamode: DataMode = DataMode.COMPLETE
    groups: tuple[Group, ...] = ()
    sessions: tuple[Session, ...] = ()
    participants: tuple[Participant, ...] = ()
    streams: tuple[Stream, ...] = ()
    session_recording_assocs: tuple[SessionRecordingAssoc, ...] = ()
    participant_session_assocs: tuple[ParticipantSessionAssoc, ...] = ()
    participant_stream_assocs: tuple[ParticipantStreamAssoc, ...] = ()
    extensions: tuple[Extension, ...] = ()

    def participant(self, participant_id: str) -> Participant | None:
        return next((p for p in self.participants if p.participant_id == participant_id), None)

    def stream_by_label(self, label: str) -> Stream | None:
        return next((s for s in self.streams if s.label == label), None)

    def stream_assoc(self, participant_id: str) -> ParticipantStreamAssoc | None:
        return next((a for a in self.participant_stream_assocs
                     if a.participant_id == participant_id), None)


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """An SRS's request for a complete snapshot (RFC 7865 §7, ``requestsnapshot``)."""

    reason: str = ""
    lang: str | None = None
