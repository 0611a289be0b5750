"""One recording session's life, as a transition table (sans-IO, h11 style).

``TRANSITIONS[state][event]`` is the next state; anything else raises
:class:`IllegalTransition` naming the role, state and event. The controller feeds events as
it learns them (rtpengine replies, SRS replies, call events) and persists every move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import IllegalTransition
from .dialog import RsDialog

__all__ = ["OPEN_STATES", "TRANSITIONS", "Ev", "RecordingSession", "State"]


class State(StrEnum):
    NEW = "new"  # the policy chose SIPREC; nothing asked yet
    SUBSCRIBED = "subscribed"  # rtpengine forks media (subscribe request done)
    INVITING = "inviting"  # INVITE out to an SRS of the group
    ESTABLISHED = "established"  # the SRS answered 2xx; media flows to it
    PAUSED = "paused"  # a=inactive towards the SRS, subscription paused in rtpengine
    TERMINATING = "terminating"  # BYE out / unsubscribe in progress
    CLOSED = "closed"  # over, cleanly
    FAILED = "failed"  # no SRS took the session, or set-up broke


class Ev(StrEnum):
    SUBSCRIBED = "subscribed"
    INVITE = "invite"
    ANSWERED = "answered"
    REJECTED = "rejected"  # 3xx-6xx, timeout, transport error: try the next SRS
    EXHAUSTED = "exhausted"  # no SRS left
    ERROR = "error"
    UPDATE = "update"  # metadata update (hold/resume/snapshot) sent
    PAUSE = "pause"
    RESUME = "resume"
    SRS_BYE = "srs_bye"
    CALL_ENDED = "call_ended"
    STOP = "stop"  # operator asked to stop
    DONE = "done"


TRANSITIONS: dict[State, dict[Ev, State]] = {
    State.NEW: {Ev.SUBSCRIBED: State.SUBSCRIBED, Ev.ERROR: State.FAILED,
                Ev.CALL_ENDED: State.CLOSED, Ev.STOP: State.CLOSED},
    State.SUBSCRIBED: {Ev.INVITE: State.INVITING, Ev.EXHAUSTED: State.FAILED,
                       Ev.ERROR: State.FAILED, Ev.CALL_ENDED: State.TERMINATING,
                       Ev.STOP: State.TERMINATING},
    State.INVITING: {Ev.ANSWERED: State.ESTABLISHED, Ev.REJECTED: State.SUBSCRIBED,
                     Ev.ERROR: State.FAILED},
    State.ESTABLISHED: {Ev.UPDATE: State.ESTABLISHED, Ev.PAUSE: State.PAUSED,
                        Ev.SRS_BYE: State.TERMINATING, Ev.CALL_ENDED: State.TERMINATING,
                        Ev.STOP: State.TERMINATING, Ev.ERROR: State.TERMINATING},
    State.PAUSED: {Ev.UPDATE: State.PAUSED, Ev.RESUME: State.ESTABLISHED,
                   Ev.SRS_BYE: State.TERMINATING, Ev.CALL_ENDED: State.TERMINATING,
                   Ev.STOP: State.TERMINATING, Ev.ERROR: State.TERMINATING},
    State.TERMINATING: {Ev.DONE: State.CLOSED, Ev.ERROR: State.FAILED},
    State.CLOSED: {},
    State.FAILED: {},
}

OPEN_STATES = frozenset(s for s in State if s not in (State.CLOSED, State.FAILED))


@dataclass
class RecordingSession:
    """A SIPREC recording session of one call, and what the controller knows about it."""

    session_id: str
    call_id: str  # the communication session (the recorded call)
    edge: str
    node: str  # rtpengine node name
    group: str  # SRS group
    from_tag: str
    to_tag: str
    sub_to_tag: str  # rtpengine subscription tag
    call: dict[str, Any] = field(default_factory=dict)  # the call's identities (event fields)
    state: State = State.NEW
    reason: str | None = None
    srs_index: int = 0
    srs_uri: str | None = None
    dialog: RsDialog | None = None
    offer_sdp: bytes = b""  # our current SDP towards the SRS
    answer_sdp: bytes = b""  # the SRS's SDP
    metadata: bytes = b""  # last complete snapshot sent
    participants: dict[str, str] = field(default_factory=dict)  # caller/callee -> id
    held: list[str] = field(default_factory=list)  # participant ids on hold now
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    established_at: float | None = None
    ended_at: float | None = None
    history: list[tuple[float, str, str, str, str]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def handle(self, event: Ev, detail: str = "") -> State:
        """Apply ``event``; the new state, or :class:`IllegalTransition`."""
        try:
            new = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalTransition("recording session", self.state.value, event.value) from None
        now = time.time()
        self.history.append((now, self.state.value, new.value, event.value, detail))
        self.state = new
        self.updated = now
        if new is State.ESTABLISHED and self.established_at is None:
            self.established_at = now
        if new in (State.CLOSED, State.FAILED):
            self.ended_at = now
            if detail and self.reason is None:
                self.reason = detail
        return new

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (the HTTP API's session object)."""
        return {
            "session_id": self.session_id, "call_id": self.call_id, "edge": self.edge,
            "node": self.node, "group": self.group, "state": self.state.value,
            "reason": self.reason, "srs": self.srs_uri,
            "rs_call_id": self.dialog.call_id if self.dialog else None,
            "subscription": self.sub_to_tag, "created": self.created,
            "call": {k: self.call.get(k) for k in ("from", "to", "pai", "rule", "headers")},
            "established_at": self.established_at, "ended_at": self.ended_at,
            "history": [{"ts": ts, "from": a, "to": b, "event": e, "detail": d}
                        for ts, a, b, e, d in self.history],
        }
