"""What the per-call core (:mod:`.core`) takes and returns: typed inputs (besides the
edge's events of :mod:`orchestrator.kamailio.events`) and typed actions for the driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..kamailio.events import CallEnded, CallReinvite, RsError, RsReply, RsRequest
from .dialog import SRC_USER
from .session import RecordingSession

__all__ = [
    "Action", "CallRecord", "CancelInvite", "DeleteCall", "EdgeForget", "EdgeLost", "EdgeSdp",
    "EdgeSip", "EndCall", "Input", "Loss", "NgFailed", "NodeLost", "Observe", "Operator",
    "Persist", "PersistCall", "QueryMedia", "Relocate", "Relocated", "Reply", "SendFailed",
    "SendInvite", "SendRequest", "SrsDown", "StartLocal", "StopLocal", "Subscribe",
    "SubscribeAnswer", "Subscribed", "Tick", "Unsubscribe",
]


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True, slots=True)
class Subscribed:
    """rtpengine answered ``subscribe request``: its SDP and label → call tag."""

    session_id: str
    sdp: bytes
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class NgFailed:
    """An NG action of a session failed (``gone``: rtpengine does not know the call)."""

    session_id: str
    op: str
    error: str
    gone: bool = False


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The driver could not hand a request to the edge (RPC/evapi down or refused)."""

    rs_call_id: str
    cseq: int
    method: str
    error: str


@dataclass(frozen=True, slots=True)
class SrsDown:
    """The prober counts ``uri`` as down; ``last_ok`` is its last answered probe."""

    uri: str
    last_ok: float | None


@dataclass(frozen=True, slots=True)
class NodeLost:
    """The node prober counts rtpengine ``node`` as lost; ``since`` is its last pong (the
    forks on it are assumed dead from then)."""

    node: str
    since: float


@dataclass(frozen=True, slots=True)
class Relocated:
    """The driver's answer to :class:`Relocate`: ``carrier`` is the node whose counters grew
    and on which both legs were offered/answered again (None: no node carries the call's
    media); ``holders`` every node that still holds the call (cleaned up at its end)."""

    carrier: str | None
    holders: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class EdgeLost:
    """The call's edge has been unreachable (evapi down, reconnects failing) since
    ``since``, past the controller's bound; ``via`` is a connected edge for the recording
    dialogs' last requests (None: none is connected)."""

    edge: str
    since: float
    via: str | None


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (deadlines are checked against ``now``)."""


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator request; answered by a :class:`Reply` with the same ``token``."""

    op: Literal["start", "stop", "pause", "resume"]
    token: int
    actor: str = "operator"
    group: str | None = None
    local: bool = False


Input = (CallReinvite | CallEnded | RsReply | RsRequest | RsError | Subscribed | NgFailed
         | SendFailed | SrsDown | Tick | Operator | NodeLost | Relocated | EdgeLost)


# ------------------------------------------------------------------------------ actions
@dataclass(frozen=True, slots=True)
class Subscribe:
    """NG ``subscribe request`` (flags all + SIPREC) with ``to_tag``."""

    session_id: str
    node: str
    call_id: str
    to_tag: str


@dataclass(frozen=True, slots=True)
class SubscribeAnswer:
    session_id: str
    node: str
    call_id: str
    to_tag: str
    sdp: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    session_id: str
    node: str
    call_id: str
    to_tag: str


@dataclass(frozen=True, slots=True)
class DeleteCall:
    """NG ``delete`` of the whole call after the call ended (frees a subscription that an
    ``unsubscribe`` racing the edge's own delete would otherwise leak)."""

    node: str
    call_id: str
    delete_delay: int | None = None  # 0 on a carrier: Kamailio's delete never reaches it


@dataclass(frozen=True, slots=True)
class Relocate:
    """After ``lost``: find the node of the call's set that carries its media (counters
    growing between two ``query``s) and replay ``offer``/``answer`` of both legs there
    (SDP rebuilt from its ``query``: rtpengine 10.5 does not replicate what
    ``subscribe request`` needs). Answered by :class:`Relocated`."""

    call_id: str
    lost: str
    from_tag: str
    to_tag: str


@dataclass(frozen=True, slots=True)
class QueryMedia:
    """NG ``query`` of the call, its counters stored as evidence (``roles``: call tag →
    caller / callee / srs URI). rtpengine 10.5 counts what it *received* per tag; its
    subscription (SRS) tags count what came back from the SRS, not what was delivered."""

    session_id: str | None
    node: str
    call_id: str
    roles: dict[str, str]
    why: str
    # the earliest time the recordings queried were known to be forking (their set-up):
    # when the node no longer knows the call, the loss is counted from here
    since: float | None = None


@dataclass(frozen=True, slots=True)
class StartLocal:
    node: str
    call_id: str


@dataclass(frozen=True, slots=True)
class StopLocal:
    node: str
    call_id: str


@dataclass(frozen=True, slots=True)
class SendInvite:
    """The recording session's initial INVITE (Kamailio's ``tm.t_uac_start``)."""

    session_id: str
    edge: str
    rs_call_id: str
    ruri: str
    headers: str
    body: bytes
    cseq: int


@dataclass(frozen=True, slots=True)
class SendRequest:
    """An in-dialog request (the edge's ``t_uac_send`` through an evapi command).
    ``sdp``, when set, becomes the session's current SDP at the edge first."""

    session_id: str | None
    edge: str
    rs_call_id: str
    method: str
    ruri: str
    nexthop: str
    headers: str
    body: bytes
    cseq: int
    sdp: bytes | None = None


@dataclass(frozen=True, slots=True)
class CancelInvite:
    """CANCEL of a pending INVITE (the edge's ``cancel`` evapi command)."""

    edge: str
    rs_call_id: str
    cseq: int


@dataclass(frozen=True, slots=True)
class EdgeSdp:
    """The SDP the edge answers the SRS's refreshes with."""

    edge: str
    rs_call_id: str
    sdp: bytes


@dataclass(frozen=True, slots=True)
class EdgeForget:
    edge: str
    rs_call_id: str


@dataclass(frozen=True, slots=True)
class EndCall:
    """Recording is required and impossible: end the call (``dlg.end_dlg``)."""

    edge: str
    call_id: str
    h_entry: int | None
    h_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Persist:
    session: RecordingSession


@dataclass
class CallRecord:
    """What the controller knows of a call, for the store (and the completeness ledger)."""

    call_id: str
    edge: str
    node: str
    answered_at: float
    group: str | None
    slots: int
    required: str  # "no" | "yes" | "all"
    rule: str | None
    record_local: bool
    ended_at: float | None = None
    end_reason: str | None = None
    received_at: float | None = None  # when the controller got the answered event


@dataclass(frozen=True, slots=True)
class PersistCall:
    call: CallRecord


@dataclass(frozen=True, slots=True)
class Loss:
    """A recording the policy wanted and did not (fully) get: counted and stored."""

    call_id: str
    session_id: str | None
    slot: int | None
    reason: str
    seconds: float
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Observe:
    """A metric: ``kind`` is setup_latency (value: seconds), failover, late_answer,
    update_refused, srs_selected (labels: group, strategy) …"""

    kind: str
    value: float = 1.0
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    token: int
    ok: bool
    result: dict[str, object]


Action = (Subscribe | SubscribeAnswer | Unsubscribe | DeleteCall | Relocate | QueryMedia | StartLocal
          | StopLocal | SendInvite | SendRequest | CancelInvite | EdgeSdp | EdgeForget | EndCall | Persist
          | PersistCall | Loss | Observe | Reply)


# ------------------------------------------------------------------------------ context
@dataclass(frozen=True, slots=True)
class EdgeSip:
    """The edge's SIP identity on recording sessions: our Contact and From host."""

    name: str
    host: str
    ports: dict[str, int]

    def contact(self, transport: str) -> str:
        port = self.ports.get(transport) or next(iter(self.ports.values()))
        uri = f"sip:{SRC_USER}@{self.host}:{port}"
        return uri if transport == "udp" else f"{uri};transport={transport}"

    @property
    def src_uri(self) -> str:
        return f"sip:{SRC_USER}@{self.host}"


