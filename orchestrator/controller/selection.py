"""Which SRS of a group records a session: strategies and SRS health (sans-IO).

``hunt`` tries the servers in the order the site lists them, ``round-robin`` starts each
choice one server further than the last one of the group, ``least-busy`` takes the server
with the fewest sessions this controller has open on it (ties in site order). Servers that
the prober counts as down go last, whatever the strategy: when every server looks down the
group is still tried rather than the call left unrecorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..site.model import SrsGroup, SrsServer

__all__ = ["PROBE_PREFIX", "NodeProber", "Prober",
           "SrsHealth", "SrsProber", "SrsSelector"]


@dataclass
class SrsHealth:
    """What the prober knows of one SRS."""

    up: bool = True
    last_ok: float | None = None  # time of the last answered probe
    misses: int = 0  # unanswered probes in a row


@dataclass
class SrsSelector:
    """Shared by every call of a controller; called from its one core thread."""

    groups: dict[str, SrsGroup]
    health: dict[str, SrsHealth] = field(default_factory=dict)
    busy: Counter[str] = field(default_factory=Counter)  # open sessions per SRS URI
    selections: Counter[tuple[str, str]] = field(default_factory=Counter)  # (group, strategy)
    _next: dict[str, int] = field(default_factory=dict)  # round-robin position per group

    def state(self, uri: str) -> SrsHealth:
        return self.health.setdefault(uri, SrsHealth())

    def is_up(self, uri: str) -> bool:
        return self.state(uri).up

    def pick(self, group: SrsGroup, avoid: Iterable[str]) -> SrsServer | None:
        """The server for a new session of ``group``, never one in ``avoid``; ``None`` when
        none is left."""
        skip = set(avoid)
        servers = [s for s in group.servers if s.uri not in skip]
        if not servers:
            return None
        if group.strategy == "round-robin":
            start = self._next.get(group.name, 0) % len(group.servers)
            order = group.servers[start:] + group.servers[:start]
            servers = [s for s in order if s.uri not in skip]
        elif group.strategy == "least-busy":
            servers = sorted(servers, key=lambda s: self.busy[s.uri])  # stable: site order
        servers.sort(key=lambda s: not self.is_up(s.uri))  # stable: down ones last
        chosen = servers[0]
        if group.strategy == "round-robin":
            idx = next(i for i, s in enumerate(group.servers) if s.uri == chosen.uri)
            self._next[group.name] = idx + 1
        self.selections[(group.name, group.strategy)] += 1
        return chosen

    def opened(self, uri: str) -> None:
        self.busy[uri] += 1

    def closed(self, uri: str) -> None:
        if self.busy[uri] > 0:
            self.busy[uri] -= 1


@dataclass
class _Target:
    transport: str
    interval: float
    failures: int
    next_at: float = 0.0
    up: bool = True
    misses: int = 0
    last_ok: float | None = None


PROBE_PREFIX = "siprec-probe-"  # the edge relays replies of Call-IDs starting "siprec-"
_DOWN_CODES = frozenset({408, 480, 503})  # answers that mean "not taking sessions"


class Prober:
    """Periodic probes of named targets (sans-IO): which probes to send now, which target
    changed state. A probe unanswered when the next one is due is a miss; ``failures``
    misses in a row mark the target down, an answer (any code but 408/480/503) marks it up.
    With a 1 s interval and 2 failures a dead target is noticed 2–3 s after its last
    answer (at once-per-interval on a refused probe: 1–2 s)."""

    prefix = "probe-"

    def __init__(self) -> None:
        self.targets: dict[str, _Target] = {}
        self.pending: dict[str, tuple[str, float]] = {}  # probe id -> (target, sent)
        self._seq = 0

    def add(self, name: str, interval: float, failures: int, transport: str = "") -> None:
        t = self.targets.get(name)
        if t is None:
            self.targets[name] = _Target(transport, interval, failures)
        else:  # asked for twice: the most eager settings win
            t.interval = min(t.interval, interval)
            t.failures = min(t.failures, failures)

    def is_up(self, name: str) -> bool:
        t = self.targets.get(name)
        return t is None or t.up

    @classmethod
    def owns(cls, call_id: str) -> bool:
        return call_id.startswith(cls.prefix)

    def to_send(self, now: float) -> list[tuple[str, str, str]]:
        """``(uri, transport, call_id)`` of the probes due now."""
        out = []
        for uri, t in self.targets.items():
            if now >= t.next_at:
                self._seq += 1
                call_id = f"{self.prefix}{self._seq}-{int(now * 1000) % 100000000}"
                self.pending[call_id] = (uri, now)
                t.next_at = now + t.interval
                out.append((uri, t.transport, call_id))
        return out

    def due(self, now: float) -> list[tuple[str, bool, float | None]]:
        """Probes that went unanswered for a whole interval: ``(uri, up, last_ok)`` of
        every SRS whose state changed."""
        changes = []
        for call_id, (uri, sent) in list(self.pending.items()):
            t = self.targets[uri]
            if now - sent < t.interval:
                continue
            del self.pending[call_id]
            t.misses += 1
            if t.up and t.misses >= t.failures:
                t.up = False
                changes.append((uri, False, t.last_ok))
        return changes

    def reply(self, call_id: str, code: int, now: float) -> list[tuple[str, bool, float | None]]:
        """A reply to a probe (a late one still counts as a sign of life)."""
        if code < 200:
            return []
        found = self.pending.pop(call_id, None)
        uri = found[0] if found else None
        if uri is None:
            return []
        t = self.targets[uri]
        if code in _DOWN_CODES:
            t.misses += 1
            if t.up and t.misses >= t.failures:
                t.up = False
                return [(uri, False, t.last_ok)]
            return []
        first = t.last_ok is None
        t.misses, t.last_ok = 0, now
        if not t.up or first:  # the first answer is news too (metrics start knowing)
            t.up = True
            return [(uri, True, now)]
        return []


class SrsProber(Prober):
    """OPTIONS probes of every SRS of groups with ``probe_interval > 0`` (their Call-IDs
    start ``siprec-``: the edge relays their replies). With the defaults (1 s, 2 misses) a
    dead SRS is noticed 2–3 s after its last answer."""

    prefix = PROBE_PREFIX

    def __init__(self, groups: Iterable[SrsGroup]) -> None:
        super().__init__()
        for g in groups:
            if g.probe_interval > 0:
                for s in g.servers:
                    self.add(s.uri, g.probe_interval, g.probe_failures, s.transport)


class NodeProber(Prober):
    """NG ``ping`` of every rtpengine node every ``interval`` s (``media.ping_interval``):
    lost after ``failures`` (``media.ping_failures``) missed pings in a row (a refused one
    counts at once), i.e. with the defaults (1 s, 2) 1–2 s after its death when the port
    refuses (loopback, a stopped daemon), 2–3 s when the host goes silent; up again on a
    pong."""

    prefix = "node-ping-"

    def __init__(self, nodes: Iterable[str], interval: float, failures: int) -> None:
        super().__init__()
        for n in nodes:
            self.add(n, interval, failures)
