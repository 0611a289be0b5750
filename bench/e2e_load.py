#!/usr/bin/env python3
"""End-to-end load: the highest call rate the lab sustains with 0 failed calls, without and
with SIPREC recording (not run in CI; run as root: the lab's hosts in network namespaces).

Method (kept comparable with the peer figures in issue 15): sipp's caller scenario on the
``caller`` host, 1-s calls, no RTP, through the ``edge`` (Kamailio + rtpengine +
controller) to sipp's built-in uas on ``callee``; the reference SRSs on ``srs1``/``srs2``.

* (a) **plain**: every call carries ``X-Record: no`` (the lab's opt-out rule): Kamailio +
  rtpengine only, no local or SIPREC recording;
* (b) **recorded**: every call recorded locally and over SIPREC, counted **at the SRS**:
  every session answered, ACKed, ended by the SRC's BYE, with its two labelled streams in
  the SDP (there is no RTP to count: the method has none).

A rate passes when, for ``--seconds`` at that rate, sipp counts 0 failed calls, every call
is answered at the edge, and for (b) the SRSs hold one complete session per call and the
controller counted no loss. Search: double from ``--start`` while it passes, then bisect
to within 10 %; the end points are re-run (``--repeat``, median). Then one run at half of
(b)'s maximum gives the set-up latency percentiles; CPU per call per process comes from
the runs at each maximum.

The configs are the shipped lab site's, sized by the site model for ``--max`` calls/s:
``media.nodes[0].ports`` = rate × (call length + delete_delay + 1 s) × 8 ports (4 per call,
4 per SIPREC fork), and ``edges[0].shm_mb`` = rate × 8 s × 40 KB × 2 (a call's dialog and
transactions, plus its recording session's, live about call length + tm's wait timer; the
peak shm Kamailio reports (``core.shmmem``) is in the output to check the rule).

    .venv/bin/python bench/e2e_load.py [--seconds 30] [--start 50] [--max 800] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.lab import sipp  # noqa: E402
from orchestrator.lab.hosts import Lab, default_dir  # noqa: E402
from orchestrator.lab.load import place_calls, read_sipp_stat  # noqa: E402
from orchestrator.lab.report import run_report  # noqa: E402
from orchestrator.site import load, validate_data  # noqa: E402

CALL_S = 1.0
KB_PER_CALL = 40


def sized_site(max_rate: float) -> Any:
    """The lab site with the port range and shm sized for ``max_rate`` (see the docstring)."""
    site = load()
    data = site.model_dump(mode="json", exclude_none=True)
    node = data["media"]["nodes"][0]
    ports = math.ceil(max_rate * (CALL_S + site.media.delete_delay + 1) * 8)
    node["ports"] = {"port_min": 20000, "port_max": min(65000, 20000 + ports)}
    data["edges"][0]["shm_mb"] = max(64, math.ceil(max_rate * 8 * KB_PER_CALL * 2 / 1024))
    data["lab"] = {**data["lab"], "netns_prefix": "bench"}
    return validate_data(data, file="<bench site>")


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, "
            f"Linux {platform.release()}, {platform.python_implementation()} "
            f"{platform.python_version()}")


def shm_used_mb(lab: Lab) -> float | None:
    from orchestrator.kamailio.rpc import HttpRpcTransport, KamailioClient

    try:
        with lab.inside("edge"), KamailioClient(
                HttpRpcTransport.for_edge(lab.site, lab.site.edges[0]), timeout=3) as rpc:
            mem = rpc.call("core.shmmem")
        return round(float(mem["used"]) / 2**20, 1)
    except Exception:  # noqa: BLE001 - a figure, not a verdict
        return None


def use_srs(lab: Lab, kind: str) -> None:
    """Run ``srs1``/``srs2`` as the reference SRS (the lab's own processes) or as sipp's
    ``srs_uas.xml`` on the same address and port (``-aa`` answers the probes)."""
    specs = lab.specs()
    for name in ("srs1", "srs2"):
        spec = dict(specs[name])
        if kind == "sipp":
            cwd = lab.dir / "procs" / f"{name}-sipp"
            sipp.workdir(cwd)
            spec.update(workdir=str(cwd), argv=[
                sipp.SIPP_BIN, "-sf", "srs_uas.xml", "-i", spec["address"], "-ci",
                spec["address"], "-p", str(spec["port"]), "-mp", "40000", "-aa", "-nostdin",
                "-trace_stat", "-stf", str(cwd / "stat.csv"), "-fd", "1", "-trace_err",
                "-error_file", str(cwd / "errors.log")])
        lab.stop(name)
        lab.start(name, spec)


def sipp_srs_counts(lab: Lab) -> tuple[int, int]:
    """(successful, failed) sessions of the sipp SRSs so far."""
    ok = failed = 0
    for name in ("srs1", "srs2"):
        st = read_sipp_stat(lab.dir / "procs" / f"{name}-sipp" / "stat.csv")
        ok += st.get("SuccessfulCall(C)", 0)
        failed += st.get("FailedCall(C)", 0)
    return ok, failed


def srs_complete(lab: Lab, since: float) -> tuple[int, int]:
    """(complete, all) SRS sessions begun since ``since``: complete = answered, ACKed,
    ended by the SRC's BYE, two labelled streams."""
    ok = total = 0
    for d in (lab.dir / "srs").iterdir():
        with os.scandir(d) as it:
            for e in it:
                if not e.name.endswith(".json") or e.stat().st_mtime < since:
                    continue
                try:
                    r = json.loads(Path(e.path).read_text())
                except (OSError, ValueError):
                    continue
                if r.get("started_at", 0) < since:
                    continue
                total += 1
                ok += bool(r.get("answered_at") and r.get("acked_at")
                           and r.get("bye_from") == "src" and len(r.get("labels", {})) == 2)
    return ok, total


def quiet(lab: Lab, timeout: float = 90.0) -> None:
    """Wait until the controller has no open session and no live call, then rtpengine's
    delete-delay: the next probe starts from an idle system."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            h = lab.api("GET", "/health", timeout=5)
            if not h.get("open_sessions") and not h.get("live_calls"):
                break
        except Exception:  # noqa: BLE001 - a busy controller: retry
            pass
        time.sleep(1)
    time.sleep(lab.site.media.delete_delay + 1)


def probe(lab: Lab, rate: float, kind: str, seconds: float, srs: str) -> dict[str, Any]:
    calls = max(1, int(rate * seconds))
    before = sipp_srs_counts(lab) if srs == "sipp" else (0, 0)
    t0 = time.time()
    shm0 = shm_used_mb(lab)
    run = place_calls(lab, calls=calls, rate=rate, duration=CALL_S, rtp=False,
                      opt_out=calls if kind == "plain" else 0, label=f"bench {kind} {rate:g}",
                      settle=0)
    failed = sum(int(s.get("FailedCall(C)", 0)) for s in run["sipp"].values())
    placed = sum(int(s.get("OutgoingCall(C)", 0)) for s in run["sipp"].values())
    answered = len(run["calls"])
    complete = total = 0
    if kind == "recorded":  # sessions end ~1 s after their call: wait for the counts
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline:
            if srs == "sipp":
                ok, bad = sipp_srs_counts(lab)
                complete, total = ok - before[0], ok + bad - before[0] - before[1]
            else:
                complete, total = srs_complete(lab, t0)
            if complete >= answered or complete == last:
                break
            last = complete
            time.sleep(3)
    losses = _losses_since(lab, t0)
    shm1 = shm_used_mb(lab)
    quiet(lab)
    unhealthy = [p.name for p in lab.status() if not p.healthy]
    for name in unhealthy:  # a crash at this rate: noted, and the process restarted
        lab.restart(name)
    ok = (failed == 0 and placed == calls and answered == calls and not unhealthy
          and (kind == "plain" or (complete == answered and not losses)))
    res = {"kind": kind, "srs": srs, "rate": rate, "calls": calls, "placed": placed, "answered": answered,
           "failed": failed, "srs_complete": complete, "srs_sessions": total,
           "losses": losses, "crashed": unhealthy, "ok": ok, "run_id": run["run_id"],
           "shm_used_mb": [shm0, shm1],
           "cpu_ms_per_call": {n: round(u["cpu_s"] * 1000 / max(1, answered), 2)
                               for n, u in run["usage"].items()},
           "mem_mb_peak": {n: u["mem_mb_peak"] for n, u in run["usage"].items()}}
    print(json.dumps({k: v for k, v in res.items() if k != "mem_mb_peak"}), file=sys.stderr,
          flush=True)
    return res


def _losses_since(lab: Lab, since: float) -> dict[str, int]:
    from orchestrator.controller.store import SessionStore

    store = SessionStore(lab.site.controller.store, readonly=True)
    try:
        out: dict[str, int] = {}
        for x in store.losses(since=since):
            out[x["reason"]] = out.get(x["reason"], 0) + 1
        return out
    finally:
        store.close()


def search(lab: Lab, kind: str, args: argparse.Namespace, log: list[dict[str, Any]],
           srs: str = "sipp") -> dict[str, Any]:
    """Double, then bisect to within 10 %; the best passing probe."""
    best: dict[str, Any] | None = None
    low, high = 0.0, None
    rate = float(args.start)
    while rate <= args.max:
        r = probe(lab, rate, kind, args.seconds, srs)
        log.append(r)
        if not r["ok"]:
            high = rate
            break
        best, low = r, rate
        rate *= 2
    if high is None:
        high = float(args.max) * 2
    while best is not None and high - low > 0.1 * low:
        rate = round((low + high) / 2)
        r = probe(lab, rate, kind, args.seconds, srs)
        log.append(r)
        if r["ok"]:
            best, low = r, rate
        else:
            high = rate
    if best is None:
        return {"max_rate": 0, "first_failure": high}
    passes = [best]
    for _ in range(args.repeat - 1):  # the end point again: median of the repeats
        r = probe(lab, low, kind, args.seconds, srs)
        log.append(r)
        passes.append(r)
    held = sum(p["ok"] for p in passes)
    return {"max_rate": low, "first_failure": high, "repeats_passed": f"{held}/{len(passes)}",
            "cpu_ms_per_call": {n: statistics.median(p["cpu_ms_per_call"].get(n, 0)
                                                     for p in passes)
                                for n in best["cpu_ms_per_call"]},
            "shm_used_mb_peak": max((v for p in passes for v in p["shm_used_mb"]
                                     if v is not None), default=None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="each probe (30-60)")
    ap.add_argument("--start", type=float, default=50.0)
    ap.add_argument("--max", type=float, default=800.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs at each end point (median)")
    ap.add_argument("--dir", type=Path, default=default_dir() / "bench" / "lab")
    ap.add_argument("--out", type=Path, default=default_dir() / "bench" / "e2e_load.json")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also search (b) with the reference SRS (siprecctl srs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    site = sized_site(args.max)
    lab = Lab.plan(site, args.dir, "netns")
    t0 = time.time()
    log: list[dict[str, Any]] = []
    lab.up()
    reference: dict[str, Any] | None = None
    try:
        use_srs(lab, "sipp")
        plain = search(lab, "plain", args, log)
        recorded = search(lab, "recorded", args, log)
        half = max(1.0, round(recorded["max_rate"] / 2))
        run = place_calls(lab, calls=int(half * args.seconds), rate=half, duration=CALL_S,
                          label=f"bench latency at {half:g}", settle=30)
        rep = run_report(lab.dir, run, Path(lab.site.controller.store))
        quiet(lab)
        if args.reference:
            use_srs(lab, "reference")
            reference = search(lab, "recorded", args, log, srs="reference")
    finally:
        lab.down()
    summary = {
        "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
        "minutes": round((time.time() - t0) / 60, 1), "seconds": args.seconds,
        "call_s": CALL_S, "rtp": False,
        "srs": "sipp srs_uas.xml on srs1 and srs2 (hunt: srs1 takes the sessions)",
        "sizing": {"rtp_ports": site.media.nodes[0].ports.port_max
                   - site.media.nodes[0].ports.port_min + 1,
                   "shm_mb": site.edges[0].shm_mb, "for_rate": args.max},
        "plain": plain, "recorded": recorded, "recorded_reference_srs": reference,
        "ratio": round(recorded["max_rate"] / plain["max_rate"], 2) if plain["max_rate"]
        else None,
        "latency_at_half": {"rate": half, "calls": rep["calls"]["answered"],
                            "established": rep["siprec"]["calls_established"],
                            **{k: rep["setup_ms"][k] for k in ("p50", "p95", "p99", "max")}},
        "cpu_ms_per_call": {f"{kind} {n}": v for kind, res in (("plain", plain),
                                                                ("recorded", recorded))
                            for n, v in (res.get("cpu_ms_per_call") or {}).items()},
        "probes": log,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"machine: {summary['machine']}")
        print(f"{args.seconds:g}-s probes, 1-s calls, no RTP ({summary['minutes']} min)")
        for kind, res in (("plain", plain), ("recorded", recorded)):
            print(f"{kind:9}: max {res['max_rate']:g} calls/s with 0 failures "
                  f"(first failure at {res.get('first_failure')}; end point held "
                  f"{res.get('repeats_passed')})")
        print(f"ratio recorded/plain: {summary['ratio']}")
        if reference:
            print(f"recorded with the reference SRS: max {reference['max_rate']:g} calls/s "
                  f"(end point held {reference.get('repeats_passed')})")
        lat = summary["latency_at_half"]
        print(f"set-up latency at {half:g} calls/s: p50 {lat['p50']} ms, p95 {lat['p95']} ms,"
              f" p99 {lat['p99']} ms ({lat['established']} of {lat['calls']} recorded)")
        for k, v in summary["cpu_ms_per_call"].items():
            print(f"CPU per call, {k}: {v} ms")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
