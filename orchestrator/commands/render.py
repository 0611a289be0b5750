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
    parser.add_argument("--force", action="store_true",
                        help="replace files in DIR that siprecctl did not render (or that "
                             "were edited since)")
    parser.add_argument("--secrets", action="store_true",
                        help="also create the site's missing secrets and write each edge's "
                             "Kamailio secrets include (in security.secrets_dir)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..render import render_site, stale_diff, write
    from ..site import load

    site = load(args.site)
    files = render_site(site)
    if args.check:
        diff = stale_diff(args.output, files)
        if diff:
            sys.stdout.write(diff)
            print(f"siprecctl: {args.output} is stale; run: siprecctl render "
                  f"{args.site or ''} -o {args.output}".replace("  ", " "), file=sys.stderr)
            return 1
        print(f"{args.output}: up to date ({len(files)} files)")
        return 0
    for path in write(args.output, files, force=args.force, site=site):
        print(f"wrote {path}")
    if args.secrets:
        from ..render import ensure_secrets

        for line in ensure_secrets(site):
            print(line)
    return 0
