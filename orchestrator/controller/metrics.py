"""Prometheus metrics of the controller (``/metrics`` on the API listener)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """One registry per controller (tests run several controllers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "siprecctl_sessions_active", "Recording sessions established or paused", registry=r)
        self.setup_latency = Histogram(
            "siprecctl_setup_latency_seconds",
            "From the call's answer event to the SRS's 2xx (tm ACKs it at once)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.failures = Counter("siprecctl_failures_total",
                                "Recording failures by reason", ["reason"], registry=r)
        self.failovers = Counter("siprecctl_srs_failovers_total",
                                 "Moves to the next SRS of a group", ["group"], registry=r)
        self.events = Counter("siprecctl_events_total", "evapi events received",
                              ["edge", "event"], registry=r)
        self.evapi_up = Gauge("siprecctl_evapi_connected", "1 while connected to the edge",
                              ["edge"], registry=r)
        self.evapi_reconnects = Counter("siprecctl_evapi_reconnects_total",
                                        "evapi connections re-established", ["edge"],
                                        registry=r)
        self.sessions_total = Counter("siprecctl_sessions_total",
                                      "Recording sessions by outcome", ["outcome"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
