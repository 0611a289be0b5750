"""``siprecctl serve``: the driver around the per-call cores (:mod:`.core`).

Threads and queues::

    evapi reader (one per edge) ──typed events──┐
    I/O workers (results of NG/RPC/evapi) ──────┤──► input queue ──► core loop (one thread)
    operator API (futures) ─────────────────────┘        │ actions: persisted first (one
                                                          │ transaction per batch), then
                      NG / RPC / evapi I/O  ◄─────────────┘ handed to the I/O workers,
                      (ordered per call)                    in order per call

The core loop owns every :class:`~.core.CallCore`, the SRS selector and the prober; it never
blocks on the network. The I/O workers run each call's actions in order
(:class:`KeyedExecutor`), so an ``unsubscribe`` never overtakes the ``subscribe request``
it follows, and feed results back as inputs.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ..errors import (
    ControllerError,
    EvapiProtocolError,
    IllegalTransition,
    KamailioError,
    KamailioUnreachable,
    NgError,
    NgTransportError,
    SiprecctlError,
)
from ..kamailio.evapi import EvapiClient
from ..kamailio.events import (
    CallAnswered,
    CallEnded,
    CallReinvite,
    EdgeEvent,
    RsError,
    RsReply,
    RsRequest,
    parse_event,
)
from ..kamailio.rpc import HttpRpcTransport, KamailioClient
from ..ng.pool import NodePool
from ..site.model import Edge, Site
from ..site.secrets import edge_secrets
from .core import CallCore
from .dialog import options_headers
from .leader import Leadership
from .messages import (
    Action,
    CallRecord,
    CancelInvite,
    DeleteCall,
    EdgeForget,
    EdgeLost,
    EdgeSdp,
    EdgeSip,
    EndCall,
    Input,
    Loss,
    NgFailed,
    NodeLost,
    Observe,
    Operator,
    Persist,
    PersistCall,
    QueryMedia,
    Relocate,
    Relocated,
    Reply,
    SendFailed,
    SendInvite,
    SendRequest,
    SrsDown,
    StartLocal,
    StopLocal,
    Subscribe,
    SubscribeAnswer,
    Subscribed,
    Tick,
    Unsubscribe,
)
from .metrics import LedgerMonitor, Metrics
from .redis_store import Fence, FencedOut
from .selection import NodeProber, SrsProber, SrsSelector
from .session import RecordingSession
from .store import DuplicateSession, SessionStore, Store

__all__ = ["Controller", "KeyedExecutor"]

log = logging.getLogger("siprecctl.controller")
T = TypeVar("T")

RETIRE_AFTER = 40.0  # keep a finished call's core this long: a late 2xx still gets its BYE
ENDED_MEMORY = 120.0  # remember ended calls this long (answered events still queued)
# README "After a node loss": counters read twice this far apart find the node that carries
# a lost node's call (its legs' packet counters grow)
CARRIER_WINDOW = 0.25
STANDBY_REPLIES_KEPT = 30.0  # seconds of the SRS replies a standby replays at its takeover
NODE_PING_TIMEOUT = 0.5


class KeyedExecutor:
    """A thread pool that runs the tasks of one key (a call-id) one at a time, in order."""

    def __init__(self, workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="io")
        self._queues: dict[str, deque[tuple[Callable[[], Any], Future[Any]]]] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        with self._lock:
            q = self._queues.get(key)
            if q is not None:
                q.append((fn, fut))
                return fut
            self._queues[key] = deque([(fn, fut)])
        self._pool.submit(self._drain, key)
        return fut

    def _drain(self, key: str) -> None:
        while True:
            with self._lock:
                q = self._queues[key]
                if not q:
                    del self._queues[key]
                    return
                fn, fut = q[0]
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # delivered to whoever waits on the future
                    fut.set_exception(exc)
            with self._lock:
                q.popleft()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


@dataclass
class EdgeLink:
    """What the controller holds per Kamailio edge."""

    name: str
    rpc: KamailioClient
    evapi: EvapiClient
    sip: EdgeSip


class Controller:
    """The recording controller of one site. ``start()`` connects, reconciles, serves."""

    def __init__(self, site: Site, *, store: Store | None = None, workers: int = 16,
                 evapi_backoff: tuple[float, float] = (0.1, 5.0),
                 op_timeout: float = 30.0, leadership: Leadership | None = None,
                 fence: Fence | None = None) -> None:
        self.site = site
        self.metrics = Metrics()
        self.store: Store = store if store is not None else SessionStore(site.controller.store)
        # an active/standby pair: only the lease holder acts (README "Scaling out")
        self.leadership = leadership
        self.fence = fence
        self._lead_thread: threading.Thread | None = None
        self.ledger = LedgerMonitor(site, self.metrics, self.store,  # completeness gauges
                                   counting=lambda: self.acting)
        self.pool = NodePool.from_site(site)
        self.groups = {g.name: g for g in site.recording.srs_groups}
        self.selector = SrsSelector(self.groups)
        self.prober = SrsProber(self.groups.values())
        self.node_prober = NodeProber((n.name for n in site.media.nodes),
                                      site.media.ping_interval, site.media.ping_failures)
        self._edge_down: dict[str, float] = {}  # edge -> since when its evapi is down
        self._edge_lost: set[str] = set()
        self.groups_uris = sorted({s.uri for g in self.groups.values() for s in g.servers})
        self.op_timeout = op_timeout
        self._node_by_url = {f"udp:{n.ng.address}:{n.ng.port}": n.name for n in site.media.nodes}
        self.cores: dict[str, CallCore] = {}
        self._rs_index: dict[str, str] = {}  # RS Call-ID -> call-id
        self._retired: set[str] = set()  # finished cores waiting to go ...
        self._retire_at: list[tuple[float, str]] = []  # ... at these times (a heap)
        # call-id -> (arrival, the edge's end time), in arrival order (readers add, the loop
        # prunes from the oldest)
        self._ended_seen: dict[str, tuple[float, float]] = {}
        self._ended_lock = threading.Lock()
        self._pending_answered = 0
        self._pending_lock = threading.Lock()
        # a pair's new leader holds the edges' events until its takeover reconcile has
        # applied: a core an event created first would not know the old leader's sessions
        # (left open, or a second session on their slot); None: events flow
        self._hold_lock = threading.Lock()
        self._held: list[tuple[str, dict[str, Any]]] | None = [] if leadership else None
        # ... and, while standing by, keeps the recording servers' final replies it heard:
        # a 2xx that reached the old leader after it was cut off from the store is then
        # known at the takeover, and the session it established at the SRS gets its BYE
        self._standby_rs: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=4096)
        self._inputs: deque[tuple[Any, ...]] = deque()
        self._cv = threading.Condition()
        self._deadlines: list[tuple[float, str]] = []
        self._ops: dict[int, Future[tuple[bool, dict[str, Any]]]] = {}
        self._op_seq = 0
        self._io = KeyedExecutor(workers)
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._started = False
        self.metrics.sessions_active.set_function(self._active_count)
        self.metrics.queue_depth.set_function(lambda: len(self._inputs))
        self.edges: dict[str, EdgeLink] = {e.name: self._link(e, evapi_backoff)
                                           for e in site.edges}

    # ------------------------------------------------------------------ wiring
    def _link(self, edge: Edge, backoff: tuple[float, float]) -> EdgeLink:
        secrets = edge_secrets(self.site, edge.name)  # owner-only files (README "Security")
        rpc = KamailioClient(HttpRpcTransport(
            f"http://{edge.jsonrpc.address}:{edge.jsonrpc.port}/RPC", secret=secrets.jsonrpc))
        name = edge.name

        def on_event(doc: dict[str, Any]) -> None:
            self._on_event(name, doc)

        def on_state(up: bool) -> None:
            self.metrics.evapi_up.labels(name).set(1 if up else 0)
            if not up:
                self._edge_down.setdefault(name, time.time())
                return
            self._edge_down.pop(name, None)
            if name in self._edge_lost:
                log.warning("edge %s is back: reconciling its dialogs", name)
                self._put(("fn", partial(self._edge_back, name)))
            if up and self._started:
                self.metrics.evapi_reconnects.labels(name).inc()
                # events were lost while disconnected: catch up from Kamailio's dialogs
                threading.Thread(target=self._reconcile_edge, args=(name,), daemon=True,
                                 name=f"reconcile-{name}").start()

        evapi = EvapiClient((edge.evapi.address, edge.evapi.port), on_event, on_state=on_state,
                            name=name, backoff=backoff, secret=secrets.evapi)
        ports: dict[str, int] = {}
        host = edge.listen[0].advertise or edge.listen[0].address
        for listen in edge.listen:
            ports.setdefault(listen.proto, listen.port)
        return EdgeLink(name, rpc, evapi, EdgeSip(name, str(host).split(":")[0], ports))

    def start(self, *, connect_timeout: float = 5.0, reconcile: bool = True) -> None:
        """Connect to every edge, reconcile the store with the daemons, then follow events.
        In a pair, a standby only connects; it reconciles and acts once it holds the lease."""
        self._loop_thread = threading.Thread(target=self._loop, name="core", daemon=True)
        self._loop_thread.start()
        for link in self.edges.values():
            self.metrics.evapi_up.labels(link.name).set(0)
            link.evapi.start()
        for link in self.edges.values():
            if not link.evapi.wait_connected(connect_timeout):
                log.warning("edge %s: evapi not connected yet; retrying in the background",
                            link.name)
        if self.leadership is not None:
            self.metrics.leader.set(0)
            self._lead_thread = threading.Thread(target=self._lead, name="lease", daemon=True)
            self._lead_thread.start()
        elif reconcile:
            self.reconcile()
        self._started = True
        self.ledger.start()

    @property
    def acting(self) -> bool:
        """May this controller act (alone, or the leader of a pair with a valid lease)?"""
        return self.leadership is None or self.leadership.valid()

    def _lead(self) -> None:
        """The lease thread: acquire/renew; on winning, reconcile then act; on losing, stop
        acting at once (whatever is still in flight is fenced by the epoch)."""
        lead = self.leadership
        assert lead is not None and self.fence is not None
        while not self._stop.is_set():
            leader, changed = lead.tick()
            if changed and leader:
                self.fence.epoch = lead.epoch
                self.metrics.leader.set(1)
                self.metrics.takeovers.inc()
                log.warning("controller %s leads (epoch %s): reconciling, then acting",
                            lead.instance, lead.epoch)
                self.reconcile()
                self._release_held()
            elif changed:
                self.fence.epoch = None
                self.metrics.leader.set(0)
                log.error("controller %s lost the lease: it stops acting", lead.instance)
                with self._hold_lock:
                    self._held = []
                self._put(("fn", self._forget_all))
            self._stop.wait(lead.interval)

    def _release_held(self) -> None:
        """After the takeover reconcile: the events that came meanwhile, in order."""
        with self._hold_lock:
            recent = time.monotonic() - STANDBY_REPLIES_KEPT
            heard = [(e, d) for ts, e, d in self._standby_rs if ts >= recent]
            self._standby_rs.clear()
            held, self._held = heard + (self._held or []), None
            if held:
                log.info("takeover: %d events (held during the reconcile, or SRS replies "
                         "heard while standing by) handled now",
                         len(held))
            for edge, doc in held:
                self._take(edge, doc)

    def _forget_all(self, now: float) -> list[tuple[str, Action]]:
        """After losing the lease: drop every core (the new leader owns the calls now)."""
        self.cores.clear()
        self._rs_index.clear()
        self._deadlines.clear()
        self._retired.clear()
        self._retire_at.clear()
        return []

    def close(self) -> None:
        self._started = False
        if self.leadership is not None:
            self._stop.set()
            if self._lead_thread is not None:
                self._lead_thread.join(5.0)
            try:
                self.leadership.release()  # a clean stop hands over at once
            except Exception as exc:  # redis gone: the lease expires by itself
                log.warning("lease release: %s", exc)
        for link in self.edges.values():
            link.evapi.close()
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._loop_thread is not None:
            self._loop_thread.join(5.0)
        self._io.shutdown()
        self.ledger.stop()
        for link in self.edges.values():
            link.rpc.close()
        self.pool.close()
        self.store.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inputs
    def _put(self, item: tuple[Any, ...]) -> None:
        with self._cv:
            self._inputs.append(item)
            self._cv.notify()

    def _on_event(self, edge: str, doc: dict[str, Any]) -> None:
        """evapi reader thread: type the event, note ends, queue it. Never blocks."""
        kind = str(doc.get("event", "?"))
        self.metrics.events.labels(edge, kind).inc()
        if not self.acting:
            if kind == "rs_reply" and self.leadership is not None:
                self._standby_rs.append((time.monotonic(), edge, doc))
            return  # a standby: the leader acts; a takeover starts from a reconcile
        if self.leadership is not None:
            with self._hold_lock:
                if self._held is not None:
                    self._held.append((edge, doc))
                    return
        self._take(edge, doc)

    def _take(self, edge: str, doc: dict[str, Any]) -> None:
        """Type an event and queue it for the core loop."""
        try:
            ev = parse_event(doc)
        except EvapiProtocolError as exc:
            self.metrics.malformed_events.labels(edge).inc()
            log.error("edge %s: %s", edge, exc)
            return
        if ev is None:
            return
        if isinstance(ev, CallEnded):
            now = time.time()
            with self._ended_lock:
                self._ended_seen[ev.call_id] = (now, ev.ts or now)
        shed = False
        if isinstance(ev, CallAnswered):
            with self._pending_lock:  # one reader thread per edge
                self._pending_answered += 1
                shed = self._pending_answered > self.site.controller.max_pending
        self._put(("event", ev, time.monotonic(), shed))

    def _feed(self, call_id: str, inp: Input) -> None:
        self._put(("input", call_id, inp))

    # ------------------------------------------------------------------ the core loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            wait = 0.1
            if self._deadlines:
                wait = max(0.0, min(wait, self._deadlines[0][0] - now))
            with self._cv:
                if not self._inputs and wait > 0:
                    self._cv.wait(wait)
                batch = list(self._inputs)
                self._inputs.clear()
            actions: list[tuple[str, Action]] = []
            now = time.time()
            for item in batch:
                try:
                    actions += self._dispatch(item, now)
                except Exception:  # one bad input must not stop recording of every call
                    log.exception("controller: handling %s failed", type(item[1]).__name__)
            if self.acting:
                actions += self._due(now)
                actions += self._probe(now)
                actions += self._edges_lost(now)
            self._sweep(now)
            if actions:
                self._carry_out(actions)
                for uri in self.groups_uris:
                    self.metrics.sessions_per_srs.labels(uri).set(self.selector.busy[uri])

    def _dispatch(self, item: tuple[Any, ...], now: float) -> list[tuple[str, Action]]:
        kind = item[0]
        if kind == "event":
            ev, arrived, shed = item[1], item[2], item[3]
            # from the edge's own clock when it has one: a controller that stalled (GC,
            # CPU starvation, SIGSTOP) also stalled its reader, so the queue alone lies
            lag = time.monotonic() - arrived
            if ev.ts and 0 < now - ev.ts < 3600:
                lag = max(lag, now - ev.ts)
            self.metrics.queue_lag.observe(lag)
            return self._on_edge_event(ev, now, lag, shed)
        if kind == "input":
            call_id, inp = item[1], item[2]
            core = self.cores.get(call_id)
            if core is None:
                if isinstance(inp, Operator):
                    self._resolve(inp.token, False, {"error": f"call {call_id} is not a live "
                                                     "call this controller saw", "status": 404})
                return []
            return self._run_core(core, inp, now)
        if kind == "fn":
            result: list[tuple[str, Action]] = item[1](now)
            return result
        raise ControllerError(f"unknown input {kind}")

    def _run_core(self, core: CallCore, inp: Input, now: float,
                  start: Callable[[], list[Action]] | None = None) -> list[tuple[str, Action]]:
        acts = start() if start is not None else core.handle(inp, now)
        if start is not None:  # adopted sessions and abandoned INVITEs (a late 2xx: BYE)
            for rs in core.rs_call_ids():
                self._rs_index[rs] = core.call_id
        for a in acts:
            if isinstance(a, SendInvite | SendRequest):
                self._rs_index[a.rs_call_id] = core.call_id
        d = core.next_deadline()
        if d is not None:
            heapq.heappush(self._deadlines, (d, core.call_id))
        if core.call_id not in self._retired and core.done:
            self._retired.add(core.call_id)
            heapq.heappush(self._retire_at, (now + RETIRE_AFTER, core.call_id))
        return [(core.call_id, a) for a in acts]

    def _on_edge_event(self, ev: EdgeEvent, now: float, lag: float,
                       shed: bool) -> list[tuple[str, Action]]:
        if isinstance(ev, CallAnswered):
            with self._pending_lock:
                self._pending_answered -= 1
            return self._answered(ev, now, lag=lag, shed=(
                f"controller overloaded: more than {self.site.controller.max_pending} "
                "answered calls waiting" if shed else None))
        if isinstance(ev, CallReinvite | CallEnded):
            core = self.cores.get(ev.call_id)
            return self._run_core(core, ev, now) if core is not None else []
        if isinstance(ev, RsReply | RsRequest | RsError):
            if isinstance(ev, RsReply) and self.prober.owns(ev.rs_call_id):
                return self._srs_health(self.prober.reply(ev.rs_call_id, ev.code, now), now)
            call_id = self._rs_index.get(ev.rs_call_id)
            core = self.cores.get(call_id) if call_id else None
            if core is None:
                log.debug("edge %s: %s for unknown recording session %s", ev.edge,
                          type(ev).__name__, ev.rs_call_id)
                return []
            return self._run_core(core, ev, now)
        return []

    def _answered(self, ev: CallAnswered, now: float, *, lag: float = 0.0,
                  down_since: float | None = None,
                  shed: str | None = None) -> list[tuple[str, Action]]:
        if ev.call_id in self.cores:
            return []  # seen already (e.g. by a reconcile)
        group = self.groups.get(ev.siprec) if ev.siprec else None
        node = self._node_for(ev)
        if node is None:
            log.error("call %s: cannot tell its rtpengine node (%s)", ev.call_id, ev.rtpengine)
            self.store.write(losses=[Loss(ev.call_id, None, None, "unknown_node", 0.0,
                                          f"rtpengine {ev.rtpengine!r} is not in the site",
                                          now)])
            self.metrics.losses.labels("unknown_node").inc()
            return []
        if ev.siprec and group is None:
            log.error("call %s: SRS group %r is not in the site", ev.call_id, ev.siprec)
        core = CallCore(ev, node=node, group=group, selector=self.selector,
                        edge=self.edges[ev.edge].sip if ev.edge in self.edges else
                        next(iter(self.edges.values())).sip, now=now,
                        op_timeout=self.op_timeout)
        self.cores[ev.call_id] = core
        with self._ended_lock:
            seen = self._ended_seen.get(ev.call_id)
        ended = None if seen is None else seen[1]
        return self._run_core(core, Tick(), now, start=lambda: core.start(
            now, lag=lag, max_lag=self.site.controller.max_setup_lag, ended_at=ended,
            down_since=down_since, shed=shed))

    def _node_for(self, ev: CallAnswered) -> str | None:
        node = self._node_by_url.get(ev.rtpengine or "")
        if node is not None:
            return node
        edge = next((e for e in self.site.edges if e.name == ev.edge), None)
        names = [n.name for n in self.site.media.nodes
                 if n.set == (edge.media_set if edge else 0)]
        return names[0] if len(names) == 1 else None

    def _due(self, now: float) -> list[tuple[str, Action]]:
        out: list[tuple[str, Action]] = []
        seen: set[str] = set()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self._deadlines)
            core = self.cores.get(call_id)
            if core is None or call_id in seen:
                continue
            d = core.next_deadline()
            if d is not None and d <= now:
                seen.add(call_id)
                out += self._run_core(core, Tick(), now)
        return out

    def _sweep(self, now: float) -> None:
        """Drop the cores that finished long enough ago (only those due: O(due))."""
        while self._retire_at and self._retire_at[0][0] <= now:
            _, call_id = heapq.heappop(self._retire_at)
            self._retired.discard(call_id)
            core = self.cores.get(call_id)
            if core is None or not core.done:
                continue  # e.g. an operator started recording it again: _run_core re-arms
            del self.cores[call_id]
            for rs in core.rs_call_ids():
                self._rs_index.pop(rs, None)
        horizon = now - ENDED_MEMORY
        with self._ended_lock:  # oldest first: stop at the first one to keep
            while self._ended_seen:
                call_id = next(iter(self._ended_seen))
                if self._ended_seen[call_id][0] >= horizon:
                    break
                del self._ended_seen[call_id]

    # ------------------------------------------------------------------ SRS probes
    def _probe(self, now: float) -> list[tuple[str, Action]]:
        out: list[tuple[str, Action]] = []
        changes = self.prober.due(now)
        for uri, transport, call_id in self.prober.to_send(now):
            link = next((lk for lk in self.edges.values() if lk.evapi.connected),
                        next(iter(self.edges.values())))
            hdrs = options_headers(call_id, link.sip.src_uri, uri, link.sip.contact(transport))
            ruri = uri if transport == "udp" else f"{uri};transport={transport}"
            self._io.submit("probe", partial(self._send_probe, link, ruri, hdrs, call_id))
        out += self._srs_health(changes, now)
        node_changes = self.node_prober.due(now)
        for node, _, token in self.node_prober.to_send(now):
            self._io.submit(f"ping {node}", partial(self._ping_node, node, token))
        out += self._node_health(node_changes, now)
        return out

    # ------------------------------------------------------------------ node / edge loss
    def _ping_node(self, node: str, token: str) -> None:
        """An NG ping (I/O worker); a refused or failed one counts as a miss at once."""
        try:
            self.pool.client(node).ping(timeout=NODE_PING_TIMEOUT)
            code = 200
        except (NgError, NgTransportError):
            code = 503
        self._put(("fn", lambda now: self._node_health(
            self.node_prober.reply(token, code, now), now)))

    def _node_health(self, changes: list[tuple[str, bool, float | None]],
                     now: float) -> list[tuple[str, Action]]:
        out: list[tuple[str, Action]] = []
        for node, up, last_ok in changes:
            self.metrics.node_up.labels(node).set(1 if up else 0)
            if up:
                log.info("rtpengine node %s answers pings", node)
                continue
            calls = [c for c in list(self.cores.values()) if c.live and c.node == node]
            log.error("rtpengine node %s is lost (pings unanswered; last pong %s): "
                      "relocating %d calls", node, time.strftime(
                          "%H:%M:%S", time.localtime(last_ok)) if last_ok else "never",
                      len(calls))
            if not self.acting:
                continue
            for core in calls:
                out += self._run_core(core, NodeLost(node, last_ok or now), now)
        return out

    def _relocate(self, call_id: str, a: Relocate) -> None:
        """Find the node of the set that carries the lost node's call (its legs' counters
        grow between two queries) and replay offer/answer of both legs there (I/O worker)."""
        try:
            lost = self.pool.node(a.lost)
        except ValueError as exc:
            self._feed(call_id, Relocated(None, (), str(exc)))
            return
        peers = [n for n in self.pool if n.set == lost.set and n.name != a.lost]
        legs = (a.from_tag, a.to_tag)
        # the lost node first: a stalled controller or a blip can miss two pings of a node
        # that is fine; one that still carries the call keeps it
        peers.insert(0, lost)

        def received(n: Any) -> int | None:
            try:  # the lost node may be a silent host: do not wait long for it
                c = n.client.query(call_id, timeout=NODE_PING_TIMEOUT if n is lost
                                   else 1.0).counters()
            except (NgError, NgTransportError):
                return None
            return sum(c.get(t, (0, 0))[0] for t in legs)

        before = {n.name: c for n in peers if (c := received(n)) is not None}
        carrier: str | None = None
        error = ""
        holders = tuple(n for n in before if n != a.lost)
        if not before:
            error = "no node of the set (the lost one included) holds the call"
        else:
            time.sleep(CARRIER_WINDOW)  # on this call's I/O queue only
            grown = {n.name: c - before[n.name] for n in peers if n.name in before
                     and (c := received(n)) is not None and c > before[n.name]}
            if a.lost in grown:
                carrier = a.lost
            elif grown:
                carrier = max(grown, key=lambda k: grown[k])
            else:
                error = "the call's packet counters grew on none of " + ", ".join(before)
        if carrier is not None and carrier != a.lost:
            ng = self.pool.client(carrier)
            try:
                info = ng.query(call_id, timeout=1.0)
                ng.offer(call_id, a.from_tag, info.leg_sdp(a.from_tag), label="caller")
                ng.answer(call_id, a.from_tag, a.to_tag, info.leg_sdp(a.to_tag),
                          label="callee")
            except SiprecctlError as exc:
                error, carrier = f"offer/answer on {carrier}: {exc}", None
        log.warning("call %s: after the loss of %s: %s", call_id, a.lost,
                    f"carried by {carrier}" if carrier else error)
        self._feed(call_id, Relocated(carrier, holders, error))

    def _edges_lost(self, now: float) -> list[tuple[str, Action]]:
        out: list[tuple[str, Action]] = []
        for edge, since in list(self._edge_down.items()):
            # README "After an edge loss": down this long (reconnects failing), it is lost
            if edge in self._edge_lost or now - since < self.site.controller.edge_lost_after:
                continue
            self._edge_lost.add(edge)
            self.metrics.edge_lost.labels(edge).set(1)
            via = next((lk.name for lk in self.edges.values()
                        if lk.name != edge and lk.evapi.connected), None)
            calls = [c for c in list(self.cores.values()) if c.live and c.call.edge == edge]
            log.error("edge %s lost (evapi down for %.1f s): closing the recordings of its "
                      "%d calls%s", edge, now - since, len(calls),
                      f" through {via}" if via else " (no edge left to send through)")
            for core in calls:
                out += self._run_core(core, EdgeLost(edge, since, via), now)
        return out

    def _edge_back(self, edge: str, now: float) -> list[tuple[str, Action]]:
        self._edge_lost.discard(edge)
        self.metrics.edge_lost.labels(edge).set(0)
        return []  # the reconnect's reconcile (on_state) catches up with its dialogs

    def _send_probe(self, link: EdgeLink, ruri: str, headers: str, call_id: str) -> None:
        try:
            self._edge_send(link, {"cmd": "uac", "call_id": call_id, "method": "OPTIONS",
                             "ruri": ruri, "nexthop": "", "headers": headers, "body": ""})
        except KamailioError as exc:
            log.debug("probe %s: %s", ruri, exc)

    def _srs_health(self, changes: list[tuple[str, bool, float | None]],
                    now: float) -> list[tuple[str, Action]]:
        out: list[tuple[str, Action]] = []
        for uri, up, last_ok in changes:
            h = self.selector.state(uri)
            h.up, h.last_ok = up, last_ok
            self.metrics.srs_up.labels(uri).set(1 if up else 0)
            if up:
                log.info("SRS %s answers probes", uri)
                continue
            log.error("SRS %s is down (probes unanswered; last answer %s)", uri,
                      time.strftime("%H:%M:%S", time.localtime(last_ok)) if last_ok else "never")
            for core in list(self.cores.values()):
                if any(s.srs_uri == uri for s in core.open_sessions()):
                    out += self._run_core(core, SrsDown(uri, last_ok), now)
        return out

    # ------------------------------------------------------------------ actions
    def _carry_out(self, actions: list[tuple[str, Action]]) -> None:
        sessions: dict[str, RecordingSession] = {}
        calls: dict[str, CallRecord] = {}
        losses: list[Loss] = []
        io: list[tuple[str, Action]] = []
        for call_id, a in actions:
            if isinstance(a, Persist):
                sessions[a.session.session_id] = a.session
            elif isinstance(a, PersistCall):
                calls[a.call.call_id] = a.call
            elif isinstance(a, Loss):
                losses.append(a)
                self.metrics.losses.labels(a.reason).inc()
                self.metrics.loss_seconds.labels(a.reason).inc(a.seconds)
                log.warning("call %s: recording loss %s (%.2f s): %s", a.call_id, a.reason,
                            a.seconds, a.detail)
            elif isinstance(a, Observe):
                self._observe(a)
            elif isinstance(a, Reply):
                self._resolve(a.token, a.ok, a.result)
            else:
                io.append((call_id, a))
        unwritten = self._persist(list(sessions.values()), list(calls.values()), losses)
        for call_id, a in io:
            if call_id in unwritten:
                # write-ahead: no SIP or NG for a state the store refused (a slot another
                # session holds, a fenced-out pair member): acting on it would leave a
                # second session, or one no store knows of to close after a takeover
                log.error("call %s: %s not carried out: %s", call_id, type(a).__name__,
                          unwritten[call_id])
                self.metrics.events_total.labels("unwritten_action").inc()
                continue
            self._io.submit(call_id, partial(self._do, call_id, a))

    def _persist(self, sessions: list[RecordingSession], calls: list[CallRecord],
                 losses: list[Loss]) -> dict[str, str]:
        """One transaction for the batch; if refused, call by call. Returns the calls whose
        state was refused and must not be acted on (why): a duplicate session or a fenced
        writer always; any store error in a pair (the store is its fence). A single
        controller whose SQLite fails still records (and logs the error)."""
        try:
            self.store.write(sessions=sessions, calls=calls, losses=losses)
            return {}
        except SiprecctlError as exc:
            if not (sessions or calls or losses):
                return {}
            log.error("state store: %s (writing call by call)", exc)
            self.metrics.events_total.labels("store_error").inc()
        by_call: dict[str, tuple[list[RecordingSession], list[CallRecord], list[Loss]]] = {}
        for s in sessions:
            by_call.setdefault(s.call_id, ([], [], []))[0].append(s)
        for c in calls:
            by_call.setdefault(c.call_id, ([], [], []))[1].append(c)
        for x in losses:
            by_call.setdefault(x.call_id, ([], [], []))[2].append(x)
        refused: dict[str, str] = {}
        for call_id, (ss, cs, ls) in by_call.items():
            try:
                self.store.write(sessions=ss, calls=cs, losses=ls)
            except SiprecctlError as exc:
                log.error("call %s: state store: %s", call_id, exc)
                if isinstance(exc, DuplicateSession | FencedOut) or self.leadership is not None:
                    refused[call_id] = str(exc)
        return refused

    def _observe(self, a: Observe) -> None:
        m = self.metrics
        if a.kind == "setup_latency":
            m.setup_latency.observe(a.value)
            m.sessions_total.labels("established").inc()
        elif a.kind == "failover":
            m.failovers.labels(*a.labels).inc()
        elif a.kind == "srs_selected":
            m.selections.labels(*a.labels).inc()
        elif a.kind == "gap_opened":
            m.gaps_opened.labels(*a.labels).inc()
        else:
            m.events_total.labels(a.kind).inc()

    def _do(self, call_id: str, a: Action) -> None:
        """One action's I/O, on an I/O worker (in order per call); results are fed back."""
        if not self.acting:
            log.warning("call %s: %s dropped: this controller does not hold the lease",
                        call_id, type(a).__name__)
            return
        try:
            if isinstance(a, Subscribe):
                try:
                    sub = self.pool.client(a.node).subscribe_request(
                        a.call_id, all=True, siprec=True, to_tag=a.to_tag)
                except (NgError, NgTransportError) as exc:
                    gone = isinstance(exc, NgError) and "unknown call" in str(exc).lower()
                    self._feed(call_id, NgFailed(a.session_id, "subscribe", str(exc), gone))
                    return
                self._feed(call_id, Subscribed(
                    a.session_id, bytes(sub.sdp),
                    {label: m.tag for label, m in sub.media_labels.items()}))
            elif isinstance(a, SubscribeAnswer):
                try:
                    self.pool.client(a.node).subscribe_answer(a.call_id, a.to_tag, a.sdp)
                except (NgError, NgTransportError) as exc:
                    self._feed(call_id, NgFailed(a.session_id, "subscribe_answer", str(exc)))
            elif isinstance(a, Unsubscribe):
                self._ng_quiet(a.node, "unsubscribe", a.call_id,
                               lambda ng: ng.unsubscribe(a.call_id, a.to_tag))
            elif isinstance(a, QueryMedia):
                try:
                    info = self.pool.client(a.node).query(a.call_id)
                except NgError as exc:
                    if a.since is not None and "unknown call" in exc.reason.lower():
                        self._media_state_lost(a, str(exc))
                    else:
                        log.debug("call %s: query for evidence: %s", a.call_id, exc)
                    return
                except NgTransportError as exc:
                    log.debug("call %s: query for evidence: %s", a.call_id, exc)
                    return
                now = time.time()
                counters = info.counters()
                rows = [(a.call_id, a.session_id, now, a.why, role, tag, *counters[tag])
                        for tag, role in a.roles.items() if tag in counters]
                try:
                    self.store.write(media=rows)
                except SiprecctlError as exc:
                    log.error("state store: %s", exc)
            elif isinstance(a, DeleteCall):
                self._ng_quiet(a.node, "delete", a.call_id, lambda ng: ng.delete(
                    a.call_id, delete_delay=a.delete_delay))
            elif isinstance(a, Relocate):
                self._relocate(call_id, a)
            elif isinstance(a, StartLocal):
                self._ng_quiet(a.node, "start recording", a.call_id,
                               lambda ng: ng.start_recording(a.call_id))
            elif isinstance(a, StopLocal):
                self._ng_quiet(a.node, "stop recording", a.call_id,
                               lambda ng: ng.stop_recording(a.call_id))
            elif isinstance(a, SendInvite):
                try:  # the edge's t_uac_send (an evapi command); replies come as rs_reply
                    self._edge_send(self.edges[a.edge], {
                        "cmd": "uac", "call_id": a.rs_call_id, "method": "INVITE",
                        "ruri": a.ruri, "nexthop": "", "headers": a.headers,
                        "body": a.body.decode("utf-8")})
                except KamailioError as exc:
                    self._feed(call_id, SendFailed(a.rs_call_id, a.cseq, "INVITE", str(exc)))
            elif isinstance(a, SendRequest):
                cmd: dict[str, Any] = {"cmd": "uac", "call_id": a.rs_call_id,
                                       "method": a.method, "ruri": a.ruri,
                                       "nexthop": a.nexthop, "headers": a.headers,
                                       "body": a.body.decode("utf-8")}
                if a.sdp is not None:
                    cmd["sdp"] = a.sdp.decode("utf-8", "replace")
                try:
                    self._edge_send(self.edges[a.edge], cmd)
                except KamailioError as exc:
                    self._feed(call_id, SendFailed(a.rs_call_id, a.cseq, a.method, str(exc)))
            elif isinstance(a, CancelInvite):
                # an evapi command (tmx t_cancel_callid), not the tm.cancel RPC: in 5.6 that
                # leaves the INVITE's transaction released by the xhttp worker (kamailio#4011)
                try:
                    self._edge_send(self.edges[a.edge], {"cmd": "cancel", "call_id": a.rs_call_id,
                                                         "cseq": str(a.cseq)})
                except KamailioError as exc:
                    log.debug("cancel %s: %s", a.rs_call_id, exc)
            elif isinstance(a, EdgeSdp | EdgeForget):
                cmd = {"cmd": "sdp", "call_id": a.rs_call_id,
                       "sdp": a.sdp.decode("utf-8", "replace")} if isinstance(a, EdgeSdp) \
                    else {"cmd": "forget", "call_id": a.rs_call_id}
                try:
                    self._edge_send(self.edges[a.edge], cmd)
                except KamailioError as exc:
                    log.warning("edge %s: %s", a.edge, exc)
            elif isinstance(a, EndCall):
                log.error("call %s: ending the call: %s", a.call_id, a.reason)
                try:
                    if a.h_entry is None or a.h_id is None:
                        raise ControllerError("the call event has no dialog id (h_entry/h_id)")
                    self.edges[a.edge].rpc.call("dlg.end_dlg", a.h_entry, a.h_id)
                    self.metrics.events_total.labels("call_ended_required").inc()
                except (KamailioError, ControllerError) as exc:
                    log.error("call %s: could not end the call: %s", a.call_id, exc)
        except Exception:
            log.exception("call %s: %s failed", call_id, type(a).__name__)

    def _media_state_lost(self, a: QueryMedia, why: str) -> None:
        """The node no longer knows a call it was forking (rtpengine restarted without
        Redis, or lost the call): its media and forks stopped at a time nobody observed, so
        the loss is counted from the recordings' set-up — an upper bound."""
        now = time.time()
        assert a.since is not None
        loss = Loss(a.call_id, a.session_id, None, "media_state_lost",
                    round(max(0.0, now - a.since), 3),
                    f"rtpengine {a.node} no longer knows the call at {a.why} ({why}): "
                    "restarted or lost it; media and forks stopped at an unknown time "
                    "since the set-up", now)
        self.metrics.losses.labels(loss.reason).inc()
        self.metrics.loss_seconds.labels(loss.reason).inc(loss.seconds)
        log.warning("call %s: recording loss %s (%.2f s): %s", loss.call_id, loss.reason,
                    loss.seconds, loss.detail)
        try:
            self.store.write(losses=[loss])
        except SiprecctlError as exc:
            log.error("state store: %s", exc)

    def _edge_send(self, link: EdgeLink, cmd: dict[str, Any]) -> None:
        """An evapi command; in a pair it carries the lease epoch, and the edge drops one
        older than an epoch it has seen (a controller that lost its lease)."""
        if self.fence is not None:
            if self.fence.epoch is None:
                raise KamailioUnreachable("not the leader: no command sent")
            cmd["epoch"] = self.fence.epoch
        link.evapi.send(cmd)

    def _ng_quiet(self, node: str, what: str, call_id: str, fn: Callable[[Any], Any]) -> None:
        try:
            fn(self.pool.client(node))
        except NgError as exc:
            # the call (and with it the subscription) may already be gone from rtpengine
            log.debug("call %s: %s: %s", call_id, what, exc)
        except NgTransportError as exc:
            log.warning("call %s: %s: %s", call_id, what, exc)

    # ------------------------------------------------------------------ operator actions
    def _resolve(self, token: int, ok: bool, result: dict[str, Any]) -> None:
        fut = self._ops.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result((ok, result))

    def _operate(self, call_id: str, op: str, *, actor: str, group: str | None = None,
                 local: bool = False) -> dict[str, Any]:
        self._op_seq += 1
        token = self._op_seq
        fut: Future[tuple[bool, dict[str, Any]]] = Future()
        self._ops[token] = fut
        self._feed(call_id, Operator(op, token, actor, group, local))  # type: ignore[arg-type]
        try:
            ok, result = fut.result(self.op_timeout + 5.0)
        except TimeoutError:
            self._ops.pop(token, None)
            raise
        if ok:
            return result
        status = int(str(result.get("status", 502)))
        message = str(result.get("error", "failed"))
        if status == 404:
            raise ControllerError(message if "not a live call" in message
                                  else f"call {call_id} has no open recording session "
                                       f"({message})")
        if status == 409:
            raise IllegalTransition("recording session", str(result.get("state", message)), op)
        raise ControllerError(message)

    def start_recording(self, call_id: str, *, group: str | None = None, local: bool = False,
                        actor: str = "operator") -> dict[str, Any]:
        """Record a live call: SIPREC to ``group`` (default: the call's or the site's),
        and/or locally."""
        if group is None and not local:
            core = self.cores.get(call_id)
            group = (core.group.name if core is not None and core.group is not None
                     else (core.call.siprec if core is not None else None)
                     or self.site.recording.siprec)
        return self._operate(call_id, "start", actor=actor, group=group, local=local)

    def stop_recording(self, call_id: str, *, local: bool = False,
                       actor: str = "operator") -> dict[str, Any]:
        return self._operate(call_id, "stop", actor=actor, local=local)

    def pause(self, call_id: str, *, actor: str = "operator") -> dict[str, Any]:
        """RFC 7866 §7.1.1.1 pause: media stopped first (no audio leaks), then a=inactive."""
        return self._operate(call_id, "pause", actor=actor)

    def resume(self, call_id: str, *, actor: str = "operator") -> dict[str, Any]:
        return self._operate(call_id, "resume", actor=actor)

    # ------------------------------------------------------------------ reconciliation
    def _dialogs(self, link: EdgeLink) -> dict[str, CallAnswered]:
        """Confirmed dialogs of an edge by call-id, from ``dlg.list``, as answered events."""
        out: dict[str, CallAnswered] = {}
        for d in link.rpc.call("dlg.list", timeout=5.0) or []:
            if not isinstance(d, dict):
                continue
            call_id = d.get("call-id")
            if not call_id or int(d.get("state", 0)) not in (3, 4):  # confirmed (+ACK)
                continue
            v: dict[str, Any] = {}
            for item in d.get("variables") or []:
                if isinstance(item, dict):
                    v.update(item)
            caller, callee = d.get("caller") or {}, d.get("callee") or {}
            doc = {"event": "answered", "call_id": call_id, "edge": link.name,
                   "ts": d.get("start_ts") or None, "h_entry": d.get("h_entry"),
                   "h_id": d.get("h_id"),
                   "from_tag": caller.get("tag") or v.get("from_tag") or "?",
                   "to_tag": callee.get("tag") or v.get("to_tag") or "?",
                   "from": v.get("from") or d.get("from_uri"), "to": v.get("to") or
                   d.get("to_uri"), "from_display": v.get("from_display"),
                   "to_display": v.get("to_display"), "pai": v.get("pai"),
                   "pai_display": v.get("pai_display"),
                   "rtpengine": v.get("rtpengine"), "rule": v.get("rule"),
                   "siprec": v.get("siprec") or None, "session_id": v.get("session_id"),
                   "record_local": v.get("rec_local") == "1"}
            try:
                ev = parse_event(doc)
            except EvapiProtocolError as exc:
                log.warning("edge %s: dialog %s unusable: %s", link.name, call_id, exc)
                continue
            if isinstance(ev, CallAnswered):
                out[str(call_id)] = ev
        return out

    def reconcile(self, timeout: float = 30.0) -> dict[str, int]:
        """Bring the store in line with Kamailio's dialogs and rtpengine (after a restart)."""
        totals = {"adopted": 0, "closed": 0, "restarted": 0, "started": 0}
        if not self.acting:
            # a standby: cores made now would hide the calls from its takeover reconcile
            log.info("standing by: not reconciling (the lease holder does, at its takeover)")
            return totals
        for name in self.edges:
            for k, v in self._reconcile_edge(name, timeout).items():
                totals[k] += v
        log.info("reconciled: %s", totals)
        return totals

    def _reconcile_edge(self, edge: str, timeout: float = 30.0) -> dict[str, int]:
        """Gather (I/O, this thread), then apply on the core loop."""
        link = self.edges[edge]
        counts = {"adopted": 0, "closed": 0, "restarted": 0, "started": 0}
        listed_at = time.time()
        try:
            live = self._dialogs(link)
        except KamailioError as exc:
            log.error("edge %s: cannot list dialogs, not reconciling: %s", edge, exc)
            return counts
        stored: dict[str, list[RecordingSession]] = {}
        for s in self.store.open_sessions():
            if s.edge == edge:
                stored.setdefault(s.call_id, []).append(s)
        subscribed: dict[str, set[str]] = {}
        for call_id, sessions in stored.items():
            if call_id in live:
                node = sessions[0].node
                try:
                    subscribed[call_id] = set(self.pool.client(node).query(call_id).tags)
                except (NgError, NgTransportError):
                    subscribed[call_id] = set()
        done: Future[dict[str, int]] = Future()

        def apply(now: float) -> list[tuple[str, Action]]:
            out: list[tuple[str, Action]] = []
            try:
                for call_id, sessions in stored.items():
                    if call_id in self.cores:
                        running = self.cores[call_id]
                        if call_id not in live and running.live and \
                                running.record.answered_at < listed_at:
                            # the edge no longer has the dialog (it restarted, dialogs are
                            # in its memory): the call is over as far as recording goes
                            out += self._run_core(running, CallEnded(
                                edge, call_id, listed_at, by="edge"), now)
                            counts["closed"] += len(sessions)
                        continue
                    ev = live.get(call_id)
                    if ev is None:
                        orphan = self._orphan_core(edge, call_id, sessions, now)
                        out += self._run_core(orphan, Tick(), now,
                                              start=partial(orphan.end_orphaned, now))
                        counts["closed"] += len(sessions)
                        continue
                    core = self._core_for(ev, now)
                    if core is None:
                        continue
                    out += self._run_core(core, Tick(), now, start=partial(
                        core.adopt, sessions, subscribed.get(call_id, set()), now))
                    for s in sessions:
                        counts["adopted" if s.open else "restarted"] += 1
                for call_id, ev in live.items():
                    if ev.siprec and call_id not in self.cores:
                        out += self._answered(ev, now, down_since=ev.ts or now)
                        counts["started"] += 1
            finally:
                done.set_result(counts)
            return out

        self._put(("fn", apply))
        try:
            return done.result(timeout)
        except TimeoutError:
            log.error("edge %s: reconcile did not finish in %g s", edge, timeout)
            return counts

    def _core_for(self, ev: CallAnswered, now: float) -> CallCore | None:
        node = self._node_for(ev)
        if node is None:
            return None
        core = CallCore(ev, node=node, group=self.groups.get(ev.siprec or ""),
                        selector=self.selector, edge=self.edges[ev.edge].sip, now=now,
                        op_timeout=self.op_timeout)
        self.cores[ev.call_id] = core
        return core

    def _orphan_core(self, edge: str, call_id: str, sessions: list[RecordingSession],
                     now: float) -> CallCore:
        row = self.store.call(call_id) or {}
        ev = CallAnswered(edge=edge, call_id=call_id, ts=float(row.get("answered") or now),
                          from_tag="?", to_tag="?", from_uri="", to_uri="",
                          siprec=sessions[0].group)
        core = CallCore(ev, node=sessions[0].node, group=self.groups.get(sessions[0].group),
                        selector=self.selector, edge=self.edges[edge].sip, now=now)
        core.had_subscription = True
        for s in sessions:
            core.sessions[s.session_id] = s
        self.cores[call_id] = core
        return core

    # ------------------------------------------------------------------ views
    def _active_count(self) -> int:
        return sum(1 for c in list(self.cores.values()) for s in c.open_sessions() if s.live)

    def session_views(self, *, open_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        if open_only:
            return [s.summary() for s in self.store.open_sessions()]
        return [s.summary() for s in self.store.recent(limit)]

    def health(self) -> dict[str, Any]:
        return {"edges": {n: link.evapi.connected for n, link in self.edges.items()},
                "open_sessions": sum(len(c.open_sessions()) for c in list(self.cores.values())),
                "live_calls": sum(1 for c in list(self.cores.values()) if c.live),
                "queue": len(self._inputs),
                "srs": {u: h.up for u, h in self.selector.health.items()},
                "nodes": {n: self.node_prober.is_up(n) for n in self.node_prober.targets},
                "edges_lost": sorted(self._edge_lost),
                "leader": None if self.leadership is None else {
                    "instance": self.leadership.instance, "acting": self.acting,
                    "epoch": self.leadership.epoch},
                "losses": self._loss_counts()}

    def _loss_counts(self) -> dict[str, int] | None:
        """The store's loss counts; None when the store cannot be read (a pair's leader cut
        off from Redis must still say, here, that it no longer acts)."""
        try:
            return self.store.loss_counts()
        except Exception as exc:  # the Redis client's own errors are not in our tree
            log.warning("health: the store cannot be read: %s", exc)
            return None
