"""The controller's per-call core without any I/O: inputs in, actions out (tables of cases).

Each test drives one :class:`CallCore` through the events a real call produces and checks
the exact actions it asks the driver for — the order of NG commands, which SIP requests go
out, what is counted as lost and for how many seconds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from orchestrator.controller.core import ACK_GAP, CallCore
from orchestrator.controller.messages import (
    CancelInvite,
    EdgeSip,
    EndCall,
    Loss,
    NgFailed,
    Observe,
    Operator,
    Persist,
    PersistCall,
    QueryMedia,
    Reply,
    SendInvite,
    SendRequest,
    SrsDown,
    Subscribe,
    SubscribeAnswer,
    Subscribed,
    Tick,
    Unsubscribe,
)
from orchestrator.controller.selection import SrsProber, SrsSelector
from orchestrator.controller.session import State
from orchestrator.controller.store import session_doc, session_from_doc
from orchestrator.kamailio.events import CallAnswered, CallEnded, CallReinvite, RsReply, RsRequest
from orchestrator.site.model import SrsGroup

T0 = 1_700_000_000.0
SRS = ["sip:srs@127.0.0.1:5091", "sip:srs@127.0.0.1:5092", "sip:srs@127.0.0.1:5093"]
SUB_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           b"m=audio 30000 RTP/AVP 0\r\na=label:0\r\na=sendonly\r\n"
           b"m=audio 30002 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n")


def srs_sdp(port: int = 40000) -> bytes:
    return (f"v=0\r\no=srs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=label:0\r\na=recvonly\r\n"
            f"m=audio {port + 2} RTP/AVP 0\r\na=label:1\r\na=recvonly\r\n").encode()


def from_tag(req: Any) -> str:
    """Our From tag in a request's header block (the SRS echoes it in its replies)."""
    line = next(h for h in req.headers.split("\r\n") if h.startswith("From:"))
    return line.split(";tag=", 1)[1]


def group(n: int = 2, **kw: Any) -> SrsGroup:
    return SrsGroup(name="g", servers=[{"uri": u} for u in SRS[:n]], timeout=2.0, **kw)


class Harness:
    """One core, the selector it shares, and everything it asked for so far."""

    def __init__(self, g: SrsGroup | None = None, *, record_local: bool = False,
                 selector: SrsSelector | None = None, call_id: str = "call-1") -> None:
        self.g = g if g is not None else group()
        self.selector = selector or SrsSelector({self.g.name: self.g})
        self.call = CallAnswered(edge="edge1", call_id=call_id, ts=T0, from_tag="ft",
                                 to_tag="tt", from_uri="sip:alice@a.example",
                                 to_uri="sip:bob@b.example", from_display='A "q"',
                                 rtpengine="udp:127.0.0.1:2223", rule="default",
                                 record_local=record_local, siprec=self.g.name,
                                 session_id="ab" * 16, h_entry=1, h_id=2)
        self.core = CallCore(self.call, node="rtp1", group=self.g, selector=self.selector,
                             edge=EdgeSip("edge1", "127.0.0.1", {"udp": 5060, "tcp": 5060}),
                             now=T0)
        self.log: list[Any] = []
        self.now = T0

    def start(self, **kw: Any) -> list[Any]:
        return self._keep(self.core.start(self.now, **kw))

    def feed(self, inp: Any, dt: float = 0.0) -> list[Any]:
        self.now += dt
        return self._keep(self.core.handle(inp, self.now))

    def _keep(self, acts: list[Any]) -> list[Any]:
        self.log += acts
        return [a for a in acts if not isinstance(a, Persist | PersistCall)]

    # shortcuts --------------------------------------------------------------
    def last(self, kind: type, acts: list[Any] | None = None) -> Any:
        return [a for a in (acts if acts is not None else self.log) if isinstance(a, kind)][-1]

    def subscribed(self, acts: list[Any], dt: float = 0.01) -> list[Any]:
        sub = self.last(Subscribe, acts)
        return self.feed(Subscribed(sub.session_id, SUB_SDP, {"0": "ft", "1": "tt"}), dt)

    def answer(self, inv: SendInvite | SendRequest, code: int = 200, dt: float = 0.02,
               body: bytes | None = None, method: str | None = None) -> list[Any]:
        acts = self.feed(RsReply(edge="edge1", rs_call_id=inv.rs_call_id,
                                 method=method or getattr(inv, "method", "INVITE"),
                                 cseq=inv.cseq, code=code, reason="OK" if code < 300 else "No",
                                 to_tag="srs-tag", from_tag=from_tag(inv),
                                 contact="<sip:srs@127.0.0.1:5091>",
                                 content_type="application/sdp",
                                 body=srs_sdp() if body is None and code < 300 else body or b""),
                         dt)
        if any(s.tx is not None and s.tx.purpose == "ack_gap"
               for s in self.core.sessions.values()):
            assert not [a for a in acts if isinstance(a, SendRequest) and a.method == "BYE"]
            acts += self.feed(Tick(), ACK_GAP)  # the BYE waits for tm's ACK to go first
        return acts

    def establish(self) -> SendInvite:
        inv = self.last(SendInvite, self.subscribed(self.start()))
        self.answer(inv)
        return inv

    def losses(self) -> list[tuple[str, float]]:
        return [(a.reason, a.seconds) for a in self.log if isinstance(a, Loss)]

    def session(self, slot: int = 0) -> Any:
        s = self.core.slots[slot].session
        assert s is not None
        return s


def kinds(acts: list[Any]) -> list[str]:
    return [type(a).__name__ for a in acts if not isinstance(a, Observe)]


# ------------------------------------------------------------------------------ set-up
def test_set_up_subscribe_invite_answer() -> None:
    h = Harness()
    acts = h.start()
    assert kinds(acts) == ["Subscribe"]
    acts = h.subscribed(acts)
    inv = h.last(SendInvite, acts)
    assert kinds(acts) == ["SendInvite"]
    assert inv.ruri == SRS[0] and "Require: siprec\r\n" in inv.headers
    assert b"application/rs-metadata+xml" in inv.body and b"a=label:0" in inv.body
    assert b'<name>A "q"</name>' in inv.body or b"A &quot;q&quot;" in inv.body
    acts = h.answer(inv)
    assert kinds(acts) == ["SubscribeAnswer", "EdgeSdp"]
    assert h.last(SubscribeAnswer, acts).sdp == srs_sdp()
    assert h.session().state is State.ESTABLISHED
    latency = [a for a in acts if isinstance(a, Observe) and a.kind == "setup_latency"]
    assert [round(a.value, 3) for a in latency] == [0.03]
    assert h.losses() == []


@pytest.mark.parametrize(("codes", "no_failover", "expect_uris", "exhausted"), [
    ([503, 200], [], SRS[:2], False),  # next SRS on 5xx
    ([486, 200], [486], SRS[:1], True),  # a no-failover code stops at once
    ([503, 500], [], SRS[:2], True),  # every SRS refused
])
def test_invite_failover(codes: list[int], no_failover: list[int], expect_uris: list[str],
                         exhausted: bool) -> None:
    h = Harness(group(no_failover_codes=no_failover))
    acts = h.subscribed(h.start())
    uris = []
    for code in codes:
        invs = [a for a in acts if isinstance(a, SendInvite)]
        if not invs:
            break
        uris.append(invs[-1].ruri)
        acts = h.answer(invs[-1], code)
    assert uris == expect_uris
    assert h.core.slots[0].exhausted is exhausted
    if exhausted:
        assert h.session().state is State.FAILED
        assert "no SRS took the session" in (h.session().reason or "")
        assert isinstance(h.last(Unsubscribe), Unsubscribe)  # the call lives: stop forking
        h.feed(CallEnded("edge1", "call-1", T0 + 10, by="caller"))
        assert h.losses() == [("no_srs", 10.0)]
    else:
        assert h.session().state is State.ESTABLISHED and h.losses() == []


@pytest.mark.parametrize("bye_code", [200, 481])
def test_unanswered_invite_is_cancelled_and_a_late_2xx_gets_a_bye(bye_code: int) -> None:
    h = Harness()
    first = h.last(SendInvite, h.subscribed(h.start()))
    acts = h.feed(Tick(), 2.5)  # the group timeout is 2 s
    cancel = h.last(CancelInvite, acts)
    assert (cancel.rs_call_id, cancel.cseq) == (first.rs_call_id, first.cseq)
    second = h.last(SendInvite, acts)
    assert second.ruri == SRS[1] and second.rs_call_id != first.rs_call_id
    h.answer(second)
    acts = h.answer(first)  # the first SRS answers after all: tm ACKs it, we BYE it
    bye = h.last(SendRequest, acts)
    assert (bye.method, bye.rs_call_id, bye.session_id) == ("BYE", first.rs_call_id, None)
    assert "To: <sip:srs@127.0.0.1:5091>;tag=srs-tag" in bye.headers
    # the dialog the first INVITE began: its From tag, or the SRS answers the BYE 481
    assert f"From: <sip:siprec-src@127.0.0.1>;tag={from_tag(first)}\r\n" in bye.headers
    refused = Observe("late_answer_bye_refused")
    assert (refused in h.answer(bye, bye_code, method="BYE")) is (bye_code != 200)
    assert h.session().state is State.ESTABLISHED and h.session().srs_uri == SRS[1]


def test_required_group_without_srs_ends_the_call() -> None:
    h = Harness(group(1, required=True))
    acts = h.subscribed(h.start())
    acts = h.answer(h.last(SendInvite, acts), 503)
    end = h.last(EndCall, acts)
    assert (end.h_entry, end.h_id) == (1, 2) and "required" in end.reason


@pytest.mark.parametrize(("lag", "ended_at", "loss"), [
    (5.0, None, ("shed", 7.0)),  # overload: not set up at all, counted until the end
    (0.1, T0 + 0.5, ("ended_before_setup", 0.5)),  # the call ended before the set-up
])
def test_nothing_is_set_up_late(lag: float, ended_at: float | None,
                                loss: tuple[str, float]) -> None:
    h = Harness()
    acts = h.start(lag=lag, max_lag=2.0, ended_at=ended_at)
    assert not [a for a in acts if isinstance(a, Subscribe | SendInvite)]
    assert h.session().state is State.FAILED
    h.feed(CallEnded("edge1", "call-1", T0 + 7.0, by="caller"), 7.0)
    assert h.losses() == [loss]
    assert h.core.done


# ------------------------------------------------------------------------------ teardown
@pytest.mark.parametrize("record_local", [False, True])
def test_call_end_byes_the_srs_and_never_unsubscribes_after_the_edge_deleted(
        record_local: bool) -> None:
    h = Harness(record_local=record_local)
    h.establish()
    acts = h.feed(CallEnded("edge1", "call-1", T0 + 30, by="callee"), 30)
    names = kinds(acts)
    assert "Unsubscribe" not in names  # rtpengine 10.5: delete then unsubscribe leaks
    ng = [n for n in names if n in ("Subscribe", "SubscribeAnswer", "Unsubscribe",
                                     "DeleteCall", "StopLocal")]
    assert ng[-1] == "DeleteCall"  # ... the final delete, last NG command, frees what a race left
    assert ("StopLocal" in names) is record_local
    # RFC 7866 §9.1: the final metadata goes in a re-INVITE (the SDP unchanged), then a BYE
    # without a body (an SRS may answer a BYE body 415 and keep the dialog up)
    final = h.last(SendRequest, acts)
    assert final.method == "INVITE" and b"<stop-time>" in final.body
    assert b"a=sendonly" in final.body and "Session-ID: " in final.headers
    assert h.session().state is State.TERMINATING
    bye = h.last(SendRequest, h.answer(final))
    assert bye.method == "BYE" and bye.body == b"" and bye.cseq == final.cseq + 1
    acts = h.answer(bye)
    assert h.session().state is State.CLOSED and h.core.done
    assert kinds(acts) == ["EdgeForget"] and h.losses() == []


def test_call_end_while_inviting_cancels_and_counts_the_unrecorded_call() -> None:
    h = Harness()
    inv = h.last(SendInvite, h.subscribed(h.start()))
    acts = h.feed(CallEnded("edge1", "call-1", T0 + 1.5, by="caller"), 1.5)
    assert kinds(acts) == ["Loss", "CancelInvite", "QueryMedia", "DeleteCall"]
    assert h.losses() == [("not_established", 1.5)]
    late = h.answer(inv)
    assert h.last(SendRequest, late).method == "BYE"


@pytest.mark.parametrize(("reply", "dt", "loss"), [
    (200, 0.1, []),
    (481, 0.1, []),  # the SRS forgot the dialog: nothing left to end
    (500, 0.1, [("bye_failed", 0.0)]),
    (None, 3.0, [("bye_failed", 0.0)]),  # unanswered within the group timeout
])
def test_bye_outcome(reply: int | None, dt: float, loss: list[tuple[str, float]]) -> None:
    h = Harness()
    h.establish()
    final = h.last(SendRequest, h.feed(CallEnded("edge1", "call-1", T0 + 5, by="caller"), 5))
    bye = h.last(SendRequest, h.answer(final))
    if reply is None:
        h.feed(Tick(), dt)
    else:
        h.answer(bye, reply, dt)
    assert h.session().state is State.CLOSED and h.losses() == loss


# ------------------------------------------------------------------------------ updates
def test_one_invite_transaction_at_a_time_and_the_latest_state_wins() -> None:
    h = Harness()
    h.establish()
    acts = h.feed(CallReinvite("edge1", "call-1", T0 + 1, hold=True, by="caller"), 1)
    hold = h.last(SendRequest, acts)
    assert hold.method == "INVITE" and b"<datamode>partial</datamode>" in hold.body
    # RFC 7865 §6.9: the tuple carries the time of the change (the edge's event time)
    assert b"<associate-time>2023-11-14T22:13:21" in hold.body
    # two more changes while the hold re-INVITE is pending: nothing goes out (RFC 3261 §14.1)
    acts = h.feed(CallReinvite("edge1", "call-1", T0 + 1.1, hold=False, by="caller"), 0.1)
    acts += h.feed(CallReinvite("edge1", "call-1", T0 + 1.2, hold=True, by="callee"), 0.1)
    assert not [a for a in acts if isinstance(a, SendRequest)]
    # the hold completes; what the SRS must learn now: caller held, callee not
    acts = h.answer(hold)
    update = h.last(SendRequest, acts)
    assert update.cseq == hold.cseq + 1 and update.method == "INVITE"
    assert h.session().announced_holds == frozenset({"callee"})
    h.answer(update)
    assert h.session().announced_holds == frozenset({"caller"})
    assert not [a for a in h.feed(Tick(), 0.1) if isinstance(a, SendRequest)]


def test_snapshot_request_in_an_invite_waits_for_the_ack() -> None:
    h = Harness()
    inv = h.establish()
    rs = inv.rs_call_id
    acts = h.feed(RsRequest("edge1", rs, "INVITE", 1, "application/rs-metadata-request",
                            b"<requestsnapshot/>"), 1)
    assert not [a for a in acts if isinstance(a, SendRequest)]
    acts = h.feed(RsRequest("edge1", rs, "ACK", 1), 0.01)
    snap = h.last(SendRequest, acts)
    assert snap.method == "INVITE" and b"<datamode>complete</datamode>" in snap.body
    h.answer(snap)
    assert "complete snapshot requested by the SRS" in [x[4] for x in h.session().history]


def test_srs_moving_its_media_retargets_the_fork() -> None:
    h = Harness()
    inv = h.establish()
    acts = h.feed(RsRequest("edge1", inv.rs_call_id, "INVITE", 2, "application/sdp",
                            srs_sdp(41000)), 1)
    assert h.last(SubscribeAnswer, acts).sdp == srs_sdp(41000)
    same = h.feed(RsRequest("edge1", inv.rs_call_id, "INVITE", 3, "application/sdp",
                            srs_sdp(41000)), 1)
    assert not [a for a in same if isinstance(a, SubscribeAnswer)]


# ------------------------------------------------------------------------------ SRS lost
@pytest.mark.parametrize("how", ["probe", "timeout", "481", "bye"])
def test_lost_srs_fails_over_with_a_complete_snapshot_and_counts_the_gap(how: str) -> None:
    h = Harness()
    inv = h.establish()
    first = h.session()
    if how == "probe":
        acts = h.feed(SrsDown(SRS[0], last_ok=T0 + 9.0), 10)
    elif how == "bye":
        acts = h.feed(RsRequest("edge1", inv.rs_call_id, "BYE", 2), 10)
    else:
        upd = h.last(SendRequest, h.feed(
            CallReinvite("edge1", "call-1", T0 + 10, hold=True, by="caller"), 10))
        acts = h.feed(Tick(), 2.5) if how == "timeout" else h.answer(upd, 481, 0.1)
    assert first.state in (State.FAILED, State.CLOSED)
    assert any(isinstance(a, Unsubscribe) and a.session_id == first.session_id for a in acts)
    sub = h.last(Subscribe, acts)
    assert sub.session_id != first.session_id and sub.to_tag != first.sub_to_tag
    inv2 = h.last(SendInvite, h.subscribed(acts, dt=0.1))
    assert inv2.ruri == SRS[1]  # never the SRS that was lost
    assert b"<datamode>complete</datamode>" in inv2.body
    h.answer(inv2, dt=0.2)
    (reason, seconds), = h.losses()
    assert reason == ("srs_bye" if how == "bye" else "srs_lost")
    # gap: from the last sign of life of the lost SRS to the new session's 2xx
    expected = {"probe": 1.3, "timeout": 12.8 - 0.03, "481": 10.4 - 0.03, "bye": 0.3}[how]
    assert seconds == pytest.approx(expected, abs=0.05)


def test_simultaneous_sessions_on_distinct_srs_and_one_replaced() -> None:
    h = Harness(group(3, simultaneous=2))
    acts = h.start()
    subs = [a for a in acts if isinstance(a, Subscribe)]
    assert len(subs) == 2 and subs[0].to_tag != subs[1].to_tag
    invs = []
    for sub in subs:
        acts = h.feed(Subscribed(sub.session_id, SUB_SDP, {"0": "ft", "1": "tt"}), 0.01)
        invs.append(h.last(SendInvite, acts))
    assert sorted(i.ruri for i in invs) == SRS[:2]
    for inv in invs:
        h.answer(inv)
    assert [h.session(i).state for i in (0, 1)] == [State.ESTABLISHED] * 2
    acts = h.feed(SrsDown(SRS[0], last_ok=T0 + 4), 5)
    assert h.session(1).state is State.ESTABLISHED  # the other slot keeps recording
    inv3 = h.last(SendInvite, h.subscribed(acts))
    assert inv3.ruri == SRS[2]  # neither the dead one nor the one slot 1 uses
    h.answer(inv3)
    assert sorted(h.selector.busy.elements()) == sorted([SRS[1], SRS[2]])


def test_required_all_ends_the_call_when_one_slot_is_unrecorded() -> None:
    h = Harness(group(2, simultaneous=2, required="all"))
    acts = h.start()
    for sub in [a for a in acts if isinstance(a, Subscribe)]:
        h.feed(Subscribed(sub.session_id, SUB_SDP, {"0": "ft", "1": "tt"}))
    invs = [a for a in h.log if isinstance(a, SendInvite)]
    h.answer(invs[0])
    acts = h.answer(invs[1], 503)
    assert not [a for a in acts if isinstance(a, SendInvite)]  # the other SRS is in use
    assert isinstance(h.last(EndCall, acts), EndCall)


# ------------------------------------------------------------------------------ operator
def test_operator_pause_resume_stop() -> None:
    h = Harness()
    h.establish()
    acts = h.feed(Operator("pause", 1, "ops@127.0.0.1"), 1)
    # the counters are read, then the media stops, before a=inactive
    assert kinds(acts) == ["QueryMedia", "Unsubscribe", "SendRequest"]
    pause = h.last(SendRequest, acts)
    assert b"a=inactive" in pause.body
    acts = h.answer(pause, body=b"")
    assert h.last(Reply, acts).ok and h.session().state is State.PAUSED
    assert h.last(Reply, h.feed(Operator("pause", 2))).result["status"] == 409
    acts = h.feed(Operator("resume", 3, "ops@127.0.0.1"), 1)
    assert kinds(acts) == ["Subscribe"]  # a fresh subscription gives the SDP to offer
    acts = h.subscribed(acts)
    resume = h.last(SendRequest, acts)
    # a=sendonly again, o= version 3 (1 initial, 2 the pause), CRLF line ends kept
    assert resume.body.count(b"a=sendonly\r\n") == 2 and b"o=- 1 3 IN IP4" in resume.body
    acts = h.answer(resume)
    assert kinds(acts)[:2] == ["SubscribeAnswer", "EdgeSdp"]
    assert h.last(Reply, acts).ok and h.session().state is State.ESTABLISHED
    acts = h.feed(Operator("stop", 4, "ops@127.0.0.1"), 1)
    assert kinds(acts) == ["Loss", "QueryMedia", "Unsubscribe", "SendRequest"]  # final update
    assert not [a for a in acts if isinstance(a, Reply)]  # answered once the BYE is
    acts = h.answer(h.last(SendRequest, h.answer(h.last(SendRequest, acts))))
    rep = h.last(Reply, acts)
    assert rep.ok and rep.result["session"]["state"] == "closed"
    assert h.losses() == [("operator_stop", 0.0)]
    assert any("stop requested by ops@127.0.0.1" in x[4] for x in h.session().history)
    h.feed(CallReinvite("edge1", "call-1", T0 + 9, hold=True, by="caller"), 1)
    assert not h.core.open_sessions()  # stopped: no new session for any later event


def test_operator_start_records_a_call_the_policy_did_not() -> None:
    g = group()
    h = Harness(g)
    h.core = CallCore(h.call, node="rtp1", group=None, selector=h.selector,
                      edge=EdgeSip("edge1", "127.0.0.1", {"udp": 5060}), now=T0)
    assert kinds(h.start()) == []
    acts = h.feed(Operator("start", 7, "ops", group="g"), 1)
    acts = h.subscribed(acts)
    acts = h.answer(h.last(SendInvite, acts))
    assert h.last(Reply, acts).ok
    busy = h.last(Reply, h.feed(Operator("start", 8, "ops", group="nope")))
    assert busy.result["status"] == 409  # already recording to another group
    h.feed(CallEnded("edge1", "call-1", T0 + 5), 3)
    assert h.losses() == []  # the policy never wanted it


def test_subscribe_refused_because_the_call_is_gone() -> None:
    h = Harness()
    sub = h.last(Subscribe, h.start())
    h.feed(NgFailed(sub.session_id, "subscribe", "Unknown call-id", gone=True), 0.01)
    h.feed(CallEnded("edge1", "call-1", T0 + 2), 2)
    assert h.losses() == [("call_gone", 2.0)]


# ------------------------------------------------------------------------------ restart
def test_adopt_after_restart() -> None:
    h = Harness()
    h.establish()
    est = h.session()
    h2 = Harness(selector=SrsSelector({"g": group()}))
    acts = h2.core.adopt([est], {est.sub_to_tag}, T0 + 60)
    assert kinds([a for a in acts if not isinstance(a, Persist)]) == []
    assert h2.core.open_sessions() == [est]
    # an INVITE the old controller left pending: CANCEL, and set up again
    h3 = Harness()
    invite = h3.last(SendInvite, h3.subscribed(h3.start()))
    inviting = session_from_doc(session_doc(h3.session()), [])  # as the store gives it back
    h4 = Harness(selector=SrsSelector({"g": group()}))
    acts = [a for a in h4.core.adopt([inviting], set(), T0 + 60) if not isinstance(a, Persist)]
    assert kinds(acts)[:3] == ["CancelInvite", "QueryMedia", "Unsubscribe"]
    assert kinds(acts)[-1] == "Subscribe"
    # ... and its 2xx, which came meanwhile (a pair's new leader replays it): a BYE in the
    # dialog that INVITE began, our From tag included
    bye = h4.last(SendRequest, h4.answer(invite))
    assert (bye.method, bye.rs_call_id) == ("BYE", invite.rs_call_id)
    assert f";tag={from_tag(invite)}\r\n" in bye.headers


# ------------------------------------------------------------------------------ selection
@pytest.mark.parametrize(("strategy", "busy", "expect"), [
    ("hunt", {}, [SRS[0]] * 6),
    ("round-robin", {}, [SRS[0], SRS[1], SRS[2], SRS[0], SRS[1], SRS[2]]),
    ("least-busy", {SRS[0]: 2, SRS[1]: 1}, [SRS[2], SRS[1], SRS[2], SRS[0], SRS[1], SRS[2]]),
])
def test_strategies(strategy: str, busy: dict[str, int], expect: list[str]) -> None:
    g = group(3, strategy=strategy)
    sel = SrsSelector({"g": g})
    sel.busy.update(busy)
    got = []
    for _ in range(6):
        srv = sel.pick(g, ())
        assert srv is not None
        got.append(srv.uri)
        sel.opened(srv.uri)
    assert got == expect


@pytest.mark.parametrize("strategy", ["round-robin", "least-busy"])
def test_strategies_spread_100_calls_within_10_percent(strategy: str) -> None:
    g = group(3, strategy=strategy, simultaneous=1)
    sel = SrsSelector({"g": g})
    cores = []
    for i in range(100):
        h = Harness(g, selector=sel, call_id=f"c{i}")
        h.establish()
        cores.append(h)
        if strategy == "least-busy" and i % 3 == 2:  # some calls end: busy counts move
            h.feed(CallEnded("edge1", h.call.call_id, T0 + 5), 5)
            h.answer(h.last(SendRequest))
    per = Counter(h.session().srs_uri for h in cores)
    assert all(abs(n - 100 / 3) <= 10 for n in per.values()), per


def test_down_srs_goes_last_whatever_the_strategy() -> None:
    g = group(3)
    sel = SrsSelector({"g": g})
    sel.state(SRS[0]).up = False
    assert sel.pick(g, ()).uri == SRS[1]  # type: ignore[union-attr]
    sel.state(SRS[1]).up = sel.state(SRS[2]).up = False
    assert sel.pick(g, ()).uri == SRS[0]  # all down: still tried, in order
    assert sel.pick(g, SRS) is None


def test_prober_marks_down_after_misses_and_up_on_an_answer() -> None:
    p = SrsProber([group(1, probe_interval=1.0, probe_failures=2)])
    (uri, transport, cid), = p.to_send(0.0)
    assert uri == SRS[0] and transport == "udp" and p.owns(cid)
    assert p.reply(cid, 200, 0.01) == [(SRS[0], True, 0.01)]  # the first answer is news
    changes = []
    for t in (1.0, 2.0, 3.0):  # the SRS dies: nothing answers any more
        changes += p.due(t)
        p.to_send(t)
    assert changes == [(SRS[0], False, 0.01)]  # down after 2 misses, noticed at t=3.0
    (_, _, cid), = p.to_send(4.0)
    assert p.reply(cid, 503, 4.1) == []  # 503: still not taking sessions
    (_, _, cid), = p.to_send(5.0)
    assert p.reply(cid, 200, 5.1) == [(SRS[0], True, 5.1)]
    assert SrsProber([group(1, probe_interval=0)]).to_send(0.0) == []


def test_late_set_up_records_the_rest_of_the_call_and_counts_the_late_part() -> None:
    h = Harness()
    acts = h.start(lag=3.0)  # the controller stalled: no max_setup_lag, so set up late
    h.now = T0 + 3.2
    h.answer(h.last(SendInvite, h.subscribed(acts)))
    assert h.session().state is State.ESTABLISHED
    assert h.losses() == [("setup_late", pytest.approx(3.22, abs=0.01))]


def test_a_call_that_ended_while_the_controller_was_down_gets_its_final_update_and_bye() -> None:
    h = Harness()
    h.establish()
    est = h.session()
    h2 = Harness(selector=SrsSelector({"g": group()}))
    h2.core.sessions[est.session_id] = est
    h2.core.had_subscription = True
    acts = [a for a in h2.core.end_orphaned(T0 + 60) if not isinstance(a, Persist)]
    assert kinds(acts) == ["DeleteCall", "SendRequest"]  # nothing left to query
    final = h2.last(SendRequest, acts)
    assert final.method == "INVITE" and b"<stop-time>" in final.body
    assert "Unsubscribe" not in kinds(acts)  # the edge deleted the call: never unsubscribe


@pytest.mark.parametrize("reply", [200, None])
def test_call_ending_while_an_update_is_pending_still_closes_in_order(reply: int | None) -> None:
    h = Harness()
    h.establish()
    upd = h.last(SendRequest, h.feed(
        CallReinvite("edge1", "call-1", T0 + 1, hold=True, by="caller"), 1))
    acts = h.feed(CallEnded("edge1", "call-1", T0 + 1.2, by="caller"), 0.2)
    assert not [a for a in acts if isinstance(a, SendRequest)]  # one transaction at a time
    acts = h.answer(upd, dt=0.1) if reply else h.feed(Tick(), 3.0)
    final = h.last(SendRequest, acts)
    assert final.method == "INVITE" and b"<stop-time>" in final.body
    bye = h.last(SendRequest, h.answer(final))
    assert bye.method == "BYE"
    h.answer(bye)
    assert h.session().state is State.CLOSED and h.core.done


def test_evidence_queries_carry_the_time_the_forks_were_set_up() -> None:
    """A node that no longer knows the call at its end (restarted without Redis) makes the
    driver count ``media_state_lost`` from the set-up: the query carries that time."""
    h = Harness()
    h.establish()
    est = h.session().established_at
    acts = h.feed(CallEnded("edge1", "call-1", T0 + 30, by="callee"), 30)
    q = h.last(QueryMedia, acts)
    assert q.why == "call end" and q.since == est and est is not None
    # a session never set up has nothing to lose: no time
    h2 = Harness()
    h2.start()
    acts = h2.feed(CallEnded("edge1", "call-1", T0 + 1, by="callee"), 1)
    assert all(a.since is None for a in acts if isinstance(a, QueryMedia))
