"""Drills of the scale lab's controller pair (:mod:`.scale`), under load through both edges.

=========================  ===========================================================
``leader-kill``            SIGKILL of the acting controller while calls are up and new
                           ones arrive; the killed one is started again (as standby)
``leader-redis-partition`` Redis cut off from the acting controller (a blackhole route to
                           the redis host in the leader's namespace: its packets to Redis
                           are dropped, nothing is stopped) for 8 s, then healed
=========================  ===========================================================

A watcher polls both instances' ``/health`` every 0.1 s for the whole run: takeover time
is from the fault to the first answer of the standby saying it acts. Counted as in
:mod:`.drills`: sessions duplicated (two SRS sessions of one call's slot at once), orphaned
(an SRS session left open after its call ended), and required calls unrecorded beyond the
documented gap (:data:`GAP_S`: a call answered while nobody leads is recorded once the new
leader has reconciled, so its SIPREC session may start up to the takeover bound plus the
reconcile after its answer; calls up at the fault keep their sessions — rtpengine keeps
forking while no controller acts).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..errors import LabError
from . import netns
from .drills import (
    DrillResult,
    _Clock,
    _flush_srs,
    _load,
    _orphans_and_duplicates,
    _sessions,
    _wait_srs_up,
)
from .hosts import srs_uris
from .scale import ScaleLab

__all__ = ["GAP_S", "SCALE_DRILLS", "TAKEOVER_S", "PairWatch"]

TAKEOVER_S = 3.0  # issue 17: the standby takes over within 3 s of the leader's loss
GAP_S = TAKEOVER_S + 2.0  # answer → SIPREC session, for a call answered while nobody leads
_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class PairWatch(threading.Thread):
    """Samples (time, {instance: acting, or None when it does not answer}) every
    ``interval`` s until :meth:`finish`."""

    def __init__(self, lab: ScaleLab, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="pair-watch")
        self.lab, self.interval = lab, interval
        self.samples: list[tuple[float, dict[str, bool | None]]] = []
        self._halt = threading.Event()

    def _one(self, name: str) -> bool | None:
        h = self.lab.instance_health(name, timeout=0.5)
        return None if h is None else bool((h.get("leader") or {}).get("acting"))

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.time()
            self.samples.append((t, {n: self._one(n) for n in self.lab.instances}))
            self._halt.wait(max(0.0, self.interval - (time.time() - t)))

    def finish(self) -> None:
        self._halt.set()
        self.join(5)

    def first(self, name: str, pred: Callable[[bool | None], bool],
              after: float) -> float | None:
        """Time of the first sample at or after ``after`` where ``pred(acting of name)``."""
        return next((t for t, s in self.samples if t >= after and pred(s.get(name))), None)

    def both_acting(self) -> list[float]:
        """Sample times at which two instances said they act."""
        return [t for t, s in self.samples if sum(1 for v in s.values() if v) > 1]


def _log_time(lab: ScaleLab, name: str, text: str, after: float) -> float | None:
    """Time of the first line of ``name``'s log containing ``text``, logged after
    ``after`` (the controller logs local time, to the millisecond)."""
    try:
        lines = open(lab.reg["processes"][name]["log"], errors="replace").read().splitlines()
    except OSError:
        return None
    for line in lines:
        m = _LOG_TS.match(line)
        if m and text in line:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= after:
                return t
    return None


def _pair_drill(lab: ScaleLab, res: DrillResult, fault: str) -> None:
    leader = lab.leader()
    standby = [n for n in lab.instances if n != leader]
    if leader is None or len(standby) != 1:
        raise LabError("the drill needs a pair with one acting controller")
    other = standby[0]
    if not lab.health(other)[0]:
        raise LabError(f"the standby {other} is not healthy: cannot start the drill")
    for uri in srs_uris(lab.site):
        if not _wait_srs_up(lab, uri):
            raise LabError(f"the leader does not see {uri} up: cannot start the drill")
    plan = lab.netplan
    assert plan is not None
    redis_ip = lab.address("redis")
    host = lab.reg["processes"][leader]["host"]
    clock = _Clock(res)
    at: dict[str, float] = {}
    watch = PairWatch(lab)
    watch.start()

    def during(elapsed: float) -> None:
        if "fault" not in at and elapsed >= 4.0:
            if fault == "kill":
                pid = lab.reg["processes"][leader]["pid"]
                lab.stop(leader, kill=True)
                at["fault"] = clock.note(f"SIGKILL {leader}, the acting controller (pid {pid})")
            else:
                netns.set_blackhole(plan, host, redis_ip, add=True)
                at["fault"] = clock.note(f"Redis ({redis_ip}) cut off from {leader}: "
                                         f"blackhole route in {host}'s namespace")
        elif fault == "partition" and "fault" in at and "healed" not in at \
                and time.time() - at["fault"] >= 8.0:
            netns.set_blackhole(plan, host, redis_ip, add=False)
            at["healed"] = clock.note(f"partition healed ({leader} reaches Redis again)")

    try:
        run, rep = _load(lab, res, calls=30, rate=3.0, duration=8.0, during=during,
                         settle=25.0)
    finally:
        if fault == "partition" and "healed" not in at:
            netns.set_blackhole(plan, host, redis_ip, add=False)
            at["healed"] = clock.note("partition healed")
        time.sleep(2.0 if fault == "partition" else 0.0)  # the healed one must stay out
        watch.finish()
    t_fault = at.get("fault")
    if t_fault is None:
        raise LabError("the run ended before the fault was injected")
    took = watch.first(other, lambda v: v is True, t_fault)
    takeover = None if took is None else took - t_fault
    if took is not None:
        clock.note(f"{other} acts (takeover {takeover:.2f} s after the fault)", took)
    overlap = watch.both_acting()
    if fault == "kill":
        lab.start(leader)
        clock.note(f"{leader} started again")
    back = lab.instance_health(leader) or {}
    stays_out = not (back.get("leader") or {}).get("acting") and lab.leader() == other
    # the old leader's own word that it stopped (it cannot answer /health while Redis is
    # unreachable: see README "The scale lab, drills and benchmark")
    stopped = _log_time(lab, leader, "lost the lease", t_fault) if fault == "partition" \
        else None
    if stopped is not None:
        clock.note(f"{leader} logs that it lost the lease and stops acting", stopped)
    _flush_srs(lab, clock)
    orphans, dups = _orphans_and_duplicates(lab, run)
    sessions = _sessions(lab, list(run["calls"]))
    # the store's side of an orphan: a session still open although its call ended
    open_left = sorted(cid for cid, ss in sessions.items() if any(s.open for s in ss))
    unrecorded, late, live, new = [], [], 0, 0
    for cid, c in run["calls"].items():
        est = [s.established_at for s in sessions[cid] if s.established_at]
        row: dict[str, Any] = {"call_id": cid, "answered": round(c["answered_ts"] - clock.t0, 2),
                               "sessions": len(sessions[cid])}
        if c["answered_ts"] < t_fault < (c.get("ended_ts") or 0):
            live += 1
            row["at_fault"] = "up"
        elif c["answered_ts"] >= t_fault:
            new += 1
        if c.get("siprec") and not c.get("opt_out"):
            if not est:
                unrecorded.append(cid)
            else:
                row["gap_s"] = round(max(0.0, min(est) - c["answered_ts"]), 2)
                if row["gap_s"] > GAP_S:
                    late.append(f"{cid}: recorded {row['gap_s']} s after its answer")
        res.per_call.append(row)
    media = [r["rtp"] for r in rep["per_call"] if r.get("rtp")]
    lost = [round(sum(leg["lost_s"] for leg in m.values()), 2) for m in media]
    res.counts.update(takeover_s=None if takeover is None else round(takeover, 2),
                      live_at_fault=live, new_after_fault=new,
                      sessions_duplicated=len(dups),
                      sessions_orphaned=len({o.split(" on ")[0] for o in orphans}
                                            | set(open_left)),
                      unrecorded_beyond_gap=len(unrecorded) + len(late),
                      media_lost_s_per_call_max=max(lost) if lost else None)
    if fault == "partition" and stopped is not None:
        res.counts["old_leader_knew_s"] = round(stopped - t_fault, 2)
    res.check("every call answered (sipp: 0 failed)", rep["calls"]["failed"] == 0
              and rep["calls"]["answered"] == rep["calls"]["placed"] > 0,
              f"{rep['calls']['answered']} of {rep['calls']['placed']} answered, "
              f"through {len(lab.site.edges)} edges")
    res.check(f"the standby took over within {TAKEOVER_S:g} s",
              takeover is not None and takeover <= TAKEOVER_S,
              "never" if takeover is None else f"{takeover:.2f} s")
    mute = sum(1 for _, smp in watch.samples if any(v is None for v in smp.values()))
    res.check("never two controllers acting at once", not overlap,
              f"{len(overlap)} samples with both acting" if overlap else
              f"{len(watch.samples)} samples of both instances; in {mute} one did not "
              "answer (killed, or cut off from the Redis its /health reads)")
    res.check("calls up at the fault and calls arriving after it", live > 0 and new > 0,
              f"{live} up, {new} new")
    res.check("no session duplicated", not dups, ", ".join(dups[:3]))
    res.check("no session orphaned (at the SRS, or open in the store after its call)",
              not orphans and not open_left,
              "; ".join([f"SRS: {o}" for o in orphans[:3]]
                        + [f"store: {c} open" for c in open_left[:3]]))
    res.check(f"every required call recorded, none later than {GAP_S:g} s after its answer",
              not unrecorded and not late,
              "; ".join([f"{u}: never recorded" for u in unrecorded[:3]] + late[:3])
              or f"{rep['policy']['siprec']} required calls recorded")
    res.check(f"{leader} back {'(restarted) ' if fault == 'kill' else '(healed) '}and "
              f"standing by; {other} still leads", stays_out,
              f"{leader}: {back.get('leader')}")
    if fault == "partition":
        # by its own clock it stops acting 0.5 s before the lease can pass (leader.py);
        # its log says so when its lease thread's Redis call gives up, which may be later
        healed = at.get("healed", time.time())
        res.check(f"{leader} knew it lost the lease while cut off (its log)",
                  stopped is not None and stopped < healed,
                  "no 'lost the lease' in its log" if stopped is None else
                  f"logged {stopped - t_fault:.2f} s after the fault, "
                  f"{healed - t_fault:.1f} s before the heal")
    res.happened.sort()


def leader_kill(lab: ScaleLab, res: DrillResult) -> None:
    _pair_drill(lab, res, "kill")


def leader_redis_partition(lab: ScaleLab, res: DrillResult) -> None:
    _pair_drill(lab, res, "partition")


SCALE_DRILLS: dict[str, tuple[Callable[[ScaleLab, DrillResult], None], str]] = {
    "leader-kill": (leader_kill, "SIGKILL of the acting controller of the pair under load"),
    "leader-redis-partition": (leader_redis_partition,
                               "Redis cut off from the acting controller for 8 s under "
                               "load, then healed"),
}
