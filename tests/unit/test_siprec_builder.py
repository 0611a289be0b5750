"""Builder, model checks, SIP message parts, call helper, injection, property round trip."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from orchestrator.errors import MetadataError, SipError
from orchestrator.siprec import (
    CallInfo,
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
    build_metadata,
    build_siprec_body,
    build_snapshot_request,
    format_datetime,
    has_errors,
    new_id,
    parse_metadata,
    parse_name_addr,
    parse_siprec_body,
    parse_snapshot_request,
    recording_from_call,
    sdp_labels,
    validate_metadata,
)
from orchestrator.siprec.model import id_bytes
from orchestrator.siprec.xsd import schema_valid

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
REPLY = {"media-labels": {"1": {"tag": "ft1", "type": "audio", "label": "caller"},
                          "0": {"tag": "tt1", "type": "audio", "label": "callee"}}}


def problems(findings: list) -> list:
    """Errors and warnings (infos such as 'name has no xml:lang' are advice)."""
    return [f for f in findings if f.severity.value != "info"]


def call(**kw: object) -> CallInfo:
    base: dict = {"from_header": '"Alice" <sip:alice@atlanta.example.com>;tag=ft1',
                  "to_header": "<sip:bob@biloxi.example.com>;tag=tt1", "from_tag": "ft1",
                  "to_tag": "tt1", "start_time": T0}
    base.update(kw)
    return CallInfo(**base)


def test_new_id_is_base64_uuid() -> None:
    i = new_id()
    assert len(i) == 24 and i.endswith("==") and len(id_bytes(i) or b"") == 16


@pytest.mark.parametrize(("value", "text"), [
    (T0, "2024-05-01T10:00:00Z"),
    (T0.astimezone(timezone(timedelta(hours=2))), "2024-05-01T12:00:00+02:00"),
    (T0.astimezone(timezone(timedelta(hours=-5, minutes=-30))), "2024-05-01T04:30:00-05:30"),
    (T0.replace(microsecond=250000), "2024-05-01T10:00:00.250000Z"),
])
def test_format_datetime(value: datetime, text: str) -> None:
    assert format_datetime(value) == text


def test_format_datetime_refuses_naive() -> None:
    with pytest.raises(MetadataError, match="has no timezone"):
        format_datetime(datetime(2024, 5, 1, 10, 0))


def test_from_call_builds_a_valid_snapshot_in_schema_order() -> None:
    rec = recording_from_call(call(), REPLY)
    xml = build_metadata(rec)
    assert problems(validate_metadata(xml, sdp="a=label:0\r\na=label:1\r\n")) == []
    root = etree.fromstring(xml)
    assert root.nsmap[None] == "urn:ietf:params:xml:ns:recording:1"
    order = [etree.QName(c).localname for c in root]
    assert order == ["datamode", "group", "session", "participant", "participant", "stream",
                     "stream", "sessionrecordingassoc", "participantsessionassoc",
                     "participantsessionassoc", "participantstreamassoc",
                     "participantstreamassoc"]
    # label 1 is the caller's (tag ft1): Alice sends it, Bob receives it
    caller, callee = rec.participants
    assert caller.name_ids[0] == NameID("sip:alice@atlanta.example.com", "Alice", None)
    s1 = rec.stream_by_label("1")
    assert s1 is not None
    assert rec.stream_assoc(caller.participant_id).send == (s1.stream_id,)  # type: ignore[union-attr]
    assert rec.stream_assoc(callee.participant_id).recv == (s1.stream_id,)  # type: ignore[union-attr]


def test_from_call_prefers_p_asserted_identity() -> None:
    rec = recording_from_call(call(p_asserted_identity='"Agent 7" <tel:+14155550100>'), REPLY)
    assert rec.participants[0].name_ids[0] == NameID("tel:+14155550100", "Agent 7", None)


def test_from_call_unknown_tag() -> None:
    bad = {"media-labels": {"5": {"tag": "zz"}}}
    with pytest.raises(MetadataError, match="media label '5' belongs to tag 'zz', neither"):
        recording_from_call(call(), bad)


def test_from_call_without_labels() -> None:
    with pytest.raises(MetadataError, match="no media-labels"):
        recording_from_call(call(), {"sdp": "v=0"})


def test_from_call_malformed_uri() -> None:
    with pytest.raises(SipError, match="malformed URI"):
        recording_from_call(call(to_header="<sip:bob @biloxi>"), REPLY)


def test_check_recording_names_every_problem() -> None:
    s = new_id()
    rec = Recording(sessions=(Session(s),), streams=(Stream("no-pe!", s, "1"),
                                                     Stream(new_id(), "x" * 4, "1")),
                    participants=(Participant(new_id(), (NameID("bob@example.com"),)),))
    with pytest.raises(MetadataError) as exc:
        build_metadata(rec)
    msg = str(exc.value)
    # errors only, each with its rule id and the line of the document the builder made
    assert "R15 line 8: stream stream_id 'no-pe!' is not base64Binary" in msg
    assert "R18 line 11: label '1' is used by streams no-pe! and " in msg
    assert "R17 line 11: stream " in msg and "session_id xxxx names no <session>" in msg
    assert "bob@example.com" not in msg  # a bare aor is a warning (R19), not refused


def test_check_recording_time_order() -> None:
    g = Group(new_id(), associate_time=T0, disassociate_time=T0 - timedelta(seconds=1))
    with pytest.raises(MetadataError, match="R21 line 4: group .*: disassociate-time "
                                            "2024-05-01T09:59:59Z is before"):
        build_metadata(Recording(groups=(g,)))


def test_extension_in_recording_namespace_is_refused() -> None:
    rec = Recording(extensions=(Extension("urn:ietf:params:xml:ns:recording:1", "x"),))
    with pytest.raises(MetadataError, match="R25 line 4: <x> is not an RFC 7865 element; "
                                            "extensions must be in a foreign namespace"):
        build_metadata(rec)


def test_partial_updates_validate_in_sequence() -> None:
    from orchestrator.siprec import (
        RecordingSessionValidator,
        end_of_call_update,
        hold_update,
        resume_update,
        transfer_update,
        with_holds,
    )

    rec = recording_from_call(call(), REPLY)
    caller, callee = (p.participant_id for p in rec.participants)
    v = RecordingSessionValidator()
    assert problems(v.validate(build_metadata(rec))) == []
    hold = hold_update(rec, callee, T0 + timedelta(seconds=20))
    assert hold.datamode is DataMode.PARTIAL and hold.participant_stream_assocs[0].send == ()
    assert hold.participant_stream_assocs[0].associate_time == T0 + timedelta(seconds=20)
    assert [f.rule for f in v.validate(build_metadata(hold))] == ["R28"]
    assert v.validate(build_metadata(resume_update(rec, callee, T0 + timedelta(seconds=40)))) \
        == []
    carol = Participant(new_id(), (NameID("sip:carol@chicago.example.com", "Carol"),))
    assert not has_errors(v.validate(build_metadata(
        transfer_update(rec, callee, carol, T0 + timedelta(minutes=1)))))
    # a complete snapshot during the hold: the callee's <send> gone, nothing else changed
    held = with_holds(rec, [callee])
    # valid; the validator notes (a warning) that the held party's stream has no sender
    findings = RecordingSessionValidator().validate(build_metadata(held))
    assert not has_errors(findings) and [f.rule for f in problems(findings)] == ["R22"]
    by_id = {a.participant_id: a for a in held.participant_stream_assocs}
    orig = {a.participant_id: a for a in rec.participant_stream_assocs}
    assert by_id[callee].send == () and by_id[callee].recv == orig[callee].recv
    assert by_id[caller] == orig[caller] and with_holds(rec, []) == rec
    end = end_of_call_update(rec, T0 + timedelta(minutes=5))
    assert end.sessions[0].stop_time == T0 + timedelta(minutes=5)
    assert not has_errors(v.validate(build_metadata(end)))


# ------------------------------------------------------------------ multipart / SDP / snapshot

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n"


def test_multipart_round_trip() -> None:
    xml = build_metadata(recording_from_call(call(), REPLY))
    ctype, body = build_siprec_body(SDP, xml, boundary="OSS-unique-boundary-42")
    assert ctype == "multipart/mixed;boundary=OSS-unique-boundary-42"
    assert b"Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session" in body
    parsed = parse_siprec_body(ctype, body)
    assert (parsed.sdp, parsed.metadata, parsed.metadata_type) == (SDP, xml,
                                                                   "application/rs-metadata+xml")


def test_multipart_accepts_legacy_type_on_input() -> None:
    body = (b"--b\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n--b\r\n"
            b"Content-Type: application/rs-metadata\r\n\r\n<x/>\r\n--b--\r\n")
    parsed = parse_siprec_body('multipart/mixed; boundary="b"', body)
    assert (parsed.metadata, parsed.metadata_type) == (b"<x/>", "application/rs-metadata")


def test_body_without_metadata_is_plain_sdp() -> None:
    assert build_siprec_body(SDP, None) == ("application/sdp", SDP)


@pytest.mark.parametrize(("ctype", "body", "message"), [
    ("multipart/mixed", b"--b\r\n\r\nx\r\n--b--", "no boundary parameter"),
    ("multipart/mixed;boundary=b", b"nothing here", "no delimiter line --b"),
    ("multipart/mixed;boundary=b", b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
     "expected one application/sdp part, found 0"),
])
def test_malformed_multipart(ctype: str, body: bytes, message: str) -> None:
    with pytest.raises(SipError, match=message):
        parse_siprec_body(ctype, body)


def test_sdp_labels() -> None:
    assert sdp_labels(SDP + b"m=audio 4002 RTP/AVP 0\r\na=label:caller\r\n") == ["1", "caller"]


def test_snapshot_request_round_trip() -> None:
    xml = build_snapshot_request(SnapshotRequest("SRS restarted & lost <state>", "en"))
    assert parse_snapshot_request(xml) == SnapshotRequest("SRS restarted & lost <state>", "en")
    assert [f.rule for f in validate_metadata(xml)] == ["R27"]


# ------------------------------------------------------------------ injection

NASTY = ['Evil <script>&amp;"\'', "Line1\r\nInjected: header", "Zoë Ünïcødé 日本語 📞",
         "NUL\x00BEL\x07 and ]]> end", "\ud800 lone surrogate"]


@pytest.mark.parametrize("display", NASTY)
def test_display_names_are_escaped(display: str) -> None:
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    rec = recording_from_call(call(from_header=f'"{quoted}" <sip:alice@atlanta.example.com>;tag=ft1'),
                              REPLY)
    xml = build_metadata(rec)
    root = etree.fromstring(xml)  # well-formed
    assert problems(validate_metadata(xml)) == []
    name = root.find(".//{urn:ietf:params:xml:ns:recording:1}name")
    assert name is not None
    expected = "".join(c if c in "\t\r\n" or (" " <= c and not "\ud800" <= c <= "\udfff")
                       else "\ufffd" for c in display)
    assert name.text == expected
    assert b"<script>" not in xml


def test_header_value_with_crlf_in_uri_is_refused() -> None:
    with pytest.raises(SipError):
        parse_name_addr("<sip:alice@atlanta.example.com\r\nX-Injected: 1>")


def test_extension_values_are_escaped() -> None:
    ext = Extension("urn:example:x", "callData", text='a<b>&"c"\r\n',
                    attributes={"from": "<sip:a@b>;tag=\"1\"\n"})
    xml = build_metadata(Recording(extensions=(ext,)))
    el = etree.fromstring(xml)[1]
    assert (el.text, el.get("from")) == ('a<b>&"c"\r\n', '<sip:a@b>;tag="1"\n')


# ------------------------------------------------------------------ property-based round trip

_ID = st.builds(new_id)
_TIME = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)),
                                                timezone(timedelta(hours=-5, minutes=-30))]))
_TEXT = st.text(max_size=30)
_LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8)


@st.composite
def recordings(draw: st.DrawFn) -> Recording:
    """Models the builder accepts: complete snapshots with resolvable references."""
    group = Group(draw(_ID), draw(st.none() | _TIME))
    start = draw(_TIME)
    session = Session(draw(_ID), sip_session_ids=draw(st.lists(_TEXT, max_size=2)),
                      reasons=tuple(Reason(c, t) for c, t in draw(st.lists(st.tuples(
                          st.integers(-32768, 32767), _TEXT), max_size=2))),
                      group_ref=group.group_id, start_time=start,
                      stop_time=draw(st.none() | st.just(start + timedelta(seconds=30))))
    participants = tuple(
        Participant(draw(_ID), (NameID("sip:" + draw(st.from_regex(r"[a-z0-9]{1,8}@[a-z]{1,8}\.example",
                                                                   fullmatch=True)),
                                       draw(st.none() | _TEXT),
                                       draw(st.none() | st.sampled_from(["en", "it", "de-CH",
                                                                         ""]))),))
        for _ in range(draw(st.integers(1, 3))))
    labels = draw(st.lists(_LABEL, min_size=1, max_size=5, unique=True))
    streams = tuple(Stream(draw(_ID), session.session_id, lb) for lb in labels)
    psts = []
    for p in participants:
        send = draw(st.lists(st.sampled_from([s.stream_id for s in streams]), unique=True,
                             max_size=2))
        recv = [s.stream_id for s in streams if s.stream_id not in send][:2]
        psts.append(ParticipantStreamAssoc(p.participant_id, tuple(send), tuple(recv),
                                           associate_time=start))
    ext = Extension("urn:example:ext", "x", text=draw(_TEXT))
    return Recording(
        groups=(group,), sessions=(session,), participants=participants, streams=streams,
        session_recording_assocs=(SessionRecordingAssoc(session.session_id, start),),
        participant_session_assocs=tuple(ParticipantSessionAssoc(
            p.participant_id, session.session_id, start,
            params=tuple(Param(n, v) for n, v in draw(st.lists(st.tuples(_TEXT, _TEXT),
                                                               max_size=2))))
                                         for p in participants),
        participant_stream_assocs=tuple(psts), extensions=draw(st.sampled_from([(), (ext,)])))


@settings(max_examples=100, deadline=None)
@given(recordings())
def test_any_accepted_model_validates_without_errors(rec: Recording) -> None:
    xml = build_metadata(rec)
    findings = validate_metadata(xml, sdp="".join(f"a=label:{s.label}\r\n" for s in rec.streams))
    assert not has_errors(findings), findings
    assert schema_valid(etree.fromstring(xml))  # never a document RFC 7865 §9 rejects
    back = parse_metadata(xml)
    assert [s.label for s in back.streams] == [s.label for s in rec.streams]
    assert [p.participant_id for p in back.participants] == [p.participant_id
                                                            for p in rec.participants]
    assert back.sessions[0].start_time == rec.sessions[0].start_time


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda s: ("<recording>" + s).encode()))
def test_validator_never_raises_on_garbage(data: bytes) -> None:
    from orchestrator.siprec import RecordingSessionValidator, validate_input

    findings = validate_input(data, RecordingSessionValidator())
    assert all(f.line is None or f.line >= 1 for f in findings)
