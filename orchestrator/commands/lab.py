"""``siprecctl lab run``: bring the lab up, place real calls, validate recordings, report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ._output import add_json_flag, print_json, print_table


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_cmd", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="render, check, start the daemons, place calls, report")
    r.add_argument("site", nargs="?", help="site file or embedded name (default: lab)")
    r.add_argument("--workdir", type=Path, help="keep configs, logs and recordings here "
                   "(default: a new temporary directory, kept)")
    r.add_argument("--calls", type=int, default=3, help="recorded calls to place (default 3)")
    r.add_argument("--duration-ms", type=int, default=2000, help="call length after answer")
    add_json_flag(r)
    r.set_defaults(func=run)


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
