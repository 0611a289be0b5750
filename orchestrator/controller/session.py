"""One recording session's life, as a transition table (sans-IO, h11 style).

``TRANSITIONS[state][event]`` is the next state; anything else raises
:class:`IllegalTransition` naming the role, state and event. A call holds one or more
sessions (one per ``simultaneous`` slot of its SRS group); the call's core
(:mod:`.core`) feeds each session the events it learns and persists every move.

    NEW ─subscribe─► SUBSCRIBING ─subscribed─► SUBSCRIBED ─invite─► INVITING ─answered─► ESTABLISHED
                                                   ▲                   │ rejected            │ ▲ pause/resume
                                                   └───────────────────┘                     ▼ │
                                                                                            PAUSED
    ESTABLISHED/PAUSED ─call_ended/stop/error─► TERMINATING (BYE) ─done─► CLOSED
    ESTABLISHED/PAUSED ─srs_bye─► CLOSED        ─srs_lost─► FAILED (the slot gets a new session)
    NEW…INVITING ─error/exhausted/shed─► FAILED     ─call_ended/stop─► CLOSED
    ESTABLISHED ─node_lost─► RELOCATING ─reforked─► ESTABLISHED (fork re-created on the node
                             that now carries the call; README "After a node loss")
    RELOCATING ─error (no carrier, re-fork failed)/call_ended/stop─► TERMINATING (BYE)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import IllegalTransition
from ..siprec import Recording
from .dialog import RsDialog

__all__ = ["OPEN_STATES", "TRANSITIONS", "Attempt", "Ev", "RecordingSession", "State", "Tx"]


class State(StrEnum):
    NEW = "new"  # the policy chose SIPREC; nothing asked yet
    SUBSCRIBING = "subscribing"  # subscribe request sent to rtpengine
    SUBSCRIBED = "subscribed"  # rtpengine forks media for this session (its to-tag)
    INVITING = "inviting"  # INVITE out to an SRS of the group
    ESTABLISHED = "established"  # the SRS answered 2xx; media flows to it
    PAUSED = "paused"  # a=inactive towards the SRS, no subscription in rtpengine
    RELOCATING = "relocating"  # its rtpengine node was lost: re-forking on the carrier
    TERMINATING = "terminating"  # BYE out
    CLOSED = "closed"  # over
    FAILED = "failed"  # never established, or its SRS was lost mid-call


class Ev(StrEnum):
    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    INVITE = "invite"
    ANSWERED = "answered"
    REJECTED = "rejected"  # 3xx-6xx, timeout, transport error: try the next SRS
    EXHAUSTED = "exhausted"  # no SRS left
    SHED = "shed"  # overload: not set up at all
    ERROR = "error"
    UPDATE = "update"  # metadata update / refresh / media move
    PAUSE = "pause"
    RESUME = "resume"
    SRS_BYE = "srs_bye"
    SRS_LOST = "srs_lost"  # the SRS stopped answering (probes, in-dialog timeout, 408/481)
    CALL_ENDED = "call_ended"
    STOP = "stop"  # operator asked to stop
    NODE_LOST = "node_lost"  # the rtpengine node holding the fork stopped answering pings
    REFORKED = "reforked"  # the fork runs again on the node that carries the call
    DONE = "done"


_S, _E = State, Ev
TRANSITIONS: dict[State, dict[Ev, State]] = {
    _S.NEW: {_E.SUBSCRIBE: _S.SUBSCRIBING, _E.ERROR: _S.FAILED, _E.SHED: _S.FAILED,
             _E.EXHAUSTED: _S.FAILED, _E.CALL_ENDED: _S.CLOSED, _E.STOP: _S.CLOSED},
    _S.SUBSCRIBING: {_E.SUBSCRIBED: _S.SUBSCRIBED, _E.ERROR: _S.FAILED,
                     _E.CALL_ENDED: _S.CLOSED, _E.STOP: _S.CLOSED},
    _S.SUBSCRIBED: {_E.INVITE: _S.INVITING, _E.EXHAUSTED: _S.FAILED, _E.ERROR: _S.FAILED,
                    _E.CALL_ENDED: _S.CLOSED, _E.STOP: _S.CLOSED},
    _S.INVITING: {_E.ANSWERED: _S.ESTABLISHED, _E.REJECTED: _S.SUBSCRIBED,
                  _E.ERROR: _S.FAILED, _E.CALL_ENDED: _S.CLOSED, _E.STOP: _S.CLOSED},
    _S.ESTABLISHED: {_E.UPDATE: _S.ESTABLISHED, _E.PAUSE: _S.PAUSED,
                     _E.NODE_LOST: _S.RELOCATING,
                     _E.SRS_BYE: _S.CLOSED, _E.SRS_LOST: _S.FAILED,
                     _E.CALL_ENDED: _S.TERMINATING, _E.STOP: _S.TERMINATING,
                     _E.ERROR: _S.TERMINATING},
    _S.PAUSED: {_E.UPDATE: _S.PAUSED, _E.RESUME: _S.ESTABLISHED,
                _E.NODE_LOST: _S.PAUSED,  # nothing forked; a resume subscribes on the carrier
                _E.SRS_BYE: _S.CLOSED, _E.SRS_LOST: _S.FAILED,
                _E.CALL_ENDED: _S.TERMINATING, _E.STOP: _S.TERMINATING,
                _E.ERROR: _S.TERMINATING},
    _S.RELOCATING: {_E.REFORKED: _S.ESTABLISHED, _E.UPDATE: _S.RELOCATING,
                    _E.NODE_LOST: _S.RELOCATING,
                    _E.PAUSE: _S.PAUSED,  # a pause in flight when the node died
                    _E.SRS_BYE: _S.CLOSED, _E.SRS_LOST: _S.FAILED,
                    _E.CALL_ENDED: _S.TERMINATING, _E.STOP: _S.TERMINATING,
                    _E.ERROR: _S.TERMINATING},
    _S.TERMINATING: {_E.DONE: _S.CLOSED},
    _S.CLOSED: {},
    _S.FAILED: {},
}

OPEN_STATES = frozenset(s for s in State if s not in (State.CLOSED, State.FAILED))
LIVE_STATES = frozenset({State.ESTABLISHED, State.PAUSED, State.RELOCATING})


@dataclass
class Tx:
    """The one client transaction in flight on a recording dialog (RFC 3261 §14.1: never
    two INVITE transactions at once; we keep every method to one at a time)."""

    method: str
    cseq: int
    deadline: float
    purpose: str  # invite, update, snapshot, pause, resume, resubscribe, refork_sub, refork, bye
    sdp: bytes = b""  # the offer this request carries, if any
    holds: frozenset[str] | None = None  # the holds a metadata update announces


@dataclass
class Attempt:
    """One INVITE of the session to one SRS (each with its own RS Call-ID)."""

    rs_call_id: str
    srs_uri: str
    transport: str
    started: float
    outcome: str = ""  # "", answered, rejected NNN, timeout, abandoned, ...


@dataclass
class RecordingSession:
    """A SIPREC recording session of one call on one SRS (or set-up attempts of one slot)."""

    session_id: str
    call_id: str  # the communication session (the recorded call)
    edge: str
    node: str  # rtpengine node name
    group: str  # SRS group
    slot: int  # which of the group's simultaneous sessions this is (0-based)
    sub_to_tag: str  # rtpengine subscription tag
    call: dict[str, Any] = field(default_factory=dict)  # the call's identities, for views
    state: State = State.NEW
    reason: str | None = None
    srs_uri: str | None = None
    dialog: RsDialog | None = None
    attempts: list[Attempt] = field(default_factory=list)
    tx: Tx | None = None
    offer_sdp: bytes = b""  # our current SDP towards the SRS
    answer_sdp: bytes = b""  # the SRS's SDP
    metadata: bytes = b""  # the complete snapshot sent in the INVITE
    snapshot: Recording | None = field(default=None, repr=False)  # ... parsed (lazily)
    participants: dict[str, str] = field(default_factory=dict)  # caller/callee -> id
    announced_holds: frozenset[str] = frozenset()  # roles the SRS was told are on hold
    snapshot_due: bool = False  # the SRS asked for a complete snapshot
    snapshot_after_ack: bool = False  # ... in an INVITE: send after its ACK
    final_sent: bool = False  # terminating: the final metadata update went out
    created: float = 0.0
    updated: float = 0.0
    established_at: float | None = None
    last_alive: float | None = None  # last sign of life from the SRS (2xx, probe)
    media_until: float | None = None  # when media stopped reaching the SRS (end, loss)
    ended_at: float | None = None
    history: list[tuple[float, str, str, str, str]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def rs_call_id(self) -> str | None:
        return self.dialog.call_id if self.dialog else None

    def handle(self, event: Ev, detail: str, now: float) -> State:
        """Apply ``event``; the new state, or :class:`IllegalTransition`."""
        try:
            new = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalTransition("recording session", self.state.value, event.value) from None
        self.history.append((now, self.state.value, new.value, event.value, detail))
        self.state = new
        self.updated = now
        if new is State.ESTABLISHED and self.established_at is None:
            self.established_at = now
        if new in (State.CLOSED, State.FAILED):
            self.ended_at = now
            if self.reason is None:
                self.reason = detail or event.value
        return new

    def note(self, detail: str, now: float, event: str = "note") -> None:
        """A history entry without a state change (operator actions, losses, refreshes)."""
        self.history.append((now, self.state.value, self.state.value, event, detail))
        self.updated = now

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (the HTTP API's session object)."""
        return {
            "session_id": self.session_id, "call_id": self.call_id, "edge": self.edge,
            "node": self.node, "group": self.group, "slot": self.slot,
            "state": self.state.value, "reason": self.reason, "srs": self.srs_uri,
            "rs_call_id": self.rs_call_id, "subscription": self.sub_to_tag,
            "call": self.call,
            "created": self.created, "established_at": self.established_at,
            "media_until": self.media_until, "ended_at": self.ended_at,
            "attempts": [{"rs_call_id": a.rs_call_id, "srs": a.srs_uri, "started": a.started,
                          "outcome": a.outcome} for a in self.attempts],
            "history": [{"ts": ts, "from": a, "to": b, "event": e, "detail": d}
                        for ts, a, b, e, d in self.history],
        }
