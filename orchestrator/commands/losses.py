"""``siprecctl losses [SITE]``: every recording the policy wanted and did not get.

Reads the controller's state store (read-only, safe while ``serve`` runs): one row per loss
with the call, the session and slot, the reason, the seconds of media no SRS received, and
what happened. ``--summary`` counts them by reason.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

from ._output import add_json_flag, print_json, print_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", nargs="?", help="site file or embedded name (default: the lab)")
    parser.add_argument("--store", metavar="PATH", help="state store (default: the site's)")
    parser.add_argument("--call", metavar="CALL_ID", help="one call only")
    parser.add_argument("--since", metavar="T", help="ISO time or seconds ago (e.g. 3600)")
    parser.add_argument("--summary", action="store_true", help="counts and seconds by reason")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def _since(value: str | None) -> float:
    from ..errors import UsageError

    if value is None:
        return 0.0
    try:
        return time.time() - float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UsageError(f"--since: {value!r} is neither seconds nor an ISO time") from None


def run(args: argparse.Namespace) -> int:
    from ..controller.store import SessionStore

    since = _since(args.since)
    if args.store:
        path = args.store
    else:
        from ..site import load

        path = load(args.site).controller.store
    store = SessionStore(path, readonly=True)
    try:
        rows = store.losses(call_id=args.call) if args.call else store.losses(since=since)
    finally:
        store.close()
    if args.summary:
        summary: dict[str, dict[str, float]] = {}
        for r in rows:
            s = summary.setdefault(r["reason"], {"count": 0, "seconds": 0.0})
            s["count"] += 1
            s["seconds"] = round(s["seconds"] + r["seconds"], 3)
        if args.json:
            print_json(summary)
        else:
            print_table(["reason", "count", "seconds"],
                        [(k, int(v["count"]), f"{v['seconds']:.1f}")
                         for k, v in sorted(summary.items())], title="recording losses")
        return 0
    if args.json:
        print_json(rows)
        return 0
    print_table(["time", "call-id", "slot", "reason", "seconds", "detail"],
                [(datetime.fromtimestamp(r["ts"]).strftime("%Y-%m-%d %H:%M:%S"),
                  r["call_id"], "" if r["slot"] is None else r["slot"], r["reason"],
                  f"{r['seconds']:.2f}", r["detail"]) for r in rows],
                title=f"recording losses ({len(rows)})")
    return 0
