"""The metadata corpus: every document gives exactly the findings recorded in expected.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.siprec import RecordingSessionValidator, has_errors, validate_input

DATA = Path(__file__).resolve().parents[1] / "data" / "metadata"
EXPECTED: dict[str, list[list]] = json.loads((DATA / "expected.json").read_text())


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_corpus_findings(key: str) -> None:
    rel, _, profile = key.partition("#")
    v = RecordingSessionValidator(profile or "strict")
    got = [[f.rule, f.severity.value, f.line] for f in validate_input((DATA / rel).read_bytes(), v)]
    assert got == EXPECTED[key]


def test_corpus_covers_every_file() -> None:
    files = {str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.suffix in (".xml", ".sip")}
    assert files == {k.partition("#")[0] for k in EXPECTED}


@pytest.mark.parametrize("path", sorted((DATA / "invalid").glob("*.xml"))
                         + sorted((DATA / "sip").glob("R*.sip")), ids=lambda p: p.name)
def test_each_invalid_file_triggers_its_rule(path: Path) -> None:
    rule = path.name.split("-")[0]
    findings = validate_input(path.read_bytes(), RecordingSessionValidator())
    assert rule in {f.rule for f in findings}


@pytest.mark.parametrize("name", ["rfc-full.xml", "snapshot-request.xml"])
def test_valid_documents_have_no_errors_or_warnings(name: str) -> None:
    findings = validate_input((DATA / "valid" / name).read_bytes(), RecordingSessionValidator())
    assert [f for f in findings if f.severity.value != "info"] == []


def test_rfc_full_example_shape() -> None:
    from orchestrator.siprec import parse_metadata

    rec = parse_metadata((DATA / "valid" / "rfc-full.xml").read_bytes())
    assert len(rec.participants) == 2 and len(rec.streams) == 4
    assert [s.label for s in rec.streams] == ["96", "97", "98", "99"]
    assert {e.namespace for e in rec.groups[0].extensions} == {
        "urn:ietf:params:xml:ns:callcenter", "http://example.com/my"}


def test_recording_session_sequence_hold_resume_end() -> None:
    v = RecordingSessionValidator()
    sdp = (DATA / "valid" / "rfc-full.sdp").read_bytes()
    steps = ["rfc-full.xml", "hold-partial.xml", "resume-partial.xml", "end-of-call.xml"]
    results = [v.validate((DATA / "valid" / s).read_bytes(), sdp=sdp) for s in steps]
    assert not any(has_errors(r) for r in results)
    assert [(f.rule, f.message) for f in results[1]] == [(
        "R28", "partial update replaces the send/recv set of participant "
        "EjRWeJq8Te+AAAAAAAAABA==: it no longer sends stream(s) labelled 98, 99 (hold or mute?)")]
    assert results[2] == [] and results[3] == []
    # ending twice disassociates again without a re-association in between
    again = v.validate((DATA / "valid" / "end-of-call.xml").read_bytes())
    assert [(f.rule, f.severity.value) for f in again] == [("R21", "warning")] * 2
