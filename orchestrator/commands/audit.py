"""``siprecctl audit [SITE]``: was every call the policy requires recorded? (README "Audit")

Joins each edge's own call records (Kamailio accounting) with the controller's store (read
only, safe while ``serve`` runs), the local recordings and, when given, SRS session records;
prints the completeness summary and a table of every call that is not clean. Exit 1 when a
required call is missing or below ``--min-media``, or when the evidence could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._output import add_json_flag, print_json, print_table
from .losses import _since as _time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", nargs="?", help="site file or embedded name (default: the lab)")
    parser.add_argument("--since", metavar="T", help="calls answered since T (ISO time or "
                        "seconds ago)")
    parser.add_argument("--until", metavar="T", help="... and before T (ISO time or seconds "
                        "ago; default now)")
    parser.add_argument("--store", metavar="PATH", help="controller state store (default: "
                        "the site's)")
    parser.add_argument("--accounting", metavar="DIR", type=Path,
                        help="the edges' record directories are DIR/<edge> (default: the "
                        "site's accounting.dir)")
    parser.add_argument("--recordings", metavar="DIR", type=Path, action="append",
                        help="a local recording directory (repeatable; default: "
                        "<media.recording.dir>/<node> for each node)")
    parser.add_argument("--no-recordings", action="store_true",
                        help="do not check local recordings (status 'unchecked')")
    parser.add_argument("--srs-records", metavar="DIR", type=Path, action="append",
                        help="SRS session records (*.json as the reference SRS writes them): "
                        "packets per label for the media ratio (repeatable)")
    parser.add_argument("--min-media", type=float, default=0.99, metavar="R",
                        help="a required call below this share of its seconds (coverage) or "
                        "of its packets (media) fails the audit (default 0.99)")
    parser.add_argument("--html", metavar="FILE", type=Path, help="also write the HTML page")
    parser.add_argument("--force", action="store_true", help="replace an existing --html FILE")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def _inside(path: Path, dirs: list[Path]) -> Path | None:
    p = path.resolve()
    for d in dirs:
        r = d.resolve()
        if p == r or r in p.parents:
            return d
    return None


def _write(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path``: a new file, or with ``force`` an atomic replacement."""
    from ..errors import UsageError

    if force:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"--html {path} exists; use --force to replace it") from None
    except OSError as exc:
        raise UsageError(f"--html {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def run(args: argparse.Namespace) -> int:
    from ..audit import (
        AuditOptions,
        ControllerFacts,
        build_ledger,
        load_edges,
        load_local,
        load_srs_counts,
        recording_dirs,
    )
    from ..audit.report import ROW_COLUMNS, issue_rows, render_html, summarize
    from ..controller.metrics import ledger_facts
    from ..controller.store import SessionStore
    from ..errors import ControllerError, UsageError
    from ..site import load

    if not 0 < args.min_media <= 1:
        raise UsageError(f"--min-media {args.min_media}: expected a ratio in (0, 1]")
    site = load(args.site)
    now = time.time()
    since = _time(args.since) if args.since else 0.0
    until = _time(args.until) if args.until else None
    rec_dirs = args.recordings or recording_dirs(site)
    if args.html is not None:
        bad = _inside(args.html, rec_dirs + [Path(site.media.recording.dir)])
        if bad is not None:
            raise UsageError(f"--html {args.html} is inside the recording directory {bad}: "
                             "siprecctl never writes there")
    problems: list[str] = []
    edges = load_edges(site, since=since, until=until, accounting_dir=args.accounting)
    problems += [str(e) for e in edges.errors] + edges.notes
    store_path = args.store or site.controller.store
    facts = ControllerFacts()
    try:
        store = SessionStore(store_path, readonly=True)
    except ControllerError as exc:
        problems.append(f"{exc}: the controller's facts are missing (every SIPREC call "
                        "counts as 'controller down')")
    else:
        try:
            facts = ledger_facts(store, since=since, until=until)
        finally:
            store.close()
    local = None
    if not args.no_recordings:
        ids = set(edges.calls) | set(facts.calls)
        local, notes = load_local(rec_dirs, ids, required_keys=site.recording.required_metadata)
        problems += notes
        if len(notes) == len(rec_dirs):
            local = None  # no directory readable here: unchecked, not missing
    srs_counts = None
    if args.srs_records:
        srs_counts, notes = load_srs_counts(args.srs_records)
        problems += notes
    opts = AuditOptions(now=now, min_media=args.min_media,
                        local_settle=site.media.delete_delay + 5.0)
    entries = build_ledger(edges.calls, facts, local, srs_counts, opts, since=since,
                           until=until)
    summary = summarize(entries, since=since or None, until=until, generated=now,
                        min_media=args.min_media, failed_attempts=edges.failed,
                        problems=problems)
    if args.html is not None:
        _write(args.html, render_html(entries, summary, site=site.name), args.force)
    failed = bool(summary.below_threshold or edges.errors)
    if args.json:
        doc: dict[str, Any] = {"summary": summary.to_dict(),
                               "entries": [e.to_dict() for e in entries], "ok": not failed}
        print_json(doc)
        return 1 if failed else 0
    rows = issue_rows(entries)
    if rows:
        print_table(list(ROW_COLUMNS), rows, title=f"calls not recorded in full ({len(rows)})")
    for line in summary.lines():
        print(line)
    if problems:
        print(f"problems reading the evidence ({len(problems)}):", file=sys.stderr)
        for p in problems[:20]:
            print(f"  {p}", file=sys.stderr)
        if len(problems) > 20:
            print(f"  … and {len(problems) - 20} more (--json lists them all)", file=sys.stderr)
    if args.html is not None:
        print(f"wrote {args.html}")
    return 1 if failed else 0
