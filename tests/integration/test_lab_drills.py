"""``siprecctl lab drill``: each fault drill on one lab of hosts in network namespaces (the
shipped lab site, its own namespace prefix), each asserting the drill's verdict and the
counts it reports. A drill leaves the lab healthy for the next one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.lab.drills import DrillResult, run_drill
from orchestrator.lab.hosts import Lab
from orchestrator.site import load_text
from orchestrator.site.loader import embedded_text

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    labdir = tmp_path_factory.mktemp("drills") / "lab"
    site = load_text(embedded_text("lab").replace("netns_prefix: slab", "netns_prefix: tdrl"))
    lab = Lab.plan(site, labdir, "netns")
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


def test_srs_kill(lab: Lab) -> None:
    res = run_drill(lab, "srs-kill")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["calls"] == c["recorded"] == 24 and c["failed"] == 0
    assert c["live_at_fault"] > 0 and c["new_after_fault"] > 0
    assert c["slowest_new_call_to_srs2_s"] <= 2.0
    assert 0 < c["gap_s_max"] <= 3.0
    assert all("gap_s" in r for r in res.per_call)
    _healthy(lab)


def test_srs_partition(lab: Lab) -> None:
    res = run_drill(lab, "srs-partition")
    assert res.passed, _verdict(res)
    assert res.counts["recorded"] == 24 and res.counts["slowest_new_call_to_srs2_s"] <= 2.0
    _healthy(lab)


def test_srs_blackhole(lab: Lab) -> None:
    res = run_drill(lab, "srs-blackhole")
    assert res.passed, _verdict(res)
    assert res.counts["recorded"] == 24 and res.counts["gap_s_max"] <= 3.0
    _healthy(lab)


def test_controller_kill(lab: Lab) -> None:
    res = run_drill(lab, "controller-kill")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["orphans"] == 0 and c["duplicates"] == 0
    assert c["calls_up_across_restart"] > 0 and c["recorded"] == c["to_record"] == 24
    _healthy(lab)


def test_rtpengine_restart(lab: Lab) -> None:
    res = run_drill(lab, "rtpengine-restart")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["affected_calls"] > 0
    assert len(c["media_lost_s_per_affected_call"]) == c["affected_calls"]
    _healthy(lab)


def test_kamailio_restart(lab: Lab) -> None:
    res = run_drill(lab, "kamailio-restart")
    assert res.passed, _verdict(res)
    c = res.counts
    assert c["evapi_reconnects"] >= 1 and c["duplicates"] == 0
    assert c["events_processed"]["answered"] == c["calls"]
    _healthy(lab)


def test_rtp_loss(lab: Lab) -> None:
    res = run_drill(lab, "rtp-loss")
    assert res.passed, _verdict(res)
    comp = res.counts["completeness"]
    assert set(comp) == {"caller", "callee"} and all(0.90 <= v <= 0.985 for v in comp.values())
    assert all(x > 0 for x in res.counts["media_lost_s_per_call"])
    _healthy(lab)


def test_unknown_drill_is_refused(lab: Lab, tmp_path: Path) -> None:
    from orchestrator.errors import LabError

    with pytest.raises(LabError, match="no drill 'nope'"):
        run_drill(lab, "nope")
