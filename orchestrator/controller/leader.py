"""Leadership of an active/standby controller pair: a Redis lease with a fencing epoch.

The lease is one key, ``<prefix>leader`` = the instance name, with a TTL (``ttl``, default
2 s) the leader renews every ``ttl / 4``. A standby tries ``SET NX`` every ``ttl / 8``; when
it gets the lease it increments ``<prefix>epoch``, and that epoch travels with everything
the new leader does: its store writes (checked in :mod:`.redis_store`'s script) and its
commands to the edges (the generated config drops commands of an older epoch). A leader
acts only while ``valid()``: a renewal within the last ``ttl - margin`` seconds by its own
monotonic clock, so a process that was paused (GC, SIGSTOP, a partition from Redis) stops
acting before the lease can pass to the standby, and whatever it still sends is fenced.

Takeover bound: the lease expires at most ``ttl`` after the leader's last renewal; the
standby notices within ``ttl / 8`` after that: ≈ 2.25 s with the defaults.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import ControllerError

__all__ = ["Leadership"]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leadership:
    """The lease of ``instance`` (not thread-safe: one thread drives it)."""

    def __init__(self, client: Any, prefix: str, instance: str, *, ttl: float = 2.0,
                 margin: float = 0.5) -> None:
        if not 0 < margin < ttl:
            raise ControllerError("lease margin must be between 0 and the ttl")
        self.r = client
        self.key, self.epoch_key = prefix + "leader", prefix + "epoch"
        self.instance = instance
        self.ttl, self.margin = ttl, margin
        self.epoch: int | None = None
        self._renewed = 0.0  # monotonic time of the last successful acquire/renew
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def interval(self) -> float:
        """How often to call :meth:`tick`."""
        return self.ttl / 8

    def valid(self) -> bool:
        """True while this instance may act (it holds a lease it renewed recently)."""
        return self.epoch is not None and time.monotonic() - self._renewed < \
            self.ttl - self.margin

    def tick(self) -> tuple[bool, bool]:
        """Acquire or renew; returns ``(leader, changed)``. Redis errors count as a lost
        lease for a leader (it stops acting) and as no lease for a standby."""
        was = self.epoch is not None
        t = time.monotonic()
        try:
            if was:
                if time.monotonic() - self._renewed >= self.ttl / 4:
                    if self._renew(keys=[self.key],
                                   args=[self.instance, int(self.ttl * 1000)]) == 1:
                        self._renewed = t
                    else:
                        self.epoch = None
            elif self.r.set(self.key, self.instance, nx=True, px=int(self.ttl * 1000)):
                self._renewed = t
                self.epoch = int(self.r.incr(self.epoch_key))
        except Exception:  # redis unreachable: never act on an unconfirmed lease
            if was and not self.valid():
                self.epoch = None
        if self.epoch is not None and not self.valid():
            self.epoch = None
        now = self.epoch is not None
        return now, now != was

    def holder(self) -> str | None:
        v = self.r.get(self.key)
        return v.decode() if isinstance(v, bytes) else v

    def release(self) -> None:
        """Give the lease up (a clean stop): the standby takes over at once."""
        if self.epoch is not None:
            try:
                self._release(keys=[self.key], args=[self.instance])
            finally:
                self.epoch = None
