"""Prometheus metrics of the controller (``/metrics`` on the API listener)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
