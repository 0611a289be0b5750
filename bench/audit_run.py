#!/usr/bin/env python3
"""Completeness of a loaded run, and of each drill, as ``siprecctl audit`` measures it.

Brings up the lab on free loopback ports (rtpengine, Kamailio from the rendered config,
``siprecctl serve``, SRS ``a`` as its own ``siprecctl srs`` process so it can be SIGKILLed,
SRS ``b`` in-process, a sipp callee echoing RTP), places ``--calls`` calls at ``--rate``
calls/s with sipp (``--duration`` s each, G.711 from sipp's g711a.pcap), and during the run:

* ``clean``            -- nothing;
* ``srs-kill``         -- SIGKILL of SRS a (hunt's first) ``--at`` seconds in;
* ``controller-down``  -- the controller stopped (SIGTERM) for ``--outage`` seconds;
* ``controller-stall`` -- the controller frozen (SIGSTOP) for ``--outage`` seconds.

When every session has closed, ``siprecctl audit --json`` reads the edge's records, the
store, the local recordings and both SRSs' session records; the summary is printed (and the
HTML page kept in ``--keep DIR``). Slow: not part of CI (``flock`` the integration lock).

    .venv/bin/python bench/audit_run.py [--drill clean] [--calls 500] [--rate 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.controller.store import SessionStore  # noqa: E402
from orchestrator.daemons import free_ports  # noqa: E402
from orchestrator.lab import sipp  # noqa: E402
from orchestrator.lab.srs import Behaviour, SrsConfig  # noqa: E402
from orchestrator.lab.stack import LabStack  # noqa: E402
from orchestrator.site import validate_data  # noqa: E402

DRILLS = ("clean", "srs-kill", "controller-down", "controller-stall")


def site(work: Path, p: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench",
        "edges": [{"name": "edge1", "children": 8, "shm_mb": 256,
                   "listen": [{"proto": "udp", "address": "127.0.0.1", "port": p["sip"]}],
                   "trunks": [{"name": "uas", "uri": f"sip:127.0.0.1:{p['uas']}"}],
                   "jsonrpc": {"address": "127.0.0.1", "port": p["rpc"]},
                   "evapi": {"address": "127.0.0.1", "port": p["evapi"]},
                   "run_dir": str(work / "run" / "edge1")}],
        "media": {"recording": {"method": "pcap", "dir": str(work / "recordings")},
                  "delete_delay": 2,
                  "nodes": [{"name": "rtp1", "ng": {"address": "127.0.0.1", "port": p["ng"]},
                             "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                             "ports": {"port_min": 40000, "port_max": 43999}}]},
        "recording": {"default": True, "local": True, "siprec": "main",
                      "srs_groups": [{"name": "main", "timeout": 2.0, "servers": [
                          {"uri": f"sip:srs@127.0.0.1:{p['a']}"},
                          {"uri": f"sip:srs@127.0.0.1:{p['b']}"}]}]},
        "controller": {"api": {"address": "127.0.0.1", "port": p["api"]},
                       "store": str(work / "state.sqlite")},
    }


def srs_process(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "srs.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "srs", "--listen", f"127.0.0.1:{port}",
         "--transport", "udp", "--dir", str(workdir), "--rtp-ports", "44000-45999",
         "--name", "a"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 10
    while b"listening" not in (workdir / "srs.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"SRS a did not start: {(workdir / 'srs.log').read_text()}")
        time.sleep(0.05)
    return proc


def settle(stack: LabStack, since: float, timeout: float = 120.0) -> int:
    """Wait until every session of the calls answered since ``since`` has closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = SessionStore(stack.store, readonly=True)
        try:
            calls = store.calls(since)
            open_ = [s for r in calls for s in store.for_call(r["call_id"])
                     if s.state.value not in ("closed", "failed")]
        finally:
            store.close()
        if not open_ and all(r["ended"] is not None for r in calls):
            return len(calls)
        time.sleep(0.5)
    return -1


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    free = iter(free_ports(10))
    p = {k: next(free) for k in ("sip", "uas", "rpc", "evapi", "ng", "api", "a", "b")}
    st = validate_data(site(work, p), file="bench-site")
    b = SrsConfig(address="127.0.0.1", port=p["b"], name="b", record_dir=work / "srs-b",
                  rtp_port_min=46000, rtp_port_max=47999, behaviour=Behaviour())
    b.record_dir.mkdir(parents=True)
    srs_a = srs_process(p["a"], work / "srs-a")
    try:
        with LabStack(st, work, srs=[b]) as stack:
            cwd = sipp.workdir(work / "sipp")
            uas = sipp.uas(cwd, "127.0.0.1", p["uas"])
            time.sleep(2.5)  # the prober sees both SRSs up
            t0 = time.time()
            uac = subprocess.Popen(
                sipp.uac_argv(cwd, f"127.0.0.1:{p['sip']}", local=("127.0.0.1", next(free)),
                              calls=args.calls, duration_ms=int(args.duration * 1000),
                              rate=args.rate),
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            event = None
            if args.drill != "clean":
                time.sleep(args.at)
                event = time.time()
                if args.drill == "srs-kill":
                    os.kill(srs_a.pid, signal.SIGKILL)
                elif args.drill == "controller-down":
                    stack.stop_controller()
                    time.sleep(args.outage)
                    stack.start_controller()
                else:
                    assert stack.controller_proc is not None
                    os.kill(stack.controller_proc.pid, signal.SIGSTOP)
                    time.sleep(args.outage)
                    os.kill(stack.controller_proc.pid, signal.SIGCONT)
            sipp_rc = uac.wait(args.calls / args.rate + args.duration + 120)
            sipp.stop(uas)
            seen = settle(stack, t0)
            time.sleep(st.media.delete_delay + 2)  # rtpengine finalises the pcaps
            html = work / "audit.html"
            out = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "audit", str(stack.site_file),
                 "--store", str(stack.store), "--srs-records", str(work / "srs-a"),
                 "--srs-records", str(work / "srs-b"), "--since",
                 datetime.fromtimestamp(t0 - 1).isoformat(), "--json", "--html", str(html)],
                capture_output=True, text=True, timeout=600)
            if out.returncode not in (0, 1):
                raise SystemExit(f"siprecctl audit exited {out.returncode}: {out.stderr}")
            doc = json.loads(out.stdout)
    finally:
        if srs_a.poll() is None:
            srs_a.terminate()
            srs_a.wait(10)
    s = doc["summary"]
    streams = [m["ratio"] for e in doc["entries"] for x in e["sessions"]
               for m in x["media"] if m["ratio"] is not None]
    return {"drill": args.drill, "calls": args.calls, "rate": args.rate,
            "duration": args.duration, "event_at": None if event is None else event - t0,
            "sipp_exit": sipp_rc, "controller_saw": seen, "audit_exit": out.returncode,
            "summary": {k: s[k] for k in ("answered", "failed_attempts", "required",
                                          "recorded", "with_gaps", "missing",
                                          "completeness", "coverage", "local", "reasons")},
            "streams": len(streams), "streams_below_99": sum(r < 0.99 for r in streams),
            "worst_stream": min(streams) if streams else None, "html": str(html)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drill", choices=DRILLS, default="clean")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=7.0, help="seconds per call")
    ap.add_argument("--at", type=float, default=10.0, help="seconds into the run: the drill")
    ap.add_argument("--outage", type=float, default=5.0, help="controller down/stalled (s)")
    ap.add_argument("--keep", type=Path, help="keep the workdir (logs, records, audit.html)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="siprecctl-audit-bench-"))
    try:
        result = run(args, work)
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                            ignore=shutil.ignore_patterns("*.sock", "pcap"))
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["summary"]
    print(f"{result['drill']}: {result['calls']} calls at {result['rate']:g}/s, "
          f"{result['duration']:g} s each (sipp exit {result['sipp_exit']})")
    print(f"  required {s['required']}, recorded {s['recorded']}, with gaps {s['with_gaps']}, "
          f"missing {s['missing']}; completeness {s['completeness']:.1%}, "
          f"coverage {s['coverage']:.2%}")
    print(f"  reasons {s['reasons']}; local {s['local']}")
    print(f"  streams {result['streams']}, below 99 %: {result['streams_below_99']}, "
          f"worst {result['worst_stream']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
