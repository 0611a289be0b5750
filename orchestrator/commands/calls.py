"""``siprecctl calls``: active calls per rtpengine node.

Columns: call-id, age, legs, RTP packets, recording on/off, SIPREC subscriptions.
rtpengine 10.5 does not report recording state over NG (``query`` gained metadata only in
13.1), so "recording" is read from the pcap spool: a ``tmp/rtpengine-meta-<call>-*.tmp``
file exists exactly while a call is being recorded (rtpengine ``recording.c``). That needs
the recording dir (``--recording-dir``, or the site's ``media.recording.dir``) on this
host; otherwise the column shows "?".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._output import add_json_flag, print_json, print_table
from .ng import add_target_args, open_targets


def configure(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    parser.add_argument("--recording-dir", metavar="DIR",
                        help="rtpengine recording-dir (default: the site's, when readable)")
    parser.add_argument("--limit", type=int, default=1000, help="calls per node (default 1000)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def recording_state(rec_dir: Path | None, call_id: str) -> bool | None:
    """True/False from the pcap spool's tmp/ dir; None when it cannot be read."""
    if rec_dir is None:
        return None
    tmp = rec_dir / "tmp"
    if not tmp.is_dir():
        return None
    # file prefix: g_uri_escape_string(call-id) + "-" + 16 hex chars
    prefix = f"rtpengine-meta-{quote(call_id, safe='')}-"
    try:
        return any(p.name.startswith(prefix) and p.name.endswith(".tmp") for p in tmp.iterdir())
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    from ..errors import NgError, SiprecctlError

    rec_dir: Path | None = Path(args.recording_dir) if args.recording_dir else None
    if rec_dir is None and not args.ng:
        from ..site import load

        rec_dir = Path(load(args.site).media.recording.dir)
    rows: list[dict[str, Any]] = []
    code = 0
    now = time.time()
    for name, client in open_targets(args, all_nodes=True):
        with client:
            try:
                call_ids = client.list_calls(args.limit)
            except SiprecctlError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                code = max(code, exc.exit_code)
                continue
            # all queries pipelined: one round trip's latency, not one per call
            replies = client.call_many([("query", {"call-id": c}) for c in call_ids])
            from ..ng.models import CallInfo

            for call_id, r in zip(call_ids, replies, strict=True):
                if isinstance(r, NgError):
                    continue  # ended between list and query
                if isinstance(r, Exception):
                    print(f"{name}: {call_id}: {r}", file=sys.stderr)
                    code = max(code, getattr(r, "exit_code", 3))
                    continue
                info = CallInfo(call_id, r)
                subs = info.subscribers
                rows.append({"node": name, "call_id": call_id,
                             "age_s": None if info.created is None
                             else round(now - info.created, 1),
                             "legs": len(info.legs), "packets": info.packets,
                             "recording": recording_state(rec_dir, call_id),
                             "siprec_subscriptions": len(subs),
                             "subscribers": [t.tag for t in subs]})
    if args.json:
        print_json(rows)
    else:
        def onoff(v: bool | None) -> str:
            return "?" if v is None else ("on" if v else "off")

        print_table(["node", "call-id", "age", "legs", "packets", "recording", "SIPREC"],
                    [(r["node"], r["call_id"],
                      "unknown" if r["age_s"] is None else f"{r['age_s']:.0f} s",
                      r["legs"], r["packets"],
                      onoff(r["recording"]), r["siprec_subscriptions"]) for r in rows],
                    title=f"{len(rows)} active calls")
    return code
