"""``siprecctl check SITE``: render into a temporary dir and check with the real daemons."""

from __future__ import annotations

import argparse
import sys

from ._output import add_json_flag, print_json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", nargs="?", help="site file or embedded name (default: lab)")
    parser.add_argument("--no-smoke", action="store_true",
                        help="only static checks (kamailio -c, rtpengine option parsing)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..render.check import check_site, findings_json
    from ..site import load

    findings = check_site(load(args.site), smoke_start=not args.no_smoke)
    ok = all(f.ok for f in findings)
    if args.json:
        print_json({"ok": ok, "findings": findings_json(findings)})
    else:
        for f in findings:
            print(f.format(), file=sys.stdout if f.ok else sys.stderr)
        print("check passed" if ok else "check FAILED")
    return 0 if ok else 1
