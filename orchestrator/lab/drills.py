"""Fault drills on the lab's hosts: a fault in the middle of a call run, what the system did
about it (from the edge's events, the controller's store and metrics, the SRS records),
and a verdict with counts.

=====================  ================================================================
``srs-kill``           SIGKILL of srs1 under load
``srs-partition``      srs1's cable pulled (its switch port down) under load, then put back
``srs-blackhole``      a blackhole route to srs1 on the edge under load, then removed
``controller-kill``    SIGKILL of the controller under load, restarted 2 s later
``rtpengine-restart``  rtpengine stopped and started again under load
``kamailio-restart``   Kamailio stopped and started again under load
``rtp-loss``           5 % of the RTP towards srs1 dropped (nftables) for a whole run
=====================  ================================================================

Each drill leaves the lab as it found it (faults removed, processes restarted, the SRSs
restarted so that they write the records of sessions left open: an SRS session still open
after its call ended is an *orphan*).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LabError
from . import netns
from .hosts import NETNS_SRS_RTP, Lab, proc_alive, srs_uris
from .load import place_calls
from .report import run_report, srs_records

__all__ = ["DRILLS", "DrillResult", "all_drills", "run_drill"]


@dataclass
class DrillResult:
    name: str
    what: str
    run_id: str = ""
    happened: list[str] = field(default_factory=list)  # "+3.0 s SIGKILL srs1 (pid 123)"
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    per_call: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append((what, bool(ok), detail))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "run_id": self.run_id,
                "passed": self.passed, "happened": self.happened,
                "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.checks],
                "counts": self.counts, "per_call": self.per_call}


class _Clock:
    """Drill time: seconds since the run started, and a log of what happened when."""

    def __init__(self, res: DrillResult) -> None:
        self.res = res
        self.t0 = time.time()

    def note(self, what: str, at: float | None = None) -> float:
        at = time.time() if at is None else at
        self.res.happened.append(f"+{at - self.t0:5.1f} s  {what}")
        return at


def _sessions(lab: Lab, call_ids: list[str]) -> dict[str, list[Any]]:
    with lab.store() as store:
        return {cid: store.for_call(cid) if store else [] for cid in call_ids}


def _losses(lab: Lab, call_id: str) -> list[dict[str, Any]]:
    with lab.store() as store:
        return store.losses(call_id=call_id) if store else []


def _flush_srs(lab: Lab, clock: _Clock) -> None:
    """Restart both SRSs: a graceful stop writes the record of every session still open."""
    for name in ("srs1", "srs2"):
        if name in lab.reg["processes"]:
            lab.stop(name)
            lab.start(name)
    clock.note("srs1 and srs2 restarted (their open sessions written out)")


def _wait_srs_up(lab: Lab, uri: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.metrics().get(f'siprecctl_srs_up{{srs="{uri}"}}') == 1.0:
            return True
        time.sleep(0.2)
    return False


def _orphans_and_duplicates(lab: Lab, run: dict[str, Any]) -> tuple[list[str], list[str]]:
    """SRS sessions left open although their call ended (orphans); calls with two SRS
    sessions of one slot at the same time (duplicates)."""
    records = srs_records(lab.dir)
    orphans, dups = [], []
    sessions = _sessions(lab, list(run["calls"]))
    for cid, ss in sessions.items():
        spans: dict[int, list[tuple[float, float]]] = {}
        for s in ss:
            for a in s.attempts:
                r = records.get(a.rs_call_id)
                if r is None or not r.get("answered_at"):
                    continue
                # the SRS ends what is open when it stops: "server stopped", no BYE
                if r.get("end_reason") == "server stopped" and r.get("bye_from") is None:
                    orphans.append(f"{cid} on {r['srs']}")
                spans.setdefault(s.slot, []).append((r["answered_at"],
                                                     r.get("ended_at") or time.time()))
        for slot_spans in spans.values():
            slot_spans.sort()
            for (_, end0), (start1, _) in zip(slot_spans, slot_spans[1:], strict=False):
                if start1 < end0 - 0.05:  # overlap beyond clock noise
                    dups.append(cid)
                    break
    return orphans, sorted(set(dups))


def _load(lab: Lab, res: DrillResult, *, calls: int, rate: float, duration: float,
          rtp: bool = True, during: Callable[[float], None] | None = None,
          settle: float = 15.0) -> tuple[dict[str, Any], dict[str, Any]]:
    run = place_calls(lab, calls=calls, rate=rate, duration=duration, rtp=rtp, during=during,
                      label=f"drill {res.name}", settle=settle)
    res.run_id = run["run_id"]
    with lab.store() as store:
        rep = run_report(lab.dir, run, store if store is not None
                         else Path(lab.site.controller.store))
    res.counts.update(calls=rep["calls"]["answered"], placed=rep["calls"]["placed"],
                      failed=rep["calls"]["failed"],
                      recorded=rep["siprec"]["calls_established"],
                      to_record=rep["policy"]["siprec"])
    return run, rep


def _pids(lab: Lab, names: tuple[str, ...]) -> dict[str, int | None]:
    return {n: lab.reg["processes"][n].get("pid") for n in names}


# ---------------------------------------------------------------------------- SRS faults
def _srs_fault(lab: Lab, res: DrillResult, fault: str) -> None:
    uri1, uri2 = srs_uris(lab.site)
    if not _wait_srs_up(lab, uri1) or not _wait_srs_up(lab, uri2):
        raise LabError("the controller does not see both SRSs up: cannot start the drill")
    plan = lab.netplan
    if fault != "kill" and plan is None:
        raise LabError(f"srs-{fault} needs the hosts in network namespaces (lab up as root)")
    clock = _Clock(res)
    at: dict[str, float] = {}
    core = ("controller", lab.site.edges[0].name, lab.site.media.nodes[0].name)
    before = _pids(lab, core)

    def during(elapsed: float) -> None:
        if "fault" in at or elapsed < 3.0:
            return
        if fault == "kill":
            pid = lab.reg["processes"]["srs1"]["pid"]
            lab.stop("srs1", kill=True)
            at["fault"] = clock.note(f"SIGKILL srs1 (pid {pid})")
        elif fault == "partition":
            assert plan is not None
            netns.set_link(plan, "srs1", up=False)
            at["fault"] = clock.note("srs1's link down (switch port)")
        else:
            assert plan is not None
            netns.set_blackhole(plan, "edge", lab.address("srs1"), add=True)
            at["fault"] = clock.note(f"blackhole route to {lab.address('srs1')} on edge")

    try:
        run, rep = _load(lab, res, calls=24, rate=4.0, duration=6.0, during=during)
    finally:
        if plan is not None and fault == "partition":
            netns.set_link(plan, "srs1", up=True)
        if plan is not None and fault == "blackhole":
            netns.set_blackhole(plan, "edge", lab.address("srs1"), add=False)
    clock.note("calls done; fault removed" + (" (srs1 restarted)" if fault == "kill" else ""))
    if fault == "kill":
        lab.start("srs1")
    _wait_srs_up(lab, uri1, 10)
    _flush_srs(lab, clock)
    t_fault = at.get("fault")
    if t_fault is None:
        raise LabError("the run ended before the fault was injected")
    # a partitioned SRS keeps the sessions it was cut off from (the BYE could not reach
    # it) until its own timers or an operator end them: counted, not a failure here
    orphans, _ = _orphans_and_duplicates(lab, run)
    res.counts["srs1_sessions_left_open"] = len(orphans)
    sessions = _sessions(lab, list(run["calls"]))
    late, live_moved, gaps = [], [], []
    first_to_2: float | None = None
    for cid, c in run["calls"].items():
        ss = sessions[cid]
        on2 = [s for s in ss if s.srs_uri == uri2 and s.established_at]
        loss_s = sum(float(x["seconds"]) for x in _losses(lab, cid))
        row = {"call_id": cid, "answered": round(c["answered_ts"] - clock.t0, 2),
               "srs": ",".join(sorted({(s.srs_uri or "?").split("@")[-1] for s in ss
                                       if s.established_at})),
               "gap_s": round(loss_s, 2)}
        res.per_call.append(row)
        if c["answered_ts"] >= t_fault:  # a new call: how soon was it recorded on srs2?
            if not on2:
                late.append(f"{cid}: not recorded on srs2")
                continue
            delay = min(s.established_at for s in on2) - max(c["answered_ts"], t_fault)
            row["to_srs2_s"] = round(delay, 2)
            first_to_2 = delay if first_to_2 is None else max(first_to_2, delay)
            if delay > 2.0:
                late.append(f"{cid}: on srs2 {delay:.2f} s after "
                            f"{'the fault' if c['answered_ts'] < t_fault else 'its answer'}")
        elif c.get("ended_ts") and c["ended_ts"] > t_fault:  # live at the fault
            if not on2:
                live_moved.append(f"{cid}: not re-established on srs2")
            if any(s.srs_uri == uri1 and s.established_at and s.established_at < t_fault
                   for s in ss):  # was recorded on srs1: its gap must be counted
                gaps.append(loss_s)
    live = sum(1 for c in run["calls"].values() if c["answered_ts"] < t_fault
               and (c.get("ended_ts") or 0) > t_fault)
    new = sum(1 for c in run["calls"].values() if c["answered_ts"] >= t_fault)
    res.counts.update(live_at_fault=live, new_after_fault=new,
                      gap_s_max=max(gaps) if gaps else 0.0,
                      gap_s_mean=round(sum(gaps) / len(gaps), 2) if gaps else 0.0,
                      slowest_new_call_to_srs2_s=round(first_to_2 or 0.0, 2))
    res.check("every call was answered (sipp: 0 failed)", rep["calls"]["failed"] == 0
              and rep["calls"]["answered"] == rep["calls"]["placed"],
              f"{rep['calls']['answered']} of {rep['calls']['placed']} answered")
    res.check("new calls recorded on srs2 within 2 s", not late and new > 0,
              "; ".join(late[:3]) or f"{new} new calls, slowest {first_to_2 or 0:.2f} s")
    res.check("live sessions re-established on srs2", not live_moved and live > 0,
              "; ".join(live_moved[:3]) or f"{live} calls live at the fault")
    res.check("each gap of a call recorded on srs1 counted (srs_lost, ≤ 3 s)",
              bool(gaps) and all(0 < g <= 3.0 for g in gaps),
              f"gaps {sorted(round(g, 2) for g in gaps)}")
    res.check("every call the policy records was recorded",
              rep["siprec"]["calls_established"] == rep["policy"]["siprec"],
              f"{rep['siprec']['calls_established']} of {rep['policy']['siprec']}")
    after = _pids(lab, core)
    res.check("no crash (controller, Kamailio, rtpengine: same processes)",
              before == after and all(proc_alive(lab.reg["processes"][n]) for n in core),
              ", ".join(f"{n} {p}" for n, p in after.items()))


def srs_kill(lab: Lab, res: DrillResult) -> None:
    _srs_fault(lab, res, "kill")


def srs_partition(lab: Lab, res: DrillResult) -> None:
    _srs_fault(lab, res, "partition")


def srs_blackhole(lab: Lab, res: DrillResult) -> None:
    _srs_fault(lab, res, "blackhole")


# ---------------------------------------------------------------------------- controller
def controller_kill(lab: Lab, res: DrillResult) -> None:
    clock = _Clock(res)
    at: dict[str, float] = {}

    def during(elapsed: float) -> None:
        if "kill" not in at and elapsed >= 4.0:
            pid = lab.reg["processes"]["controller"]["pid"]
            lab.stop("controller", kill=True)
            at["kill"] = clock.note(f"SIGKILL controller (pid {pid})")
        elif "kill" in at and "back" not in at and time.time() - at["kill"] >= 2.0:
            lab.start("controller")
            at["back"] = clock.note(f"controller restarted (pid "
                                    f"{lab.reg['processes']['controller']['pid']}), API and "
                                    "evapi up")

    run, rep = _load(lab, res, calls=24, rate=4.0, duration=6.0, during=during)
    if "back" not in at:
        raise LabError("the run ended before the controller was restarted")
    _flush_srs(lab, clock)
    orphans, dups = _orphans_and_duplicates(lab, run)
    sessions = _sessions(lab, list(run["calls"]))
    not_again = []
    up_across = 0
    for cid, c in run["calls"].items():
        ended = c.get("ended_ts") or 0
        losses = _losses(lab, cid)
        res.per_call.append({"call_id": cid, "answered": round(c["answered_ts"] - clock.t0, 2),
                             "ended": round(ended - clock.t0, 2) if ended else None,
                             "losses": [f"{x['reason']} {float(x['seconds']):.1f}s"
                                        for x in losses]})
        if c.get("siprec") and ended > at["back"] + 1.0:  # still up after the restart
            up_across += 1
            if not any(s.established_at for s in sessions[cid]
                       if s.state.value in ("established", "closed")
                       and (s.ended_at or ended) > at["back"]):
                not_again.append(cid)
    down_s = at["back"] - at["kill"]
    res.counts.update(controller_down_s=round(down_s, 2), calls_up_across_restart=up_across,
                      orphans=len(orphans), duplicates=len(dups),
                      loss_s_max=max((sum(float(x.split()[-1][:-1]) for x in r["losses"])
                                      for r in res.per_call), default=0.0))
    res.check("no orphan SRS sessions", not orphans, "; ".join(orphans[:3]))
    res.check("no duplicate SRS sessions", not dups, "; ".join(dups[:3]))
    res.check("every still-up recorded call recorded again after the restart",
              not not_again and up_across > 0,
              "; ".join(not_again[:3]) or f"{up_across} calls up across the restart")
    res.check("every call answered (sipp: 0 failed)", rep["calls"]["failed"] == 0,
              f"{rep['calls']['failed']} failed")
    res.check("every call the policy records was recorded",
              rep["siprec"]["calls_established"] == rep["policy"]["siprec"],
              f"{rep['siprec']['calls_established']} of {rep['policy']['siprec']}")


# ---------------------------------------------------------------------------- daemons
def _restart_drill(lab: Lab, res: DrillResult, name: str, what: str) -> None:
    clock = _Clock(res)
    at: dict[str, float] = {}
    others = tuple(n for n in ("controller", lab.site.edges[0].name,
                               lab.site.media.nodes[0].name) if n != name)
    before = _pids(lab, others)

    def during(elapsed: float) -> None:
        if "restart" not in at and elapsed >= 4.0:
            old = lab.reg["processes"][name]["pid"]
            at["restart"] = clock.note(f"{what} {name} stopping (pid {old})")
            lab.restart(name)
            at["back"] = clock.note(f"{name} healthy again (pid "
                                    f"{lab.reg['processes'][name]['pid']})")

    m0 = lab.metrics()
    duration = 6.0
    # settle less: calls up at a Kamailio restart never get their ended event
    run, rep = _load(lab, res, calls=24, rate=4.0, duration=duration, during=during,
                     settle=8.0)
    m1 = lab.metrics()
    if "back" not in at:
        raise LabError(f"the run ended before {name} was restarted")
    _flush_srs(lab, clock)
    orphans, dups = _orphans_and_duplicates(lab, run)
    records = srs_records(lab.dir)
    sessions = _sessions(lab, list(run["calls"]))
    affected, new_bad = [], []
    for cid, c in run["calls"].items():
        ended = c.get("ended_ts")
        live = c["answered_ts"] < at["restart"] and (ended is None or ended > at["restart"])
        recs = [records[a.rs_call_id] for s in sessions[cid] for a in s.attempts
                if a.rs_call_id in records]
        last = max((st.get("last_at") or 0 for r in recs
                    for st in r.get("labels", {}).values()), default=0.0)
        row = {"call_id": cid, "answered": round(c["answered_ts"] - clock.t0, 2),
               "live_at_restart": live, "ended_event": ended is not None,
               "sessions": len(sessions[cid]),
               # no ended event (the restarted edge lost the dialog): the planned end
               "media_lost_s": round(max(0.0, (ended or c["answered_ts"] + duration)
                                         - last), 1) if live and last else None}
        res.per_call.append(row)
        if live:
            affected.append(row)
        elif c["answered_ts"] > at["back"] + 0.5 and c.get("siprec"):
            r = next((x for x in rep["per_call"] if x["call_id"] == cid), None)
            if r is None or not r["established"] or not r["srs_complete"]:
                new_bad.append(cid)
    after = _pids(lab, others)
    res.counts.update(affected_calls=len(affected), orphans=len(orphans),
                      affected_without_ended_event=sum(not a["ended_event"] for a in affected),
                      duplicates=len(dups),
                      media_lost_s_per_affected_call=[a["media_lost_s"] for a in affected])
    res.check(f"no crash of the others ({', '.join(others)}: same processes)",
              before == after and all(proc_alive(lab.reg["processes"][n]) for n in others),
              ", ".join(f"{n} {p}" for n, p in after.items()))
    res.check(f"{name} healthy after the restart", lab.health(name)[0], lab.health(name)[1])
    res.check("affected calls reported", bool(affected),
              f"{len(affected)} calls were up at the restart")
    res.check("calls placed after the restart recorded (established, answered/ACKed/BYE at "
              "the SRS)", not new_bad, "; ".join(new_bad[:3]))
    res.check("no duplicate SRS sessions", not dups, "; ".join(dups[:3]))
    res.check("no orphan SRS sessions", not orphans, "; ".join(orphans[:3]))
    if name == lab.site.edges[0].name:
        edge = lab.site.edges[0].name
        key = f'siprecctl_evapi_reconnects_total{{edge="{edge}"}}'
        res.counts["evapi_reconnects"] = m1.get(key, 0) - m0.get(key, 0)
        res.check("the controller's evapi reconnected", res.counts["evapi_reconnects"] >= 1
                  and m1.get(f'siprecctl_evapi_connected{{edge="{edge}"}}') == 1.0,
                  f"reconnects {res.counts['evapi_reconnects']:g}")
        processed: dict[str, int] = {}
        for ev in ("answered", "ended"):
            k = f'siprecctl_events_total{{edge="{edge}",event="{ev}"}}'
            got = int(m1.get(k, 0) - m0.get(k, 0))
            want = len(run["calls"]) if ev == "answered" else \
                sum(1 for c in run["calls"].values() if c.get("ended_ts"))
            processed[ev] = got
            res.check(f"each '{ev}' event processed once (controller {got}, edge {want})",
                      got == want, "")
        res.counts["events_processed"] = processed


def rtpengine_restart(lab: Lab, res: DrillResult) -> None:
    _restart_drill(lab, res, lab.site.media.nodes[0].name, "rtpengine")


def kamailio_restart(lab: Lab, res: DrillResult) -> None:
    _restart_drill(lab, res, lab.site.edges[0].name, "Kamailio")


# ---------------------------------------------------------------------------- media
def rtp_loss(lab: Lab, res: DrillResult) -> None:
    plan = lab.netplan
    if plan is None:
        raise LabError("rtp-loss needs the hosts in network namespaces (lab up as root)")
    clock = _Clock(res)
    low, high = NETNS_SRS_RTP  # srs1's RTP ports
    netns.set_loss(plan, "srs1", 5, low, high)
    clock.note(f"5 % of the UDP packets to srs1 ports {low}-{high} dropped (nftables)")
    try:
        run, rep = _load(lab, res, calls=12, rate=4.0, duration=6.0)
    finally:
        netns.clear_loss(plan, "srs1")
        clock.note("loss removed")
    lost = []
    for r in rep["per_call"]:
        if r.get("rtp"):
            legs = r["rtp"]
            res.per_call.append({"call_id": r["call_id"], **{
                f"{leg}_completeness": legs[leg]["completeness"] for leg in legs},
                "media_lost_s": round(sum(legs[leg]["lost_s"] for leg in legs), 2)})
            lost.append(round(sum(legs[leg]["lost_s"] for leg in legs), 2))
    legs = rep["rtp"] or {}
    res.counts.update(completeness={leg: st["mean"] for leg, st in legs.items()},
                      media_lost_s_per_call=lost)
    means = [st["mean"] for st in legs.values() if st["mean"] is not None]
    res.check("every call recorded (sessions established, answered/ACKed/BYE at the SRS)",
              rep["siprec"]["srs_complete"] == rep["policy"]["siprec"] > 0,
              f"{rep['siprec']['srs_complete']} of {rep['policy']['siprec']}")
    res.check("the completeness figures show the loss (each leg 90-98.5 %)",
              len(means) == 2 and all(0.90 <= m <= 0.985 for m in means),
              ", ".join(f"{leg} {st['mean']:.2%}" for leg, st in legs.items()
                        if st["mean"] is not None))
    res.check("metadata valid on every session",
              rep["siprec"]["metadata_valid"] == rep["policy"]["siprec"], "")


DRILLS: dict[str, tuple[Callable[[Lab, DrillResult], None], str]] = {
    "srs-kill": (srs_kill, "SIGKILL of srs1 during a load run"),
    "srs-partition": (srs_partition, "srs1's link down during a load run, then up"),
    "srs-blackhole": (srs_blackhole, "a blackhole route to srs1 on the edge during a load "
                                     "run, then removed"),
    "controller-kill": (controller_kill, "SIGKILL of the controller under load, restarted "
                                         "2 s later"),
    "rtpengine-restart": (rtpengine_restart, "rtpengine stopped and started under load"),
    "kamailio-restart": (kamailio_restart, "Kamailio stopped and started under load"),
    "rtp-loss": (rtp_loss, "5 % RTP loss on the link to srs1 for a whole run"),
}


def run_drill(lab: Lab, name: str) -> DrillResult:
    """Run drill ``name`` on the lab that is up; the result holds the verdict."""
    from .scale import ScaleLab
    from .scale_drills import SCALE_DRILLS

    table: dict[str, tuple[Callable[[Any, DrillResult], None], str]] = \
        dict(SCALE_DRILLS) if isinstance(lab, ScaleLab) else dict(DRILLS)
    if name not in table:
        raise LabError(f"no drill {name!r} for this lab (its drills: {', '.join(table)})")
    fn, what = table[name]
    res = DrillResult(name, what)
    fn(lab, res)
    return res


def all_drills() -> dict[str, str]:
    """Every drill's name and what it does (the scale lab's marked so)."""
    from .scale_drills import SCALE_DRILLS

    return {**{n: w for n, (_, w) in DRILLS.items()},
            **{n: f"{w} (scale lab)" for n, (_, w) in SCALE_DRILLS.items()}}
