"""The recordings index: a separate SQLite file (recordings themselves are never touched)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import RecordingError

__all__ = ["RecordingIndex", "default_index_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY,
    meta_path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    call_id TEXT,
    pcap_path TEXT,
    status TEXT NOT NULL,
    problems TEXT NOT NULL,
    packets INTEGER,
    streams TEXT NOT NULL,
    metadata TEXT NOT NULL,
    call_start TEXT,
    call_end TEXT,
    meta_size INTEGER,
    meta_mtime REAL,
    collected_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_status ON recordings(status);
"""
_JSON_COLUMNS = ("problems", "streams", "metadata")


def default_index_path() -> Path:
    """``$XDG_STATE_HOME/siprecctl/recordings.sqlite`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "siprecctl" / "recordings.sqlite"


class RecordingIndex:
    """Open (creating if needed) the index at ``path``; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.row_factory = sqlite3.Row
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise RecordingError(f"cannot open the recordings index {path}: {exc}") from exc

    def __enter__(self) -> RecordingIndex:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def known(self, meta_path: str, size: int, mtime: float) -> bool:
        """True if this metadata file, unchanged, is already indexed."""
        row = self._db.execute("SELECT meta_size, meta_mtime FROM recordings WHERE meta_path=?",
                               (meta_path,)).fetchone()
        return row is not None and row["meta_size"] == size and row["meta_mtime"] == mtime

    def add(self, record: dict[str, Any]) -> None:
        """Insert or refresh one recording's entry (keyed by its metadata file)."""
        values = {k: json.dumps(v, sort_keys=True) if k in _JSON_COLUMNS else v
                  for k, v in record.items()}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c}=excluded.{c}" for c in values if c != "meta_path")
        try:
            with self._db:
                self._db.execute(f"INSERT INTO recordings ({cols}) VALUES ({marks}) "
                                 f"ON CONFLICT(meta_path) DO UPDATE SET {updates}",
                                 tuple(values.values()))
        except sqlite3.Error as exc:
            raise RecordingError(f"cannot write the recordings index {self.path}: {exc}") from exc

    def rows(self, *, problems_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM recordings"
        if problems_only:
            sql += " WHERE status != 'ok'"
        out = []
        for row in self._db.execute(sql + " ORDER BY collected_at, id"):
            d = dict(row)
            for c in _JSON_COLUMNS:
                d[c] = json.loads(d[c])
            out.append(d)
        return out
