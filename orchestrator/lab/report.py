"""What a call run achieved, from the evidence each component keeps on its own:

* the edge's call events collected during the run (answered, ended; the policy's decision);
* sipp's counters (placed, completed, failed);
* the controller's store: recording sessions, losses, rtpengine's packet counters per leg;
* each SRS's session records (answered, ACKed, ended by the SRC's BYE, metadata findings,
  packets per stream label);
* rtpengine's local recordings (pcap + metadata file) for calls recorded locally;
* CPU and memory of every lab process, sampled during the run.

:func:`run_report` turns one run into figures (a dict); :func:`html_page` makes the page
with latency and throughput plots (matplotlib, SVG inline).
"""

from __future__ import annotations

import html
import io
import json
import math
import statistics
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import LabError

__all__ = ["load_runs", "percentile", "run_report", "srs_records", "html_page"]

PTIME = 0.02  # the lab's RTP: 20 ms G.711 packets
COMPLETE = 0.95
_NO_MEDIA = ("pcap holds no packets", "no packets for")  # a leg with less than this share of its packets at the SRS is incomplete


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0-100) of ``values``; None when empty."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1))]


def srs_records(lab_dir: Path) -> dict[str, dict[str, Any]]:
    """Every session record the lab's SRSs wrote, by RS Call-ID (``srs`` = which SRS)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(lab_dir) / "srs").glob("*/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written (atomically renamed into place) or not a record
        if isinstance(rec, dict) and "call_id" in rec:
            rec["srs"] = path.parent.name
            out[str(rec["call_id"])] = rec
    return out


def load_runs(lab_dir: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    """The run records of ``lab_dir`` (oldest first), or those named in ``only``."""
    runs = []
    for path in sorted((Path(lab_dir) / "runs").glob("*/run.json")):
        if only and path.parent.name not in only:
            continue
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise LabError(f"{path}: unreadable run record: {exc}") from exc
    missing = set(only or ()) - {r["run_id"] for r in runs}
    if missing:
        raise LabError(f"no such run in {lab_dir}: {', '.join(sorted(missing))}")
    return runs


def _errors(rec: dict[str, Any]) -> list[str]:
    return [f"{f.get('rule')} {f.get('message')}"
            for f in rec.get("sip_findings", []) + rec.get("metadata_findings", [])
            if f.get("severity") == "error"]


def _leg_packets(rec: dict[str, Any], caller_aor: str) -> dict[str, int]:
    """SRS packets per leg: the label whose sender (per the metadata) is the caller's AOR
    is the caller's stream; the other one the callee's."""
    out: dict[str, int] = {}
    for _label, st in sorted(rec.get("labels", {}).items()):
        aors = {p.get("aor") for p in st.get("participants", [])}
        role = "caller" if caller_aor in aors else "callee"
        out[role] = out.get(role, 0) + int(st.get("packets", 0))
    return out


def run_report(lab_dir: Path, run: dict[str, Any], store_path: Path | Any,
               records: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The figures of one run (see the module docstring) and its per-call rows.
    ``store_path``: the controller's SQLite store, or an open store (``Lab.store()``: the
    pair's Redis store in the scale lab), left open."""
    from ..controller.store import SessionStore
    from ..recordings import check_metafile

    records = srs_records(lab_dir) if records is None else records
    calls: dict[str, dict[str, Any]] = run["calls"]
    rtp = bool(run["params"].get("rtp"))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    setups: list[float] = []
    losses: Counter[str] = Counter()
    loss_seconds = 0.0
    owned = isinstance(store_path, Path)
    store: Any = None
    if owned:
        store = SessionStore(store_path, readonly=True) if store_path.exists() else None
    else:
        store = store_path
    try:
        for cid, c in calls.items():
            row: dict[str, Any] = {"call_id": cid, "rule": c.get("rule"),
                                   "siprec": c.get("siprec"), "local": c["record_local"],
                                   "ended": c.get("ended_ts") is not None, "problems": []}
            sessions = store.for_call(cid) if store else []
            est = [s.established_at for s in sessions if s.established_at is not None]
            row["sessions"] = len(sessions)
            row["established"] = len(est)
            if est:
                row["setup_ms"] = round((min(est) - c["answered_ts"]) * 1000, 2)
                setups.append(row["setup_ms"])
            call_losses = store.losses(call_id=cid) if store else []
            for loss in call_losses:
                losses[loss["reason"]] += 1
                loss_seconds += float(loss["seconds"])
            row["losses"] = [f"{x['reason']} {x['seconds']:.1f}s" for x in call_losses]
            row["loss_s"] = round(sum(float(x["seconds"]) for x in call_losses), 2)
            # the SRS side: every answered attempt of the call
            rs_ids = [a.rs_call_id for s in sessions for a in s.attempts
                      if a.outcome.endswith("answered")]
            recs = [records[r] for r in rs_ids if r in records]
            row["srs"] = ",".join(sorted({r["srs"] for r in recs})) or None
            row["srs_complete"] = bool(recs) and all(
                r.get("answered_at") and r.get("acked_at") and r.get("bye_from") == "src"
                and len(r.get("labels", {})) == 2 for r in recs)
            errs = [e for r in recs for e in _errors(r)]
            row["metadata_valid"] = bool(recs) and not errs and all(r.get("metadata_docs")
                                                                    for r in recs)
            if errs:
                row["problems"] += [f"SRS: {e}" for e in errs[:3]]
            # media: rtpengine's counters per leg (what it received) vs the SRS's packets
            if rtp and store and c.get("siprec"):
                got: dict[str, int] = {}
                for r in recs:
                    for leg, n in _leg_packets(r, urllib.parse.unquote(c.get("from") or "")
                                               ).items():
                        got[leg] = got.get(leg, 0) + n
                sent = {m["role"]: int(m["packets"]) for m in store.media(cid)
                        if m["why"] == "call end" and m["role"] in ("caller", "callee")}
                row["rtp"] = {leg: {"rtpengine": sent.get(leg), "srs": got.get(leg, 0),
                                    "completeness": round(got.get(leg, 0) / sent[leg], 4)
                                    if sent.get(leg) else None,
                                    "lost_s": round(max(0, sent.get(leg, 0)
                                                        - got.get(leg, 0)) * PTIME, 2)}
                              for leg in ("caller", "callee")}
            if c.get("siprec") and not c.get("opt_out"):
                if not est:
                    row["problems"].append("no SIPREC session established")
                elif not row["srs_complete"]:
                    row["problems"].append("an SRS session was not answered, ACKed and "
                                           "ended by BYE with two streams")
            if not c.get("siprec") and sessions:
                row["problems"].append("SIPREC sessions although the policy said no")
            if not row["ended"]:
                row["problems"].append("no ended event from the edge")
            rows.append(row)
    finally:
        if store is not None and owned:
            store.close()
    # local recordings (rtpengine pcap + metadata)
    local_expected = [r for r in rows if r["local"]]
    local_ok = 0
    rec_root = Path(lab_dir) / "recordings"
    for r in local_expected:
        prefix = urllib.parse.quote(r["call_id"], safe="")
        metas = sorted(rec_root.glob(f"*/metadata/rtpengine-meta-{prefix}-*.txt"))
        if not metas:
            r["problems"].append("no local recording")
            continue
        # with Redis replication the node's peer holds the call as a foreign call and
        # writes a copy without packets in its own directory: one good copy is the recording
        copies = [[p for p in check_metafile(m, required_keys=("call-id", "from", "to")
                                             ).problems
                   if rtp or not p.startswith(_NO_MEDIA)]  # a run without RTP has none
                  for m in metas]
        found = min(copies, key=len)
        if found:
            r["problems"] += [f"local recording: {p}" for p in found]
        else:
            local_ok += 1
    sipp = run["sipp"]
    placed = sum(int(s.get("OutgoingCall(C)", 0)) for s in sipp.values())
    failed = sum(int(s.get("FailedCall(C)", 0)) for s in sipp.values())
    to_record = [r for r in rows if r["siprec"]]
    est_calls = [r for r in to_record if r["established"]]
    leg_stats: dict[str, Any] = {}
    if rtp:
        for leg in ("caller", "callee"):
            vals = [r["rtp"][leg]["completeness"] for r in to_record
                    if r.get("rtp") and r["rtp"][leg]["completeness"] is not None]
            lost = [r["rtp"][leg]["lost_s"] for r in to_record if r.get("rtp")]
            leg_stats[leg] = {"calls": len(vals),
                              "mean": round(statistics.fmean(vals), 4) if vals else None,
                              "min": min(vals) if vals else None,
                              "complete": sum(v >= COMPLETE for v in vals),
                              "lost_s_max": max(lost) if lost else None}
    usage = run.get("usage", {})
    answered = len(rows)
    for u in usage.values():
        u["cpu_ms_per_call"] = round(u["cpu_s"] * 1000 / answered, 2) if answered else None
    if failed:
        problems.append(f"sipp counted {failed} failed calls")
    if placed != answered:
        problems.append(f"{placed} calls placed, {answered} answered at the edge")
    bad = [r for r in rows if r["problems"]]
    if bad:
        problems.append(f"{len(bad)} calls with problems")
    for leg, st in leg_stats.items():
        if st["calls"] and st["complete"] < st["calls"]:
            problems.append(f"{st['calls'] - st['complete']} calls with less than "
                            f"{COMPLETE:.0%} of the {leg}'s RTP at the SRS")
    return {
        "run_id": run["run_id"], "label": run.get("label", ""), "mode": run.get("mode"),
        "params": run["params"], "started": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"])),
        "seconds": round(run["sipp_done_at"] - run["started_at"], 1),
        "calls": {"placed": placed, "answered": answered, "failed": failed,
                  "ended": sum(r["ended"] for r in rows)},
        "policy": {"siprec": len(to_record), "local": len(local_expected),
                   "not_recorded": answered - len(to_record)},
        "siprec": {"calls_established": len(est_calls),
                   "sessions_established": sum(r["established"] for r in rows),
                   "srs_complete": sum(r["srs_complete"] for r in to_record),
                   "metadata_valid": sum(r["metadata_valid"] for r in to_record),
                   "losses": dict(losses), "loss_seconds": round(loss_seconds, 2)},
        "local": {"expected": len(local_expected), "recorded": local_ok},
        "rtp": leg_stats or None,
        "setup_ms": {"n": len(setups), "p50": percentile(setups, 50),
                     "p95": percentile(setups, 95), "p99": percentile(setups, 99),
                     "max": max(setups) if setups else None},
        "usage": usage,
        "timeline": _timeline(run, rows),
        "problems": problems,
        "ok": not problems,
        "per_call": rows,
    }


def _timeline(run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per second since the start: calls answered, recording sessions established."""
    t0 = run["started_at"]
    answered: Counter[int] = Counter()
    for c in run["calls"].values():
        answered[int(c["answered_ts"] - t0)] += 1
    established: Counter[int] = Counter()
    for r in rows:
        if "setup_ms" in r:
            at = run["calls"][r["call_id"]]["answered_ts"] + r["setup_ms"] / 1000
            established[int(at - t0)] += 1
    n = max([*answered, *established, 0]) + 1
    return {"second": list(range(n)), "answered": [answered[i] for i in range(n)],
            "established": [established[i] for i in range(n)]}


# ---------------------------------------------------------------------------- HTML
def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _plots(rep: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    out = []
    setups = sorted(r["setup_ms"] for r in rep["per_call"] if "setup_ms" in r)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    ax = axes[0]
    if setups:
        ax.plot(setups, [(i + 1) / len(setups) for i in range(len(setups))])
        for q in (50, 95, 99):
            v = percentile(setups, q)
            if v is not None:
                ax.axvline(v, linestyle=":", linewidth=1)
                ax.text(v, 0.05 + q / 400, f"p{q} {v:.1f}", fontsize=7)
    ax.set_xlabel("SIPREC set-up latency (ms, answer → SRS 2xx)")
    ax.set_ylabel("share of recorded calls")
    ax.set_title("set-up latency (CDF)")
    tl = rep["timeline"]
    ax = axes[1]
    ax.step(tl["second"], tl["answered"], where="post", label="calls answered")
    ax.step(tl["second"], tl["established"], where="post", label="SIPREC sessions established")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("per second")
    ax.set_title("throughput")
    ax.legend(fontsize=7)
    out.append(_svg(fig))
    plt.close(fig)
    return "\n".join(out)


def _kv_table(d: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in d.items())
    return f"<table>{cells}</table>"


def html_page(reports: list[dict[str, Any]], bench: dict[str, Any] | None = None) -> str:
    """One page: per run its figures, plots and problems; the load benchmark's figures."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>siprecctl lab report"
             "</title><style>body{font-family:sans-serif;margin:2em;max-width:72em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left;font-size:90%}.bad{color:#b00}.ok{color:#070}"
             "</style></head><body><h1>siprecctl lab report</h1>"]
    for rep in reports:
        verdict = "<span class='ok'>ok</span>" if rep["ok"] else \
            "<span class='bad'>" + html.escape("; ".join(rep["problems"])) + "</span>"
        p = rep["params"]
        parts.append(f"<h2>run {html.escape(rep['run_id'])} {html.escape(rep['label'])}</h2>"
                     f"<p>{html.escape(rep['started'])}, {rep['mode']}: {p['calls']} calls at "
                     f"{p['rate']}/s, {p['duration']} s each, RTP {'on' if p['rtp'] else 'off'}"
                     f", {p['opt_out']} opted out — {verdict}</p>")
        figures = {**{f"calls {k}": v for k, v in rep["calls"].items()},
                   **{f"policy {k}": v for k, v in rep["policy"].items()},
                   **{f"SIPREC {k}": v for k, v in rep["siprec"].items()},
                   **{f"local {k}": v for k, v in rep["local"].items()},
                   **{f"set-up ms {k}": v for k, v in rep["setup_ms"].items()}}
        for leg, st in (rep["rtp"] or {}).items():
            figures[f"RTP {leg} completeness (mean / min)"] = f"{st['mean']} / {st['min']}"
        parts.append(_kv_table(figures))
        parts.append("<table><tr><th>process</th><th>CPU s</th><th>CPU ms per call</th>"
                     "<th>peak memory MB (PSS)</th></tr>" + "".join(
                         f"<tr><td>{html.escape(n)}</td><td>{u['cpu_s']}</td>"
                         f"<td>{u.get('cpu_ms_per_call')}</td><td>{u['mem_mb_peak']}</td></tr>"
                         for n, u in rep["usage"].items()) + "</table>")
        parts.append(_plots(rep))
    if bench:
        parts.append("<h2>load benchmark (bench/e2e_load.py)</h2>")
        parts.append(f"<pre>{html.escape(json.dumps(bench, indent=1))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
