"""The strict profile's schema layer at the boundaries of RFC 7865 §9, construct by construct.

``tests/data/metadata/schema/`` holds one document per construct and direction, each the RFC
example with one change: ``accept-*`` documents the official schema accepts, ``reject-*``
ones it rejects. ``expected.json`` has the exact findings of each (the corpus test checks
them); here the schema layer's verdict itself, and that the builder cannot emit a rejected
construct.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from orchestrator.errors import MetadataError
from orchestrator.siprec import (
    CallInfo,
    NameID,
    Param,
    Participant,
    ParticipantSessionAssoc,
    Reason,
    Recording,
    Session,
    build_metadata,
    end_of_call_update,
    has_errors,
    recording_from_call,
    validate_metadata,
)
from orchestrator.siprec.parse import safe_parser
from orchestrator.siprec.xsd import schema_valid

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "metadata" / "schema"
FILES = sorted(SCHEMA.glob("*.xml"))
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

#: Each construct where the project's XSD used to differ from RFC 7865 §9, both ways.
CONSTRUCTS = {
    "participant nameID required": ("accept-participant-two-nameids",
                                    "reject-participant-without-nameid"),
    "stream label/session_id optional": ("accept-partial-stream-without-label-and-session",
                                         "reject-stream-two-labels"),
    "reason cause required xs:short": ("accept-reason-cause-negative",
                                       "reject-reason-without-cause"),
    "reason cause range": ("accept-reason-cause-32767", "reject-reason-cause-32768"),
    "param pval required": ("accept-param-pname-pval", "reject-param-without-pval"),
    "xml:lang empty allowed": ("accept-name-lang-empty", "reject-name-lang-not-a-tag"),
    "no extension attributes": ("accept-foreign-element-in-stream",
                                "reject-foreign-attribute-on-stream"),
}
ATTRIBUTE_TYPES = ["recording", "group", "session", "participant", "stream",
                   "sessionrecordingassoc", "participantsessionassoc", "participantstreamassoc",
                   "requestsnapshot"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_schema_layer_verdict(path: Path) -> None:
    root = etree.fromstring(path.read_bytes(), safe_parser())
    assert schema_valid(root) is path.name.startswith("accept-")
    findings = validate_metadata(path.read_bytes())
    assert has_errors(findings) is path.name.startswith("reject-")


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_every_construct_both_ways(construct: str) -> None:
    for name in CONSTRUCTS[construct]:
        assert (SCHEMA / f"{name}.xml").is_file(), name


def test_foreign_attributes_rejected_on_all_nine_types() -> None:
    for t in ATTRIBUTE_TYPES:
        path = SCHEMA / f"reject-foreign-attribute-on-{t}.xml"
        rules = {f.rule for f in validate_metadata(path.read_bytes())
                 if f.severity.value == "error"}
        assert rules == ({"R27"} if t == "requestsnapshot" else {"R25"}), (t, rules)


# ------------------------------------------------------------------ the builder's side

def snapshot() -> Recording:
    call = CallInfo('"A" <sip:a@example.com>;tag=f', "<sip:b@example.com>;tag=t", "f", "t",
                    start_time=T0)
    return recording_from_call(call, {"media-labels": {"1": {"tag": "f"}, "2": {"tag": "t"}}})


def test_builder_refuses_a_participant_without_name_id() -> None:
    rec = snapshot()
    bare = Participant(rec.participants[0].participant_id)
    with pytest.raises(MetadataError, match=r"R14 line \d+: <participant>: Missing child element"):
        build_metadata(Recording(participants=(bare,), datamode=rec.datamode))


def test_builder_refuses_a_reason_cause_outside_xs_short() -> None:
    rec = snapshot()
    with pytest.raises(MetadataError, match="R14 .*'70000' is not a valid value of the atomic "
                                            "type 'xs:short'"):
        build_metadata(end_of_call_update(rec, T0, Reason(70000, "bad")))
    doc = build_metadata(end_of_call_update(rec, T0, Reason(487, "Request Terminated")))
    assert b'<reason protocol="SIP" cause="487">Request Terminated</reason>' in doc


def test_reason_and_param_need_their_required_values() -> None:
    with pytest.raises(TypeError):
        Reason()  # type: ignore[call-arg]  # cause is required (RFC 7865 §9)
    with pytest.raises(TypeError):
        Param("audio")  # type: ignore[call-arg]  # pval is required (RFC 7865 §9)
    rec = snapshot()
    psa = ParticipantSessionAssoc(rec.participants[0].participant_id,
                                  rec.sessions[0].session_id, T0, params=(Param("audio", ""),))
    doc = build_metadata(Recording(datamode=rec.datamode, participant_session_assocs=(psa,),
                                   participants=rec.participants[:1], sessions=(Session(
                                       rec.sessions[0].session_id),)))
    assert b'<param pname="audio" pval=""/>' in doc


def test_builder_output_passes_the_schema_layer() -> None:
    rec = snapshot()
    root = etree.fromstring(build_metadata(rec), safe_parser())
    assert schema_valid(root)
    lang = Participant(rec.participants[0].participant_id,
                       (NameID("sip:a@example.com", "A", ""),))
    doc = build_metadata(Recording(participants=(lang,)))
    assert b'<name xml:lang="">A</name>' in doc
    assert schema_valid(etree.fromstring(doc, safe_parser()))  # as in the W3C declaration
