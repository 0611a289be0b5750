"""Controller pieces without sockets: netstrings, the RS dialog, the transition table, the
store, the keyed executor, SDP direction changes."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.controller import (
    TRANSITIONS,
    DuplicateSession,
    Ev,
    KeyedExecutor,
    RecordingSession,
    RsDialog,
    SessionStore,
    State,
    bump_version,
    set_direction,
)
from orchestrator.controller.dialog import media_targets, name_addr, sip_safe
from orchestrator.errors import EvapiProtocolError, IllegalTransition, SipError
from orchestrator.kamailio.evapi import NetstringDecoder, decode_event, encode_netstring
from orchestrator.kamailio.events import RsReply

# ------------------------------------------------------------------------ netstrings


@pytest.mark.parametrize(("chunks", "frames"), [
    ([b"3:abc,"], [b"abc"]),
    ([b"3:abc,2:de,"], [b"abc", b"de"]),  # two commands in one read
    ([b"3:a", b"bc,"], [b"abc"]),  # split inside the payload
    ([b"1", b"0:0123456789,"], [b"0123456789"]),  # split inside the length
    ([b"\n3:abc,\r\n"], [b"abc"]),  # whitespace between frames
    ([b"0:,"], [b""]),
])
def test_netstring_frames(chunks: list[bytes], frames: list[bytes]) -> None:
    d = NetstringDecoder()
    out: list[bytes] = []
    for c in chunks:
        out += d.feed(c)
    assert out == frames


@pytest.mark.parametrize(("data", "message"), [
    (b"x:abc,", "bad netstring length"),
    (b"3:abcX", "does not end with ','"),
    (b"99999999:", "exceeds"),
    (b"1234567890123", "expected a netstring length"),
])
def test_netstring_garbage_is_a_typed_error(data: bytes, message: str) -> None:
    with pytest.raises(EvapiProtocolError, match=message):
        NetstringDecoder(max_frame=1 << 20).feed(data)


@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(1, 50))
def test_netstring_roundtrip_any_split(payloads: list[bytes], step: int) -> None:
    stream = b"".join(encode_netstring(p) for p in payloads)
    d = NetstringDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += d.feed(stream[i:i + step])
    assert out == payloads


@given(st.binary(max_size=100))
def test_netstring_decoder_only_raises_typed_errors(data: bytes) -> None:
    try:
        NetstringDecoder().feed(data)
    except EvapiProtocolError:
        pass


@pytest.mark.parametrize("payload", [b"[1,2]", b"{bad", b"\xff\xfe"])
def test_event_must_be_a_json_object(payload: bytes) -> None:
    with pytest.raises(EvapiProtocolError):
        decode_event(payload)


# ------------------------------------------------------------------------ RS dialog

def _reply(**kw: object) -> RsReply:
    """A 2xx to the RS INVITE as the edge's reply_route relays it."""
    doc: dict[str, object] = {
        "edge": "e", "rs_call_id": "siprec-1", "method": "INVITE", "cseq": 1, "code": 200,
        "reason": "OK", "to_tag": "srs1", "from_tag": "src9",
        "contact": "<sip:srs@127.0.0.2:5090;transport=tcp>;+sip.srs",
        "content_type": "application/sdp", "body": b"v=0\n"}
    doc.update(kw)
    return RsReply(**doc)  # type: ignore[arg-type]


def _dialog() -> RsDialog:
    return RsDialog(call_id="siprec-1", local_uri="sip:siprec-src@127.0.0.1",
                    remote_uri="sip:srs@127.0.0.1:5090",
                    contact="sip:siprec-src@127.0.0.1:5060")


def test_invite_headers_follow_rfc7866() -> None:
    d = _dialog()
    h = d.invite_headers("multipart/mixed;boundary=x")
    # our own From tag: the edge's t_uac_send keeps it (tm.t_uac_start would double it)
    assert f"From: <sip:siprec-src@127.0.0.1>;tag={d.local_tag}\r\n" in h and d.local_tag
    assert "Contact: <sip:siprec-src@127.0.0.1:5060>;+sip.src\r\n" in h
    assert "Require: siprec\r\n" in h and "application/rs-metadata-request" in h
    assert h.endswith("Content-Type: multipart/mixed;boundary=x\r\n")


def test_dialog_confirm_and_in_dialog_requests() -> None:
    d = _dialog()
    with pytest.raises(SipError, match="not established"):
        d.request("BYE")
    d.confirm_from(_reply())
    ruri, hdrs, cseq = d.request("BYE", "application/rs-metadata+xml")
    assert ruri == "sip:srs@127.0.0.2:5090;transport=tcp"  # the SRS's Contact
    assert cseq == 2 and "CSeq: 2 BYE\r\n" in hdrs
    assert f"From: <sip:siprec-src@127.0.0.1>;tag={d.local_tag}\r\n" in hdrs
    assert "To: <sip:srs@127.0.0.1:5090>;tag=srs1\r\n" in hdrs
    assert d.request("INVITE", "application/sdp")[2] == 3
    assert RsDialog.from_dict(d.to_dict()) == d


def test_dialog_keeps_the_transport() -> None:
    d = RsDialog(call_id="siprec-2", local_uri="sip:siprec-src@127.0.0.1",
                 remote_uri="sip:srs@127.0.0.1:5090", contact="sip:x@127.0.0.1:5060",
                 transport="tcp")
    assert d.request_uri() == "sip:srs@127.0.0.1:5090;transport=tcp"


@pytest.mark.parametrize("bad", ["x\r\nVia: evil", "tag\n", "a\0b"])
def test_crlf_never_reaches_sip(bad: str) -> None:
    with pytest.raises(SipError):
        sip_safe(bad, "value")
    d = _dialog()
    with pytest.raises(SipError):
        d.confirm_from(_reply(to_tag=bad))


def test_reply_without_to_tag_is_refused() -> None:
    with pytest.raises(SipError, match="no To tag"):
        _dialog().confirm_from(_reply(to_tag=None))


@pytest.mark.parametrize(("display", "uri", "out"), [
    (None, "sip:a@x", "<sip:a@x>"),
    ("Alice", "sip:a@x", '"Alice" <sip:a@x>'),
    ('A"B\\C', "sip:a@x", '"A\\"B\\\\C" <sip:a@x>'),  # RFC 3261 §25.1 quoted-pair
    ("", None, "<sip:unknown@invalid>"),
])
def test_name_addr_quotes_the_display_name(display: str | None, uri: str | None,
                                           out: str) -> None:
    assert name_addr(display, uri) == out


# ------------------------------------------------------------------------ state machine

def _session(state: State = State.NEW, slot: int = 0) -> RecordingSession:
    return RecordingSession(session_id="s1", call_id="c1", edge="e", node="n", group="g",
                            slot=slot, sub_to_tag="srs-1", state=state, created=time.time())


SETUP = [Ev.SUBSCRIBE, Ev.SUBSCRIBED, Ev.INVITE]


@pytest.mark.parametrize(("events", "final"), [
    ([*SETUP, Ev.ANSWERED, Ev.CALL_ENDED, Ev.DONE], State.CLOSED),
    ([*SETUP, Ev.REJECTED, Ev.INVITE, Ev.ANSWERED], State.ESTABLISHED),
    ([*SETUP, Ev.REJECTED, Ev.EXHAUSTED], State.FAILED),
    ([*SETUP, Ev.ANSWERED, Ev.PAUSE, Ev.UPDATE, Ev.RESUME], State.ESTABLISHED),
    ([*SETUP, Ev.ANSWERED, Ev.SRS_BYE], State.CLOSED),
    ([*SETUP, Ev.ANSWERED, Ev.SRS_LOST], State.FAILED),
    ([*SETUP, Ev.CALL_ENDED], State.CLOSED),
    ([Ev.SHED], State.FAILED),
    ([Ev.CALL_ENDED], State.CLOSED),
])
def test_transitions(events: list[Ev], final: State) -> None:
    s = _session()
    for e in events:
        s.handle(e, "x", 1.0)
    assert s.state is final
    assert [h[3] for h in s.history] == [e.value for e in events]


@pytest.mark.parametrize(("state", "event"), [
    (State.NEW, Ev.ANSWERED), (State.ESTABLISHED, Ev.RESUME), (State.PAUSED, Ev.PAUSE),
    (State.CLOSED, Ev.CALL_ENDED), (State.INVITING, Ev.PAUSE),
])
def test_illegal_transition_names_role_state_event(state: State, event: Ev) -> None:
    s = _session(state)
    with pytest.raises(IllegalTransition) as exc:
        s.handle(event, "", 1.0)
    assert (exc.value.role, exc.value.state, exc.value.event) == (
        "recording session", state.value, event.value)
    assert s.state is state and s.history == []


def test_every_state_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(t in State for row in TRANSITIONS.values() for t in row.values())


# ------------------------------------------------------------------------ store

def test_store_roundtrip_and_one_open_session_per_slot(tmp_path) -> None:
    store = SessionStore(tmp_path / "s.sqlite")
    s = _session()
    s.handle(Ev.SUBSCRIBE, "on n", 1.0)
    s.handle(Ev.SUBSCRIBED, "2 streams", 2.0)
    s.dialog = _dialog()
    s.offer_sdp, s.metadata = b"v=0\r\n\xff", b"<recording/>"
    s.announced_holds = frozenset({"callee"})
    s.call = {"from": "sip:a@x", "headers": {"X-Customer-Id": "7"}}
    store.save(s)
    again = store.get("s1")
    assert again is not None and again.dialog == s.dialog and again.offer_sdp == s.offer_sdp
    assert again.announced_holds == {"callee"} and again.call == s.call
    assert again.state is State.SUBSCRIBED and len(again.history) == 2
    s.note("operator looked", 3.0)
    store.save(s)  # only the new history entry is written
    assert [h[3] for h in store.get("s1").history] == ["subscribe", "subscribed", "note"]  # type: ignore[union-attr]
    assert store.by_rs_call_id("siprec-1") is not None
    dup = _session()
    dup.session_id = "s2"
    with pytest.raises(DuplicateSession):
        store.save(dup)
    other_slot = _session(slot=1)
    other_slot.session_id = "s3"
    store.save(other_slot)  # another slot of the same call may have its own
    s.handle(Ev.EXHAUSTED, "no SRS", 4.0)
    store.save(s)
    store.save(dup)  # the first is closed: a new one may open
    assert sorted(x.session_id for x in store.open_sessions()) == ["s2", "s3"]
    store.close()
    reopened = SessionStore(tmp_path / "s.sqlite")
    assert reopened.get("s1").reason == "no SRS"  # type: ignore[union-attr]
    assert reopened.count_by_state() == {"failed": 1, "new": 2}


# ------------------------------------------------------------------------ executor

def test_keyed_executor_orders_per_key_and_runs_keys_in_parallel() -> None:
    ex = KeyedExecutor(4)
    seen: list[tuple[str, int]] = []
    gate = threading.Event()
    lock = threading.Lock()

    def task(key: str, i: int) -> int:
        if key == "a" and i == 0:
            gate.wait(2)
        with lock:
            seen.append((key, i))
        return i

    futs = [ex.submit("a", lambda i=i: task("a", i)) for i in range(5)]
    fb = ex.submit("b", lambda: task("b", 0))
    assert fb.result(2) == 0  # b is not stuck behind a's blocked first task
    gate.set()
    assert [f.result(2) for f in futs] == list(range(5))
    assert [i for k, i in seen if k == "a"] == list(range(5))
    failing = ex.submit("c", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(2)
    assert ex.submit("c", lambda: "after").result(2) == "after"
    ex.shutdown()


# ------------------------------------------------------------------------ SDP

SDP = (b"v=0\r\no=- 77 5 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 8\r\n"
       b"a=label:1\r\na=sendonly\r\nm=audio 2 RTP/AVP 8\r\na=label:0\r\n")


def test_pause_and_resume_sdp() -> None:
    paused = bump_version(set_direction(SDP, "inactive"))
    assert paused.count(b"a=inactive") == 2 and b"a=sendonly" not in paused
    assert b"o=- 77 6 IN IP4" in paused  # RFC 3264 §8: a new offer bumps the version
    resumed = bump_version(set_direction(paused, "sendonly"))
    assert resumed.count(b"a=sendonly") == 2 and b"o=- 77 7 IN IP4" in resumed
    with pytest.raises(SipError):
        bump_version(b"v=0\r\n")


def test_session_summary_is_json_friendly() -> None:
    import json

    s = _session()
    s.handle(Ev.SUBSCRIBE, "", time.time())
    doc = json.loads(json.dumps(s.summary()))
    assert doc["state"] == "subscribing" and doc["history"][0]["to"] == "subscribing"
    assert time.time() - doc["created"] < 60


def test_route_set_from_record_route() -> None:
    d = _dialog()
    d.confirm_from(_reply(record_route=("<sip:p2.example;lr>, <sip:p1.example;lr>",
                                        "<sip:p0.example;lr>")))
    # RFC 3261 §12.1.2: reversed, and the first loose router is the next hop
    assert d.route_set == ["<sip:p0.example;lr>", "<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert d.nexthop() == "sip:p0.example;lr"
    _, hdrs, _ = d.request("BYE")
    assert hdrs.index("Route: <sip:p0.example;lr>") < hdrs.index("Route: <sip:p2.example;lr>")
    assert RsDialog.from_dict(d.to_dict()).route_set == d.route_set
    plain = _dialog()
    plain.confirm_from(_reply())
    assert plain.route_set == [] and plain.nexthop() == ""


# ------------------------------------------------------------------------ SDP targets
def test_media_targets_section_connection_overrides_the_session() -> None:
    sdp = (b"v=0\r\no=srs 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 0\r\na=label:0\r\n"
           b"m=audio 4002 RTP/AVP 0\r\nc=IN IP4 10.0.0.2/127\r\na=label:1\r\n")
    assert media_targets(sdp) == [("audio", "10.0.0.1", 4000), ("audio", "10.0.0.2", 4002)]
    # a new port on one stream is a different target; a new o= version alone is not
    assert media_targets(sdp.replace(b"4002", b"5002")) != media_targets(sdp)
    assert media_targets(sdp.replace(b"1 2 IN", b"1 3 IN")) == media_targets(sdp)
    assert media_targets(b"v=0\r\n") == []
    with pytest.raises(SipError):
        media_targets(b"v=0\r\nm=audio x RTP/AVP 0\r\n")
