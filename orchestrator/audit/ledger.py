"""The completeness ledger's entries: one per answered call (plain data, JSON-ready).

An entry is rebuilt by every audit from independent evidence (the edge's records, the
controller's store, the recordings); nothing here is stored by the controller. The JSON form
(:meth:`LedgerEntry.to_dict`, schema version :data:`SCHEMA_VERSION`) is what ``siprecctl
audit --json`` prints and what a Redis-backed store can hold as one document per call
(``siprecctl:ledger:<call-id>``): every field is a string, number, boolean, null, list or
object, times are Unix seconds, ratios are 0..1 (README "Audit" describes each field).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["LEDGER_SCHEMA", "SCHEMA_VERSION", "Gap", "LedgerEntry", "LocalEntry", "Policy",
           "SessionEntry", "StreamMedia", "Verdict", "reason_key"]

SCHEMA_VERSION = 1


class Verdict(StrEnum):
    RECORDED = "recorded"  # every second the policy wanted was recorded
    GAPS = "recorded-with-gaps"  # recorded, with seconds (or streams, or a copy) missing
    MISSING = "missing"  # the policy wanted a recording and none exists
    NOT_REQUIRED = "not-required"  # the policy did not ask for a recording


def reason_key(text: str) -> str:
    """A reason as a label: without its numbers and addresses (``srs_lost 3.1 s`` →
    ``srs_lost``; ``media 83.4% at sip:… label 1 (callee) < 99%`` → ``media (callee)``)."""
    head = re.sub(r"\s*\([^)]{20,}\)", "", text.split(": ")[0])  # long explanations
    words = [w for w in head.split() if not any(c.isdigit() for c in w)
             and w not in ("s", "<", "at", "label")]
    return " ".join(words) or head


@dataclass
class Gap:
    """Seconds of the call no SRS recorded (call level), or one loss of a session."""

    reason: str  # the controller's loss reason, "controller down", or "unexplained"
    seconds: float
    start: float | None = None  # None when only the duration is known
    slot: int | None = None
    srs: str | None = None
    detail: str = ""


@dataclass
class StreamMedia:
    """One recorded stream (``a=label``) of a SIPREC session."""

    label: str
    leg: str | None  # caller | callee (from the session's metadata)
    delivered: int | None  # packets the SRS recorded, by its own count (when known)
    received: int | None  # packets rtpengine received from the leg during the whole call
    expected: float | None  # received × the session's share of the call's media time
    ratio: float | None  # delivered / expected


@dataclass
class SessionEntry:
    """One SIPREC recording session of the call."""

    session_id: str
    slot: int
    srs: str | None
    state: str
    reason: str | None
    established: float | None
    ended: float | None
    covered: float  # seconds it recorded of the time the policy wanted recorded
    paused: float  # declared pauses (not losses)
    gaps: list[Gap] = field(default_factory=list)
    media: list[StreamMedia] = field(default_factory=list)


@dataclass
class LocalEntry:
    """The local (rtpengine pcap) recording."""

    wanted: bool
    status: str  # ok | problem | missing | pending (call not over) | unchecked | not-wanted
    files: list[str] = field(default_factory=list)
    packets: int | None = None
    streams: list[dict[str, Any]] = field(default_factory=list)  # port, label, packets
    problems: list[str] = field(default_factory=list)


@dataclass
class Policy:
    """The edge's decision for the call (compiled from the site's recording policy)."""

    rule: str | None
    local: bool
    siprec: str | None  # SRS group; None: no SIPREC
    required: str  # the group's `required`: no | yes | all
    sampled_out: bool = False


@dataclass
class LedgerEntry:
    """Everything known about the recording of one answered call, and the verdict."""

    call_id: str
    edge: str
    answered: float
    ended: float | None  # None: still up (or the edge lost the dialog)
    policy: Policy
    local: LocalEntry
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    from_uri: str = ""
    to_uri: str = ""
    pai: str = ""
    trunk: str = ""
    sources: dict[str, bool] = field(default_factory=dict)  # edge, controller
    sessions: list[SessionEntry] = field(default_factory=list)
    required_seconds: float = 0.0  # media time the policy wanted recorded (pauses excluded)
    paused: float = 0.0
    coverage: float | None = None  # SIPREC: recorded ÷ required seconds (any SRS)
    srs_coverage: dict[str, float] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    media_ratio: float | None = None  # the lowest stream's ratio
    below_threshold: bool = False
    schema: int = SCHEMA_VERSION

    @property
    def required(self) -> bool:
        return self.verdict is not Verdict.NOT_REQUIRED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d


_GAP = {"type": "object", "required": ["reason", "seconds"],
        "properties": {"reason": {"type": "string"}, "seconds": {"type": "number"},
                       "start": {"type": ["number", "null"]},
                       "slot": {"type": ["integer", "null"]},
                       "srs": {"type": ["string", "null"]}, "detail": {"type": "string"}}}
_NUM = {"type": ["number", "null"]}
#: JSON Schema of one entry (``LedgerEntry.to_dict()``), for a store or a consumer
LEDGER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "siprecctl ledger entry", "type": "object",
    "required": ["schema", "call_id", "edge", "answered", "ended", "policy", "local",
                 "verdict", "reasons", "sessions", "coverage", "gaps"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "call_id": {"type": "string"}, "edge": {"type": "string"},
        "answered": {"type": "number"}, "ended": _NUM,
        "from_uri": {"type": "string"}, "to_uri": {"type": "string"},
        "pai": {"type": "string"}, "trunk": {"type": "string"},
        "verdict": {"enum": [v.value for v in Verdict]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "sources": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "policy": {"type": "object", "required": ["rule", "local", "siprec", "required"],
                   "properties": {"rule": {"type": ["string", "null"]},
                                  "local": {"type": "boolean"},
                                  "siprec": {"type": ["string", "null"]},
                                  "required": {"enum": ["no", "yes", "all"]},
                                  "sampled_out": {"type": "boolean"}}},
        "local": {"type": "object", "required": ["wanted", "status"],
                  "properties": {"wanted": {"type": "boolean"},
                                 "status": {"enum": ["ok", "problem", "missing", "pending",
                                                     "unchecked", "not-wanted"]},
                                 "files": {"type": "array", "items": {"type": "string"}},
                                 "packets": {"type": ["integer", "null"]},
                                 "streams": {"type": "array"},
                                 "problems": {"type": "array", "items": {"type": "string"}}}},
        "sessions": {"type": "array", "items": {
            "type": "object",
            "required": ["session_id", "slot", "srs", "state", "established", "ended",
                         "covered", "gaps", "media"],
            "properties": {
                "session_id": {"type": "string"}, "slot": {"type": "integer"},
                "srs": {"type": ["string", "null"]}, "state": {"type": "string"},
                "reason": {"type": ["string", "null"]}, "established": _NUM, "ended": _NUM,
                "covered": {"type": "number"}, "paused": {"type": "number"},
                "gaps": {"type": "array", "items": _GAP},
                "media": {"type": "array", "items": {
                    "type": "object", "required": ["label", "leg", "delivered", "received"],
                    "properties": {"label": {"type": "string"},
                                   "leg": {"type": ["string", "null"]},
                                   "delivered": {"type": ["integer", "null"]},
                                   "received": {"type": ["integer", "null"]},
                                   "expected": _NUM, "ratio": _NUM}}}}}},
        "required_seconds": {"type": "number"}, "paused": {"type": "number"},
        "coverage": _NUM,
        "srs_coverage": {"type": "object", "additionalProperties": {"type": "number"}},
        "gaps": {"type": "array", "items": _GAP},
        "media_ratio": _NUM, "below_threshold": {"type": "boolean"},
    },
}
