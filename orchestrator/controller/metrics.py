"""Prometheus metrics of the controller (``/metrics`` on the API listener), and the
completeness of recent calls computed from its store (:class:`LedgerMonitor`)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..audit import (
    AuditOptions,
    ControllerCall,
    ControllerFacts,
    ControllerLoss,
    ControllerSession,
    EdgeCall,
    IncrementalEdgeReader,
    LedgerEntry,
    MediaRead,
    Verdict,
    build_entry,
)
from ..audit.ledger import reason_key
from ..errors import MetadataError, SiprecctlError
from ..siprec import parse_metadata
from ..site.model import Site
from .session import RecordingSession
from .store import SessionStore, Store

__all__ = ["LedgerMonitor", "Metrics", "ledger_facts"]

log = logging.getLogger("siprecctl.ledger")

_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class Metrics:
    """One registry per controller (tests run several controllers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "siprecctl_sessions_active", "Recording sessions established or paused", registry=r)
        self.sessions_per_srs = Gauge(
            "siprecctl_srs_sessions_active", "Open recording sessions per SRS", ["srs"],
            registry=r)
        self.srs_up = Gauge("siprecctl_srs_up", "1 while the SRS answers OPTIONS probes",
                            ["srs"], registry=r)
        self.setup_latency = Histogram(
            "siprecctl_setup_latency_seconds",
            "From the call's answer event to the SRS's 2xx (tm ACKs it at once)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.losses = Counter(
            "siprecctl_recording_losses_total",
            "Recordings the policy wanted and did not (fully) get, by reason", ["reason"],
            registry=r)
        self.loss_seconds = Counter(
            "siprecctl_recording_loss_seconds_total",
            "Seconds of call media no SRS received, by reason", ["reason"], registry=r)
        self.gaps_opened = Counter(
            "siprecctl_recording_gaps_opened_total",
            "Slots that stopped reaching an SRS (counted when it happens; the loss and its "
            "seconds are counted when the gap closes)", ["reason"], registry=r)
        self.failovers = Counter("siprecctl_srs_failovers_total",
                                 "Moves to another SRS of a group", ["group"], registry=r)
        self.selections = Counter("siprecctl_srs_selections_total",
                                  "SRS choices by group and strategy", ["group", "strategy"],
                                  registry=r)
        self.events = Counter("siprecctl_events_total", "evapi events received",
                              ["edge", "event"], registry=r)
        self.malformed_events = Counter("siprecctl_events_malformed_total",
                                        "evapi events that could not be typed", ["edge"],
                                        registry=r)
        self.evapi_up = Gauge("siprecctl_evapi_connected", "1 while connected to the edge",
                              ["edge"], registry=r)
        self.node_up = Gauge("siprecctl_rtpengine_up",
                             "1 while the rtpengine node answers NG pings (0: lost)", ["node"],
                             registry=r)
        self.edge_lost = Gauge("siprecctl_edge_lost",
                               "1 while the edge counts as lost (evapi down past the bound)",
                               ["edge"], registry=r)
        self.evapi_reconnects = Counter("siprecctl_evapi_reconnects_total",
                                        "evapi connections re-established", ["edge"],
                                        registry=r)
        self.sessions_total = Counter("siprecctl_sessions_total",
                                      "Recording sessions by outcome", ["outcome"], registry=r)
        self.queue_depth = Gauge("siprecctl_queue_depth", "Inputs waiting for the core",
                                 registry=r)
        self.queue_lag = Histogram(
            "siprecctl_event_lag_seconds",
            "From an event (the edge's timestamp) to the core acting on it",
            buckets=_LAG_BUCKETS,
            registry=r)
        self.events_total = Counter("siprecctl_misc_total", "Other controller events",
                                    ["kind"], registry=r)
        self.leader = Gauge("siprecctl_leader", "1 while this controller holds the pair's "
                            "lease (a single controller always acts)", registry=r)
        self.takeovers = Counter("siprecctl_takeovers_total",
                                 "Times this controller won the lease", registry=r)
        # the completeness ledger (LedgerMonitor; README "Audit")
        self.ledger_completeness = Gauge(
            "siprecctl_ledger_completeness_ratio",
            "Required calls recorded without gaps ÷ required calls, over the calls judged in "
            "the last window (settled after their end)", ["site", "edge", "group"],
            registry=r)
        self.ledger_coverage = Gauge(
            "siprecctl_ledger_coverage_ratio",
            "Seconds recorded by at least one SRS ÷ seconds the policy wanted recorded, "
            "same window", ["site", "edge", "group"], registry=r)
        self.ledger_calls = Counter(
            "siprecctl_ledger_calls_total", "Answered calls judged, by verdict",
            ["site", "edge", "group", "verdict"], registry=r)
        self.ledger_missing = Counter(
            "siprecctl_ledger_missing_calls_total",
            "Required calls with no recording, by reason", ["site", "reason"], registry=r)
        self.ledger_gapped = Counter(
            "siprecctl_ledger_gapped_calls_total",
            "Required calls recorded with gaps, by reason", ["site", "reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------------------ store → facts
def _labels(s: RecordingSession) -> dict[str, str]:
    """``a=label`` → leg (caller/callee), from the session's metadata snapshot."""
    if not s.metadata or not s.participants:
        return {}
    try:
        rec = parse_metadata(s.metadata)
    except MetadataError:
        return {}
    by_id = {st.stream_id: st.label for st in rec.streams}
    out: dict[str, str] = {}
    for role, pid in s.participants.items():
        assoc = rec.stream_assoc(pid)
        for sid in assoc.send if assoc else ():
            if sid in by_id:
                out[by_id[sid]] = role
    return out


def ledger_facts(store: Store, *, since: float = 0.0, until: float | None = None,
                 call_ids: Iterable[str] | None = None) -> ControllerFacts:
    """The controller's facts of the calls answered in [since, until), or of ``call_ids``."""
    facts = ControllerFacts()
    rows = ([r for cid in call_ids if (r := store.call(cid)) is not None]
            if call_ids is not None else store.calls(since, until))
    for r in rows:
        cid = r["call_id"]
        facts.add_call(ControllerCall(
            call_id=cid, edge=r["edge"], group=r["grp"], slots=r["slots"],
            required=r["required"], rule=r["rule"], record_local=bool(r["record_local"]),
            answered=r["answered"], ended=r["ended"], end_reason=r["end_reason"]))
        facts.sessions[cid] = [ControllerSession(
            session_id=s.session_id, call_id=cid, slot=s.slot, srs=s.srs_uri,
            state=s.state.value, reason=s.reason, established=s.established_at,
            media_until=s.media_until, ended=s.ended_at,
            rs_call_ids=tuple(a.rs_call_id for a in s.attempts),
            history=tuple(tuple(h) for h in s.history),  # type: ignore[misc]
            labels=_labels(s), attempts=tuple((a.srs_uri, a.outcome) for a in s.attempts))
            for s in store.for_call(cid)]
        facts.losses[cid] = [ControllerLoss(
            call_id=cid, session_id=x["session_id"], slot=x["slot"], reason=x["reason"],
            seconds=x["seconds"], detail=x["detail"], ts=x["ts"])
            for x in store.losses(call_id=cid)]
        facts.media[cid] = [MediaRead(
            call_id=cid, session_id=m["session_id"], ts=m["ts"], why=m["why"],
            role=m["role"], tag=m["tag"], packets=m["packets"]) for m in store.media(cid)]
    return facts


# ------------------------------------------------------------------------------ the monitor
class LedgerMonitor:
    """Judges each answered call once, ``settle`` seconds after it ended, from the store and
    — when this host has them — the edges' own records (so a call the controller never saw
    counts as missing, ``controller down``). Cheap: a few indexed reads per ended call and
    the lines appended to the record files since the last round. Local recordings and SRS
    packet counts are left to ``siprecctl audit``."""

    def __init__(self, site: Site, metrics: Metrics, store: Store, *,
                 interval: float = 15.0, window: float = 3600.0, settle: float = 10.0,
                 lookback: float = 900.0, counting: Callable[[], bool] = lambda: True) -> None:
        self.site, self.metrics, self.interval = site, metrics, interval
        # a standby of a pair judges too (so that it knows what was judged) but counts
        # nothing: the counters are the leader's
        self.counting = counting
        self.window, self.settle = window, settle
        self._store = store
        self._own: SessionStore | None = None
        self._mark = time.time() - lookback  # store calls answered after this are new
        self._at_mark: set[str] = set()  # calls answered exactly at the mark, seen
        self._pending: dict[str, float] = {}  # call-id -> answered
        self._edge: dict[str, EdgeCall] = {}
        self._readers = [IncrementalEdgeReader(Path(site.accounting.edge_dir(e.name)))
                         for e in site.edges]
        self._lookback = lookback
        # (judged at, edge, group, recorded, covered seconds, required seconds)
        self._judged: deque[tuple[float, str, str, bool, float, float]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._own is not None:
            self._own.close()

    def _reader_store(self) -> Store:
        """Its own read-only connection (WAL: never blocks the controller's writes)."""
        if (self._own is None and isinstance(self._store, SessionStore)
                and self._store.path != ":memory:"):
            try:
                self._own = SessionStore(self._store.path, readonly=True)
            except SiprecctlError:
                return self._store
        return self._own or self._store

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once(time.time())
            except Exception:  # the metrics must never take the controller down
                log.exception("ledger: round failed")

    def run_once(self, now: float) -> list[LedgerEntry]:
        """One round: collect new calls, judge the settled ones, refresh the gauges."""
        store = self._reader_store()
        horizon = now - self._lookback
        for reader in self._readers:
            for rec in reader.poll():
                if rec.kind == "failed" or (rec.answered or rec.at) < horizon:
                    continue
                c = self._edge.setdefault(rec.call_id, EdgeCall(rec.call_id))
                if rec.kind == "answered":
                    c.answered = c.answered or rec
                else:
                    c.ended = c.ended or rec
        rows = [r for r in store.calls(self._mark) if r["call_id"] not in self._at_mark]
        for r in rows:
            self._pending[r["call_id"]] = r["answered"]
        top = max((r["answered"] for r in rows), default=self._mark)
        if top > self._mark:
            self._mark, self._at_mark = top, set()
        self._at_mark |= {r["call_id"] for r in rows if r["answered"] == self._mark}
        done: list[LedgerEntry] = []
        for cid in sorted(set(self._pending) | set(self._edge)):
            edge = self._edge.get(cid)
            ended = edge.ended.at if edge is not None and edge.ended else None
            if ended is None:
                row = store.call(cid)
                ended = row["ended"] if row is not None else None
            if ended is None or now - ended < self.settle:
                continue
            facts = ledger_facts(store, call_ids=[cid])
            e = build_entry(cid, edge, facts, None, None, AuditOptions(now=now))
            if self.counting():
                self._count(e, now)
            done.append(e)
            self._pending.pop(cid, None)
            self._edge.pop(cid, None)
        self._gauges(now)
        return done

    def _count(self, e: LedgerEntry, now: float) -> None:
        m, site = self.metrics, self.site.name
        group = e.policy.siprec or "-"
        m.ledger_calls.labels(site, e.edge, group, e.verdict.value).inc()
        why = [g.reason for g in e.gaps] or [reason_key(r) for r in e.reasons
                                             if r != "no edge record"]
        for reason in dict.fromkeys(why):
            if e.verdict is Verdict.MISSING:
                m.ledger_missing.labels(site, reason).inc()
            elif e.verdict is Verdict.GAPS:
                m.ledger_gapped.labels(site, reason).inc()
        if e.required:
            req = e.required_seconds if e.coverage is not None else 0.0
            self._judged.append((now, e.edge, group, e.verdict is Verdict.RECORDED,
                                 (e.coverage or 0.0) * req, req))

    def _gauges(self, now: float) -> None:
        while self._judged and self._judged[0][0] < now - self.window:
            self._judged.popleft()
        agg: dict[tuple[str, str], list[float]] = {}
        for _, edge, group, recorded, covered, wanted in self._judged:
            a = agg.setdefault((edge, group), [0.0, 0.0, 0.0, 0.0])
            a[0] += 1
            a[1] += 1 if recorded else 0
            a[2] += covered
            a[3] += wanted
        for (edge, group), (n, ok, cov, req) in agg.items():
            self.metrics.ledger_completeness.labels(self.site.name, edge, group).set(ok / n)
            if req > 0:
                self.metrics.ledger_coverage.labels(self.site.name, edge, group).set(cov / req)
