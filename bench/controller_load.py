#!/usr/bin/env python3
"""Recording controller under load: SIPREC set-up latency and CPU per recorded call.

Brings the embedded lab up (rtpengine, Kamailio, the reference SRS, ``siprecctl serve`` as a
child process), then places calls with sipp at ``--rate`` calls/s (default 10), each lasting
``--duration`` seconds, in two kinds of runs side by side:

* **recorded** -- every call goes to the SRS over SIPREC (and rtpengine records locally);
* **baseline** -- the same calls opted out (``X-Record: no``): the controller only reads
  their events.

Set-up latency is, per call, from the edge's ``answered`` event (Kamailio's own timestamp)
to the moment the controller had the SRS's 2xx and handed its SDP to rtpengine. CPU is the
user+system time of each process (from /proc) over the run, divided by the calls. Medians of
``--runs`` runs of each kind.

    .venv/bin/python bench/controller_load.py [--runs 3] [--calls 100] [--rate 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.lab import sipp  # noqa: E402
from orchestrator.lab.events import EventReader  # noqa: E402
from orchestrator.lab.run import local_srs, trunk_addr  # noqa: E402
from orchestrator.lab.stack import LabStack  # noqa: E402
from orchestrator.site import load, validate_data  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (and their reaped children) in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / TICK


def group_pids(pid: int) -> list[int]:
    """Every process in ``pid``'s process group (Kamailio forks its workers)."""
    pgid = os.getpgid(pid)
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid:
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def one_run(stack: LabStack, events: EventReader, cwd: Path, *, record: bool, calls: int,
            rate: float, duration: float, tag: str) -> dict[str, Any]:
    procs = {"controller": group_pids(stack.controller_proc.pid),  # type: ignore[union-attr]
             "kamailio": group_pids(stack.daemons[-1].proc.pid),  # type: ignore[union-attr]
             "rtpengine": group_pids(stack.daemons[0].proc.pid)}  # type: ignore[union-attr]
    before = {k: cpu_seconds(v) for k, v in procs.items()}
    sip = stack.edge.listen[0]
    t0 = time.monotonic()
    p = subprocess.run(sipp.uac_argv(cwd, f"{sip.address}:{sip.port}", local=(sip.address, 5172),
                                     calls=calls, rate=rate, duration_ms=int(duration * 1000),
                                     record="yes" if record else "no", customer=tag),
                       cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120 + calls / rate + duration)
    wall = time.monotonic() - t0
    time.sleep(1.0)  # the last calls' BYEs and SRS BYEs
    after = {k: cpu_seconds(v) for k, v in procs.items()}  # before we poll the API ourselves
    answered = {e["call_id"]: float(e["ts"]) for e in list(events.events)
                if e.get("event") == "answered"
                and e.get("headers", {}).get("X-Customer-Id") == tag}
    latencies: list[float] = []
    deadline = time.monotonic() + 15
    while record and time.monotonic() < deadline:
        latencies = []
        pending = 0
        for call_id, ts in answered.items():
            ss = stack.api("GET", "/calls/" + urllib.parse.quote(call_id, safe=""))
            est = [s["established_at"] for s in ss if s.get("established_at")]
            if est:
                latencies.append(est[0] - ts)
            if not ss or any(s["state"] not in ("closed", "failed") for s in ss):
                pending += 1
        if not pending:
            break
        time.sleep(0.5)
    cpu = {k: after[k] - before[k] for k in procs}
    lat = sorted(latencies)

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None

    return {"kind": "recorded" if record else "baseline", "sipp_exit": p.returncode,
            "calls_answered": len(answered), "sessions_established": len(lat),
            "losses": stack.api("GET", "/health").get("losses"),
            "wall_s": round(wall, 1),
            "setup_ms_p50": pct(0.5), "setup_ms_p95": pct(0.95), "setup_ms_max": pct(1.0),
            "cpu_ms_per_call": {k: round(v * 1000 / max(1, len(answered)), 2)
                                for k, v in cpu.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", metavar="FILE", help="CPU profile of the controller (every "
                    "thread; needs yappi: pip install yappi) written to FILE, top functions "
                    "printed")
    args = ap.parse_args()
    if args.profile:
        os.environ["SIPRECCTL_PROFILE"] = str(Path(args.profile).resolve())
    # the lab site with rtpengine's port range sized for the rate, as the e2e benchmark does
    # (a recorded call holds 8 ports for its length + delete-delay + 1 s; the lab's 1000
    # ports run out at 40 calls/s of 2 s and rtpengine answers 503)
    data = load(None).model_dump(mode="json", exclude_none=True)
    ports = math.ceil(args.rate * (args.duration + data["media"]["delete_delay"] + 1) * 8 * 1.25)
    data["media"]["nodes"][0]["ports"] = {"port_min": 20000,
                                          "port_max": min(65000, 20000 + max(1000, ports))}
    site = validate_data(data, file="<bench site>")
    work = Path(tempfile.mkdtemp(prefix="siprecctl-bench-"))
    results: list[dict[str, Any]] = []
    with LabStack(site, work, srs=local_srs(site, work)) as stack:
        cwd = sipp.workdir(work / "sipp")
        edge = site.edges[0]
        uas = sipp.uas(cwd, *trunk_addr(edge.trunk_default.uri))
        events = None
        try:
            events = EventReader.for_edge(stack.site, edge)
            events.start()
            time.sleep(0.3)
            for i in range(args.runs):
                for record in (True, False):
                    results.append(one_run(stack, events, cwd, record=record, calls=args.calls,
                                           rate=args.rate, duration=args.duration,
                                           tag=f"BENCH-{i}-{int(record)}"))
                    print(json.dumps(results[-1]), file=sys.stderr)
        finally:
            if events is not None:
                events.close()
            sipp.stop(uas)
    if args.profile:  # the controller wrote it when the stack stopped it
        import pstats

        pstats.Stats(args.profile).sort_stats("tottime").print_stats(40)

    def med(kind: str, key: str, sub: str | None = None) -> float | None:
        vals = [(r[key][sub] if sub else r[key]) for r in results if r["kind"] == kind]
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 2) if vals else None

    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "rate": args.rate, "calls_per_run": args.calls, "runs": args.runs,
        "duration_s": args.duration,
        "setup_ms_p50": med("recorded", "setup_ms_p50"),
        "setup_ms_p95": med("recorded", "setup_ms_p95"),
        "setup_ms_max": med("recorded", "setup_ms_max"),
        "sessions_established": [r["sessions_established"] for r in results
                                 if r["kind"] == "recorded"],
        "cpu_ms_per_call": {kind: {p: med(kind, "cpu_ms_per_call", p)
                                   for p in ("controller", "kamailio", "rtpengine")}
                            for kind in ("recorded", "baseline")},
        "sipp_failures": [r["sipp_exit"] for r in results if r["sipp_exit"] != 0],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"machine: {summary['machine']}")
        print(f"{args.calls} calls at {args.rate:g}/s, {args.duration:g} s each, "
              f"medians of {args.runs} runs")
        print(f"SIPREC set-up latency (answer -> SRS 2xx): p50 {summary['setup_ms_p50']} ms, "
              f"p95 {summary['setup_ms_p95']} ms, max {summary['setup_ms_max']} ms; "
              f"sessions established per run {summary['sessions_established']}")
        for kind in ("recorded", "baseline"):
            c = summary["cpu_ms_per_call"][kind]
            print(f"CPU per call, {kind:8}: controller {c['controller']} ms, "
                  f"kamailio {c['kamailio']} ms, rtpengine {c['rtpengine']} ms")
    return 0 if not summary["sipp_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
