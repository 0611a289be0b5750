"""``siprecctl record start|stop CALL-ID``: rtpengine (pcap) recording of one call over NG.

With a site and no ``--node``, the call is looked up on the site's nodes (the one
Kamailio's hash would pick first). ``record pause|resume`` come with the controller.
Exit codes: 0 ok, 1 rtpengine said error (e.g. "Unknown call-id"), 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys

from ._output import add_json_flag, print_json
from .ng import EXIT_OK, UsageError, add_target_args, open_targets, run_guarded


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="record_cmd", metavar="ACTION", required=True)
    for action, help_text in (("start", "start recording a call (pcap + metadata file)"),
                              ("stop", "stop recording a call (finalises its files)")):
        p = sub.add_parser(action, help=help_text)
        p.add_argument("call_id", metavar="CALL-ID")
        p.add_argument("--from-tag", metavar="T", help="participant (metadata per tag too)")
        p.add_argument("--metadata", metavar="K:V|...",
                       help="metadata string written to the recording's metadata file "
                            "(the last one given wins)")
        add_target_args(p)
        add_json_flag(p)
        p.set_defaults(func=lambda a: run_guarded(run, a), action=action)


def run(args: argparse.Namespace) -> int:
    from ..errors import NgError

    if args.metadata is not None and not args.metadata:
        raise UsageError("--metadata must not be empty")
    targets = open_targets(args, all_nodes=True)
    try:
        last: NgError | None = None
        for name, client in targets:
            op = client.start_recording if args.action == "start" else client.stop_recording
            try:
                op(args.call_id, from_tag=args.from_tag, metadata=args.metadata)
            except NgError as exc:
                # with several nodes the call lives on one; "Unknown call-id" elsewhere
                last = exc
                if len(targets) > 1 and "Unknown call" in exc.reason:
                    continue
                raise
            if args.json:
                print_json({"node": name, "call_id": args.call_id, "recording": args.action})
            else:
                print(f"{name}: recording {'started' if args.action == 'start' else 'stopped'}"
                      f" for {args.call_id}", file=sys.stderr)
            return EXIT_OK
        assert last is not None
        raise last
    finally:
        for _, c in targets:
            c.close()
