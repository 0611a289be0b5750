"""Reading the ledger's sources from disk, read-only: each edge's record directory, the
local recordings (``orchestrator.recordings``: finished metadata files and their pcaps), and
SRS session records (the reference SRS's ``<session>.json``; an SRS's own count of what it
recorded). The controller's store is read by :func:`orchestrator.controller.metrics.ledger_facts`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AuditError
from ..recordings import call_id_from_filename, check_metafile, finished_metafiles
from ..site.model import Site
from .facts import LocalRecording
from .records import EdgeCall, EdgeRecord, group_calls, parse_line, read_edge_dir, record_files

__all__ = ["EdgeSources", "IncrementalEdgeReader", "load_edges", "load_local",
           "load_srs_counts", "recording_dirs"]

MAX_SRS_RECORD = 1 << 20  # bytes; a reference SRS record is a few KB


@dataclass
class EdgeSources:
    """The edges' records of a window, with what could not be used."""

    calls: dict[str, EdgeCall] = field(default_factory=dict)
    records: list[EdgeRecord] = field(default_factory=list)
    errors: list[AuditError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.kind == "failed")


def load_edges(site: Site, *, since: float = 0.0, until: float | None = None,
               accounting_dir: Path | None = None) -> EdgeSources:
    """Every edge's records in [since, until) (``accounting_dir`` overrides the site's)."""
    out = EdgeSources()
    for edge in site.edges:
        d = (accounting_dir / edge.name if accounting_dir is not None
             else Path(site.accounting.edge_dir(edge.name)))
        got = read_edge_dir(d, since=since, until=until)
        out.records += got.records
        out.errors += got.errors
        out.notes += got.notes
        out.files += got.files
        if not got.files and not got.errors:
            out.notes.append(f"{d}: no record files (no call reached edge {edge.name}, or "
                             "its accounting is not writing here)")
    out.calls = group_calls(out.records)
    return out


def recording_dirs(site: Site) -> list[Path]:
    """Where each rtpengine node of the site records (``<media.recording.dir>/<node>``)."""
    base = Path(site.media.recording.dir)
    return [base / n.name for n in site.media.nodes]


def load_local(dirs: Iterable[Path], call_ids: set[str], *,
               required_keys: Iterable[str] = ()) -> tuple[dict[str, list[LocalRecording]],
                                                           list[str]]:
    """The finished local recordings of ``call_ids`` (checked read-only: pcap present and
    complete, packets per stream), and notes on directories that could not be read."""
    found: dict[str, list[LocalRecording]] = {}
    notes: list[str] = []
    keys = list(required_keys)
    for d in dirs:
        if not d.is_dir():
            notes.append(f"{d}: no recording directory here: local recordings not checked")
            continue
        for meta in finished_metafiles(d):
            cid = call_id_from_filename(meta.name)
            if cid is None or cid not in call_ids:
                continue
            chk = check_metafile(meta, required_keys=keys)
            found.setdefault(cid, []).append(LocalRecording(
                call_id=cid, status=chk.status, meta_path=chk.meta_path,
                pcap_path=chk.pcap_path, packets=chk.packets,
                streams=tuple(dict(s) for s in chk.streams), problems=tuple(chk.problems)))
    return found, notes


def load_srs_counts(dirs: Iterable[Path]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Packets per label by RS Call-ID from SRS session records (``*.json`` with
    ``call_id`` and ``labels.<label>.packets``, as the reference SRS writes them)."""
    out: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    for d in dirs:
        if not d.is_dir():
            notes.append(f"{d}: no such directory (SRS records)")
            continue
        for path in sorted(d.glob("*.json")):
            try:
                if path.stat().st_size > MAX_SRS_RECORD:
                    notes.append(f"{path}: over {MAX_SRS_RECORD} bytes, skipped")
                    continue
                doc = json.loads(path.read_text(encoding="utf-8"))
                cid = doc["call_id"]
                labels = {str(k): int(v["packets"]) for k, v in doc["labels"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                notes.append(f"{path}: not an SRS session record ({type(exc).__name__})")
                continue
            if isinstance(cid, str):
                tgt = out.setdefault(cid, {})
                for k, v in labels.items():
                    tgt[k] = tgt.get(k, 0) + v
    return out, notes


class IncrementalEdgeReader:
    """Follows one edge directory: each :meth:`poll` parses only the complete lines
    appended since the last one. Offsets are kept per file (inode), so a file renamed by a
    rotation is not read twice and its successor is read from its start. At the first poll
    each file is read from its last ``tail`` bytes only (the recent past)."""

    def __init__(self, directory: Path, *, tail: int = 8 << 20) -> None:
        self.directory = directory
        self.tail = tail
        self._offsets: dict[tuple[int, int], int] = {}  # (device, inode) -> offset
        self._polled = False
        self.errors = 0

    def poll(self) -> list[EdgeRecord]:
        out: list[EdgeRecord] = []
        if not os.access(self.directory, os.R_OK | os.X_OK):
            return out
        first_poll, self._polled = not self._polled, True
        for path in record_files(self.directory):
            try:
                st = path.stat()
                key = (st.st_dev, st.st_ino)
                off = self._offsets.get(key)
                skip_partial = False
                if off is None:
                    off = max(0, st.st_size - self.tail) if first_poll else 0
                    skip_partial = off > 0  # landed inside a line
                elif st.st_size < off:  # truncated
                    off = 0
                with open(path, "rb") as fh:
                    fh.seek(off)
                    data = fh.read(st.st_size - off)
            except OSError:
                continue
            start = data.find(b"\n") + 1 if skip_partial else 0
            end = data.rfind(b"\n") + 1  # an unterminated tail is still being written
            for n, raw in enumerate(data[start:end].splitlines()):
                try:
                    out.append(parse_line(raw.decode("utf-8", "surrogateescape"),
                                          f"{path}:+{n}"))
                except AuditError:
                    self.errors += 1
            self._offsets[key] = off + max(end, start)
        return out
