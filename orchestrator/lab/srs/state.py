"""What the reference SRS keeps per transaction and per recording session (plain data,
shared by :mod:`.transactions`, :mod:`.sessions`, :mod:`.streams`, :mod:`.uas` and
:mod:`.uac`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...sip import Retransmitter, SipMessage
from ...siprec.rules import Severity
from ...siprec.validator import RecordingSessionValidator
from .checks import ParticipantMap
from .loop import Timer
from .media import StreamRecorder
from .sdp import OfferedStream
from .session import SrsFinding, SrsSession, StreamStats
from .sip import Dialog, OutgoingRequest
from .transport import Conn, Peer

__all__ = ["ACCEPT", "AGENT", "Call", "ClientTx", "FinalHandler", "Pending2xx", "ServerTx", "Slot"]

AGENT = "siprecctl-srs"
ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata"


@dataclass(eq=False)
class ServerTx:
    """A server transaction (RFC 3261 §17.2) and the session its INVITE opened, if any."""

    key: tuple[Any, ...]
    request: SipMessage
    raw: bytes
    peer: Peer
    method: str
    source: tuple[str, int]
    last_response: bytes | None = None
    final: int | None = None
    ignored: bool = False
    call: Call | None = None
    retrans: Retransmitter | None = None
    timer: Timer | None = None


#: what a client transaction reports: the final response, or None and why not
FinalHandler = Callable[["ClientTx", SipMessage | None, str | None], None]


@dataclass(eq=False)
class ClientTx:
    """A request the SRS sent in a session (RFC 3261 §17.1)."""

    req: OutgoingRequest
    peer: Peer
    call: Call
    kind: str  # "bye" | "refresh" | "snapshot"
    on_final: FinalHandler
    attempt: int = 1
    retrans: Retransmitter | None = None
    timer: Timer | None = None


@dataclass(eq=False)
class Pending2xx:
    """A 2xx to an INVITE retransmitted until its ACK (RFC 3261 §13.3.1.4)."""

    cseq: int
    data: bytes
    peer: Peer
    initial: bool
    retrans: Retransmitter
    timer: Timer | None = None


@dataclass(eq=False)
class Slot:
    """One m-line of the recording session, by index (RFC 3264 §8: positions are stable)."""

    offered: OfferedStream
    stats: StreamStats
    recorder: StreamRecorder | None


@dataclass(eq=False)
class Call:
    """One recording session: its record, dialog, media slots and pending transactions."""

    record: SrsSession
    tx: ServerTx
    local_tag: str
    validator: RecordingSessionValidator
    conn: Conn | None
    dialog: Dialog | None = None
    offer: list[OfferedStream] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    sdp_session_id: int = 0
    sdp_version: int = 1
    last_sdp: bytes | None = None
    last_offer_sdp: bytes | None = None
    pending_2xx: dict[int, Pending2xx] = field(default_factory=dict)
    invite_client: ClientTx | None = None
    invite_server: ServerTx | None = None  # an SRC re-INVITE not answered yet
    acks: dict[int, tuple[bytes, Peer]] = field(default_factory=dict)
    timers: list[Timer] = field(default_factory=list)
    participants: ParticipantMap = field(default_factory=ParticipantMap)

    def finding(self, rule: str, severity: Severity, message: str,
                source: str | None = None) -> None:
        self.record.sip_findings.append(SrsFinding(rule, severity, None, message, source))
