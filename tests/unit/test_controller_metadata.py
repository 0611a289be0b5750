"""The documents the controller's core builds without the builder's self-check are valid:
for any identities (what the edge relays, turned into parties), labels, tags, session ids
and times, the strict validator finds no error in the complete snapshot, in hold and resume
updates, in a snapshot with holds, and in the final update (issue 16: the check costs more
than the rest of a call, so it is proven here instead of repeated per call)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.controller.core import _metadata
from orchestrator.controller.dialog import party
from orchestrator.siprec import (
    CallInfo,
    end_of_call_update,
    hold_update,
    recording_from_call,
    resume_update,
    validate_metadata,
    with_holds,
)

display = st.one_of(st.none(), st.text(max_size=40))
user = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
uri = st.builds(lambda u, h: f"sip:{u}@{h}", user, st.sampled_from(
    ["127.0.0.1", "edge.example", "[2001:db8::1]:5060", "a.b.example;transport=tcp"]))
tag = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=";,<>\""),
              min_size=1, max_size=16)
when = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(fd=display, fu=uri, td=display, tu=uri, pai=st.one_of(st.none(), uri),
       ft=tag, tt=tag, labels=st.lists(st.booleans(), min_size=1, max_size=4),
       sid=st.one_of(st.none(), st.text(max_size=60)), at=when)
def test_every_document_the_core_builds_is_valid(fd, fu, td, tu, pai, ft, tt, labels, sid,
                                                 at) -> None:
    if ft == tt:
        tt = tt + "x"
    info = CallInfo(from_header=party(fd, fu), to_header=party(td, tu), from_tag=ft,
                    to_tag=tt, p_asserted_identity=party(fd, pai) if pai else None,
                    sip_session_id=sid or None, start_time=at)
    media = {str(i): {"tag": ft if caller else tt} for i, caller in enumerate(labels)}
    rec = recording_from_call(info, {"media-labels": media})
    caller, callee = (p.participant_id for p in rec.participants)
    later = at + timedelta(seconds=3)
    docs = [rec, hold_update(rec, callee, later), resume_update(rec, callee, later),
            with_holds(rec, [caller]), end_of_call_update(rec, later),
            end_of_call_update(with_holds(rec, [callee, caller]), later)]
    for doc in docs:
        data = _metadata(doc)
        errors = [f for f in validate_metadata(data) if f.severity.value == "error"]
        assert errors == [], (errors, data[:400])
