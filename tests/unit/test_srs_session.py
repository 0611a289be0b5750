"""SRS session records: state table, JSON form, request checks, participant mapping, config."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.errors import IllegalTransition, LabError
from orchestrator.lab.srs import Behaviour, SrsConfig, SrsFinding, SrsSession, StreamStats
from orchestrator.lab.srs.checks import (
    ParticipantMap,
    check_request,
    metadata_datamode,
    require_tags,
)
from orchestrator.lab.srs.session import TRANSITIONS, next_state
from orchestrator.siprec import (
    CallInfo,
    Finding,
    RecordingSessionValidator,
    Severity,
    build_metadata,
    build_siprec_body,
    hold_update,
    parse_sip_message,
    recording_from_call,
)

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 30000 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n"
       b"m=audio 30002 RTP/AVP 0\r\na=label:2\r\na=sendonly\r\n")


def recording():  # type: ignore[no-untyped-def]
    call = CallInfo(from_header='"Alice" <sip:alice@example.com>;tag=a',
                    to_header="<sip:bob@example.com>;tag=b", from_tag="a", to_tag="b",
                    start_time=datetime(2025, 1, 1, tzinfo=UTC))
    return recording_from_call(call, {"media-labels": {"1": {"tag": "a"}, "2": {"tag": "b"}}})


def message(method: str, body: bytes, ctype: str, *, require: bool = True,
            contact: str = "<sip:src@127.0.0.1>;+sip.src", cseq: int = 1) -> bytes:
    head = [f"{method} sip:srs@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1",
            "From: <sip:src@127.0.0.1>;tag=f", "To: <sip:srs@127.0.0.1>", "Call-ID: c",
            f"CSeq: {cseq} {method}", f"Contact: {contact}",
            "Accept: application/sdp, application/rs-metadata+xml"]
    if require:
        head.append("Require: siprec")
    head += [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --------------------------------------------------------------------------- state table

@pytest.mark.parametrize(("state", "event", "new"), [
    ("early", "answer", "confirmed"), ("early", "reject", "rejected"),
    ("early", "cancel", "cancelled"), ("early", "shutdown", "terminated"),
    ("confirmed", "bye", "terminated"), ("confirmed", "timeout", "terminated"),
    ("confirmed", "shutdown", "terminated"),
])
def test_transitions(state: str, event: str, new: str) -> None:
    assert next_state(state, event) == new


@pytest.mark.parametrize(("state", "event"), [
    ("confirmed", "answer"), ("early", "bye"), ("terminated", "bye"), ("rejected", "answer"),
    ("cancelled", "shutdown"), ("nonsense", "answer"),
])
def test_illegal_transitions_name_role_state_and_event(state: str, event: str) -> None:
    with pytest.raises(IllegalTransition) as exc:
        next_state(state, event)
    assert (exc.value.role, exc.value.state, exc.value.event) == ("srs session", state, event)


def test_final_states_have_no_moves() -> None:
    assert all(not TRANSITIONS[s] for s in ("terminated", "rejected", "cancelled"))


# --------------------------------------------------------------------------- JSON

def test_session_json_is_complete_and_serialisable() -> None:
    s = SrsSession("srs1-x", "siprec-1", "udp", "127.0.0.1:5060", started_at=1.5)
    s.labels["1"] = StreamStats("1", 40000, 0, "PCMU/8000", "recvonly", packets=3, ssrcs=[7])
    s.sip_findings.append(Finding("R02", Severity.ERROR, 4, "no +sip.src", "INVITE"))
    s.sip_findings.append(SrsFinding("S01", Severity.ERROR, None, "no ACK"))
    s.metadata_docs.append(("complete", 2.0))
    d = json.loads(s.to_json())
    assert d == s.to_dict()
    assert d["packets"] == {"1": 3} and d["labels"]["1"]["ssrcs"] == [7]
    assert [(f["rule"], f["slug"], f["severity"]) for f in d["sip_findings"]] == \
        [("R02", "contact-src", "error"), ("S01", "ack", "error")]
    assert d["metadata_docs"] == [["complete", 2.0]]
    assert [f.as_dict() for f in s.sip_findings] == d["sip_findings"]  # S rules too
    assert not s.ended


# --------------------------------------------------------------------------- checks

def test_check_request_splits_sip_and_metadata_findings() -> None:
    ctype, body = build_siprec_body(SDP, build_metadata(recording()))
    raw = message("INVITE", body, ctype, require=False, contact="<sip:src@127.0.0.1>;src")
    sip, meta = check_request(RecordingSessionValidator(), raw, initial=True, source="INVITE")
    assert {f.rule for f in sip} >= {"R01", "R02", "R06"}
    assert all(f.rule.startswith("R") and (int(f.rule[1:]) <= 11 or int(f.rule[1:]) >= 30)
               for f in sip)
    assert all(12 <= int(f.rule[1:]) <= 29 for f in meta)
    assert not [f for f in meta if f.severity is Severity.ERROR]


def test_check_request_in_dialog_drops_initial_only_rules_and_unchanged_sdp() -> None:
    v = RecordingSessionValidator()
    rec = recording()
    ctype, body = build_siprec_body(SDP, build_metadata(rec))
    check_request(v, message("INVITE", body, ctype), initial=True, source="INVITE")
    partial = build_metadata(hold_update(rec, rec.participants[1].participant_id), check=False)
    ctype2, body2 = build_siprec_body(SDP, partial)  # same SDP, same o= version
    raw = message("INVITE", body2, ctype2, require=False, cseq=2)
    sip, meta = check_request(v, raw, initial=False, source="re-INVITE", sdp=SDP,
                              previous_sdp=SDP)
    assert not {f.rule for f in sip} & {"R01", "R11", "R31"}
    assert "R06" in {f.rule for f in sip}  # Accept is checked on re-INVITEs too
    assert not [f for f in meta if f.severity is Severity.ERROR]  # partial applies to state
    changed = SDP.replace(b"a=label:2\r\na=sendonly", b"a=label:2\r\na=inactive")
    ctype3, body3 = build_siprec_body(changed, None)
    sip, _ = check_request(v, message("UPDATE", body3, ctype3, cseq=3), initial=False,
                           source="UPDATE", sdp=changed, previous_sdp=SDP)
    assert [f.rule for f in sip if f.severity is Severity.ERROR] == ["R11"]  # o= not bumped


def test_require_tags() -> None:
    msg = parse_sip_message(message("INVITE", b"", "application/sdp").replace(
        b"Require: siprec", b"Require: SipRec, timer\r\nRequire: 100rel"))
    assert require_tags(msg) == ["siprec", "timer", "100rel"]


def test_metadata_datamode_and_participant_map() -> None:
    rec = recording()
    mode, model = metadata_datamode(build_metadata(rec))
    assert mode == "complete" and model is not None
    pm = ParticipantMap()
    pm.apply(model)
    assert {lb: [p["aor"] for p in ps] for lb, ps in pm.by_label().items()} == \
        {"1": ["sip:alice@example.com"], "2": ["sip:bob@example.com"]}
    held = rec.participants[1].participant_id
    mode, model = metadata_datamode(build_metadata(hold_update(rec, held), check=False))
    assert mode == "partial" and model is not None
    pm.apply(model)
    assert set(pm.by_label()) == {"1"}  # the held party sends nothing
    assert metadata_datamode(b"<not-xml") == ("invalid", None)


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize(("kwargs", "error"), [
    ({"address": "::1"}, "not an IPv4 address"), ({"address": "localhost"}, "IPv4"),
    ({"port": 70000}, "port"), ({"transports": ("udp", "sctp")}, "transports"),
    ({"transports": ()}, "transports"), ({"rtp_port_min": 5000, "rtp_port_max": 4000}, "rtp"),
    ({"name": "a/b"}, "name"), ({"t1": 0}, "timers"), ({"timer_b": -1}, "timers"),
])
def test_config_errors(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(LabError, match=error):
        SrsConfig(record_dir=Path("x"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"reject": 200}, "reject"), ({"reject": 700}, "reject"), ({"answer_delay": -1}, "delay"),
    ({"bye_after": -0.1}, "bye_after"),
])
def test_behaviour_errors(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(LabError, match=error):
        Behaviour(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "allowed", "public_ok"), [
    ("127.0.0.1", True, True), ("10.1.2.3", True, True), ("192.168.0.9", True, True),
    ("172.16.0.1", True, True), ("8.8.8.8", False, True), ("1.1.1.1", False, True),
    ("localhost", True, True), ("no-such-host.invalid", False, False),
])
def test_srs_only_sends_to_loopback_or_private_targets(host: str, allowed: bool,
                                                       public_ok: bool, tmp_path: Path) -> None:
    from orchestrator.lab.srs import SrsServer

    for allow_public, expected in ((False, allowed), (True, public_ok)):
        srs = SrsServer(SrsConfig(record_dir=tmp_path, allow_public_targets=allow_public))
        try:
            assert srs._target_allowed(host) is expected
        finally:
            srs.stop()
