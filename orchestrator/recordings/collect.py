"""Check finished rtpengine recordings and index them. Files are only ever opened read-only.

A pcap-method recording is finished when rtpengine has moved its metadata file into
``<recording-dir>/metadata/`` (on stop recording, or when the call is destroyed after
``delete-delay``). Each is checked: the pcap exists, is readable and complete, holds packets
for every stream its SDPs announced, the metadata string carries the keys the site
requires, and a recording made by an edge (its metadata has ``edge``, ``from`` or ``to``)
names both parties: a caller (``from`` or ``pai``) and a callee (``to``) whose decoded
value is not blank, every value a valid percent-encoding (:mod:`.encoding`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import RecordingError
from .encoding import decode_value
from .index import RecordingIndex
from .metafile import call_id_from_filename, parse_pcap_metafile, parse_proc_metafile
from .pcap import PcapReader

__all__ = ["RecordingCheck", "check_metafile", "collect", "finished_metafiles", "follow"]

CHUNK = 1 << 20


@dataclass
class RecordingCheck:
    """The outcome of checking one recording; ``status`` is ``ok`` or ``problem``."""

    meta_path: str
    kind: str
    call_id: str | None = None
    pcap_path: str | None = None
    problems: list[str] = field(default_factory=list)
    packets: int | None = None
    streams: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    call_start: str | None = None
    call_end: str | None = None
    meta_size: int | None = None
    meta_mtime: float | None = None

    @property
    def status(self) -> str:
        return "problem" if self.problems else "ok"

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        d["collected_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return d


def finished_metafiles(recording_dir: Path) -> list[Path]:
    """Finished pcap-method metadata files, and proc-method ``.meta`` files, sorted."""
    meta_dir = recording_dir / "metadata" if (recording_dir / "metadata").is_dir() else recording_dir
    found = sorted(meta_dir.glob("rtpengine-meta-*.txt"))
    found += sorted(recording_dir.glob("*.meta"))
    return found


def _pcap_location(meta: Path, recorded: str) -> Path:
    # rtpengine writes the absolute pcap path; a spool that was moved or copied keeps the
    # layout <dir>/metadata/…txt + <dir>/pcaps/…pcap, so look beside the metadata first.
    if meta.parent.name == "metadata":
        return meta.parent.parent / "pcaps" / Path(recorded).name
    return Path(recorded)


def check_metafile(meta: Path, *, required_keys: Iterable[str] = ()) -> RecordingCheck:
    """Check one recording from its metadata file (read-only; never raises for bad files)."""
    kind = "proc" if meta.suffix == ".meta" else "pcap"
    chk = RecordingCheck(str(meta), kind, call_id_from_filename(meta.name))
    try:
        st = meta.stat()
        chk.meta_size, chk.meta_mtime = st.st_size, st.st_mtime
        with open(meta, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        chk.problems.append(f"metadata file unreadable: {exc.strerror or exc}")
        return chk
    if kind == "proc":
        try:
            proc = parse_proc_metafile(data)
        except RecordingError as exc:
            chk.problems.append(f"metadata file malformed: {exc}")
            return chk
        chk.call_id = proc.call_id or chk.call_id
        chk.metadata = proc.metadata_pairs
        chk.problems.append("proc-method recording: media is in /proc, not checked here")
        _identity(chk)
        _required(chk, required_keys)
        return chk
    try:
        pm = parse_pcap_metafile(data)
    except RecordingError as exc:
        chk.problems.append(f"metadata file malformed: {exc}")
        return chk
    chk.metadata = pm.metadata_pairs
    chk.call_start, chk.call_end = pm.call_start, pm.call_end
    if pm.call_end is None:
        chk.problems.append("metadata file has no 'call end time': recording not finalised")
    if not pm.blocks:
        chk.problems.append("no SDP in the metadata (recording started after call setup?)")
    pcap = _pcap_location(meta, pm.pcap_path)
    chk.pcap_path = str(pcap)
    summary = None
    try:
        reader = PcapReader()
        with open(pcap, "rb") as fh:
            while chunk := fh.read(CHUNK):
                reader.feed(chunk)
        summary = reader.close()
    except FileNotFoundError:
        chk.problems.append(f"pcap missing: {pcap}")
    except OSError as exc:
        chk.problems.append(f"pcap unreadable: {pcap}: {exc.strerror or exc}")
    except RecordingError as exc:
        chk.problems.append(f"pcap unusable: {pcap}: {exc}")
    if summary is not None:
        chk.packets = summary.packets
        if summary.truncated:
            chk.problems.append(f"pcap truncated: {pcap} ends inside a packet record "
                                f"({summary.packets} whole packets)")
        if summary.packets == 0:
            chk.problems.append(f"pcap holds no packets: {pcap}")
    seen: set[int] = set()
    for block in pm.blocks:
        for media, port in block.media_ports:
            if port == 0 or port in seen:
                continue
            seen.add(port)
            count = summary.dst_ports.get(port, 0) if summary is not None else None
            chk.streams.append({"label": block.label, "mode": block.mode, "media": media,
                                "port": port, "packets": count})
            if summary is not None and not count:
                who = f"label {block.label}, " if block.label else ""
                chk.problems.append(f"no packets for the {media} stream on port {port} "
                                    f"({who}SDP {block.mode or '?'}): one side not recorded")
    _identity(chk)
    _required(chk, required_keys)
    return chk


def _identity(chk: RecordingCheck) -> None:
    """An edge's recording must say who called whom (issue: a byte the edge could not
    carry once left ``from:`` empty while the recording looked fine)."""
    md = chk.metadata
    if not any(k in md for k in ("edge", "from", "to")):
        return  # not made by an edge (e.g. `record start --metadata`): nothing to expect
    decoded: dict[str, bytes] = {}
    for key, value in md.items():
        try:
            decoded[key] = decode_value(value, what=f"metadata {key!r}")
        except RecordingError as exc:
            chk.problems.append(str(exc))
            decoded[key] = value.encode()  # undecodable is a problem, but not an empty one
    for role, key, alt in (("caller", "from", "pai"), ("callee", "to", None)):
        if any(decoded.get(k, b"").strip() for k in (key, alt) if k):
            continue
        state = "is empty" if key in md else "is missing"
        also = f" (and no {alt!r})" if alt else ""
        chk.problems.append(f"{role} identity empty: metadata {key!r} {state}{also}")


def _required(chk: RecordingCheck, keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in chk.metadata]
    if missing:
        chk.problems.append("metadata lacks required key(s): " + ", ".join(missing))


def collect(recording_dir: Path, index: RecordingIndex, *, required_keys: Iterable[str] = (),
            recheck: bool = False) -> list[RecordingCheck]:
    """Check and index every finished recording not yet indexed (or all, with ``recheck``)."""
    if not recording_dir.is_dir():
        raise RecordingError(f"{recording_dir} is not a directory")
    keys = list(required_keys)
    out = []
    for meta in finished_metafiles(recording_dir):
        try:
            st = meta.stat()
        except OSError:
            continue  # vanished between listing and checking (proc .meta at call end)
        if not recheck and index.known(str(meta), st.st_size, st.st_mtime):
            continue
        chk = check_metafile(meta, required_keys=keys)
        index.add(chk.record())
        out.append(chk)
    return out


def follow(recording_dir: Path, index: RecordingIndex, *, required_keys: Iterable[str] = (),
           interval: float = 2.0, rounds: int | None = None,
           on_batch: Callable[[list[RecordingCheck]], None] | None = None,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Collect repeatedly (polling, no inotify dependency); returns the number indexed."""
    total = 0
    n = 0
    while rounds is None or n < rounds:
        batch = collect(recording_dir, index, required_keys=required_keys)
        total += len(batch)
        if on_batch is not None and batch:
            on_batch(batch)
        n += 1
        if rounds is None or n < rounds:
            sleep(interval)
    return total
