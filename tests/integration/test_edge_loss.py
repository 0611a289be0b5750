"""Drill: SIGKILL of one of two Kamailio edges under load, with the real daemons (the rig
of test_node_loss.py with two edges on the same rtpengine set).

The killed edge's calls can no longer get anything through it: not their end, not a BYE
to the SRS. After ``controller.edge_lost_after`` seconds without it (a site setting,
default 10 s, 6 s in this rig; the controller's evapi reconnects failing), the controller counts their recordings as cut short (``edge_lost``), stops their
forks on rtpengine (unsubscribe, then the call's delete) and ends their recording sessions
through the edge that is left; the other edge's calls are not touched. When the edge comes
back, the reconnect's reconcile runs and the edge is no longer counted lost (README "After
an edge loss"). Reported and asserted: sessions duplicated 0, orphaned 0 (no SRS session
open, no rtpengine call of the lost edge after its delete-delay), the other edge's calls
recorded without a gap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from orchestrator.errors import SiprecctlError
from orchestrator.lab.ua import LabCall
from tests.conftest import wait_for

from .test_node_loss import (
    DELETE_DELAY,
    GAP_BOUND,
    Rig,
    knows,
    place,
    recorded,
    running_rig,
    srs_for,
    srs_media,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from running_rig(tmp_path, edges=2)


def _closed(rig: Rig, call_id: str) -> bool:
    ss = rig.sessions(call_id)
    return bool(ss) and all(s["state"] in ("closed", "failed") for s in ss)


def _hang_up(c: LabCall) -> None:
    try:
        c.bye()
    except (SiprecctlError, OSError, TimeoutError) as exc:  # its proxy is gone
        print(f"  BYE of {c.call_id}: {exc}")


def test_edge_killed_its_calls_closed_the_other_edge_untouched(rig: Rig) -> None:
    lost = [place(rig, "rtp1", "edge1"), place(rig, "rtp2", "edge1")]
    kept = [place(rig, "rtp1", "edge2"), place(rig, "rtp2", "edge2")]
    calls = lost + kept
    lost_after = rig.site.controller.edge_lost_after  # the rig's site: 6 s
    ngs = {n: rig.ng(n) for n in ("rtp1", "rtp2")}
    try:
        for c in calls:
            wait_for(partial(recorded, rig, c.call_id), 10, f"{c.call_id} recorded")
        time.sleep(1.0)
        killed = time.time()
        rig.edges["edge1"].stop(kill=True)  # SIGKILL of the process group
        wait_for(lambda: rig.api("/health")["edges"]["edge1"] is False, 5,
                 "the controller to see edge1's evapi link drop")
        wait_for(lambda: rig.api("/health")["edges_lost"] == ["edge1"],
                 lost_after + 5, "edge1 counted lost")
        declared = time.time() - killed
        for c in lost:
            wait_for(partial(_closed, rig, c.call_id), 10, f"{c.call_id}'s recording closed")
        rs = {c.call_id: {a["rs_call_id"] for s in rig.sessions(c.call_id)
                          for a in s["attempts"]} for c in calls}
        wait_for(lambda: all(x.ended for c in lost for x in srs_for(rig, rs[c.call_id])), 10,
                 "the lost edge's SRS sessions ended")
        for c in lost:
            for x in srs_for(rig, rs[c.call_id]):
                assert x.bye_from == "src"  # our BYE, sent through edge2
        # their calls are gone from rtpengine after the delete-delay (both nodes: mirrors)
        wait_for(lambda: not [c for c in lost for ng in ngs.values() if knows(ng, c.call_id)],
                 DELETE_DELAY + 5, "the lost edge's calls gone from rtpengine")
        # the other edge's calls are still recorded, on the same sessions
        for c in kept:
            assert [s["state"] for s in rig.sessions(c.call_id)] == ["established"]
        h = rig.api("/health")
        assert h["edges"]["edge2"] is True
        assert rig.metrics()['siprecctl_edge_lost{edge="edge1"}'] == 1
        time.sleep(1.0)
        for c in kept:
            c.bye()
        wait_for(lambda: all(x.ended for c in kept for x in srs_for(rig, rs[c.call_id])), 10,
                 "the kept calls' SRS sessions ended")
        for c in lost:
            _hang_up(c)
        losses = rig.losses()
        duplicated = sum(max(0, len(srs_for(rig, ids)) - 1) for ids in rs.values())
        open_at_srs = [x.call_id for x in rig.srs.sessions() if not x.ended]
        print(f"\nedge1 SIGKILLed with {len(calls)} recorded calls ({len(lost)} through it): "
              f"counted lost after {declared:.1f} s (bound {lost_after:g} s + 1 s "
              f"loop); sessions duplicated {duplicated}, SRS sessions left open "
              f"{len(open_at_srs)}")
        for c in calls:
            n, gap = srs_media(rig, rs[c.call_id])
            counted = [(x["reason"], x["seconds"]) for x in losses if x["call_id"] == c.call_id]
            print(f"  {c.call_id} via {'edge1' if c in lost else 'edge2'}: SRS sessions {n}, "
                  f"longest media silence at the SRS {gap:.2f} s, losses {counted}")
            assert n == 1
            if c in kept:
                assert counted == [] and gap <= GAP_BOUND
            else:
                assert [r for r, _ in counted] == ["edge_lost"]
        assert duplicated == 0 and not open_at_srs
        assert lost_after <= declared <= lost_after + 3.0

        # the edge comes back (same config): reconnected, reconciled, no longer lost
        rig.edges["edge1"].start()
        rig.edges["edge1"].wait_ready(15)
        wait_for(lambda: rig.api("/health")["edges"]["edge1"] is True
                 and rig.api("/health")["edges_lost"] == [], 15, "edge1 back")
        again = place(rig, "rtp2", "edge1")
        try:
            wait_for(partial(recorded, rig, again.call_id), 10, "a new call through edge1")
        finally:
            again.bye()
            again.close()
    finally:
        for ng in ngs.values():
            ng.close()
        for c in calls:
            c.close()
