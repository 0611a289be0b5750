#!/usr/bin/env python3
"""Carrier scale on this machine (not run in CI; root: the scale lab's hosts in network
namespaces; hold the integration lock, it starts daemons):

1. **recorded calls/s through 2 edges vs 1 edge**, side by side in one run on one scale lab
   (examples/lab-scale.yaml): the highest rate, on a ladder of ``--rates``, at which
   ``--seconds`` of 1-s calls without RTP (sipp's uac, as bench/e2e_load.py) end with 0
   failed calls, every call answered at an edge, and every call recorded over SIPREC and
   complete **at the SRS** (answered, ACKed, ended by the SRC's BYE, two labelled
   streams). "1 edge": every call through edge-a (rtpengine set 0: rtp-a1 + rtp-a2);
   "2 edges": the calls split evenly over edge-a and edge-b (set 1: rtp-b1). The two are
   measured alternately, ``--repeat`` times; the figures are the medians and their ratio.
2. **controller takeover**: ``--kills`` times, SIGKILL of the acting controller of the
   pair and the time until the standby's ``/health`` says it acts (polled every 50 ms);
   the killed one is started again and stands by. p50 and max.

The site is the example's with every node's port range and every edge's shm sized for the
top of the ladder the way bench/e2e_load.py sizes the single box (ports = rate × (call +
delete_delay + 1 s) × 8; shm = rate × 8 s × 40 KB × 2).

    .venv/bin/python bench/scale_load.py [--rates 20,40,60,80,100,130,160] [--seconds 6]
        [--repeat 3] [--kills 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_load import KB_PER_CALL, machine  # noqa: E402
from orchestrator.lab.hosts import Lab, default_dir  # noqa: E402
from orchestrator.lab.load import place_calls  # noqa: E402
from orchestrator.lab.report import run_report  # noqa: E402
from orchestrator.lab.scale import ScaleLab  # noqa: E402
from orchestrator.site import load, validate_data  # noqa: E402

CALL_S = 1.0
CONFIGS = {"1 edge": ["edge-a"], "2 edges": ["edge-a", "edge-b"]}


def sized_site(max_rate: float) -> Any:
    site = load(ROOT / "examples" / "lab-scale.yaml")
    data = site.model_dump(mode="json", exclude_none=True)
    ports = math.ceil(max_rate * (CALL_S + site.media.delete_delay + 1) * 8)
    for n in data["media"]["nodes"]:
        n["ports"] = {"port_min": 20000, "port_max": min(65000, 20000 + ports)}
    for e in data["edges"]:
        e["shm_mb"] = max(64, math.ceil(max_rate * 8 * KB_PER_CALL * 2 / 1024))
    data["lab"] = {**data["lab"], "netns_prefix": "bscale", "bridge": "bscale0"}
    return validate_data(data, file="<scale bench site>")


def trial(lab: ScaleLab, edges: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """One rate for ``seconds``: passed?, and what was counted."""
    calls = max(len(edges), int(rate * seconds))
    run = place_calls(lab, calls=calls, rate=rate, duration=CALL_S, rtp=False,
                      label=f"scale bench {len(edges)} edges {rate:g}/s", settle=20.0,
                      edges=edges)
    with lab.store() as store:
        rep = run_report(lab.dir, run, store)
    c, sr = rep["calls"], rep["siprec"]
    ok = (c["failed"] == 0 and c["answered"] == c["placed"] == calls
          and sr["srs_complete"] == rep["policy"]["siprec"] == calls)
    return {"rate": rate, "calls": calls, "passed": ok, "answered": c["answered"],
            "failed": c["failed"], "srs_complete": sr["srs_complete"],
            "setup_p50_ms": rep["setup_ms"]["p50"], "run_id": run["run_id"]}


def ladder(lab: ScaleLab, edges: list[str], rates: list[float], seconds: float,
           log: Any) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate of the ladder that passes (climbing until one fails)."""
    best, tried = 0.0, []
    for r in rates:
        t = trial(lab, edges, r, seconds)
        tried.append(t)
        log(f"  {'+'.join(edges)} {r:g}/s: {'pass' if t['passed'] else 'FAIL'} "
            f"({t['srs_complete']} of {t['calls']} complete at the SRS, {t['failed']} failed)")
        if not t["passed"]:
            break
        best = r
    return best, tried


def takeover(lab: ScaleLab, log: Any) -> float:
    leader = lab.leader()
    if leader is None:
        raise SystemExit("no controller leads")
    other = next(n for n in lab.instances if n != leader)
    t0 = time.monotonic()
    lab.stop(leader, kill=True)
    while True:
        h = lab.instance_health(other, timeout=0.5) or {}
        if (h.get("leader") or {}).get("acting"):
            took = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 15:
            raise SystemExit(f"{other} did not take over within 15 s")
        time.sleep(0.05)
    lab.start(leader)
    log(f"  SIGKILL {leader}: {other} acts after {took:.2f} s; {leader} back as standby")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="20,40,60,80,100,130,160")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=default_dir().parent / "scale-bench")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",")]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    t0 = time.time()
    lab = Lab.plan(sized_site(max(rates)), args.dir, "netns")
    assert isinstance(lab, ScaleLab)
    lab.up(progress=lambda s: log(f"lab up: {s}"))
    results: dict[str, list[float]] = {k: [] for k in CONFIGS}
    trials: list[dict[str, Any]] = []
    kills: list[float] = []
    try:
        for i in range(args.repeat):
            for name, edges in CONFIGS.items():
                log(f"repetition {i + 1}, {name}:")
                best, tried = ladder(lab, edges, rates, args.seconds, log)
                results[name].append(best)
                trials += [{"config": name, "repetition": i + 1, **t} for t in tried]
        log(f"takeover: {args.kills} SIGKILLs of the acting controller")
        for _ in range(args.kills):
            kills.append(takeover(lab, log))
            time.sleep(1.0)
    finally:
        lab.down()
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
        "seconds_per_trial": args.seconds, "rates": rates, "repeat": args.repeat,
        "recorded_calls_per_s": {k: {"median": med[k], "runs": results[k]} for k in CONFIGS},
        "ratio_2_to_1": round(med["2 edges"] / med["1 edge"], 2) if med["1 edge"] else None,
        "takeover_s": {"p50": round(statistics.median(kills), 2), "max": round(max(kills), 2),
                       "all": [round(k, 2) for k in kills]} if kills else None,
        "wall_s": round(time.time() - t0),
        "trials": trials,
    }
    (Path(args.dir) / "scale_load.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"machine: {summary['machine']}")
        for k in CONFIGS:
            print(f"recorded calls/s, {k}: median {med[k]:g} of {results[k]}")
        print(f"ratio 2 edges / 1 edge: {summary['ratio_2_to_1']}")
        if kills:
            print(f"takeover after SIGKILL of the leader ({len(kills)}): p50 "
                  f"{summary['takeover_s']['p50']} s, max {summary['takeover_s']['max']} s")
        print(f"wall time {summary['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
