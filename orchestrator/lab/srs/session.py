"""What the SRS records about each recording session (RS), and the RS state table.

:class:`SrsSession` and :class:`StreamStats` are plain dataclasses: the server keeps one per
session and hands out deep copies (:meth:`SrsServer.sessions`), so callers never share state
with the server's threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import IllegalTransition
from ...siprec.rules import RULES, Finding

__all__ = [
    "SRS_RULES",
    "STATES",
    "TRANSITIONS",
    "SrsFinding",
    "SrsSession",
    "StreamStats",
    "finding_dict",
    "next_state",
]

STATES = ("early", "confirmed", "terminated", "rejected", "cancelled")
#: state → event → new state. "answer": 2xx sent; "reject": final non-2xx sent; "cancel":
#: CANCEL answered with 487; "bye": BYE sent or received; "shutdown": the server stops;
#: "timeout": no ACK for the 2xx (RFC 3261 §13.3.1.4) or a dead dialog (§12.2.1.2).
TRANSITIONS: dict[str, dict[str, str]] = {
    "early": {"answer": "confirmed", "reject": "rejected", "cancel": "cancelled",
              "shutdown": "terminated"},
    "confirmed": {"bye": "terminated", "shutdown": "terminated", "timeout": "terminated"},
    "terminated": {},
    "rejected": {},
    "cancelled": {},
}
FINAL_STATES = frozenset({"terminated", "rejected", "cancelled"})

#: Checks of the SRS itself (the R rules are the validator's, orchestrator.siprec.rules).
SRS_RULES: dict[str, tuple[str, str]] = {
    "S01": ("ack", "the SRC ACKs the SRS's 2xx (RFC 3261 §13.3.1.4)"),
    "S02": ("media-proto", "recorded streams are RTP/AVP with a numeric payload type"),
    "S03": ("require", "Require lists only option tags the SRS supports (RFC 3261 §8.2.2.3)"),
    "S04": ("snapshot", "after a snapshot request the SRC sends a complete snapshot in a new "
                        "request (RFC 7866 §9.2)"),
    "S05": ("srs-request", "the SRC answers the SRS's in-dialog requests"),
    "S06": ("body", "the request carries a usable SDP offer (RFC 7866 §7.1.1)"),
    "S07": ("invite-overlap", "no INVITE arrives while a previous INVITE transaction of the "
                              "dialog is pending (RFC 3261 §14.1, answered 500, §14.2)"),
}


def next_state(state: str, event: str) -> str:
    """The state after ``event``; :class:`IllegalTransition` if the table has no such move."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition("srs session", state, event) from None


def finding_dict(f: Finding) -> dict[str, Any]:
    """JSON form of a validator or SRS finding."""
    slug = RULES[f.rule].slug if f.rule in RULES else SRS_RULES.get(f.rule, (f.rule, ""))[0]
    return {"rule": f.rule, "slug": slug, "severity": f.severity.value, "line": f.line,
            "message": f.message, "source": f.source}


@dataclass(frozen=True, slots=True)
class SrsFinding(Finding):
    """A finding of the SRS's own checks (``S01``–``S06``); :meth:`as_dict` knows their slugs
    (``Finding.as_dict`` only knows the validator's R rules)."""

    def as_dict(self) -> dict[str, object]:
        return finding_dict(self)


@dataclass
class StreamStats:
    """One recorded stream (one ``a=label``).

    ``packets``/``bytes`` count RTP packets received while the stream was active (they are
    the ones written to the pcap); packets arriving while it was negotiated ``inactive``
    are only counted in ``packets_while_inactive``. ``invalid_packets`` are datagrams that
    are not RTP version 2.
    """

    label: str
    port: int
    payload_type: int | None
    codec: str | None
    direction: str
    packets: int = 0
    bytes: int = 0
    ssrcs: list[int] = field(default_factory=list)
    packets_while_inactive: int = 0
    invalid_packets: int = 0
    first_at: float | None = None
    last_at: float | None = None
    pcap_path: str | None = None
    wav_path: str | None = None
    write_error: str | None = None
    participants: list[dict[str, str | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "port": self.port, "payload_type": self.payload_type,
                "codec": self.codec, "direction": self.direction, "packets": self.packets,
                "bytes": self.bytes, "ssrcs": list(self.ssrcs),
                "packets_while_inactive": self.packets_while_inactive,
                "invalid_packets": self.invalid_packets, "first_at": self.first_at,
                "last_at": self.last_at, "pcap_path": self.pcap_path,
                "wav_path": self.wav_path, "write_error": self.write_error,
                "participants": list(self.participants)}


@dataclass
class SrsSession:
    """One recording session as the SRS saw it (times are wall-clock ``time.time()``)."""

    session_id: str
    call_id: str
    transport: str
    remote: str  # the SRC's address as seen by the SRS, "ip:port"
    state: str = "early"
    started_at: float = 0.0
    answered_at: float | None = None
    acked_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    final_status: int | None = None
    bye_from: str | None = None  # "src" | "srs" | None
    bye_status: int | None = None  # the SRC's answer to the SRS's BYE
    ignored: bool = False  # no_answer behaviour: the INVITE was left unanswered
    sip_findings: list[Finding] = field(default_factory=list)
    metadata_findings: list[Finding] = field(default_factory=list)
    metadata_docs: list[tuple[str, float]] = field(default_factory=list)
    snapshot_requests_sent: int = 0
    snapshot_requested_at: float | None = None
    snapshot_received_after_request: bool = False
    labels: dict[str, StreamStats] = field(default_factory=dict)
    reinvites: list[dict[str, Any]] = field(default_factory=list)
    json_path: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the session's ``.json`` file holds)."""
        return {
            "session_id": self.session_id, "call_id": self.call_id,
            "transport": self.transport, "remote": self.remote, "state": self.state,
            "started_at": self.started_at, "answered_at": self.answered_at,
            "acked_at": self.acked_at, "ended_at": self.ended_at,
            "end_reason": self.end_reason, "final_status": self.final_status,
            "bye_from": self.bye_from, "bye_status": self.bye_status, "ignored": self.ignored,
            "sip_findings": [finding_dict(f) for f in self.sip_findings],
            "metadata_findings": [finding_dict(f) for f in self.metadata_findings],
            "metadata_docs": [[mode, at] for mode, at in self.metadata_docs],
            "snapshot_requests_sent": self.snapshot_requests_sent,
            "snapshot_requested_at": self.snapshot_requested_at,
            "snapshot_received_after_request": self.snapshot_received_after_request,
            "labels": {k: v.to_dict() for k, v in self.labels.items()},
            "packets": {k: v.packets for k, v in self.labels.items()},
            "reinvites": [dict(r) for r in self.reinvites],
            "json_path": self.json_path,
        }

    def to_json(self) -> str:
        """The session as a JSON document (a string; :meth:`to_dict` gives the dict)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
