"""``siprecctl site``: validate a site file, show it normalised, print its JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys

from ._output import add_json_flag, print_json


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="site_cmd", metavar="ACTION", required=True)
    v = sub.add_parser("validate", help="validate a site file (default: the embedded lab)")
    v.add_argument("site", nargs="?", help="site file, '-' for stdin, or an embedded name")
    add_json_flag(v)
    v.set_defaults(func=run_validate)
    s = sub.add_parser("show", help="print the validated site with every default filled in")
    s.add_argument("site", nargs="?")
    s.set_defaults(func=run_show)
    sc = sub.add_parser("schema", help="print the JSON Schema of the site file (for editors)")
    sc.set_defaults(func=run_schema)


def run_validate(args: argparse.Namespace) -> int:
    from ..errors import SiteError, SiteErrors
    from ..site import load

    try:
        site = load(args.site)
    except SiteError as exc:
        errs = exc.errors if isinstance(exc, SiteErrors) else [exc]
        if args.json:
            print_json({"valid": False, "errors": [
                {"file": e.file, "line": e.line, "path": e.path, "message": e.message}
                for e in errs]})
        else:
            for e in errs:
                print(e.format(), file=sys.stderr)
        return 1
    summary = {"valid": True, "site": site.name, "edges": len(site.edges),
               "nodes": len(site.media.nodes), "srs_groups": len(site.recording.srs_groups),
               "rules": len(site.recording.rules)}
    if args.json:
        print_json(summary)
    else:
        print(f"{args.site or '<embedded:lab>'}: ok (site '{site.name}': {len(site.edges)} "
              f"edge(s), {len(site.media.nodes)} rtpengine node(s), "
              f"{len(site.recording.srs_groups)} SRS group(s), {len(site.recording.rules)} rule(s))")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..site import load

    print_json(load(args.site).model_dump(mode="json"))
    return 0


def run_schema(args: argparse.Namespace) -> int:
    from ..site import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return 0
