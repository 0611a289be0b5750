"""``siprecctl recordings``: check finished rtpengine recordings into an index, audit it.

Recordings are never modified, moved or deleted; the index is a separate SQLite file
(default under the user's state directory, ``--index`` to choose another).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._output import add_json_flag, print_json, print_table


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recordings_command", metavar="ACTION", required=True)
    c = sub.add_parser("collect", help="check finished recordings and add them to the index",
                       description="Check each finished recording under DIR (rtpengine's "
                                   "recording-dir): pcap present, readable and complete, packets "
                                   "for every SDP stream, required metadata keys. Exit 1 if a "
                                   "recording has a problem, 2 if DIR cannot be read.")
    c.add_argument("directory", type=Path, metavar="DIR")
    c.add_argument("--follow", action="store_true", help="keep watching DIR (polling)")
    c.add_argument("--interval", type=float, default=2.0, help="seconds between scans (--follow)")
    c.add_argument("--rounds", type=int, help=argparse.SUPPRESS)  # bounded --follow for tests
    c.add_argument("--require-key", action="append", default=[], metavar="KEY",
                   help="metadata key every recording must carry (repeatable)")
    c.add_argument("--recheck", action="store_true", help="check already indexed files again")
    _index_arg(c)
    add_json_flag(c)
    c.set_defaults(func=run_collect)

    a = sub.add_parser("audit", help="list indexed recordings with problems",
                       description="List the recordings in the index whose check found a "
                                   "problem (exit 1 if there are any).")
    a.add_argument("--all", action="store_true", help="list every recording, not only problems")
    _index_arg(a)
    add_json_flag(a)
    a.set_defaults(func=run_audit)


def _index_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, help="SQLite index file (default: "
                   "$XDG_STATE_HOME/siprecctl/recordings.sqlite)")


def _rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["call_id"] or "-", r["status"], r["packets"] if r["packets"] is not None else "-",
             "; ".join(r["problems"]) or "-", r["meta_path"]) for r in items]


def run_collect(args: argparse.Namespace) -> int:
    from ..recordings import RecordingIndex, collect, default_index_path, follow

    if not args.directory.is_dir():
        print(f"siprecctl: cannot read {args.directory}: not a directory", file=sys.stderr)
        return 2
    index_path = (args.index or default_index_path()).resolve()
    if args.directory.resolve() in index_path.parents:
        print(f"siprecctl: --index {args.index} is inside the recording directory "
              f"{args.directory}: siprecctl never writes there", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []

    def report(batch: list[Any]) -> None:
        recs = [c.record() for c in batch]
        results.extend(recs)
        if args.follow and not args.json:
            for r in recs:
                print(f"{r['status']:8} {r['call_id'] or '-'} {'; '.join(r['problems'])}",
                      flush=True)

    with RecordingIndex(args.index or default_index_path()) as index:
        if args.follow:
            try:
                follow(args.directory, index, required_keys=args.require_key,
                       interval=args.interval, rounds=args.rounds, on_batch=report)
            except KeyboardInterrupt:
                pass
        else:
            report(collect(args.directory, index, required_keys=args.require_key,
                           recheck=args.recheck))
    bad = [r for r in results if r["status"] != "ok"]
    if args.json:
        print_json({"collected": results, "problems": len(bad)})
    elif not args.follow:
        if results:
            print_table(["call-id", "status", "packets", "problems", "metadata file"],
                        _rows(results))
        print(f"{len(results)} recording(s) collected, {len(bad)} with problems")
    return 1 if bad else 0


def run_audit(args: argparse.Namespace) -> int:
    from ..recordings import RecordingIndex, default_index_path

    path = args.index or default_index_path()
    if not path.exists():
        print(f"siprecctl: no index at {path} (run 'siprecctl recordings collect' first)",
              file=sys.stderr)
        return 2
    with RecordingIndex(path) as index:
        rows = index.rows(problems_only=not args.all)
        problems = [r for r in rows if r["status"] != "ok"]
    if args.json:
        print_json({"recordings": rows, "problems": len(problems)})
    else:
        if rows:
            print_table(["call-id", "status", "packets", "problems", "metadata file"], _rows(rows))
        print(f"{len(problems)} recording(s) with problems")
    return 1 if problems else 0
