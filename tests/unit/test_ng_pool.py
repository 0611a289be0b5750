"""NodePool: Kamailio-compatible hashing, stickiness, failed nodes skipped for new calls."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import NgError, NgTimeout, NgTransportError
from orchestrator.ng import MockTransport, NgClient
from orchestrator.ng.pool import Node, NodePool, NodeState, legacy_hash
from orchestrator.site import load


def node(name: str, set_: int = 0, weight: int = 1, handler: Any = None) -> Node:
    client = NgClient(transport=MockTransport(handler or (lambda r: {"result": "pong"})),
                      name=name)
    return Node(name, set_, weight, client, NodeState(name, set_, weight, "mock"))


def test_legacy_hash_matches_kamailio_byte_sum() -> None:
    assert legacy_hash("a") == 97
    assert legacy_hash("ab") == (97 + 98) & 0xFF
    # Kamailio sums *signed* chars; modulo 256 that equals the unsigned sum
    assert legacy_hash(b"\xff\x01") == 0
    assert legacy_hash("é") == (0xC3 + 0xA9) & 0xFF


def test_selection_by_weight_walks_nodes_in_order() -> None:
    pool = NodePool([node("a", weight=1), node("b", weight=2)])
    # cut = hash % 3: 0 → a, 1..2 → b
    picks = {}
    for cid in ("x", "y", "z", "w"):
        picks[cid] = pool.select(cid).name
        cut = legacy_hash(cid) % 3
        assert picks[cid] == ("a" if cut < 1 else "b")


def test_same_call_same_node_and_failed_nodes_skipped_for_new_calls() -> None:
    pool = NodePool([node("a"), node("b")], recheck_after=60)
    # find call-ids that hash to a
    on_a = [c for c in (f"call-{i}" for i in range(50)) if pool.select(c).name == "a"]
    assert len(on_a) >= 2
    sticky, new = on_a[0], on_a[1]
    pool.forget(new)
    pool.mark_failed("a", "timeout")
    assert pool.select(sticky).name == "a"  # existing call stays (Kamailio hash table)
    assert pool.select(new).name == "b"  # new call avoids the failed node
    assert [s.ok for s in pool.states()] == [False, None]
    assert pool.states()[0].error == "timeout"


def test_recheck_after_expiry_and_disabled() -> None:
    pool = NodePool([node("a")], recheck_after=0)
    pool.mark_failed("a", "x")
    assert pool.select("c").name == "a"  # recheck time passed
    pool.set_enabled("a", False)
    pool.forget("c")
    with pytest.raises(NgTransportError, match="no usable rtpengine node"):
        pool.select("c")


def test_sets_are_separate() -> None:
    pool = NodePool([node("a", 0), node("b", 1)])
    assert pool.select("c", 1).name == "b"
    with pytest.raises(ValueError, match="set 7"):
        pool.select("d", 7)


def test_call_marks_failed_on_transport_error() -> None:
    def dead(r: dict[str, Any]) -> dict[str, Any]:
        raise NgTimeout("no reply")

    pool = NodePool([node("a", handler=dead), node("b")])
    cid = next(c for c in (f"k{i}" for i in range(50)) if pool.select(c).name == "a")
    with pytest.raises(NgTimeout):
        pool.call(cid, "query")
    assert pool.node("a").state.ok is False


def test_check_pings_every_node() -> None:
    def dead(r: dict[str, Any]) -> dict[str, Any]:
        raise NgTimeout("no reply")

    pool = NodePool([node("a"), node("b", handler=dead)])
    states = pool.check(timeout=0.2)
    assert [(s.name, s.ok) for s in states] == [("a", True), ("b", False)]
    assert states[0].rtt_ms is not None and states[1].error


def test_locate_asks_nodes() -> None:
    def has(r: dict[str, Any]) -> dict[str, Any]:
        return {"result": "ok", "tags": {}}

    def hasnt(r: dict[str, Any]) -> dict[str, Any]:
        return {"result": "error", "error-reason": "Unknown call-id"}

    pool = NodePool([node("a", handler=hasnt), node("b", handler=has)])
    found = pool.locate("c1")
    assert found is not None and found.name == "b"
    assert pool.select("c1").name == "b"  # remembered


def test_from_site_builds_clients_per_transport() -> None:
    site = load(None)
    with NodePool.from_site(site) as pool:
        names = [n.name for n in pool]
        assert names == [n.name for n in site.media.nodes]
        assert pool.node(names[0]).state.address.startswith("udp:")


def _unknown(r: dict[str, Any]) -> dict[str, Any]:
    return {"result": "error", "error-reason": "Unknown call-id"}


def _known(r: dict[str, Any]) -> dict[str, Any]:
    return {"result": "ok", "tags": {}}


def _dead(r: dict[str, Any]) -> dict[str, Any]:
    raise NgTimeout("no reply")


def test_node_of_finds_the_call_past_a_dead_node() -> None:
    pool = NodePool([node("a", handler=_dead), node("b", handler=_unknown),
                     node("c", handler=_known)])
    assert pool.node_of("c1", timeout=0.1).name == "c"
    assert pool.states()[0].ok is False  # the dead node is marked failed on the way


def test_node_of_says_why_it_found_nothing() -> None:
    with pytest.raises(NgError, match="Unknown call-id 'c1' on every node \\(a, b\\)") as ei:
        NodePool([node("a", handler=_unknown), node("b", handler=_unknown)]).node_of("c1")
    assert ei.value.exit_code == 1
    # a node that did not answer may hold the call: unreachable (exit 3), not "unknown"
    with pytest.raises(NgTransportError, match="no answer from a \\(no reply\\)") as et:
        NodePool([node("a", handler=_dead), node("b", handler=_unknown)]).node_of("c1")
    assert et.value.exit_code == 3


def test_node_of_a_single_node_does_not_ask() -> None:
    asked: list[str] = []

    def handler(r: dict[str, Any]) -> dict[str, Any]:
        asked.append(r["command"])
        return _unknown(r)

    assert NodePool([node("only", handler=handler)]).node_of("c1").name == "only"
    assert asked == []
