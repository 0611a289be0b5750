"""Several rtpengine nodes: call-id → node like Kamailio's rtpengine module, health by ping.

Selection follows Kamailio 5.6 ``select_rtpp_node_new`` with ``hash_algo=0`` (the
default): ``sum`` of the call-id's bytes ``& 0xff``, modulo the total weight of the enabled
nodes of the set, walking the nodes in configuration order. A call that was placed once
stays on its node (Kamailio keeps a call-id → node hash table for the same reason); a node
that failed is skipped for *new* calls until ``recheck_after`` seconds have passed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NgError, NgTransportError, SiprecctlError
from .client import DEFAULT_TIMEOUT, NgClient
from .codec import to_bytes

if TYPE_CHECKING:  # the pydantic model is not imported at run time (cold start)
    from ..site.model import MediaNode, Site

__all__ = ["Node", "NodePool", "NodeState", "legacy_hash"]


def legacy_hash(call_id: str | bytes) -> int:
    """Kamailio rtpengine ``hash_algo=0``: the byte sum of the call-id, low 8 bits.

    (Kamailio sums signed chars into an unsigned int; modulo 256 that is the same.)
    """
    return sum(to_bytes(call_id)) & 0xFF


@dataclass
class NodeState:
    """Health of one node as last observed."""

    name: str
    set: int
    weight: int
    address: str
    enabled: bool = True
    ok: bool | None = None  # None: never checked
    error: str | None = None
    rtt_ms: float | None = None
    checked_at: float | None = None


@dataclass
class Node:
    """A node of the pool: its client and state."""

    name: str
    set: int
    weight: int
    client: NgClient
    state: NodeState
    failed_at: float | None = field(default=None)


class NodePool:
    """The media nodes of a site, each with an :class:`NgClient`; a context manager."""

    def __init__(self, nodes: Iterable[Node], *, recheck_after: float = 60.0,
                 sticky_size: int = 100_000) -> None:
        self.nodes: dict[str, Node] = {}
        for n in nodes:
            if n.name in self.nodes:
                raise ValueError(f"duplicate node name {n.name!r}")
            self.nodes[n.name] = n
        self.recheck_after = recheck_after  # like rtpengine_disable_tout (60 s)
        self._sticky: OrderedDict[bytes, str] = OrderedDict()
        self._sticky_size = sticky_size
        self._lock = threading.Lock()

    @classmethod
    def from_site(cls, site: Site, *, timeout: float = DEFAULT_TIMEOUT,
                  **client_options: Any) -> NodePool:
        """One client per ``site.media.nodes`` entry, over the node's ``transport``."""
        return cls(cls.node_from_spec(spec, timeout=timeout, **client_options)
                   for spec in site.media.nodes)

    @staticmethod
    def node_from_spec(spec: MediaNode, *, timeout: float = DEFAULT_TIMEOUT,
                       **client_options: Any) -> Node:
        host = spec.ng.address
        kind = spec.transport
        if kind == "tcp":
            if spec.ng_tcp is None:
                raise ValueError(f"node {spec.name}: transport tcp needs ng_tcp")
            port = spec.ng_tcp.port
        elif kind == "http":
            if spec.http is None:
                raise ValueError(f"node {spec.name}: transport http needs http")
            port = spec.http.port
        else:
            port = spec.ng.port
        client = NgClient((host, port), transport=kind, timeout=timeout, name=spec.name,
                          **client_options)
        state = NodeState(spec.name, spec.set, spec.weight, f"{kind}:{host}:{port}")
        return Node(spec.name, spec.set, spec.weight, client, state)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for n in self.nodes.values():
            n.client.close()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise ValueError(f"no rtpengine node {name!r} (nodes: "
                             f"{', '.join(self.nodes)})") from None

    def client(self, name: str) -> NgClient:
        return self.node(name).client

    # ------------------------------------------------------------------ health
    def usable(self, node: Node, now: float | None = None) -> bool:
        """Enabled and not failed recently."""
        if not node.state.enabled:
            return False
        if node.failed_at is None:
            return True
        return (now if now is not None else time.monotonic()) - node.failed_at >= \
            self.recheck_after

    def mark_failed(self, name: str, error: str) -> None:
        n = self.node(name)
        n.failed_at = time.monotonic()
        n.state.ok = False
        n.state.error = error

    def mark_ok(self, name: str) -> None:
        n = self.node(name)
        n.failed_at = None
        n.state.ok = True
        n.state.error = None

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Administratively enable/disable a node (like ``rtpengine.enable``)."""
        self.node(name).state.enabled = enabled

    def check(self, timeout: float = 1.0) -> list[NodeState]:
        """Ping every node (in parallel threads) and return their states."""
        results: dict[str, NodeState] = {}

        def one(n: Node) -> None:
            t = time.perf_counter()
            try:
                n.client.ping(timeout=timeout)
            except SiprecctlError as exc:
                self.mark_failed(n.name, str(exc))
                n.state.rtt_ms = None
            else:
                self.mark_ok(n.name)
                n.state.rtt_ms = (time.perf_counter() - t) * 1000
            n.state.checked_at = time.time()
            results[n.name] = n.state

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in self]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout * 3 + 1)
        return [self.nodes[name].state for name in self.nodes]

    def states(self) -> list[NodeState]:
        return [n.state for n in self]

    # ------------------------------------------------------------------ selection
    def select(self, call_id: str | bytes, set: int = 0) -> Node:
        """The node for ``call_id`` in ``set``: sticky once chosen, else by hash over the
        usable nodes (Kamailio ``hash_algo=0``). Raises :class:`NgTransportError` when no
        node of the set is usable."""
        key = to_bytes(call_id)
        with self._lock:
            name = self._sticky.get(key)
            if name is not None and name in self.nodes and self.nodes[name].set == set:
                self._sticky.move_to_end(key)
                return self.nodes[name]
            node = self._by_hash(key, set)
            self._sticky[key] = node.name
            if len(self._sticky) > self._sticky_size:
                self._sticky.popitem(last=False)
            return node

    def _by_hash(self, key: bytes, set: int) -> Node:
        now = time.monotonic()
        members = [n for n in self if n.set == set]
        if not members:
            raise ValueError(f"no rtpengine node in set {set}")
        candidates = [n for n in members if self.usable(n, now)]
        if not candidates:
            raise NgTransportError(
                f"no usable rtpengine node in set {set}: " + "; ".join(
                    f"{n.name}: {n.state.error or 'disabled'}" for n in members))
        cut = legacy_hash(key) % sum(n.weight for n in candidates)
        for n in candidates:
            if cut < n.weight:
                return n
            cut -= n.weight
        raise AssertionError("unreachable")  # pragma: no cover

    def forget(self, call_id: str | bytes) -> None:
        """Drop a finished call from the sticky table."""
        with self._lock:
            self._sticky.pop(to_bytes(call_id), None)

    def for_call(self, call_id: str | bytes, set: int = 0) -> NgClient:
        """The client of the node selected for ``call_id`` (new calls skip failed nodes)."""
        return self.select(call_id, set).client

    def call(self, call_id: str | bytes, command: str, set: int = 0, /,
             **params: Any) -> Any:
        """Send ``command`` for ``call_id`` to its node; a transport failure marks the node
        failed (reported by :meth:`states`) and is re-raised."""
        node = self.select(call_id, set)
        try:
            reply = node.client.call(command, call_id=call_id, **params)
        except NgTransportError as exc:
            self.mark_failed(node.name, str(exc))
            raise
        self.mark_ok(node.name)
        return reply

    def locate(self, call_id: str | bytes, *, timeout: float = 1.0) -> Node | None:
        """Which node holds ``call_id``: ask the selected node first, then the others
        (a call placed by Kamailio may sit elsewhere after a failover)."""
        order = list(self)
        with self._lock:
            sticky = self._sticky.get(to_bytes(call_id))
        first = self.nodes.get(sticky) if sticky else None
        if first is None:
            sets = sorted({n.set for n in order})
            try:
                first = self._by_hash(to_bytes(call_id), sets[0]) if sets else None
            except (NgTransportError, ValueError):
                first = None
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        for n in order:
            try:
                n.client.query(call_id, timeout=timeout)
            except NgError:
                continue
            except NgTransportError as exc:
                self.mark_failed(n.name, str(exc))
                continue
            with self._lock:
                self._sticky[to_bytes(call_id)] = n.name
            return n
        return None

    def node_of(self, call_id: str | bytes, *, timeout: float = 1.0) -> Node:
        """The node holding ``call_id`` (:meth:`locate`); with a single node, that node
        unasked (what it says about the call comes with the command the caller sends).

        :class:`NgTransportError` when no reachable node knows the call and some node did
        not answer (the call may be there); :class:`NgError` when every node answered that
        it does not know it.
        """
        nodes = list(self)
        if len(nodes) == 1:
            return nodes[0]
        before = {n.name: n.failed_at for n in nodes}
        node = self.locate(call_id, timeout=timeout)
        if node is not None:
            return node
        cid = call_id.decode("utf-8", "replace") if isinstance(call_id, bytes) else call_id
        down = [n for n in nodes if n.failed_at is not None and n.failed_at != before[n.name]]
        if down:
            raise NgTransportError(
                f"call {cid!r} is on none of the rtpengine nodes that answered; no answer "
                "from " + "; ".join(f"{n.name} ({n.state.error})" for n in down))
        raise NgError(f"Unknown call-id {cid!r} on every node "
                      f"({', '.join(n.name for n in nodes)})", command="query")
