"""What the ledger joins, as plain data (sans-IO): the controller's facts, the local
recordings' checks and the SRSs' own packet counts. The edge's facts are
:class:`~.records.EdgeCall`. Whoever reads a source builds these; the join never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ControllerCall", "ControllerFacts", "ControllerLoss", "ControllerSession",
           "LocalRecording", "MediaRead"]


@dataclass(frozen=True, slots=True)
class ControllerCall:
    """A row of the store's ``calls``: what the controller saw of an answered call."""

    call_id: str
    edge: str
    group: str | None
    slots: int
    required: str
    rule: str | None
    record_local: bool
    answered: float
    ended: float | None = None
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ControllerSession:
    """A recording session (store ``sessions`` + ``history``). ``labels`` maps each
    ``a=label`` to the leg it carries (caller/callee), from the session's metadata;
    ``rs_call_ids`` are the Call-IDs of its INVITE attempts (the SRS knows it by one)."""

    session_id: str
    call_id: str
    slot: int
    srs: str | None
    state: str
    reason: str | None
    established: float | None
    media_until: float | None
    ended: float | None
    rs_call_ids: tuple[str, ...] = ()
    history: tuple[tuple[float, str, str, str, str], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    attempts: tuple[tuple[str, str], ...] = ()  # (SRS, outcome) of each INVITE, in order


@dataclass(frozen=True, slots=True)
class ControllerLoss:
    """A row of ``losses``: ``seconds`` of media lost, closed at ``ts``."""

    call_id: str
    session_id: str | None
    slot: int | None
    reason: str
    seconds: float
    detail: str
    ts: float


@dataclass(frozen=True, slots=True)
class MediaRead:
    """A row of ``media``: rtpengine's counter of what it *received* from ``role``'s tag."""

    call_id: str
    session_id: str | None
    ts: float
    why: str  # "call end" | "before unsubscribe"
    role: str  # caller | callee | "srs <uri>"
    tag: str
    packets: int


@dataclass
class ControllerFacts:
    """The controller's store for a time window, by Call-ID. ``covers`` is the span the
    store can speak for (calls answered outside it are not the controller's to explain)."""

    calls: dict[str, ControllerCall] = field(default_factory=dict)
    sessions: dict[str, list[ControllerSession]] = field(default_factory=dict)
    losses: dict[str, list[ControllerLoss]] = field(default_factory=dict)
    media: dict[str, list[MediaRead]] = field(default_factory=dict)

    def add_call(self, c: ControllerCall) -> None:
        self.calls[c.call_id] = c


@dataclass(frozen=True, slots=True)
class LocalRecording:
    """One finished local recording (``orchestrator.recordings.check_metafile``)."""

    call_id: str
    status: str  # ok | problem
    meta_path: str
    pcap_path: str | None
    packets: int | None
    streams: tuple[dict[str, Any], ...] = ()
    problems: tuple[str, ...] = ()
