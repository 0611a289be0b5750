"""The controller's state: one SQLite row per recording session, plus its history.

A partial unique index allows one *open* session per call: even a bug elsewhere cannot
create a duplicate SRS session for a call. Writes are committed before the controller acts
on them further, so a SIGKILL leaves the store describing what exists.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import ControllerError
from .dialog import RsDialog
from .session import OPEN_STATES, RecordingSession, State

__all__ = ["DuplicateSession", "SessionStore"]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    edge TEXT NOT NULL,
    node TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    srs_uri TEXT,
    rs_call_id TEXT,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    ended REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_session_per_call ON sessions(call_id)
    WHERE state IN ({", ".join(repr(s.value) for s in sorted(OPEN_STATES))});
CREATE INDEX IF NOT EXISTS sessions_rs ON sessions(rs_call_id);
CREATE TABLE IF NOT EXISTS history (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (session_id, seq)
);
"""


class DuplicateSession(ControllerError):
    """The call already has an open recording session."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any) -> bytes:
    return base64.b64decode(s) if s else b""


class SessionStore:
    """Thread-safe SQLite store (WAL); ``":memory:"`` for tests."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ControllerError(f"state store {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, s: RecordingSession) -> None:
        """Insert or update ``s`` and append its new history entries, in one transaction."""
        data = {
            "from_tag": s.from_tag, "to_tag": s.to_tag, "sub_to_tag": s.sub_to_tag,
            "call": s.call, "srs_index": s.srs_index,
            "dialog": s.dialog.to_dict() if s.dialog else None,
            "offer_sdp": _b64(s.offer_sdp), "answer_sdp": _b64(s.answer_sdp),
            "metadata": _b64(s.metadata), "participants": s.participants,
            "held": s.held, "established_at": s.established_at,
        }
        row = (s.session_id, s.call_id, s.edge, s.node, s.group, s.state.value, s.reason,
               s.srs_uri, s.dialog.call_id if s.dialog else None, json.dumps(data), s.created,
               s.updated, s.ended_at)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(session_id) DO UPDATE SET state=excluded.state, "
                    "reason=excluded.reason, srs_uri=excluded.srs_uri, "
                    "rs_call_id=excluded.rs_call_id, data=excluded.data, "
                    "updated=excluded.updated, ended=excluded.ended, node=excluded.node", row)
                self._db.executemany(
                    "INSERT OR IGNORE INTO history VALUES (?,?,?,?,?,?,?)",
                    [(s.session_id, i, *h) for i, h in enumerate(s.history)])
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise DuplicateSession(f"call {s.call_id} already has an open recording "
                                       f"session") from exc
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ControllerError(f"state store {self.path}: {exc}") from exc

    def _load(self, where: str, args: tuple[Any, ...]) -> list[RecordingSession]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, call_id, edge, node, grp, state, reason, srs_uri, data, "
                f"created, updated, ended FROM sessions {where}", args).fetchall()
            out = []
            for r in rows:
                hist = self._db.execute(
                    "SELECT ts, from_state, to_state, event, detail FROM history "
                    "WHERE session_id=? ORDER BY seq", (r[0],)).fetchall()
                out.append(_session(r, hist))
        return out

    def open_sessions(self) -> list[RecordingSession]:
        states = tuple(s.value for s in OPEN_STATES)
        return self._load(f"WHERE state IN ({','.join('?' * len(states))}) ORDER BY created",
                          states)

    def recent(self, limit: int = 100) -> list[RecordingSession]:
        return self._load("ORDER BY created DESC LIMIT ?", (limit,))

    def get(self, session_id: str) -> RecordingSession | None:
        found = self._load("WHERE session_id=?", (session_id,))
        return found[0] if found else None

    def for_call(self, call_id: str) -> list[RecordingSession]:
        return self._load("WHERE call_id=? ORDER BY created", (call_id,))

    def by_rs_call_id(self, rs_call_id: str) -> RecordingSession | None:
        found = self._load("WHERE rs_call_id=?", (rs_call_id,))
        return found[0] if found else None

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute(
                "SELECT state, count(*) FROM sessions GROUP BY state").fetchall())


def _session(r: tuple[Any, ...], hist: list[tuple[Any, ...]]) -> RecordingSession:
    d = json.loads(r[8])
    s = RecordingSession(
        session_id=r[0], call_id=r[1], edge=r[2], node=r[3], group=r[4],
        from_tag=d["from_tag"], to_tag=d["to_tag"], sub_to_tag=d["sub_to_tag"],
        call=d.get("call") or {}, state=State(r[5]), reason=r[6], srs_index=d["srs_index"],
        srs_uri=r[7], dialog=RsDialog.from_dict(d["dialog"]) if d.get("dialog") else None,
        offer_sdp=_unb64(d.get("offer_sdp")), answer_sdp=_unb64(d.get("answer_sdp")),
        metadata=_unb64(d.get("metadata")), participants=d.get("participants") or {},
        held=list(d.get("held") or []),
        created=r[9], updated=r[10], established_at=d.get("established_at"), ended_at=r[11])
    s.history = [tuple(h) for h in hist]  # type: ignore[misc]
    return s
