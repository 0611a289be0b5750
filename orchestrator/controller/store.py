"""The controller's state: calls, recording sessions with their history, and losses (SQLite).

A partial unique index allows one *open* session per call and slot: even a bug elsewhere
cannot create a duplicate SRS session for a slot of a call. The driver writes every batch of
changes in one transaction and commits it before carrying out the actions that follow, so
a SIGKILL leaves the store describing what exists (WAL; ``synchronous=NORMAL`` survives a
process crash, not a power cut).

Tables (the completeness ledger joins them with the edge's own records):

    calls     one row per answered call the controller saw: policy group, slots, required,
              answered/ended times and why it ended
    sessions  one row per recording session: call, slot, SRS, state, reason, times, and a
              JSON ``data`` column with the dialog, SDPs, metadata and attempts
    history   every state change and note of a session (ts, from, to, event, detail)
    losses    every recording the policy wanted and did not get: reason, seconds, detail
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..errors import ControllerError
from .dialog import RsDialog
from .messages import CallRecord, Loss
from .session import OPEN_STATES, Attempt, RecordingSession, State

__all__ = ["DuplicateSession", "SessionStore", "Store", "session_doc", "session_from_doc"]

SCHEMA_VERSION = 2
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    edge TEXT NOT NULL,
    node TEXT NOT NULL,
    grp TEXT,
    slots INTEGER NOT NULL,
    required TEXT NOT NULL,
    rule TEXT,
    record_local INTEGER NOT NULL,
    answered REAL NOT NULL,
    received REAL,
    ended REAL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS calls_answered ON calls(answered);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    slot INTEGER NOT NULL,
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
    established REAL,
    media_until REAL,
    ended REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_session_per_slot ON sessions(call_id, slot)
    WHERE state IN ({", ".join(repr(s.value) for s in sorted(OPEN_STATES))});
CREATE INDEX IF NOT EXISTS sessions_call ON sessions(call_id);
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
CREATE TABLE IF NOT EXISTS losses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    session_id TEXT,
    slot INTEGER,
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    detail TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS losses_call ON losses(call_id);
CREATE TABLE IF NOT EXISTS media (
    call_id TEXT NOT NULL,
    session_id TEXT,
    ts REAL NOT NULL,
    why TEXT NOT NULL,
    role TEXT NOT NULL,
    tag TEXT NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS media_call ON media(call_id);
CREATE INDEX IF NOT EXISTS losses_ts ON losses(ts);
"""


class DuplicateSession(ControllerError):
    """A slot of the call already has an open recording session."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any) -> bytes:
    return base64.b64decode(s) if s else b""


class Store(Protocol):
    """What the controller, its API and the audit use of a store: :class:`SessionStore`
    (SQLite, one box) or :class:`~.redis_store.RedisStore` (a pair)."""

    path: str

    def close(self) -> None: ...
    def save(self, s: RecordingSession) -> None: ...
    def write(self, *, sessions: Iterable[RecordingSession] = (),
              calls: Iterable[CallRecord] = (), losses: Iterable[Loss] = (),
              media: Iterable[tuple[Any, ...]] = ()) -> None: ...
    def open_sessions(self) -> list[RecordingSession]: ...
    def recent(self, limit: int = 100) -> list[RecordingSession]: ...
    def get(self, session_id: str) -> RecordingSession | None: ...
    def for_call(self, call_id: str) -> list[RecordingSession]: ...
    def by_rs_call_id(self, rs_call_id: str) -> RecordingSession | None: ...
    def count_by_state(self) -> dict[str, int]: ...
    def call(self, call_id: str) -> dict[str, Any] | None: ...
    def calls(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]: ...
    def losses(self, *, call_id: str | None = None, since: float = 0.0,
               until: float | None = None) -> list[dict[str, Any]]: ...
    def loss_counts(self) -> dict[str, int]: ...
    def media(self, call_id: str) -> list[dict[str, Any]]: ...


class SessionStore:
    """Thread-safe SQLite store (WAL); ``":memory:"`` for tests."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._history_saved: dict[str, int] = {}
        if readonly:  # e.g. an audit while the controller runs; never creates anything
            if not Path(self.path).is_file():
                raise ControllerError(f"state store {self.path}: no such file")
            try:
                self._db = sqlite3.connect(f"file:{Path(self.path).resolve()}?mode=ro",
                                           uri=True, check_same_thread=False,
                                           isolation_level=None)
                self._db.execute("SELECT count(*) FROM sessions")
            except sqlite3.Error as exc:
                raise ControllerError(f"state store {self.path}: {exc}") from exc
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(sessions)")}
            if cols and "slot" not in cols:
                raise ControllerError(
                    f"state store {self.path} has the schema of an older siprecctl (no "
                    "session slots); move it aside and start with a new one")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            raise ControllerError(f"state store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ writes
    def save(self, s: RecordingSession) -> None:
        """Insert or update one session (and its new history) in its own transaction."""
        self.write(sessions=[s])

    def write(self, *, sessions: Iterable[RecordingSession] = (),
              calls: Iterable[CallRecord] = (), losses: Iterable[Loss] = (),
              media: Iterable[tuple[Any, ...]] = ()) -> None:
        """Everything of one batch in one transaction, committed before returning."""
        srows, hrows = [], []
        # closed ones first: a batch that ends a slot's session and opens its successor
        # must not meet the one-open-session-per-slot index in between
        sessions = sorted(sessions, key=lambda s: s.open)
        for s in sessions:
            srows.append(_session_row(s))
            done = self._history_saved.get(s.session_id, 0)
            hrows += [(s.session_id, i, *h) for i, h in enumerate(s.history) if i >= done]
        crows = [(c.call_id, c.edge, c.node, c.group, c.slots, c.required, c.rule,
                  int(c.record_local), c.answered_at, c.received_at, c.ended_at, c.end_reason)
                 for c in calls]
        lrows = [(x.call_id, x.session_id, x.slot, x.reason, x.seconds, x.detail, x.at)
                 for x in losses]
        mrows = list(media)  # (call_id, session_id, ts, why, role, tag, packets, bytes)
        if not (srows or crows or lrows or mrows):
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if crows:
                    self._db.executemany(
                        "INSERT INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT(call_id) DO UPDATE SET node=excluded.node, grp=excluded.grp, "
                        "slots=excluded.slots, required=excluded.required, "
                        "record_local=excluded.record_local, ended=excluded.ended, "
                        "end_reason=excluded.end_reason", crows)
                if srows:
                    self._db.executemany(
                        "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT(session_id) DO UPDATE SET node=excluded.node, state=excluded.state, "
                        "reason=excluded.reason, srs_uri=excluded.srs_uri, "
                        "rs_call_id=excluded.rs_call_id, data=excluded.data, "
                        "updated=excluded.updated, established=excluded.established, "
                        "media_until=excluded.media_until, ended=excluded.ended", srows)
                if hrows:
                    self._db.executemany(
                        "INSERT OR IGNORE INTO history VALUES (?,?,?,?,?,?,?)", hrows)
                if mrows:
                    self._db.executemany("INSERT INTO media VALUES (?,?,?,?,?,?,?,?)", mrows)
                if lrows:
                    self._db.executemany(
                        "INSERT INTO losses (call_id, session_id, slot, reason, seconds, "
                        "detail, ts) VALUES (?,?,?,?,?,?,?)", lrows)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise DuplicateSession(f"a slot already has an open recording session: "
                                       f"{exc}") from exc
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise ControllerError(f"state store {self.path}: {exc}") from exc
        for s in sessions:
            self._history_saved[s.session_id] = len(s.history)
            if not s.open:
                self._history_saved.pop(s.session_id, None)

    # ------------------------------------------------------------------ reads
    def _load(self, where: str, args: tuple[Any, ...]) -> list[RecordingSession]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, call_id, slot, edge, node, grp, state, reason, srs_uri, "
                "data, created, updated, established, media_until, ended FROM sessions "
                f"{where}", args).fetchall()
            out = []
            for r in rows:
                hist = self._db.execute(
                    "SELECT ts, from_state, to_state, event, detail FROM history "
                    "WHERE session_id=? ORDER BY seq", (r[0],)).fetchall()
                out.append(_session(r, hist))
        for s in out:
            if s.open:
                self._history_saved[s.session_id] = len(s.history)
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

    def call(self, call_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM calls WHERE call_id=?", (call_id,))
        return rows[0] if rows else None

    def calls(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM calls WHERE answered >= ? AND answered < ? "
                           "ORDER BY answered", (since, until if until is not None else 1e18))

    def losses(self, *, call_id: str | None = None, since: float = 0.0,
               until: float | None = None) -> list[dict[str, Any]]:
        """Recorded losses, oldest first (one call, or a time window)."""
        if call_id is not None:
            return self._query("SELECT * FROM losses WHERE call_id=? ORDER BY id", (call_id,))
        return self._query("SELECT * FROM losses WHERE ts >= ? AND ts < ? ORDER BY id",
                           (since, until if until is not None else 1e18))

    def media(self, call_id: str) -> list[dict[str, Any]]:
        """rtpengine's counters read for a call (each read: why, role, tag, packets)."""
        return self._query("SELECT * FROM media WHERE call_id=? ORDER BY ts", (call_id,))

    def loss_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute(
                "SELECT reason, count(*) FROM losses GROUP BY reason").fetchall())

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def session_doc(s: RecordingSession) -> dict[str, Any]:
    """Everything the store keeps of a session but its history, JSON-ready (both stores)."""
    return {
        "session_id": s.session_id, "call_id": s.call_id, "slot": s.slot, "edge": s.edge,
        "node": s.node, "group": s.group, "state": s.state.value, "reason": s.reason,
        "srs_uri": s.srs_uri, "rs_call_id": s.rs_call_id, "created": s.created,
        "updated": s.updated, "established": s.established_at, "media_until": s.media_until,
        "ended": s.ended_at, "sub_to_tag": s.sub_to_tag, "call": s.call,
        "dialog": s.dialog.to_dict() if s.dialog else None,
        "attempts": [[a.rs_call_id, a.srs_uri, a.transport, a.started, a.outcome]
                     for a in s.attempts],
        "offer_sdp": _b64(s.offer_sdp), "answer_sdp": _b64(s.answer_sdp),
        "metadata": _b64(s.metadata), "participants": s.participants,
        "announced_holds": sorted(s.announced_holds), "last_alive": s.last_alive,
    }


def session_from_doc(d: dict[str, Any], history: list[tuple[Any, ...]]) -> RecordingSession:
    s = RecordingSession(
        session_id=d["session_id"], call_id=d["call_id"], slot=d["slot"], edge=d["edge"],
        node=d["node"], group=d["group"], state=State(d["state"]), reason=d.get("reason"),
        srs_uri=d.get("srs_uri"), sub_to_tag=d["sub_to_tag"], call=d.get("call") or {},
        dialog=RsDialog.from_dict(d["dialog"]) if d.get("dialog") else None,
        attempts=[Attempt(*a) for a in d.get("attempts") or []],
        offer_sdp=_unb64(d.get("offer_sdp")), answer_sdp=_unb64(d.get("answer_sdp")),
        metadata=_unb64(d.get("metadata")), participants=d.get("participants") or {},
        announced_holds=frozenset(d.get("announced_holds") or ()),
        last_alive=d.get("last_alive"), created=d["created"], updated=d["updated"],
        established_at=d.get("established"), media_until=d.get("media_until"),
        ended_at=d.get("ended"))
    s.history = [tuple(h) for h in history]  # type: ignore[misc]
    return s


_COLUMNS = ("session_id", "call_id", "slot", "edge", "node", "group", "state", "reason",
            "srs_uri", "rs_call_id")
_TIMES = ("created", "updated", "established", "media_until", "ended")


def _session_row(s: RecordingSession) -> tuple[Any, ...]:
    d = session_doc(s)
    data = {k: v for k, v in d.items() if k not in _COLUMNS and k not in _TIMES}
    return (*(d[k] for k in _COLUMNS), json.dumps(data), *(d[k] for k in _TIMES))


def _session(r: tuple[Any, ...], hist: list[tuple[Any, ...]]) -> RecordingSession:
    d = json.loads(r[9])
    d.update(zip(_COLUMNS[:9], r[:9], strict=True))
    d.update(zip(_TIMES, r[10:15], strict=True))
    return session_from_doc(d, hist)
