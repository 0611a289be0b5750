#!/usr/bin/env python3
"""The scale lab's pair drills, repeated (not run in CI; root: the scale lab's hosts in
network namespaces; hold the integration lock, it starts daemons).

On one scale lab (examples/lab-scale.yaml, its own namespace prefix), ``--runs`` times each,
alternating: ``leader-kill`` (SIGKILL of the acting controller under load) and
``leader-redis-partition`` (Redis cut off from the leader for 8 s, then healed) — the very
drills of ``siprecctl lab drill`` and tests/integration/test_lab_scale.py, 30 calls at 3/s
through both edges each. Per drill: runs passed, takeover p50/max, and the sums of what the
drill counts (sessions duplicated, orphaned, required calls unrecorded beyond the gap) with
the worst media lost per call.

    .venv/bin/python bench/scale_drills.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_load import machine  # noqa: E402
from orchestrator.lab.drills import run_drill  # noqa: E402
from orchestrator.lab.hosts import Lab, default_dir  # noqa: E402
from orchestrator.lab.scale import ScaleLab  # noqa: E402
from orchestrator.lab.scale_drills import SCALE_DRILLS  # noqa: E402
from orchestrator.site import load, validate_data  # noqa: E402

SUMMED = ("sessions_duplicated", "sessions_orphaned", "unrecorded_beyond_gap")


def bench_site() -> Any:
    site = load(ROOT / "examples" / "lab-scale.yaml")
    data = site.model_dump(mode="json", exclude_none=True)
    data["lab"] = {**data["lab"], "netns_prefix": "dscale", "bridge": "dscale0"}
    return validate_data(data, file="<scale drills bench site>")


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One drill's runs: passed, takeover p50/max, the counts summed, media lost max."""
    took = [r["counts"]["takeover_s"] for r in results
            if r["counts"].get("takeover_s") is not None]
    lost = [r["counts"]["media_lost_s_per_call_max"] for r in results
            if r["counts"].get("media_lost_s_per_call_max") is not None]
    return {
        "runs": len(results), "passed": sum(1 for r in results if r["passed"]),
        "takeover_s": {"p50": round(statistics.median(took), 2), "max": round(max(took), 2),
                       "all": took} if took else None,
        **{k: sum(int(r["counts"].get(k) or 0) for r in results) for k in SUMMED},
        "calls": sum(int(r["counts"].get("calls") or 0) for r in results),
        "recorded": sum(int(r["counts"].get("recorded") or 0) for r in results),
        "media_lost_s_per_call_max": max(lost) if lost else None,
        "failed_checks": sorted({c["check"] for r in results for c in r["checks"]
                                 if not c["ok"]}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=default_dir().parent / "scale-drills")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    t0 = time.time()
    lab = Lab.plan(bench_site(), args.dir, "netns")
    assert isinstance(lab, ScaleLab)
    lab.up(progress=lambda s: log(f"lab up: {s}"))
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in SCALE_DRILLS}
    try:
        for i in range(args.runs):
            for name in SCALE_DRILLS:
                res = run_drill(lab, name).as_dict()
                res.pop("per_call")
                results[name].append(res)
                c = res["counts"]
                log(f"{i + 1}/{args.runs} {name}: {'passed' if res['passed'] else 'FAILED'}; "
                    f"takeover {c.get('takeover_s')} s, duplicated "
                    f"{c.get('sessions_duplicated')}, orphaned {c.get('sessions_orphaned')}, "
                    f"unrecorded beyond the gap {c.get('unrecorded_beyond_gap')}")
                for ch in res["checks"]:
                    if not ch["ok"]:
                        log(f"    FAIL {ch['check']}: {ch['detail']}")
    finally:
        lab.down()
    summary = {"machine": machine(), "wall_s": round(time.time() - t0),
               "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
               "drills": {n: summarise(r) for n, r in results.items()}, "results": results}
    (Path(args.dir) / "scale_drills.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"machine: {summary['machine']}")
        for name, s in summary["drills"].items():
            t = s["takeover_s"] or {}
            print(f"{name}: {s['passed']}/{s['runs']} passed; takeover p50 {t.get('p50')} s, "
                  f"max {t.get('max')} s; {s['recorded']}/{s['calls']} calls recorded; "
                  f"duplicated {s['sessions_duplicated']}, orphaned {s['sessions_orphaned']}, "
                  f"unrecorded beyond the gap {s['unrecorded_beyond_gap']}; media lost per "
                  f"call at most {s['media_lost_s_per_call_max']} s")
        print(f"wall time {summary['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
