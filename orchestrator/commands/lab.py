"""``siprecctl lab``: the lab's hosts (network namespaces, or loopback as a fallback), calls
through them, reports, fault drills; ``lab demo`` does it all in one go."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._output import add_json_flag, print_json, print_table


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, dest="labdir", help="the lab directory: registry, "
                   "configs, logs, recordings, runs (default $SIPRECCTL_LAB_DIR, else "
                   "/var/lib/siprecctl/lab as root)")


def _mode_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("auto", "netns", "loopback"), default="auto",
                   help="hosts in network namespaces (needs root), on loopback, or "
                        "namespaces when possible (default)")


def _call_args(p: argparse.ArgumentParser, calls: int, rate: float, duration: float) -> None:
    p.add_argument("--calls", type=int, default=calls, help=f"calls to place (default {calls})")
    p.add_argument("--rate", type=float, default=rate, help=f"calls per second (default {rate:g})")
    p.add_argument("--duration", type=float, default=duration,
                   help=f"seconds each call lasts after the answer (default {duration:g})")
    p.add_argument("--rtp", action="store_true", help="the caller plays G.711 RTP (the callee "
                   "echoes it): RTP completeness per leg is measured")
    p.add_argument("--opt-out", type=int, default=0, metavar="N",
                   help="of the calls, N carry X-Record: no (the lab's opt-out rule)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_cmd", metavar="ACTION", required=True)

    p = sub.add_parser("up", help="create the hosts and start every daemon in them")
    p.add_argument("site", nargs="?", help="site file or embedded name (default: lab)")
    _dir_arg(p)
    _mode_arg(p)
    add_json_flag(p)
    p.set_defaults(func=up)

    p = sub.add_parser("status", help="hosts, processes and their health")
    _dir_arg(p)
    add_json_flag(p)
    p.set_defaults(func=status)

    p = sub.add_parser("call", help="place calls from caller to callee through edge (sipp)")
    _dir_arg(p)
    _call_args(p, calls=10, rate=5.0, duration=3.0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)
    p.set_defaults(func=call)

    p = sub.add_parser("report", help="what each call run achieved (table, JSON, HTML)")
    _dir_arg(p)
    p.add_argument("--run", action="append", metavar="ID", help="only this run (repeatable; "
                   "default: every run of the lab directory)")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="also write the HTML page there (default <dir>/report.html)")
    add_json_flag(p)
    p.set_defaults(func=report)

    p = sub.add_parser("drill", help="a fault drill under load, with a verdict")
    p.add_argument("name", help="srs-kill, srs-partition, controller-kill, rtpengine-restart, "
                   "kamailio-restart, rtp-loss; in the scale lab leader-kill, "
                   "leader-redis-partition (or 'list')")
    _dir_arg(p)
    add_json_flag(p)
    p.set_defaults(func=drill)

    p = sub.add_parser("down", help="stop every process and remove the hosts (idempotent)")
    p.add_argument("site", nargs="?", help="with no registry in DIR: remove the namespaces "
                   "this site's lab section names (default: lab)")
    _dir_arg(p)
    p.set_defaults(func=down)

    p = sub.add_parser("demo", help="up + a short call run + report + down")
    p.add_argument("site", nargs="?", help="site file or embedded name (default: lab)")
    _dir_arg(p)
    _mode_arg(p)
    _call_args(p, calls=10, rate=5.0, duration=3.0)
    p.set_defaults(rtp=True, opt_out=2)
    add_json_flag(p)
    p.set_defaults(func=demo)

    r = sub.add_parser("run", help="(retired: see lab demo) the one-process loopback check")
    r.add_argument("site", nargs="?", help="site file or embedded name (default: lab)")
    r.add_argument("--workdir", type=Path, help="keep configs, logs and recordings here "
                   "(default: a new temporary directory, kept)")
    r.add_argument("--calls", type=int, default=3, help="recorded calls to place (default 3)")
    r.add_argument("--duration-ms", type=int, default=2000, help="call length after answer")
    add_json_flag(r)
    r.set_defaults(func=run)


def _labdir(args: argparse.Namespace) -> Path:
    from ..lab.hosts import default_dir

    return Path(args.labdir) if args.labdir else default_dir()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- up/status/down
def up(args: argparse.Namespace) -> int:
    from ..lab.hosts import Lab
    from ..site import load

    lab = Lab.plan(load(args.site), _labdir(args), args.mode)
    if lab.mode == "loopback":
        _say(f"lab: network namespaces cannot be used ({lab.reg['fallback_reason']}): "
             f"hosts on loopback, ports 6100-6999")
    lab.up(progress=(lambda s: None) if args.json else (lambda s: _say(f"lab up: {s}")))
    return _show_status(lab, args.json)


def _show_status(lab: Any, as_json: bool) -> int:
    procs = lab.status()
    hosts = lab.hosts()
    ok = all(p.healthy for p in procs)
    pair = _pair_status(lab)
    if as_json:
        print_json({"dir": str(lab.dir), "mode": lab.mode, "state": lab.reg["state"],
                    "fallback_reason": lab.reg.get("fallback_reason"), "hosts": hosts,
                    "processes": [p.as_dict() for p in procs], "healthy": ok,
                    **({"pair": pair} if pair else {})})
        return 0 if ok else 1
    print_table(["host", "namespace", "address", "link", "processes"],
                [(h["host"], h["netns"] or "- (loopback)", h["address"],
                  "-" if h["link_up"] is None else ("up" if h["link_up"] else "DOWN"),
                  ", ".join(h["processes"])) for h in hosts],
                title=f"lab in {lab.dir} ({lab.mode}, {lab.reg['state']})")
    print_table(["host", "process", "pid", "health", "CPU s", "memory MB (PSS)", "checked"],
                [(p.host, p.name, p.pid, "ok" if p.healthy else
                  ("DOWN" if not p.running else "UNHEALTHY"), p.cpu_s, p.mem_mb, p.detail)
                 for p in procs])
    if pair:
        _print_pair(pair)
    return 0 if ok else 1


def _pair_status(lab: Any) -> dict[str, Any] | None:
    """The controller pair of a scale lab (who leads, the lease's epoch), else None."""
    if not hasattr(lab, "pair") or lab.reg.get("state") == "down":
        return None
    return {"instances": lab.pair(), "lease": lab.lease(), "nodes": lab.nodes()}


def _print_pair(pair: dict[str, Any]) -> None:
    lease = pair["lease"]
    print_table(["instance", "host", "running", "role", "epoch", "evapi", "open sessions"],
                [(i["instance"], i["host"], "yes" if i["running"] else "NO",
                  "LEADS" if i["acting"] else "standby", i["epoch"] or "-",
                  ", ".join(f"{e} {'up' if up else 'DOWN'}"
                            for e, up in (i["edges"] or {}).items()) or "-",
                  i["open_sessions"]) for i in pair["instances"]],
                title=f"controller pair: lease held by {lease.get('holder') or 'nobody'}, "
                      f"epoch {lease.get('epoch')}")
    print_table(["node", "set", "weight", "NG", "running", "Redis db", "mirrors",
                 "keys in its db"],
                [(n["node"], n["set"], n["weight"], n["ng"], "yes" if n["running"] else "NO",
                  "-" if n["redis_db"] is None else n["redis_db"],
                  ", ".join(n["peers"]) or "-",
                  "?" if n["keys_in_db"] is None else n["keys_in_db"])
                 for n in pair["nodes"]], title="rtpengine nodes")


def status(args: argparse.Namespace) -> int:
    from ..lab.hosts import Lab

    return _show_status(Lab.open(_labdir(args)), args.json)


def down(args: argparse.Namespace) -> int:
    from ..lab.hosts import lab_down
    from ..site import load

    done = lab_down(_labdir(args), load(args.site))
    for line in done:
        print(line)
    if not done:
        print(f"nothing to remove (no lab up in {_labdir(args)})")
    return 0


# ---------------------------------------------------------------------------- calls, report
def _place(lab: Any, args: argparse.Namespace, *, show: bool, label: str = "") -> dict[str, Any]:
    from ..lab.load import CallProgress, place_calls

    if not show:
        return place_calls(lab, calls=args.calls, rate=args.rate, duration=args.duration,
                           rtp=args.rtp, opt_out=args.opt_out, label=label)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(TextColumn("calls"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as bar:
        task = bar.add_task("", total=args.calls)

        def show_progress(p: CallProgress) -> None:
            bar.update(task, completed=p.done,
                       description=f"placed {p.placed}, answered {p.answered}, up {p.current},"
                                   f" failed {p.failed}")

        return place_calls(lab, calls=args.calls, rate=args.rate, duration=args.duration,
                           rtp=args.rtp, opt_out=args.opt_out, progress=show_progress,
                           label=label)


def call(args: argparse.Namespace) -> int:
    from ..lab.hosts import Lab

    lab = Lab.open(_labdir(args))
    run = _place(lab, args, show=not (args.json or args.no_progress))
    sipp = run["sipp"]
    failed = sum(int(s.get("FailedCall(C)", 0)) for s in sipp.values())
    summary = {"run_id": run["run_id"], "answered": len(run["calls"]), "failed": failed,
               "sipp_exit": {k: v["exit"] for k, v in sipp.items()},
               "run": str(lab.dir / "runs" / run["run_id"])}
    if args.json:
        print_json(summary)
    else:
        print(f"run {run['run_id']}: {len(run['calls'])} calls answered at the edge, "
              f"{failed} failed (sipp); siprecctl lab report --run {run['run_id']}")
    return 0 if failed == 0 and all(v["exit"] == 0 for v in sipp.values()) else 1


def _bench_figures(labdir: Path) -> dict[str, Any] | None:
    import json

    path = labdir / "bench" / "e2e_load.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _print_report(rep: dict[str, Any]) -> None:
    c, pol, sr, su = rep["calls"], rep["policy"], rep["siprec"], rep["setup_ms"]
    p = rep["params"]
    rows = [
        ("calls placed / answered / failed / ended",
         f"{c['placed']} / {c['answered']} / {c['failed']} / {c['ended']}"),
        ("recorded by policy (SIPREC / local / not recorded)",
         f"{pol['siprec']} / {pol['local']} / {pol['not_recorded']}"),
        ("SIPREC sessions established (calls / sessions)",
         f"{sr['calls_established']} / {sr['sessions_established']}"),
        ("at the SRS: answered, ACKed, ended by BYE", str(sr["srs_complete"])),
        ("metadata valid (strict RFC 7865 validator at the SRS)", str(sr["metadata_valid"])),
        ("local recordings (pcap + metadata)", f"{rep['local']['recorded']} of "
                                                f"{rep['local']['expected']}"),
        ("losses counted by the controller",
         ", ".join(f"{k} {v}" for k, v in sr["losses"].items()) or "none"),
        ("set-up latency ms p50 / p95 / p99 / max",
         " / ".join("-" if su[k] is None else f"{su[k]:.1f}" for k in ("p50", "p95", "p99",
                                                                        "max"))),
    ]
    for leg, st in (rep["rtp"] or {}).items():
        rows.append((f"RTP completeness, {leg} leg (mean / min; calls ≥ 95 %)",
                     f"{st['mean']:.2%} / {st['min']:.2%}; {st['complete']} of {st['calls']}"
                     if st["calls"] else "no media counted"))
    for name, u in rep["usage"].items():
        rows.append((f"{name}: CPU s (ms per call), peak memory",
                     f"{u['cpu_s']:.2f} ({u.get('cpu_ms_per_call')}), {u['mem_mb_peak']} MB"))
    print_table(["", "value"], rows,
                title=f"run {rep['run_id']} {rep['label']}: {p['calls']} calls at {p['rate']}/s,"
                      f" {p['duration']} s, RTP {'on' if p['rtp'] else 'off'} "
                      f"({rep['mode']}, {rep['started']})")
    bad = [r for r in rep["per_call"] if r["problems"]]
    if bad:
        print_table(["call-id", "problems"], [(r["call_id"], "; ".join(r["problems"]))
                                              for r in bad[:20]],
                    title=f"{len(bad)} calls with problems")
    print("RUN OK" if rep["ok"] else "RUN FAILED: " + "; ".join(rep["problems"]))


def _report(labdir: Path, runs: list[str] | None, html_path: Path | None,
            as_json: bool) -> int:
    from ..lab.hosts import Lab
    from ..lab.report import html_page, load_runs, run_report, srs_records
    from ..site import load

    reg = Lab.read_registry(labdir)
    if reg is None:
        from ..errors import LabError

        raise LabError(f"no lab in {labdir}")
    lab = Lab.of(labdir, reg)
    records = srs_records(labdir)
    pair = _pair_status(lab)
    with lab.store() as store:
        src = store if store is not None else Path(load(reg["site_file"]).controller.store)
        reps = [run_report(labdir, r, src, records) for r in load_runs(labdir, runs)]
    bench = _bench_figures(labdir)
    out = html_path or labdir / "report.html"
    out.write_text(html_page(reps, bench))
    if as_json:
        print_json({"runs": reps, "bench": bench, "html": str(out),
                    **({"pair": pair} if pair else {})})
    else:
        for rep in reps:
            _print_report(rep)
        if pair:
            _print_pair(pair)
        if bench:
            _print_bench(bench)
        print(f"HTML report with plots: {out}")
    return 0 if all(r["ok"] for r in reps) else 1


def _print_bench(b: dict[str, Any]) -> None:
    rows = [("machine", b.get("machine")), ("when", b.get("when"))]
    for kind in ("plain", "recorded"):
        k = b.get(kind) or {}
        rows.append((f"max rate, {kind} (0 failed calls for {b.get('seconds')} s)",
                     f"{k.get('max_rate')} calls/s"))
    rows.append(("ratio recorded / plain", b.get("ratio")))
    lat = b.get("latency_at_half") or {}
    rows.append((f"set-up latency at {lat.get('rate')} calls/s (p50/p95/p99 ms)",
                 f"{lat.get('p50')} / {lat.get('p95')} / {lat.get('p99')}"))
    for proc, v in (b.get("cpu_ms_per_call") or {}).items():
        rows.append((f"CPU per call, {proc} (ms)", v))
    print_table(["load benchmark", "value"], rows, title="bench/e2e_load.py (latest)")


def report(args: argparse.Namespace) -> int:
    return _report(_labdir(args), args.run, args.html, args.json)


def drill(args: argparse.Namespace) -> int:
    from ..lab.drills import all_drills, run_drill
    from ..lab.hosts import Lab

    if args.name == "list":
        print_table(["drill", "what"], list(all_drills().items()))
        return 0
    res = run_drill(Lab.open(_labdir(args)), args.name)
    if args.json:
        print_json(res.as_dict())
        return 0 if res.passed else 1
    print(f"drill {res.name}: {res.what} (run {res.run_id})")
    for line in res.happened:
        print(f"  {line}")
    print_table(["check", "result", "detail"],
                [(c, "pass" if ok else "FAIL", d) for c, ok, d in res.checks])
    print("counts: " + ", ".join(f"{k} {v}" for k, v in res.counts.items()))
    print(f"DRILL {res.name} {'PASSED' if res.passed else 'FAILED'}")
    return 0 if res.passed else 1


def demo(args: argparse.Namespace) -> int:
    """up + a short call run + report + down; the lab directory is kept."""
    from ..lab.hosts import Lab
    from ..site import load

    labdir = _labdir(args)
    lab = Lab.plan(load(args.site), labdir, args.mode)
    if lab.mode == "loopback":
        _say(f"lab: network namespaces cannot be used ({lab.reg['fallback_reason']}): "
             f"hosts on loopback, ports 6100-6999")
    rc: int | None = None
    try:
        lab.up(progress=lambda s: _say(f"lab up: {s}"))
        if not args.json:
            _show_status(lab, False)
        run = _place(lab, args, show=not args.json, label="demo")
        if hasattr(lab, "pair"):  # the scale lab: its sessions are in its Redis, up only now
            rc = _report(labdir, [run["run_id"]], None, args.json)
    finally:
        for line in lab.down():
            _say(f"lab down: {line}")
    if rc is None:
        rc = _report(labdir, [run["run_id"]], None, args.json)
        if not args.json and not hasattr(lab, "pair"):
            rc = max(rc, _audit(lab, run))
    return rc


def _audit(lab: Any, run: dict[str, Any]) -> int:
    """The demo's completeness: ``siprecctl audit`` over the run's calls, from the edge's
    own records, the controller's store, the local recordings and the SRSs' records."""
    from datetime import datetime

    from .audit import run as audit_run

    reg = lab.reg
    site = lab.site
    print(f"\nsiprecctl audit {reg['site_file']} --since <the run's start> …", flush=True)
    ns = argparse.Namespace(
        site=reg["site_file"], until=None,
        since=datetime.fromtimestamp(float(run["started_at"]) - 1.0).isoformat(),
        store=site.controller.store, accounting=None, recordings=None, no_recordings=False,
        srs_records=[lab.dir / "srs" / "srs1", lab.dir / "srs" / "srs2"], min_media=0.99,
        html=lab.dir / "audit.html", force=True, json=False)
    return int(audit_run(ns))


# ---------------------------------------------------------------------------- lab run
def run(args: argparse.Namespace) -> int:
    from ..lab.run import run_lab
    from ..site import load

    site = load(args.site)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="siprecctl-lab-"))
    report = run_lab(site, workdir, calls=args.calls, duration_ms=args.duration_ms)
    if args.json:
        print_json(report.as_dict())
        return 0 if report.ok else 1
    for line in report.checks:
        print(line)
    print_table(["call-id", "policy", "rule", "local", "pcap packets", "metadata keys",
                 "SIPREC (SRS: packets per label)", "result"],
                [(c.call_id, c.kind, c.rule,
                  "yes" if c.pcap_packets is not None else "no", c.pcap_packets,
                  ",".join(c.metadata_keys),
                  f"{c.siprec_srs}: " + " ".join(f"{k}={v}" for k, v in c.siprec_packets.items())
                  if c.siprec_srs else "-",
                  "ok" if c.ok else "; ".join(c.problems))
                 for c in report.calls],
                title=f"lab '{report.site}': {len(report.calls)} calls in {report.seconds} s")
    for name, rc in report.sipp_exit.items():
        print(f"{name}: exit {rc}")
    print(f"workdir (configs, logs, recordings): {report.workdir}")
    print("LAB PASSED" if report.ok else "LAB FAILED")
    return 0 if report.ok else 1
