"""The per-call core after the loss of an rtpengine node or of an edge (no daemon): the
inputs :class:`NodeLost`, :class:`Relocated` and :class:`EdgeLost` in, the exact actions out
(README "After a node loss", "After an edge loss")."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.controller.core import CallCore
from orchestrator.controller.messages import (
    CancelInvite,
    DeleteCall,
    EdgeLost,
    Loss,
    NgFailed,
    NodeLost,
    Observe,
    Operator,
    QueryMedia,
    Relocate,
    Relocated,
    SendInvite,
    SendRequest,
    Subscribe,
    SubscribeAnswer,
    Subscribed,
    Unsubscribe,
)
from orchestrator.controller.session import TRANSITIONS, Ev, RecordingSession, State
from orchestrator.errors import IllegalTransition
from orchestrator.kamailio.events import CallEnded

from .test_controller_core import SUB_SDP, Harness, srs_sdp

LOST_AT = 0.5  # seconds after the set-up: the node's last pong


def ng(acts: list[Any]) -> list[tuple[str, str]]:
    """The NG actions as (kind, node)."""
    return [(type(a).__name__, a.node) for a in acts
            if isinstance(a, Subscribe | SubscribeAnswer | Unsubscribe | DeleteCall
                          | QueryMedia)]


def lose(h: Harness, dt: float = 2.0) -> list[Any]:
    since = h.now + LOST_AT
    return h.feed(NodeLost("rtp1", since), dt)


@pytest.mark.parametrize(("state", "event", "after"), [
    (State.ESTABLISHED, Ev.NODE_LOST, State.RELOCATING),
    (State.PAUSED, Ev.NODE_LOST, State.PAUSED),
    (State.RELOCATING, Ev.REFORKED, State.ESTABLISHED),
    (State.RELOCATING, Ev.ERROR, State.TERMINATING),
    (State.RELOCATING, Ev.CALL_ENDED, State.TERMINATING),
    (State.RELOCATING, Ev.STOP, State.TERMINATING),
    (State.RELOCATING, Ev.SRS_LOST, State.FAILED),
    (State.RELOCATING, Ev.SRS_BYE, State.CLOSED),
    (State.RELOCATING, Ev.UPDATE, State.RELOCATING),
    (State.RELOCATING, Ev.PAUSE, State.PAUSED),
])
def test_relocating_rows(state: State, event: Ev, after: State) -> None:
    assert TRANSITIONS[state][event] is after
    s = RecordingSession("s", "c", "e", "n", "g", 0, "t", state=state)
    assert s.handle(event, "x", 1.0) is after


@pytest.mark.parametrize(("state", "event"), [
    (State.RELOCATING, Ev.RESUME), (State.SUBSCRIBING, Ev.NODE_LOST),
    (State.TERMINATING, Ev.NODE_LOST), (State.ESTABLISHED, Ev.REFORKED)])
def test_illegal_moves(state: State, event: Ev) -> None:
    s = RecordingSession("s", "c", "e", "n", "g", 0, "t", state=state)
    with pytest.raises(IllegalTransition, match=event.value):
        s.handle(event, "x", 1.0)


def test_node_lost_refork_on_the_carrier_by_reinvite() -> None:
    h = Harness()
    inv = h.establish()
    t_setup = h.now
    acts = lose(h)
    assert [type(a).__name__ for a in acts] == ["Observe", "Relocate"]
    assert acts[0] == Observe("gap_opened", 1, ("node_lost",))
    assert acts[1] == Relocate("call-1", "rtp1", "ft", "tt")
    assert h.session().state is State.RELOCATING
    assert h.feed(NodeLost("rtp1", h.now)) == []  # told twice: nothing more
    acts = h.feed(Relocated("rtp2", ("rtp2",)), 0.3)
    assert ng(acts) == [("Subscribe", "rtp2")]
    sub = h.last(Subscribe, acts)
    assert sub.to_tag == h.session().sub_to_tag  # the same subscription tag, new node
    acts = h.feed(Subscribed(sub.session_id, SUB_SDP.replace(b"30000", b"31000"),
                              {"0": "ft", "1": "tt"}), 0.01)
    reinv = h.last(SendRequest, acts)
    assert reinv.method == "INVITE" and reinv.rs_call_id == inv.rs_call_id  # same dialog
    assert b"a=sendonly" in reinv.body and b"31000" in reinv.body
    acts = h.answer(reinv, body=srs_sdp(41000))
    assert ng(acts) == [("SubscribeAnswer", "rtp2")]
    assert h.last(SubscribeAnswer, acts).sdp == srs_sdp(41000)
    s = h.session()
    assert s.state is State.ESTABLISHED and s.node == "rtp2" and h.core.record.node == "rtp2"
    (reason, seconds), = h.losses()
    assert reason == "node_lost"
    assert seconds == pytest.approx(h.now - (t_setup + LOST_AT), abs=1e-3)
    # the call ends: Kamailio's delete went to rtp1 (gone); the carrier is cleaned up,
    # unsubscribe first, then delete by Call-ID at once, never a command to the lost node
    acts = h.feed(CallEnded("edge1", "call-1", h.now + 5, by="caller"), 5)
    assert ng(acts) == [("QueryMedia", "rtp2"), ("Unsubscribe", "rtp2"), ("DeleteCall", "rtp2")]
    assert h.last(DeleteCall, acts).delete_delay == 0
    bye_or_final = h.last(SendRequest, acts)
    assert bye_or_final.edge == "edge1"


def test_no_carrier_media_lost_to_the_end_of_the_call() -> None:
    h = Harness()
    h.establish()
    since = h.now + LOST_AT
    lose(h)
    acts = h.feed(Relocated(None, ("rtp2",), "no counters grew"), 0.3)
    assert ng(acts) == []  # nothing to fork: no subscribe anywhere
    final = h.last(SendRequest, acts)  # the recording session ends: final update, BYE
    assert final.method == "INVITE"
    assert h.session().state is State.TERMINATING
    assert h.core.slots[0].exhausted
    end = h.now + 10
    acts = h.feed(CallEnded("edge1", "call-1", end), 10)
    assert ng(acts) == [("DeleteCall", "rtp2")]  # the mirror's copy, delay 0
    assert h.losses() == [("node_lost", pytest.approx(end - since, abs=1e-3))]


def test_refork_subscribe_refused_counts_the_rest_of_the_call() -> None:
    h = Harness()
    h.establish()
    lose(h)
    acts = h.feed(Relocated("rtp2", ("rtp2",)), 0.3)
    sub = h.last(Subscribe, acts)
    acts = h.feed(NgFailed(sub.session_id, "subscribe", "No call participant specified"))
    assert h.session().state is State.TERMINATING
    assert not [a for a in acts if isinstance(a, Subscribe)]  # not retried on a new session
    h.feed(CallEnded("edge1", "call-1", h.now + 3), 3)
    assert [r for r, _ in h.losses()] == ["node_lost"]


def test_srs_refuses_the_reinvite_a_new_session_on_the_carrier() -> None:
    h = Harness()
    h.establish()
    lose(h)
    sub = h.last(Subscribe, h.feed(Relocated("rtp2", ("rtp2",)), 0.3))
    from orchestrator.controller.messages import Subscribed
    reinv = h.last(SendRequest, h.feed(Subscribed(sub.session_id, SUB_SDP, {"0": "ft",
                                                                            "1": "tt"})))
    acts = h.answer(reinv, code=488)
    assert h.session().state is State.TERMINATING  # closed first (final update, BYE) ...
    acts = h.answer(h.last(SendRequest, acts))
    acts = h.answer(h.last(SendRequest, acts), method="BYE")
    new = [a for a in acts if isinstance(a, Subscribe)]  # ... then a new session
    assert len(new) == 1 and new[0].node == "rtp2" and new[0].session_id != sub.session_id
    inv = h.last(SendInvite, h.subscribed(acts))
    assert inv.ruri.startswith("sip:srs@127.0.0.1:5092")  # the other SRS of the group
    h.answer(inv)
    assert [r for r, _ in h.losses()] == ["node_lost"]  # the gap closed by the new session


def test_setup_in_flight_is_redone_on_the_carrier() -> None:
    h = Harness()
    acts = h.subscribed(h.start())
    inv = h.last(SendInvite, acts)
    acts = lose(h)
    assert CancelInvite("edge1", inv.rs_call_id, inv.cseq) in acts
    assert [type(a).__name__ for a in acts][-1] == "Relocate"
    assert not [a for a in acts if isinstance(a, Subscribe)]  # held until relocated
    acts = h.feed(Relocated("rtp2", ("rtp2",)))
    assert ng(acts) == [("Subscribe", "rtp2")]


def test_other_nodes_loss_and_unrecorded_calls() -> None:
    h = Harness()
    h.establish()
    assert h.feed(NodeLost("rtp9", h.now)) == []
    # a call the policy does not record: relocated only to be deleted on the carrier
    plain = CallCore(h.call, node="rtp1", group=None, selector=h.selector,
                     edge=h.core.edge, now=h.now)
    plain.start(h.now)
    assert [type(a).__name__ for a in plain.handle(NodeLost("rtp1", h.now), h.now)] == \
        ["Relocate"]
    plain.handle(Relocated("rtp2", ("rtp2",)), h.now)
    acts = plain.handle(CallEnded("edge1", "call-1", h.now + 1), h.now + 1)
    assert [(a.node, a.delete_delay) for a in acts if isinstance(a, DeleteCall)] == [("rtp2", 0)]


def test_call_ended_while_relocating() -> None:
    h = Harness()
    h.establish()
    lose(h)
    acts = h.feed(CallEnded("edge1", "call-1", h.now + 1), 1)
    assert not [a for a in acts if isinstance(a, DeleteCall | Unsubscribe)]  # not on rtp1
    acts = h.feed(Relocated("rtp2", ("rtp2",)), 0.2)
    assert ng(acts) == [("DeleteCall", "rtp2")]


def test_edge_lost_unsubscribe_then_close_through_the_other_edge() -> None:
    h = Harness(record_local=True)
    inv = h.establish()
    other = Harness(call_id="call-2")
    other.establish()
    acts = h.feed(EdgeLost("edge1", h.now, "edge2"), 10)
    names = [type(a).__name__ for a in acts]
    # the fork stops first (unsubscribe before the call's delete: rtpengine frees it)
    assert names.index("Unsubscribe") < names.index("DeleteCall")
    assert ng(acts)[-1] == ("DeleteCall", "rtp1")
    assert h.last(DeleteCall, acts).delete_delay is None
    final = h.last(SendRequest, acts)
    assert final.edge == "edge2" and final.rs_call_id == inv.rs_call_id
    assert [r for r, _ in h.losses()] == ["edge_lost"]
    assert h.core.record.end_reason and "edge lost" in h.core.record.end_reason
    acts = h.answer(final)
    bye = h.last(SendRequest, acts)
    assert bye.method == "BYE" and bye.edge == "edge2"
    h.answer(bye, method="BYE")
    assert h.session().state is State.CLOSED
    # another edge's loss changes nothing for a call of edge1 / the other call
    assert other.feed(EdgeLost("edge9", other.now, None)) == []
    assert other.session().state is State.ESTABLISHED


def test_edge_lost_with_no_edge_left_counts_bye_failed_too() -> None:
    h = Harness()
    h.establish()
    h.feed(EdgeLost("edge1", h.now, None), 10)
    assert h.core.via is None and not h.core.live
    assert [type(a).__name__ for a in h.log if isinstance(a, Loss)] == ["Loss"]


def test_pause_in_flight_when_the_node_dies() -> None:
    h = Harness()
    h.establish()
    acts = h.feed(Operator("pause", 1))
    pause = h.last(SendRequest, acts)
    lose(h, dt=0.5)
    acts = h.answer(pause)  # the SRS took the pause: paused, nothing to re-fork
    assert h.session().state is State.PAUSED
    acts = h.feed(Relocated("rtp2", ("rtp2",)))
    assert ng(acts) == []
    acts = h.feed(Operator("resume", 2))  # the resume subscribes on the carrier
    assert ng(acts) == [("Subscribe", "rtp2")]


def test_false_alarm_the_lost_node_still_carries_the_call() -> None:
    """Two pings missed by a stalled controller: the driver finds the call's counters
    growing on the node itself; the fork is made again there and the end is as usual."""
    h = Harness()
    inv = h.establish()
    lose(h, dt=0.5)
    acts = h.feed(Relocated("rtp1", ()), 0.3)
    assert ng(acts) == [("Subscribe", "rtp1")]
    reinv = h.last(SendRequest, h.subscribed(acts))
    assert reinv.rs_call_id == inv.rs_call_id
    h.answer(reinv)
    assert h.session().state is State.ESTABLISHED and h.core.lost_node is None
    acts = h.feed(CallEnded("edge1", "call-1", h.now + 1), 1)
    assert ng(acts) == [("QueryMedia", "rtp1"), ("DeleteCall", "rtp1")]
    assert h.last(DeleteCall, acts).delete_delay is None  # Kamailio's delete reaches it
