"""SIPREC recording metadata (RFC 7865): model, builder, parsers, validator. Sans-IO."""

from __future__ import annotations

from .builder import (
    build_metadata,
    build_snapshot_request,
    check_recording,
    end_of_call_update,
    format_datetime,
    hold_update,
    recording_findings,
    resume_update,
    transfer_update,
    with_holds,
)
from .call import CallInfo, participant_from_header, recording_from_call
from .model import (
    LEGACY_NS,
    RECORDING_NS,
    DataMode,
    Extension,
    Group,
    NameID,
    Param,
    Participant,
    ParticipantSessionAssoc,
    ParticipantStreamAssoc,
    Reason,
    Recording,
    Session,
    SessionRecordingAssoc,
    SnapshotRequest,
    Stream,
    new_id,
)
from .multipart import (
    LEGACY_METADATA_TYPE,
    METADATA_TYPE,
    SNAPSHOT_REQUEST_TYPE,
    SiprecBody,
    build_siprec_body,
    parse_siprec_body,
    snapshot_request_headers,
)
from .parse import parse_metadata, parse_snapshot_request
from .rs import (
    RS_ACCEPT,
    RS_ALLOW,
    RS_SUPPORTED,
    RsRequest,
    bye,
    final_update,
    request_body,
    rs_headers,
)
from .rules import RULES, Finding, Rule, Severity
from .sdp import parse_sdp, sdp_labels
from .session_id import SessionId, parse_session_id
from .sip import parse_name_addr, parse_sip_message
from .validator import (
    Profile,
    RecordingSessionValidator,
    has_errors,
    validate_input,
    validate_message,
    validate_metadata,
)

__all__ = [
    "RS_ACCEPT",
    "RS_ALLOW",
    "RS_SUPPORTED",
    "RsRequest",
    "SessionId",
    "bye",
    "final_update",
    "parse_session_id",
    "recording_findings",
    "request_body",
    "rs_headers",
    "LEGACY_METADATA_TYPE",
    "LEGACY_NS",
    # SIP message parts
    "METADATA_TYPE",
    # model
    "RECORDING_NS",
    "RULES",
    "SNAPSHOT_REQUEST_TYPE",
    "CallInfo",
    "DataMode",
    "Extension",
    "Finding",
    "Group",
    "NameID",
    "Param",
    "Participant",
    "ParticipantSessionAssoc",
    "ParticipantStreamAssoc",
    "Profile",
    "Reason",
    "Recording",
    "RecordingSessionValidator",
    "Rule",
    "Session",
    "SessionRecordingAssoc",
    "Severity",
    "SiprecBody",
    "SnapshotRequest",
    "Stream",
    # builder
    "build_metadata",
    "build_siprec_body",
    "build_snapshot_request",
    "check_recording",
    "end_of_call_update",
    "format_datetime",
    "has_errors",
    "hold_update",
    "new_id",
    # parsing and validation
    "parse_metadata",
    "parse_name_addr",
    "parse_sdp",
    "parse_sip_message",
    "parse_siprec_body",
    "parse_snapshot_request",
    "participant_from_header",
    "recording_from_call",
    "resume_update",
    "sdp_labels",
    "snapshot_request_headers",
    "transfer_update",
    "with_holds",
    "validate_input",
    "validate_message",
    "validate_metadata",
]
