"""``siprecctl render SITE -o DIR [--check]``: write configs, or diff them against DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", nargs="?", help="site file, '-' for stdin, or an embedded name "
                        "(default: the embedded lab)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; show a diff and exit 1 when DIR is stale")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..render import render_site, stale_diff, write
    from ..site import load

    files = render_site(load(args.site))
    if args.check:
        diff = stale_diff(args.output, files)
        if diff:
            sys.stdout.write(diff)
            print(f"siprecctl: {args.output} is stale; run: siprecctl render "
                  f"{args.site or ''} -o {args.output}".replace("  ", " "), file=sys.stderr)
            return 1
        print(f"{args.output}: up to date ({len(files)} files)")
        return 0
    for path in write(args.output, files):
        print(f"wrote {path}")
    return 0
