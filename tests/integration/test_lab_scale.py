"""The scale lab (examples/lab-scale.yaml, its own namespace prefix): 12 hosts in network
namespaces — 2 Kamailio edges, 3 rtpengine nodes (two replicating through Redis), Debian's
redis-server from the rendered redis.conf, the controller pair, 2 reference SRSs — all
started from the rendered configs; calls through both edges, the pair in ``lab status``,
and the pair's drills (SIGKILL of the leader, Redis cut off from the leader) with their
counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.lab.drills import DrillResult, run_drill
from orchestrator.lab.hosts import Lab
from orchestrator.lab.load import place_calls
from orchestrator.lab.netns import existing
from orchestrator.lab.report import run_report
from orchestrator.lab.scale import ScaleLab
from orchestrator.site import load_text
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleLab]:
    labdir = tmp_path_factory.mktemp("scale") / "lab"
    text = (ROOT / "examples" / "lab-scale.yaml").read_text()
    site = load_text(text.replace("bridge: sscale0, netns_prefix: sscale",
                                  "bridge: tscale0, netns_prefix: tscale"))
    lab = Lab.plan(site, labdir, "netns")
    assert isinstance(lab, ScaleLab)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def _verdict(res: DrillResult) -> str:
    return "\n".join([*res.happened, *(f"{'ok ' if ok else 'FAIL'} {c}: {d}"
                                       for c, ok, d in res.checks), str(res.counts)])


def _healthy(lab: Lab) -> None:
    bad = [(p.name, p.detail) for p in lab.status() if not p.healthy]
    assert not bad, bad


def test_every_host_and_daemon_up(lab: ScaleLab) -> None:
    hosts = {h["host"]: h for h in lab.hosts()}
    assert list(hosts) == ["caller", "callee", "edge-a", "edge-b", "rtp-a1", "rtp-a2",
                           "rtp-b1", "redis", "ctl-1", "ctl-2", "srs1", "srs2"]
    assert all(h["present"] and h["link_up"] for h in hosts.values())
    assert hosts["redis"]["address"] == "198.18.3.9"
    kinds = {p.name: p.kind for p in lab.status()}
    assert sorted(k for k in kinds.values()) == sorted(
        ["srs", "srs", "callee", "redis", "rtpengine", "rtpengine", "rtpengine",
         "kamailio", "kamailio", "controller", "controller"])
    _healthy(lab)
    # redis-server from the rendered config: on the redis host's address, password only
    with lab.inside("caller"), pytest.raises(redis.AuthenticationError):
        redis.Redis(host=lab.address("redis"), port=6379, socket_timeout=2).ping()


def test_the_pair_one_leads_with_the_lease_epoch(lab: ScaleLab) -> None:
    pair = lab.pair()
    leading = [p for p in pair if p["acting"]]
    assert len(pair) == 2 and len(leading) == 1
    lease = lab.lease()
    assert lease["holder"] == leading[0]["instance"]
    assert lease["epoch"] == leading[0]["epoch"] >= 1
    assert all(p["edges"] == {"edge-a": True, "edge-b": True} for p in pair)
    nodes = {n["node"]: n for n in lab.nodes()}
    assert list(nodes) == ["rtp-a1", "rtp-a2", "rtp-b1"]
    assert [(n["set"], n["redis_db"], n["peers"]) for n in nodes.values()] == [
        (0, 1, ["rtp-a2"]), (0, 2, ["rtp-a1"]), (1, 3, [])]
    assert all(n["running"] and n["keys_in_db"] is not None for n in nodes.values())


def test_recorded_calls_through_both_edges(lab: ScaleLab) -> None:
    run = place_calls(lab, calls=12, rate=4.0, duration=2.0, rtp=True, opt_out=2,
                      label="both edges")
    with lab.store() as store:
        rep = run_report(lab.dir, run, store)
    assert rep["ok"], rep["problems"]
    assert rep["calls"]["answered"] == 12 and rep["calls"]["failed"] == 0
    assert rep["policy"]["siprec"] == rep["siprec"]["calls_established"] == 10
    assert rep["siprec"]["srs_complete"] == rep["siprec"]["metadata_valid"] == 10
    # each edge carried calls: edge-a's on the nodes of set 0, edge-b's on rtp-b1
    ng = {f"udp:{n.ng.address}:{n.ng.port}": n.name for n in lab.site.media.nodes}
    nodes = [ng.get(c["rtpengine"]) for c in run["calls"].values()]
    assert nodes.count("rtp-b1") == 6, nodes
    assert {n for n in nodes if n != "rtp-b1"} <= {"rtp-a1", "rtp-a2"}
    assert set(run["sipp"]) == {"rec-edge-a", "rec-edge-b", "optout-edge-a",
                                "optout-edge-b"}


def test_drill_leader_kill(lab: ScaleLab) -> None:
    res = run_drill(lab, "leader-kill")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["calls"] == c["recorded"] == 30 and c["failed"] == 0
    assert c["takeover_s"] is not None and c["takeover_s"] <= 3.0
    assert c["sessions_duplicated"] == c["sessions_orphaned"] == 0
    assert c["unrecorded_beyond_gap"] == 0
    assert c["live_at_fault"] > 0 and c["new_after_fault"] > 0
    _healthy(lab)


def test_drill_leader_redis_partition(lab: ScaleLab) -> None:
    before = lab.leader()
    res = run_drill(lab, "leader-redis-partition")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["calls"] == c["recorded"] == 30 and c["failed"] == 0
    assert c["takeover_s"] is not None and c["takeover_s"] <= 3.0
    assert c["sessions_duplicated"] == c["sessions_orphaned"] == 0
    assert c["unrecorded_beyond_gap"] == 0
    assert c["live_at_fault"] > 0 and c["new_after_fault"] > 0
    assert lab.leader() not in (None, before)  # the healed one stayed standby
    _healthy(lab)


def test_down_removes_every_host(lab: ScaleLab) -> None:
    plan = lab.netplan
    assert plan is not None
    done = lab.down()
    assert any("stopped ctl-1" in d for d in done) and any("stopped redis" in d for d in done)
    assert existing(plan.namespaces()) == []
    assert lab.down() == []  # idempotent
    assert not Path(lab.dir / "lab.json").read_text().count('"state": "up"')
