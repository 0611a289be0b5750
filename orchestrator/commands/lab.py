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
                   "kamailio-restart, rtp-loss (or 'list')")
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
    lab.up(progress=None if args.json else (lambda s: _say(f"lab up: {s}")))
    return _show_status(lab, args.json)


def _show_status(lab: Any, as_json: bool) -> int:
    procs = lab.status()
    hosts = lab.hosts()
    ok = all(p.healthy for p in procs)
    if as_json:
        print_json({"dir": str(lab.dir), "mode": lab.mode, "state": lab.reg["state"],
                    "fallback_reason": lab.reg.get("fallback_reason"), "hosts": hosts,
                    "processes": [p.as_dict() for p in procs], "healthy": ok})
        return 0 if ok else 1
    print_table(["host", "namespace", "address", "link", "processes"],
                [(h["host"], h["netns"] or "- (loopback)", h["address"],
                  "-" if h["link_up"] is None else ("up" if h["link_up"] else "DOWN"),
                  ", ".join(h["processes"])) for h in hosts],
                title=f"lab in {lab.dir} ({lab.mode}, {lab.reg['state']})")
    print_table(["host", "process", "pid", "health", "CPU s", "RSS MB", "checked"],
                [(p.host, p.name, p.pid, "ok" if p.healthy else
                  ("DOWN" if not p.running else "UNHEALTHY"), p.cpu_s, p.rss_mb, p.detail)
                 for p in procs])
    return 0 if ok else 1


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
def call(args: argparse.Namespace) -> int:
    raise NotImplementedError


def report(args: argparse.Namespace) -> int:
    raise NotImplementedError


def drill(args: argparse.Namespace) -> int:
    raise NotImplementedError


def demo(args: argparse.Namespace) -> int:
    raise NotImplementedError


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
