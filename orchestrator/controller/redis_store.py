"""The controller's state in Redis, shared by an active/standby pair (the same reads and
writes as :class:`~.store.SessionStore`, which stays the single-box default).

Every write is one Lua script, so it is atomic, and it is *fenced*: it carries the writer's
instance name and leadership epoch and is refused (:class:`FencedOut`) unless that instance
still holds the lease with that epoch (:mod:`.leader`) — a leader that was paused and lost
its lease cannot write after the new one took over. The script also keeps the rule of one
open session per call and slot (:class:`~.store.DuplicateSession`). Durability is the Redis
server's: the rendered lab config uses ``appendonly yes`` + ``appendfsync always``, so a
write acknowledged to the controller is on disk.

Keys (``P`` = ``siprecctl:<site>:``)::

    P leader / P epoch              the lease (instance name, PX ttl) and its fencing counter
    P session:<id>                  a session (JSON: store.session_doc)
    P history:<id>                  its history (list of JSON [ts, from, to, event, detail])
    P sessions:created              zset id -> created (recent first)
    P sessions:open                 set of open session ids
    P open:<call>:<slot>            the open session of a call's slot
    P rs:<rs-call-id>               session id by recording-session Call-ID
    P call:<call>                   the call record (JSON); P calls:answered zset
    P call:<call>:sessions          set of its session ids
    P loss:<n> / P losses:ts        losses (JSON) and zset n -> ts; P call:<call>:losses list
    P media:<call>                  list of JSON counter rows
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ControllerError
from .messages import CallRecord, Loss
from .session import OPEN_STATES, RecordingSession
from .store import DuplicateSession, session_doc, session_from_doc

__all__ = ["Fence", "FencedOut", "RedisStore"]


class FencedOut(ControllerError):
    """This instance does not hold the leadership lease (any more): it may not write."""


@dataclass
class Fence:
    """Who writes: the instance and the epoch of its lease (None: not the leader)."""

    instance: str
    epoch: int | None = None


_WRITE = """
local p, me, epoch = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', p .. 'leader') ~= me or redis.call('GET', p .. 'epoch') ~= epoch then
  return redis.error_reply('FENCED')
end
local doc = cjson.decode(ARGV[4])
-- a session this batch closes frees its slot for a session this batch opens (an adopted
-- set-up torn down and the slot set up again)
local closing = {}
for _, s in ipairs(doc.sessions) do
  if not s.open then closing[s.id] = true end
end
for _, s in ipairs(doc.sessions) do
  local key = p .. 'open:' .. s.call_id .. ':' .. s.slot
  local cur = redis.call('GET', key)
  if s.open then
    if cur and cur ~= s.id and not closing[cur]
        and redis.call('SISMEMBER', p .. 'sessions:open', cur) == 1 then
      return redis.error_reply('DUPLICATE ' .. s.call_id .. ' slot ' .. s.slot)
    end
  end
end
for _, s in ipairs(doc.sessions) do
  local key = p .. 'open:' .. s.call_id .. ':' .. s.slot
  if s.open then
    redis.call('SET', key, s.id)
    redis.call('SADD', p .. 'sessions:open', s.id)
  else
    if redis.call('GET', key) == s.id then redis.call('DEL', key) end
    redis.call('SREM', p .. 'sessions:open', s.id)
  end
  redis.call('SET', p .. 'session:' .. s.id, s.doc)
  redis.call('ZADD', p .. 'sessions:created', s.created, s.id)
  redis.call('SADD', p .. 'call:' .. s.call_id .. ':sessions', s.id)
  if s.rs ~= '' then redis.call('SET', p .. 'rs:' .. s.rs, s.id) end
  for _, h in ipairs(s.history) do redis.call('RPUSH', p .. 'history:' .. s.id, h) end
end
for _, c in ipairs(doc.calls) do
  redis.call('SET', p .. 'call:' .. c.id, c.doc)
  redis.call('ZADD', p .. 'calls:answered', c.answered, c.id)
end
for _, l in ipairs(doc.losses) do
  local n = redis.call('INCR', p .. 'loss:seq')
  redis.call('SET', p .. 'loss:' .. n, l.doc)
  redis.call('ZADD', p .. 'losses:ts', l.ts, n)
  redis.call('RPUSH', p .. 'call:' .. l.call_id .. ':losses', n)
end
for _, m in ipairs(doc.media) do
  redis.call('RPUSH', p .. 'media:' .. m.call_id, m.doc)
end
return 1
"""


class RedisStore:
    """Thread-safe (redis-py's connection pool); ``fence`` says who may write."""

    def __init__(self, client: Any, site: str, fence: Fence) -> None:
        self.r = client
        self.path = f"redis {site}"
        self.p = f"siprecctl:{site}:"
        self.fence = fence
        self._write = client.register_script(_WRITE)
        self._history_saved: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.r.close()

    # ------------------------------------------------------------------ writes
    def save(self, s: RecordingSession) -> None:
        self.write(sessions=[s])

    def write(self, *, sessions: Iterable[RecordingSession] = (),
              calls: Iterable[CallRecord] = (), losses: Iterable[Loss] = (),
              media: Iterable[tuple[Any, ...]] = ()) -> None:
        """Everything of one batch atomically, if this instance still leads."""
        ss = list(sessions)
        doc: dict[str, list[dict[str, Any]]] = {"sessions": [], "calls": [], "losses": [],
                                                "media": []}
        with self._lock:
            for s in ss:
                done = self._history_saved.get(s.session_id, 0)
                doc["sessions"].append({
                    "id": s.session_id, "call_id": s.call_id, "slot": s.slot,
                    "open": s.open, "doc": json.dumps(session_doc(s)),
                    "created": repr(s.created), "rs": s.rs_call_id or "",
                    "history": [json.dumps(list(h)) for h in s.history[done:]] or {}})
        for c in calls:
            doc["calls"].append({"id": c.call_id, "answered": repr(c.answered_at),
                                 "doc": json.dumps(c.__dict__)})
        for x in losses:
            row = {"call_id": x.call_id, "session_id": x.session_id, "slot": x.slot,
                   "reason": x.reason, "seconds": x.seconds, "detail": x.detail, "ts": x.at}
            doc["losses"].append({"call_id": x.call_id, "ts": repr(x.at),
                                  "doc": json.dumps(row)})
        for m in media:
            keys = ("call_id", "session_id", "ts", "why", "role", "tag", "packets", "bytes")
            row = dict(zip(keys, m, strict=True))
            doc["media"].append({"call_id": row["call_id"], "doc": json.dumps(row)})
        if not any(doc.values()):
            return
        epoch = self.fence.epoch
        if epoch is None:
            raise FencedOut(f"{self.fence.instance} is not the leader: not writing")
        # cjson turns an empty Lua table into {} (an object): lists must not be empty
        payload = json.dumps({k: v or {} for k, v in doc.items()})
        try:
            self._write(args=[self.p, self.fence.instance, str(epoch), payload])
        except Exception as exc:  # redis.ResponseError / ConnectionError: translated here
            msg = str(exc)
            if "FENCED" in msg:
                raise FencedOut(f"{self.fence.instance} (epoch {epoch}) lost the lease: "
                                "not writing") from exc
            if "DUPLICATE" in msg:
                raise DuplicateSession(f"a slot already has an open recording session: "
                                       f"{msg}") from exc
            raise ControllerError(f"{self.path}: {msg}") from exc
        with self._lock:
            for s in ss:
                if s.open:
                    self._history_saved[s.session_id] = len(s.history)
                else:
                    self._history_saved.pop(s.session_id, None)

    # ------------------------------------------------------------------ reads
    def _sessions(self, ids: Iterable[str]) -> list[RecordingSession]:
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.get(self.p + "session:" + i)
            pipe.lrange(self.p + "history:" + i, 0, -1)
        res = pipe.execute()
        out = []
        for k in range(0, len(res), 2):
            if res[k] is None:
                continue
            hist = [tuple(json.loads(h)) for h in res[k + 1]]
            s = session_from_doc(json.loads(res[k]), hist)
            out.append(s)
            if s.open:
                with self._lock:
                    self._history_saved[s.session_id] = len(s.history)
        return out

    def open_sessions(self) -> list[RecordingSession]:
        out = self._sessions(self.r.smembers(self.p + "sessions:open"))
        return sorted((s for s in out if s.state in OPEN_STATES), key=lambda s: s.created)

    def recent(self, limit: int = 100) -> list[RecordingSession]:
        return self._sessions(self.r.zrevrange(self.p + "sessions:created", 0, limit - 1))

    def get(self, session_id: str) -> RecordingSession | None:
        found = self._sessions([session_id])
        return found[0] if found else None

    def for_call(self, call_id: str) -> list[RecordingSession]:
        out = self._sessions(self.r.smembers(self.p + f"call:{call_id}:sessions"))
        return sorted(out, key=lambda s: s.created)

    def by_rs_call_id(self, rs_call_id: str) -> RecordingSession | None:
        sid = self.r.get(self.p + "rs:" + rs_call_id)
        return self.get(sid.decode()) if sid else None

    def count_by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._sessions(self.r.zrange(self.p + "sessions:created", 0, -1)):
            out[s.state.value] = out.get(s.state.value, 0) + 1
        return out

    def call(self, call_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self.p + "call:" + call_id)
        return _call_row(json.loads(raw)) if raw else None

    def calls(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        ids = self.r.zrangebyscore(self.p + "calls:answered", since,
                                   "+inf" if until is None else f"({until}")
        raws = self.r.mget([self.p + "call:" + i.decode() for i in ids]) if ids else []
        return [_call_row(json.loads(r)) for r in raws if r]

    def losses(self, *, call_id: str | None = None, since: float = 0.0,
               until: float | None = None) -> list[dict[str, Any]]:
        if call_id is not None:
            ns = self.r.lrange(self.p + f"call:{call_id}:losses", 0, -1)
        else:
            ns = self.r.zrangebyscore(self.p + "losses:ts", since,
                                      "+inf" if until is None else f"({until}")
        raws = self.r.mget([self.p + "loss:" + n.decode() for n in ns]) if ns else []
        return [dict(json.loads(r), id=int(n)) for n, r in zip(ns, raws, strict=True) if r]

    def loss_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for x in self.losses():
            out[x["reason"]] = out.get(x["reason"], 0) + 1
        return out

    def media(self, call_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(self.p + "media:" + call_id, 0, -1)]


def _call_row(d: dict[str, Any]) -> dict[str, Any]:
    """A call record in the SQLite store's column names (the audit reads either)."""
    return {"call_id": d["call_id"], "edge": d["edge"], "node": d["node"], "grp": d["group"],
            "slots": d["slots"], "required": d["required"], "rule": d["rule"],
            "record_local": int(d["record_local"]), "answered": d["answered_at"],
            "received": d["received_at"], "ended": d["ended_at"],
            "end_reason": d["end_reason"]}
