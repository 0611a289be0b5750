"""Validator rules: exact rule ids, severities, lines and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.siprec import (
    Profile,
    RecordingSessionValidator,
    has_errors,
    validate_message,
    validate_metadata,
)
from orchestrator.siprec.rules import RULES, Severity

DATA = Path(__file__).resolve().parents[1] / "data" / "metadata"
FULL = (DATA / "valid" / "rfc-full.xml").read_bytes()
SDP = (DATA / "valid" / "rfc-full.sdp").read_bytes()
NS = b'xmlns="urn:ietf:params:xml:ns:recording:1"'


def one(findings, rule):  # type: ignore[no-untyped-def]
    hits = [f for f in findings if f.rule == rule]
    assert len(hits) == 1, findings
    return hits[0]


def test_every_finding_rule_is_in_the_table() -> None:
    for path in DATA.rglob("*.xml"):
        for f in validate_metadata(path.read_bytes()):
            assert f.rule in RULES
            assert f.as_dict()["slug"] == RULES[f.rule].slug


def test_clean_document_with_matching_sdp() -> None:
    assert validate_metadata(FULL, sdp=SDP) == []


def test_base64_message() -> None:
    doc = FULL.replace(b'group_id="EjRWeJq8Te+AAAAAAAAAAQ=="', b'group_id="inbound"')
    f = [x for x in validate_metadata(doc) if x.rule == "R15"][0]
    assert (f.severity, f.line) == (Severity.ERROR, 4)
    assert f.message == ("group group_id 'inbound' is not base64Binary (length a multiple of 4, "
                         "alphabet A-Z a-z 0-9 + /, '=' padding only)")


def test_timezone_without_colon_message() -> None:
    doc = FULL.replace(b"<start-time>2024-05-01T10:00:00Z", b"<start-time>2024-05-01T12:00:00+0200")
    f = one(validate_metadata(doc), "R20")
    assert f.message == ("session start-time '2024-05-01T12:00:00+0200' is not an xs:dateTime "
                         "(the timezone needs a colon: ±hh:mm)")


def test_offset_timezone_is_accepted() -> None:
    doc = FULL.replace(b"<start-time>2024-05-01T10:00:00Z", b"<start-time>2024-05-01T12:00:00+02:00")
    assert validate_metadata(doc) == []


def test_label_not_in_sdp() -> None:
    f = [x for x in validate_metadata(FULL, sdp=SDP.replace(b"a=label:99", b"a=label:100"))
         if x.severity is Severity.ERROR][0]
    assert f.rule == "R18"
    assert f.message == ("stream EjRWeJq8Te+AAAAAAAAADQ== has label '99', but the SDP has no "
                         "a=label:99 (SDP labels: 96, 97, 98, 100)")


def test_unknown_element_in_recording_namespace_is_r25() -> None:
    doc = FULL.replace(b"</recording>", b"<extensiondata/></recording>")
    f = one(validate_metadata(doc), "R25")
    assert f.message == ("<extensiondata> is not an RFC 7865 element; extensions must be in a "
                         "foreign namespace")


def test_foreign_extension_is_fine() -> None:
    doc = FULL.replace(b"</recording>", b'<x:call xmlns:x="urn:example:x">1</x:call></recording>')
    assert validate_metadata(doc) == []


def test_unqualified_extension_is_r25() -> None:
    doc = FULL.replace(b"</recording>", b'<call xmlns="">1</call></recording>')
    assert one(validate_metadata(doc), "R25").message == (
        "<call> has no namespace; extensions must be in a foreign namespace")


def test_aor_bare_user_at_host_is_a_warning() -> None:
    doc = FULL.replace(b'aor="sip:bob@biloxi.example.com"', b'aor="bob@biloxi.example.com"')
    f = one(validate_metadata(doc), "R19")
    assert (f.severity, f.line) == (Severity.WARNING, 20)
    assert f.message == "aor 'bob@biloxi.example.com' has no URI scheme; write sip:bob@biloxi.example.com"


def test_partial_references_are_checked_against_the_state() -> None:
    v = RecordingSessionValidator()
    assert v.validate(FULL) == []
    partial = (b"<recording " + NS + b"><datamode>partial</datamode>"
               b'<participantstreamassoc participant_id="EjRWeJq8Te+AAAAAAAAAAw==">'
               b"<send>EjRWeJq8Te+AAAAAAAAAZg==</send></participantstreamassoc></recording>")
    f = one(v.validate(partial), "R17")
    assert f.message == ("participant EjRWeJq8Te+AAAAAAAAAAw==: stream EjRWeJq8Te+AAAAAAAAAZg== "
                         "names no <stream> in the recording session")


def test_partial_without_state_is_reported_as_info() -> None:
    partial = b"<recording " + NS + b"><datamode>partial</datamode></recording>"
    f = one(validate_metadata(partial), "R28")
    assert f.severity is Severity.INFO


def test_partial_disassociate_before_earlier_associate() -> None:
    v = RecordingSessionValidator()
    v.validate(FULL)
    partial = (b"<recording " + NS + b"><datamode>partial</datamode>"
               b'<participantsessionassoc participant_id="EjRWeJq8Te+AAAAAAAAAAw==" '
               b'session_id="EjRWeJq8Te+AAAAAAAAAAg==">'
               b"<disassociate-time>2024-05-01T09:00:00Z</disassociate-time>"
               b"</participantsessionassoc></recording>")
    f = one(v.validate(partial), "R21")
    assert f.message == ("participant EjRWeJq8Te+AAAAAAAAAAw==: disassociate-time "
                         "2024-05-01T09:00:00Z is before its associate-time 2024-05-01T10:00:00Z")


def test_legacy_document_detected_in_both_profiles() -> None:
    doc = (DATA / "legacy" / "acme-style.xml").read_bytes()
    strict = validate_metadata(doc)
    legacy = validate_metadata(doc, profile=Profile.LEGACY)
    assert one(strict, "R26").severity is Severity.INFO
    assert has_errors(strict) and not has_errors(legacy)
    assert one(legacy, "R26").message.startswith("pre-RFC draft metadata format detected")


def test_legacy_labels_checked_against_sdp() -> None:
    doc = (DATA / "legacy" / "acme-style.xml").read_bytes()
    f = one(validate_metadata(doc, profile="legacy", sdp="v=0\r\nm=audio 1 RTP/AVP 0\r\na=label:1\r\n"),
            "R18")
    assert (f.line, f.message) == (36, "stream label '2' is not an a=label of the SDP")


@pytest.mark.parametrize("data", [b"", b"<", b"\xff\xfe<r/>", b"<recording", b"plain text",
                                  b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM '
                                  b'"file:///etc/passwd">]><recording ' + NS + b">&e;</recording>"])
def test_garbage_gives_findings_not_tracebacks(data: bytes) -> None:
    findings = validate_metadata(data)
    assert findings and all(f.rule in RULES for f in findings)
    assert has_errors(findings)


def test_external_entity_is_not_resolved() -> None:
    doc = (b'<?xml version="1.0"?><!DOCTYPE recording [<!ENTITY e SYSTEM "file:///etc/hostname">]>'
           b"<recording " + NS + b"><datamode>&e;</datamode></recording>")
    f = one(validate_metadata(doc), "R13")
    assert f.message == "datamode is ''; it must be 'complete' or 'partial'"


def test_sip_message_lines_point_into_the_message() -> None:
    msg = (DATA / "sip" / "R18-label-mismatch.sip").read_bytes()
    f = [x for x in validate_message(msg) if x.severity is Severity.ERROR][0]
    lines = msg.split(b"\n")
    assert b"<label>99</label>" in lines[f.line]  # the <stream> line is f.line (1-based)


def test_r11_session_version_must_increase() -> None:
    v = RecordingSessionValidator()
    msg = (DATA / "sip" / "valid-invite.sip").read_bytes()
    assert v.validate_message(msg) == []
    changed = msg.replace(b"m=audio 36000", b"m=audio 36010")  # same length, new offer
    assert changed != msg
    f = one(v.validate_message(changed), "R11")
    assert f.message == ("o= session-version 2890844526 does not increase (previous offer had "
                         "2890844526)")


def test_r11_not_reported_for_an_unchanged_re_offer() -> None:
    """RFC 3264 §8: an offer repeated unchanged keeps its o= version (a sender's own
    metadata-only re-INVITEs); the reference SRS and --session judge alike."""
    v = RecordingSessionValidator()
    msg = (DATA / "sip" / "valid-invite.sip").read_bytes()
    assert v.validate_message(msg) == []
    assert v.validate_message(msg) == []


def test_snapshot_request_message() -> None:
    body = (DATA / "valid" / "snapshot-request.xml").read_bytes()
    msg = (b"UPDATE sip:2000@src.example.com SIP/2.0\r\n"
           b"Session-ID: ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2"
           b"\r\nContent-Type: "
           b"application/rs-metadata-request\r\nContent-Disposition: recording-session\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert [(f.rule, f.severity.value) for f in validate_message(msg)] == [("R27", "info")]
