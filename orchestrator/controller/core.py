"""The recording controller's per-call core, without I/O (after h11).

One :class:`CallCore` per answered call. It is fed typed inputs — the edge's events
(:mod:`orchestrator.kamailio.events`), results of the actions it asked for, operator
requests and timer ticks, each with ``now`` — and returns typed actions for a driver to
carry out (:mod:`.service`). It never blocks, sleeps or reads a clock, so every case has a
table-driven unit test with no daemon at all.

A call holds ``group.simultaneous`` slots; each slot holds one recording session at a time
(:class:`~.session.RecordingSession`, its own subscription tag, RS dialog, metadata and
history). A slot whose session fails — set-up exhausted, SRS lost mid-call, SRS BYE — gets a
new session on another SRS of the group, chosen by :class:`~.selection.SrsSelector` and
never on an SRS another slot of the call uses. Every recording the policy wanted and did
not get becomes a :class:`Loss` with a reason and the seconds of media it cost.

Rules the core keeps (each has a test):
- at most one client transaction per recording dialog (RFC 3261 §14.1); changes arriving
  meanwhile are coalesced and sent when it completes (the latest state wins);
- a re-INVITE/BYE answered 408/481 or not at all within the group's timeout means the SRS
  lost the dialog (RFC 3261 §12.2.1.2): the slot fails over with a complete snapshot;
- an initial INVITE not answered in time is CANCELled (RFC 3261 §9.1); a 2xx arriving
  after that is BYEd (tm ACKs it by itself);
- rtpengine 10.5: ``delete`` then ``unsubscribe`` within delete-delay leaks the call
  forever (FIELD-NOTES); so a call that ended is never unsubscribed, and a final
  ``delete`` follows the core's last NG action of a call that had subscriptions;
- nothing is set up for a call that already ended, or that waited longer than the site's
  ``max_setup_lag`` (shed, counted).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import MetadataError, SipError
from ..kamailio.events import CallAnswered, CallEnded, CallReinvite, RsError, RsReply, RsRequest
from ..siprec import (
    CallInfo,
    Recording,
    build_metadata,
    build_siprec_body,
    end_of_call_update,
    hold_update,
    parse_metadata,
    parse_siprec_body,
    recording_from_call,
    resume_update,
    with_holds,
)
from ..site.model import SrsGroup
from .dialog import (
    RsDialog,
    bump_version,
    media_targets,
    new_rs_call_id,
    party,
    set_direction,
    with_origin,
)
from .messages import (
    Action,
    CallRecord,
    CancelInvite,
    DeleteCall,
    EdgeForget,
    EdgeLost,
    EdgeSdp,
    EdgeSip,
    EndCall,
    Input,
    Loss,
    NgFailed,
    NodeLost,
    Observe,
    Operator,
    Persist,
    PersistCall,
    QueryMedia,
    Relocate,
    Relocated,
    Reply,
    SendFailed,
    SendInvite,
    SendRequest,
    SrsDown,
    StartLocal,
    StopLocal,
    Subscribe,
    SubscribeAnswer,
    Subscribed,
    Unsubscribe,
)
from .selection import SrsSelector
from .session import Attempt, Ev, RecordingSession, State, Tx

__all__ = ["CallCore"]

def _hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _sendonly_offer(s: RecordingSession, sdp: bytes) -> bytes:
    """rtpengine's new subscription SDP as the next offer of ``s``'s dialog (same origin,
    version bumped, sendonly); :class:`SipError` when it is unusable."""
    return set_direction(bump_version(with_origin(bytes(sdp), s.offer_sdp)), "sendonly")


def _answer_sdp(r: RsReply, current: bytes) -> bytes:
    """The SDP of an SRS's 2xx (plain or in a SIPREC multipart), else ``current``."""
    sdp = r.body
    if r.content_type and "multipart" in r.content_type.lower():
        try:
            sdp = parse_siprec_body(r.content_type, r.body).sdp or current
        except SipError:
            sdp = current
    return sdp or current


def _metadata(rec: Recording) -> bytes:
    """The document of ``rec``, without the builder's strict self-check: the only shapes the
    core builds — :func:`recording_from_call` and its hold, resume, holds-included and final
    updates — are proven valid for any identity, labels and times by a property test
    (tests/unit/test_controller_metadata.py); the check costs more than the rest of a call."""
    return build_metadata(rec, check=False)


OTHER = {"caller": "callee", "callee": "caller"}
ACK_GAP = 0.05  # seconds between the 2xx of the final update and the BYE (see _rs_reply)
LATE_SETUP = 1.0  # seconds an answer may wait in the controller's queue before it counts
_PURPOSE = {"snapshot": "complete snapshot requested by the SRS",
            "update": "metadata update (hold/resume)"}


@dataclass
class _PendingOp:
    token: int
    op: str
    deadline: float
    actor: str
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class _Slot:
    session: RecordingSession | None = None
    tried: set[str] = field(default_factory=set)  # SRSs that failed since its last success
    gap_since: float | None = None  # no SRS has received this slot's media since
    gap_reason: str = ""
    gap_detail: str = ""
    exhausted: bool = False  # no SRS left: the slot stays unrecorded


def _required(group: SrsGroup | None) -> str:
    if group is None or group.required is False:
        return "no"
    return "all" if group.required == "all" else "yes"


# ------------------------------------------------------------------------------ the core
class CallCore:
    """Everything the controller does for one answered call (sans-IO)."""

    def __init__(self, call: CallAnswered, *, node: str, group: SrsGroup | None,
                 selector: SrsSelector, edge: EdgeSip, now: float,
                 op_timeout: float = 30.0) -> None:
        self.call = call
        self.node = node
        self.group = group
        self.selector = selector
        self.edge = edge
        self.op_timeout = op_timeout
        self.live = True  # the call is up
        self.wanted = group is not None  # SIPREC wanted (policy, or the operator)
        self.policy_wanted = group is not None
        self.pause_wanted = False
        self.holds: set[str] = set()  # roles on hold now
        self.slots: list[_Slot] = [_Slot() for _ in range(group.simultaneous if group else 0)]
        self.sessions: dict[str, RecordingSession] = {}
        self.record = CallRecord(
            call_id=call.call_id, edge=call.edge, node=node, answered_at=call.ts or now,
            group=group.name if group else None, slots=len(self.slots),
            required=_required(group), rule=call.rule, record_local=call.record_local,
            received_at=now)
        self.had_subscription = False
        self.call_ended_sent = False  # EndCall emitted once
        self.hold_ts: float | None = None  # the edge's time of the last hold/resume
        self._identity = {"from": call.from_uri, "to": call.to_uri, "pai": call.pai,
                          "from_display": call.from_display, "to_display": call.to_display,
                          "rule": call.rule, "session_id": call.session_id,
                          "headers": dict(call.headers)}
        self._ops: list[_PendingOp] = []
        self._out: list[Action] = []
        self._dirty: dict[str, RecordingSession] = {}
        self._orphans: dict[str, Attempt] = {}  # abandoned INVITE attempts by RS Call-ID
        self._late_byes: set[str] = set()  # RS Call-IDs of BYEs sent after a late 2xx
        # README "After a node loss" / "After an edge loss"
        self.relocating = False  # node lost: waiting for the driver's Relocated
        self.lost_node: str | None = None
        self.lost_since: float | None = None
        self.holders: tuple[str, ...] = ()  # nodes holding the call after the loss
        self.via: str | None = None  # the edge for recording dialogs once the call's is lost
        self._reforking: set[str] = set()  # sessions subscribed on the carrier already

    # ------------------------------------------------------------------ public
    @property
    def sip_edge(self) -> str:
        """The edge the recording dialogs' requests go through: the call's, or after its
        loss a connected one (an SRS matches the dialog by Call-ID and tags)."""
        return self.via or self.call.edge

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def done(self) -> bool:
        """Nothing more to do: the call ended and no session or operation is open."""
        return (not self.live and not self._ops
                and all(not s.open for s in self.sessions.values()))

    def open_sessions(self) -> list[RecordingSession]:
        return [s for s in self.sessions.values() if s.open]

    def rs_call_ids(self) -> set[str]:
        ids = {a.rs_call_id for s in self.sessions.values() for a in s.attempts}
        return ids | set(self._orphans)

    def next_deadline(self) -> float | None:
        ds = [s.tx.deadline for s in self.sessions.values() if s.tx is not None]
        ds += [op.deadline for op in self._ops]
        return min(ds) if ds else None

    def start(self, now: float, *, lag: float = 0.0, max_lag: float | None = None,
              ended_at: float | None = None, down_since: float | None = None,
              shed: str | None = None) -> list[Action]:
        """The call was answered: set up what the policy wants, unless the call already
        ended (``ended_at``: the edge's time of its end) or its answer waited ``lag`` >
        ``max_lag`` seconds in the controller's queue (shed). ``down_since``: the call was
        answered while the controller was down (found by a reconcile): the slots' media is
        counted as lost from then until a session is established."""
        self._emit(PersistCall(self.record))
        if self.group is None:
            return self._flush()
        if max_lag is not None and lag > max_lag and shed is None:
            shed = (f"controller overloaded: the answer waited {lag:.2f} s "
                    f"(max_setup_lag {max_lag:g} s)")
        if ended_at is not None or shed is not None:
            reason = "ended_before_setup" if ended_at is not None else "shed"
            detail = ("the call ended before its recording could be set up"
                      if ended_at is not None else str(shed))
            for i, slot in enumerate(self.slots):
                s = self._new_session(i, now)
                self._ev(s, Ev.SHED, detail, now)
                slot.exhausted = True
                self._open_gap(i, self.record.answered_at, reason, detail)
            if ended_at is not None:
                self._call_ended(CallEnded(self.call.edge, self.call_id, ended_at), now)
            return self._flush()
        if down_since is not None:
            for i in range(len(self.slots)):
                self._open_gap(i, down_since, "controller_down",
                               "answered while the controller was down")
        elif lag > LATE_SETUP:  # set up late rather than never; the late part is a loss
            for i in range(len(self.slots)):
                self._open_gap(i, self.record.answered_at, "setup_late",
                               f"the answer waited {lag:.2f} s in the controller's queue")
        self._settle(now)
        return self._flush()

    def handle(self, inp: Input, now: float) -> list[Action]:
        """Feed one input; the actions to carry out, in order."""
        if isinstance(inp, CallEnded):
            self._call_ended(inp, now)
        elif isinstance(inp, CallReinvite):
            self._reinvite(inp, now)
        elif isinstance(inp, RsReply):
            self._rs_reply(inp, now)
        elif isinstance(inp, RsRequest):
            self._rs_request(inp, now)
        elif isinstance(inp, SendFailed):
            self._send_failed(inp.rs_call_id, inp.method, inp.error, now, inp.cseq)
        elif isinstance(inp, RsError):
            self._send_failed(inp.rs_call_id, inp.method, "the edge could not send it", now,
                              None)
        elif isinstance(inp, Subscribed):
            self._subscribed(inp, now)
        elif isinstance(inp, NgFailed):
            self._ng_failed(inp, now)
        elif isinstance(inp, SrsDown):
            self._srs_down(inp, now)
        elif isinstance(inp, Operator):
            self._operator(inp, now)
        elif isinstance(inp, NodeLost):
            self._node_lost(inp, now)
        elif isinstance(inp, Relocated):
            self._relocated(inp, now)
        elif isinstance(inp, EdgeLost):
            self._edge_lost(inp, now)
        self._timers(now)
        self._settle(now)
        return self._flush()

    # ------------------------------------------------------------------ plumbing
    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _flush(self) -> list[Action]:
        for s in self._dirty.values():
            self._out.append(Persist(s))
        self._dirty.clear()
        out, self._out = self._out, []
        return out

    def _touch(self, s: RecordingSession) -> None:
        self._dirty[s.session_id] = s

    def _ev(self, s: RecordingSession, ev: Ev, detail: str, now: float) -> None:
        before = s.state
        s.handle(ev, detail, now)
        self._touch(s)
        if s.srs_uri and before.value in ("inviting", "established", "paused", "terminating") \
                and not s.open:
            self.selector.closed(s.srs_uri)

    def _open_gap(self, slot: int, since: float, reason: str, detail: str) -> None:
        """From ``since`` no SRS receives the slot's media; the :class:`Loss` is emitted
        when the gap closes (a replacement session, or the call's end)."""
        sl = self.slots[slot]
        if sl.gap_since is None:
            sl.gap_since, sl.gap_reason, sl.gap_detail = since, reason, detail
            self._emit(Observe("gap_opened", 1, (reason,)))

    def _close_gap(self, slot: int, until: float, now: float, how: str) -> None:
        sl = self.slots[slot]
        if sl.gap_since is None:
            return
        self._loss(sl.session, sl.gap_reason, until - sl.gap_since,
                   f"{sl.gap_detail}; {how}" if sl.gap_detail else how, now)
        sl.gap_since, sl.gap_reason, sl.gap_detail = None, "", ""

    def _loss(self, s: RecordingSession | None, reason: str, seconds: float, detail: str,
              now: float) -> None:
        if s is not None:
            s.note(f"loss: {reason} ({seconds:.2f} s): {detail}", now, "loss")
            self._touch(s)
        self._emit(Loss(self.call_id, s.session_id if s else None, s.slot if s else None,
                        reason, round(max(0.0, seconds), 3), detail, now))

    def _roles(self, sessions: list[RecordingSession]) -> dict[str, str]:
        roles = {self.call.from_tag: "caller", self.call.to_tag: "callee"}
        roles.update({x.sub_to_tag: f"srs {x.srs_uri or '?'}" for x in sessions})
        return roles

    def _forking_since(self) -> float | None:
        """The earliest set-up of a session still forking (None: none was)."""
        ts = [s.established_at for s in self.sessions.values()
              if s.open and s.established_at is not None]
        return min(ts) if ts else None

    def _unsubscribe(self, s: RecordingSession) -> None:
        """Stop forking to ``s`` — after reading rtpengine's counters (the evidence)."""
        self._emit(QueryMedia(s.session_id, self.node, self.call_id, self._roles([s]),
                              "before unsubscribe", s.established_at))
        self._emit(Unsubscribe(s.session_id, self.node, self.call_id, s.sub_to_tag))

    def _new_session(self, slot: int, now: float) -> RecordingSession:
        assert self.group is not None
        s = RecordingSession(
            session_id=str(uuid.uuid4()), call_id=self.call_id, edge=self.call.edge,
            node=self.node, group=self.group.name, slot=slot,
            sub_to_tag=f"srs-{secrets.token_hex(6)}", created=now, updated=now,
            call=self._identity)
        self.sessions[s.session_id] = s
        self.slots[slot].session = s
        self._touch(s)
        return s

    # ------------------------------------------------------------------ slots
    def _fill(self, now: float) -> None:
        """Give every slot without an open session a new one (if the call still wants it)."""
        if not (self.live and self.wanted and self.group) or self.pause_wanted \
                or self.relocating:
            return
        for i, slot in enumerate(self.slots):
            cur = slot.session
            if slot.exhausted or (cur is not None and cur.open):
                continue
            if not self._has_candidate(i):
                self._exhaust(i, cur, "no SRS of the group left to try", now)
                continue
            s = self._new_session(i, now)
            self._ev(s, Ev.SUBSCRIBE, f"on {self.node}", now)
            self.had_subscription = True
            self._emit(Subscribe(s.session_id, self.node, self.call_id, s.sub_to_tag))

    def _avoid(self, slot: int) -> set[str]:
        others = {s.srs_uri for i, sl in enumerate(self.slots) if i != slot
                  for s in [sl.session] if s is not None and s.open and s.srs_uri}
        return others | self.slots[slot].tried

    def _has_candidate(self, slot: int) -> bool:
        assert self.group is not None
        avoid = self._avoid(slot)
        return any(s.uri not in avoid for s in self.group.servers)

    def _exhaust(self, slot: int, s: RecordingSession | None, detail: str, now: float,
                 reason: str = "no_srs") -> None:
        """No SRS is left for the slot: it stays unrecorded (the gap runs to the call's
        end), and a required group may end the call."""
        self.slots[slot].exhausted = True
        if s is not None:
            s.note(f"slot {slot} unrecorded: {detail}", now, "exhausted")
            self._touch(s)
        self._open_gap(slot, self.record.answered_at, reason, detail)
        self._required_check(now)

    def _required_check(self, now: float) -> None:
        """End the call when the group's ``required`` says it may not go on unrecorded."""
        if not self.live or self.call_ended_sent or self.group is None or not self.wanted:
            return
        req = _required(self.group)
        if req == "no":
            return
        dead = [sl.exhausted for sl in self.slots]
        if (req == "all" and any(dead)) or all(dead):
            self.call_ended_sent = True
            reason = ("recording is required and no SRS of group "
                      f"{self.group.name!r} records the call")
            self._emit(EndCall(self.call.edge, self.call_id, self.call.h_entry, self.call.h_id,
                               reason))
            for sl in self.slots:
                if sl.session is not None:
                    sl.session.note("ending the call: " + reason, now, "end_call")
                    self._touch(sl.session)

    # ------------------------------------------------------------------ set-up
    def _subscribed(self, inp: Subscribed, now: float) -> None:
        s = self.sessions.get(inp.session_id)
        if s is None or not s.open:
            return
        if s.state is State.PAUSED:  # resubscribed for a resume: offer sendonly again
            self._resume_offer(s, inp.sdp, now)
            return
        if s.state is State.RELOCATING:  # subscribed on the carrier: re-INVITE the SRS
            self._refork_offer(s, inp.sdp, now)
            return
        if s.state is not State.SUBSCRIBING:
            return
        s.offer_sdp = bytes(inp.sdp)
        try:
            rec = recording_from_call(self._call_info(), {
                "media-labels": {label: {"tag": tag} for label, tag in inp.labels.items()}})
            s.metadata = _metadata(rec)
        except (MetadataError, SipError) as exc:
            self._ev(s, Ev.ERROR, f"cannot build the metadata: {exc}", now)
            self._unsubscribe(s)
            self._exhaust(s.slot, s, f"cannot build the metadata: {exc}", now, "metadata")
            return
        s.participants = {"caller": rec.participants[0].participant_id,
                          "callee": rec.participants[1].participant_id}
        s.snapshot = rec
        s.announced_holds = frozenset()
        self._ev(s, Ev.SUBSCRIBED, f"{len(inp.labels)} streams on {self.node}", now)
        self._invite_next(s, now)

    def _invite_next(self, s: RecordingSession, now: float) -> None:
        """INVITE the next SRS for ``s`` (SUBSCRIBED), or give the slot up."""
        assert self.group is not None
        srv = self.selector.pick(self.group, self._avoid(s.slot))
        if srv is None:
            last = s.attempts[-1].outcome if s.attempts else "none tried"
            self._ev(s, Ev.EXHAUSTED, f"no SRS took the session (last: {last})", now)
            self._unsubscribe(s)
            self._exhaust(s.slot, s, f"no SRS took the session (last: {last})", now,
                          self.slots[s.slot].gap_reason or "no_srs")
            return
        self._emit(Observe("srs_selected", 1, (self.group.name, self.group.strategy)))
        d = RsDialog(call_id=new_rs_call_id(), local_uri=self.edge.src_uri,
                     remote_uri=srv.uri, contact=self.edge.contact(srv.transport),
                     transport=srv.transport)
        s.dialog, s.srs_uri = d, srv.uri
        s.attempts.append(Attempt(d.call_id, srv.uri, srv.transport, now))
        self.selector.opened(srv.uri)
        self._ev(s, Ev.INVITE, srv.uri, now)
        ctype, body = build_siprec_body(s.offer_sdp, self._current_snapshot(s))
        s.announced_holds = frozenset(self.holds)
        headers = d.invite_headers(ctype)
        s.tx = Tx("INVITE", d.invite_cseq, now + self.group.timeout, "invite")
        self._emit(SendInvite(s.session_id, self.sip_edge, d.call_id, d.request_uri(),
                              headers, body, d.invite_cseq))

    def _invite_failed(self, s: RecordingSession, outcome: str, now: float,
                       code: int | None = None) -> None:
        assert self.group is not None and s.srs_uri is not None
        s.attempts[-1].outcome = outcome
        s.tx = None
        self.slots[s.slot].tried.add(s.srs_uri)
        self._ev(s, Ev.REJECTED, f"{s.srs_uri}: {outcome}", now)
        self.selector.closed(s.srs_uri)
        if code is not None and code in self.group.no_failover_codes:
            self._ev(s, Ev.EXHAUSTED, f"no SRS took the session: {s.srs_uri} answered "
                     f"{outcome}, a no-failover code", now)
            self._unsubscribe(s)
            self._exhaust(s.slot, s, f"{s.srs_uri} answered {outcome} (no failover)", now)
            return
        self._emit(Observe("failover", 1, (self.group.name,)))
        self._invite_next(s, now)

    def _established(self, s: RecordingSession, r: RsReply, now: float) -> None:
        assert s.dialog is not None
        try:
            s.dialog.confirm_from(r)
            sdp = r.body
            if r.content_type and "multipart" in r.content_type.lower():
                sdp = parse_siprec_body(r.content_type, r.body).sdp or b""
        except SipError as exc:
            s.attempts[-1].outcome = f"{r.code} unusable: {exc}"
            s.tx = None
            self._ev(s, Ev.ANSWERED, "answer unusable", now)
            self._terminate(s, Ev.ERROR, f"SRS answer unusable: {exc}", now, bye=True)
            self.slots[s.slot].tried.add(s.srs_uri or "")
            return
        s.answer_sdp = sdp
        s.attempts[-1].outcome = f"{r.code} answered"
        s.tx = None
        s.last_alive = now
        self._ev(s, Ev.ANSWERED, s.srs_uri or "", now)
        self._emit(SubscribeAnswer(s.session_id, self.node, self.call_id, s.sub_to_tag, sdp))
        self._emit(EdgeSdp(self.sip_edge, s.dialog.call_id, s.offer_sdp))
        sl = self.slots[s.slot]
        sl.tried.clear()
        if sl.gap_since is not None:  # a replacement: the gap is over
            self._close_gap(s.slot, now, now, f"media on {s.srs_uri} again")
        else:
            start = self.record.received_at or now
            self._emit(Observe("setup_latency", max(0.0, now - start)))

    # ------------------------------------------------------------------ call events
    def _call_ended(self, ev: CallEnded, now: float) -> None:
        if not self.live:
            return
        self.live = False
        end = ev.ts or now
        self.record.ended_at = end
        self.record.end_reason = ev.describe()
        self._emit(PersistCall(self.record))
        for i, sl in enumerate(self.slots):
            s = sl.session
            if s is None:
                continue
            if s.open and not s.live and s.state is not State.TERMINATING:
                # never established: the call's media so far went unrecorded
                self._open_gap(i, self.record.answered_at, "not_established",
                               f"the call ended while the session was {s.state.value}")
            self._close_gap(i, end, now, "until the call ended")
            if s.open:
                s.media_until = end
                self._terminate(s, Ev.CALL_ENDED, ev.describe(), now, bye=True,
                                unsubscribe=False)
        for op in self._ops:
            self._emit(Reply(op.token, False, {"error": f"the call ended ({ev.describe()})"}))
        self._ops.clear()
        if self.record.record_local:
            # rtpengine finalises the metadata file when recording stops; stopping first
            # makes it final even while delete-delay holds the call
            self._emit(StopLocal(self.node, self.call_id))
        if self.lost_node is not None:
            # Kamailio sends the call's delete to the lost node only: the carrier (and any
            # other mirror) keeps the foreign call for good. Unsubscribe first, then delete
            # by Call-ID at once (FIELD-NOTES: the reverse order leaks the call)
            if self.had_subscription and self.node != self.lost_node:
                self._emit(QueryMedia(None, self.node, self.call_id,
                                      self._roles(list(self.sessions.values())), "call end",
                                  self._forking_since()))
                for s in self.sessions.values():
                    if s.node == self.node:
                        self._emit(Unsubscribe(s.session_id, self.node, self.call_id,
                                               s.sub_to_tag))
            for node in self.holders or (self.node,):
                if node != self.lost_node:
                    self._emit(DeleteCall(node, self.call_id, delete_delay=0))
        elif self.had_subscription:
            # the edge deleted the call; within delete-delay rtpengine still has its counters
            self._emit(QueryMedia(None, self.node, self.call_id,
                                  self._roles(list(self.sessions.values())), "call end",
                                  self._forking_since()))
            self._emit(DeleteCall(self.node, self.call_id))
        elif self.via is not None:  # edge lost: nobody else deletes the call
            self._emit(DeleteCall(self.node, self.call_id))

    def _reinvite(self, ev: CallReinvite, now: float) -> None:
        # the re-INVITE's sender holds the other party, who stops sending (RFC 7866 §9.1,
        # the hold example: the held party's <send> elements are omitted)
        held = OTHER.get(ev.by, "callee")
        if ev.hold:
            self.holds.add(held)
        else:
            self.holds.discard(held)
        self.hold_ts = ev.ts or now

    # ------------------------------------------------------------------ RS replies
    def _find(self, rs_call_id: str) -> RecordingSession | None:
        for s in self.sessions.values():
            if s.rs_call_id == rs_call_id:
                return s
        return None

    def _rs_reply(self, r: RsReply, now: float) -> None:
        if r.code < 200:
            return
        s = self._find(r.rs_call_id)
        if s is None or s.tx is None or s.tx.cseq != r.cseq or s.tx.method != r.method:
            self._stray_reply(r, now)
            return
        tx = s.tx
        if tx.purpose == "invite":
            if 200 <= r.code < 300:
                if s.state is State.INVITING:
                    self._established(s, r, now)
            else:
                self._invite_failed(s, f"{r.code} {r.reason}".strip(), now, r.code)
            return
        s.tx = None
        self._touch(s)
        ok = 200 <= r.code < 300
        if ok:
            s.last_alive = now
        if tx.purpose == "final":
            if r.code in (408, 481):  # the SRS has no dialog left to end
                self._closed_after_bye(s, f"final update answered {r.code}", now)
            elif not ok:
                s.note(f"final metadata update refused: {r.code} {r.reason}", now)
            else:
                # Kamailio's tm sends the ACK of this 2xx from the worker that received it,
                # after the event that brought it here: a BYE sent at once can overtake
                # it (measured under load: the SRS saw BYE, then ACK). A short wait first.
                s.tx = Tx("ACK", r.cseq, now + ACK_GAP, "ack_gap")
            return  # the BYE follows (_settle)
        if tx.purpose == "bye":
            if not ok and r.code != 481:
                self._loss(s, "bye_failed", 0.0, f"BYE to {s.srs_uri} answered "
                           f"{r.code} {r.reason}", now)
            self._closed_after_bye(s, f"BYE answered {r.code}", now)
            return
        if s.state is State.TERMINATING:  # an update answered after the call ended
            if r.code in (408, 481):
                self._closed_after_bye(s, f"{tx.method} answered {r.code}: no dialog left", now)
            else:
                s.note(f"{tx.purpose} answered {r.code} while closing", now)
            return  # _settle goes on with the final update and the BYE
        if r.code in (408, 481):  # RFC 3261 §12.2.1.2: the dialog is gone
            self._srs_lost(s, f"{tx.method} answered {r.code} {r.reason}", now,
                           s.last_alive)
            return
        if tx.purpose == "refork":
            self._refork_answered(s, r, ok, tx.sdp, now)
            return
        if tx.purpose in ("update", "snapshot"):
            if ok:
                if tx.holds is not None:
                    s.announced_holds = tx.holds
                self._ev(s, Ev.UPDATE, _PURPOSE[tx.purpose], now)
                if tx.purpose == "snapshot":
                    s.snapshot_due = False
            else:
                s.note(f"{_PURPOSE[tx.purpose]}: refused {r.code} {r.reason}", now)
                self._emit(Observe("update_refused"))
                if tx.holds is not None:  # do not loop on a refusing SRS
                    s.announced_holds = tx.holds
                s.snapshot_due = False
        elif tx.purpose == "pause":
            if ok:
                s.offer_sdp = tx.sdp
                self._ev(s, Ev.PAUSE, "paused", now)
            else:
                # RFC 3261 §14.1: a refused re-INVITE changes nothing; fork the media again
                self._emit(Subscribe(s.session_id, self.node, self.call_id, s.sub_to_tag))
                self._emit(SubscribeAnswer(s.session_id, self.node, self.call_id,
                                           s.sub_to_tag, s.answer_sdp))
                s.note(f"pause refused by the SRS: {r.code} {r.reason}", now)
                self.pause_wanted = False
                self._fail_ops("pause", f"the SRS refused the pause: {r.code} {r.reason}")
        elif tx.purpose == "resume":
            if ok:
                s.offer_sdp = tx.sdp
                s.answer_sdp = _answer_sdp(r, s.answer_sdp)
                self._emit(SubscribeAnswer(s.session_id, self.node, self.call_id,
                                           s.sub_to_tag, s.answer_sdp))
                self._emit(EdgeSdp(self.sip_edge, s.dialog.call_id if s.dialog else "",
                                   s.offer_sdp))
                self._ev(s, Ev.RESUME, "resumed", now)
            else:
                self._unsubscribe(s)
                s.note(f"resume refused by the SRS: {r.code} {r.reason}", now)
                self.pause_wanted = True
                self._fail_ops("resume", f"the SRS refused the resume: {r.code} {r.reason}")

    def _stray_reply(self, r: RsReply, now: float) -> None:
        """A reply to nothing pending: a late 2xx to an abandoned INVITE gets a BYE."""
        if r.method == "BYE" and r.rs_call_id in self._late_byes:
            self._late_byes.discard(r.rs_call_id)
            if not 200 <= r.code < 300:  # the SRS keeps a session nobody will end
                self._emit(Observe("late_answer_bye_refused"))
            return
        if r.method != "INVITE" or not 200 <= r.code < 300:
            return
        att = self._orphans.pop(r.rs_call_id, None)
        if att is None:
            return
        # the dialog is the one the INVITE began: our From tag is the one the 2xx echoes
        # (RFC 3261 §8.2.6.2), not a new one — the SRS answers a BYE with another tag 481
        d = RsDialog(call_id=att.rs_call_id, local_uri=self.edge.src_uri,
                     remote_uri=att.srs_uri, contact=self.edge.contact(att.transport),
                     transport=att.transport, local_tag=r.from_tag)
        d.cseq = r.cseq
        try:
            d.confirm_from(r)
            ruri, hdrs, cseq = d.request("BYE")
        except SipError:
            return
        self._emit(SendRequest(None, self.sip_edge, d.call_id, "BYE", ruri, d.nexthop(),
                               hdrs, b"", cseq))
        self._late_byes.add(d.call_id)
        self._emit(Observe("late_answer"))

    def _send_failed(self, rs_call_id: str, method: str, error: str, now: float,
                     cseq: int | None) -> None:
        s = self._find(rs_call_id)
        if s is None or s.tx is None or s.tx.method != method or \
                (cseq is not None and s.tx.cseq != cseq):
            return
        if s.tx.purpose == "invite":
            self._invite_failed(s, f"not sent: {error}", now)
        elif s.tx.purpose == "bye":
            s.tx = None
            self._loss(s, "bye_failed", 0.0, f"BYE not sent: {error}", now)
            self._closed_after_bye(s, "BYE not sent", now)
        else:
            s.tx = None
            s.note(f"{method} not sent: {error}", now)
            self._touch(s)
            self._fail_ops("pause" if s.state is State.ESTABLISHED else "resume",
                           f"{method} not sent: {error}")

    # ------------------------------------------------------------------ SRS requests
    def _rs_request(self, r: RsRequest, now: float) -> None:
        s = self._find(r.rs_call_id)
        if s is None or not s.open:
            return
        s.last_alive = now
        if r.method == "BYE":
            if s.live:
                s.media_until = now
                if s.state is State.ESTABLISHED and self.live:
                    self._unsubscribe(s)
                self._emit(EdgeForget(self.sip_edge, r.rs_call_id))
                s.tx = None
                self._ev(s, Ev.SRS_BYE, "the SRS ended the session", now)
                self.slots[s.slot].tried.add(s.srs_uri or "")
                if self.live and self.wanted and not self.pause_wanted:
                    self._open_gap(s.slot, now, "srs_bye", f"{s.srs_uri} sent BYE")
            elif s.state is State.TERMINATING:
                s.tx = None
                self._closed_after_bye(s, "the SRS ended the session (BYE crossed ours)", now)
            return
        if r.method in ("INVITE", "UPDATE"):
            ctype = (r.content_type or "").lower()
            if "rs-metadata-request" in ctype or b"requestsnapshot" in r.body:
                # RFC 7866 §9.2: the edge answered; a complete snapshot follows in a new
                # transaction, after the ACK for an INVITE
                s.snapshot_due = True
                s.snapshot_after_ack = r.method == "INVITE"
            elif s.live:
                s.note(f"session refresh ({r.method}) answered by the edge", now, "refresh")
            if r.body and s.live:
                self._srs_offer(s, ctype, r.body, now)
            self._touch(s)
        elif r.method == "ACK" and s.snapshot_after_ack:
            s.snapshot_after_ack = False
            self._touch(s)

    def _srs_offer(self, s: RecordingSession, ctype: str, body: bytes, now: float) -> None:
        """An SRS offer in a re-INVITE/UPDATE. If it moves the SRS's media (address/port),
        rtpengine gets a new ``subscribe answer`` (10.5 re-targets the fork); while paused
        there is no subscription and the SDP is kept for the resume."""
        try:
            sdp = parse_siprec_body(ctype, body).sdp
            if not sdp:
                return
            before, after = media_targets(s.answer_sdp), media_targets(sdp)
        except SipError as exc:
            s.note(f"unreadable SDP from the SRS: {exc}", now)
            return
        if after == before:
            return
        s.answer_sdp = sdp
        if s.state is State.ESTABLISHED:
            self._emit(SubscribeAnswer(s.session_id, self.node, self.call_id, s.sub_to_tag,
                                       sdp))
        moved = ", ".join(f"{a}:{p}" for _, a, p in after)
        was = ", ".join(f"{a}:{p}" for _, a, p in before)
        self._ev(s, Ev.UPDATE, f"SRS media moved from {was} to {moved}", now)

    # ------------------------------------------------------------------ NG results
    def _ng_failed(self, inp: NgFailed, now: float) -> None:
        s = self.sessions.get(inp.session_id)
        if s is None or not s.open:
            return
        if inp.op == "subscribe" and s.state is State.SUBSCRIBING:
            self._ev(s, Ev.ERROR, f"subscribe request failed: {inp.error}", now)
            # "gone": rtpengine does not know the call (over, or never anchored)
            self._exhaust(s.slot, s, f"subscribe request failed: {inp.error}", now,
                          "call_gone" if inp.gone else "subscribe_failed")
        elif inp.op == "subscribe_answer" and s.state is State.ESTABLISHED:
            self.slots[s.slot].tried.add(s.srs_uri or "")
            self._terminate(s, Ev.ERROR, f"rtpengine refused the SRS answer: {inp.error}", now,
                            bye=True)
            self._open_gap(s.slot, now, "answer_unusable", f"rtpengine: {inp.error}")
        elif inp.op == "subscribe" and s.state is State.RELOCATING:
            s.tx = None
            self._refork_failed(s, f"subscribe request on {self.node} failed: {inp.error}",
                                now)
        elif inp.op == "subscribe" and s.state is State.PAUSED:
            s.tx = None
            s.note(f"resubscribe for the resume failed: {inp.error}", now)
            self.pause_wanted = True
            self._fail_ops("resume", f"rtpengine: {inp.error}")
        else:
            s.note(f"{inp.op} failed: {inp.error}", now)
            self._touch(s)

    # ------------------------------------------------------------------ SRS lost
    def _srs_down(self, inp: SrsDown, now: float) -> None:
        for s in list(self.sessions.values()):
            if s.srs_uri != inp.uri or not s.open:
                continue
            if s.state is State.INVITING:
                self._abandon_invite(s)
                self._invite_failed(s, "SRS down (probes unanswered)", now)
            elif s.live:
                since = max(t for t in (inp.last_ok, s.last_alive, s.established_at, 0.0)
                            if t is not None)
                self._srs_lost(s, "SRS down (probes unanswered)", now, since)

    def _srs_lost(self, s: RecordingSession, why: str, now: float,
                  since: float | None) -> None:
        """The SRS of a live session is gone: fail the session, stop forking to it, try to
        BYE it anyway (a partition may heal), and let the slot fail over."""
        assert s.dialog is not None
        if s.tx is not None and s.tx.method == "INVITE":
            self._emit(CancelInvite(self.sip_edge, s.dialog.call_id, s.tx.cseq))
        s.tx = None
        was_paused = s.state is State.PAUSED
        s.media_until = since if since is not None else now
        self._ev(s, Ev.SRS_LOST, why, now)
        if self.live and not was_paused:
            self._unsubscribe(s)
        try:
            ruri, hdrs, cseq = s.dialog.request("BYE")
            self._emit(SendRequest(None, self.sip_edge, s.dialog.call_id, "BYE", ruri,
                                   s.dialog.nexthop(), hdrs, b"", cseq))
        except SipError:
            pass
        self._emit(EdgeForget(self.sip_edge, s.dialog.call_id))
        self.slots[s.slot].tried.add(s.srs_uri or "")
        if self.live and self.wanted and not was_paused:
            self._open_gap(s.slot, s.media_until, "srs_lost", f"{s.srs_uri}: {why}")
        if self.group is not None:
            self._emit(Observe("failover", 1, (self.group.name,)))

    # ------------------------------------------------------------------ node / edge loss
    def _node_lost(self, inp: NodeLost, now: float) -> None:
        """The call's rtpengine node stopped answering (README "After a node loss"): every
        fork on it is dead from ``inp.since``; ask the driver for the node that carries
        the call now (:class:`Relocate`) and hold every set-up until it answers."""
        if inp.node != self.node or not self.live or self.relocating:
            return
        self.relocating, self.lost_node, self.lost_since = True, inp.node, inp.since
        why = f"rtpengine node {inp.node} lost (no pong since {_hms(inp.since)})"
        for s in list(self.sessions.values()):
            if not s.open or s.state is State.TERMINATING:
                continue
            if s.state in (State.ESTABLISHED, State.RELOCATING, State.PAUSED):
                if s.state is not State.PAUSED:
                    self._open_gap(s.slot, inp.since, "node_lost", why)
                self._ev(s, Ev.NODE_LOST, why, now)
            else:  # a set-up on the lost node: redone on the carrier (the gap counted)
                self._terminate(s, Ev.ERROR, f"set-up interrupted: {why}", now, bye=True,
                                unsubscribe=False)
                if s.slot < len(self.slots) and self.wanted:
                    self._open_gap(s.slot, inp.since, "node_lost", why)
        self._emit(Relocate(self.call_id, inp.node, self.call.from_tag, self.call.to_tag))

    def _relocated(self, inp: Relocated, now: float) -> None:
        if not self.relocating:
            return
        self.relocating = False
        self.holders = inp.holders
        if not self.live:  # ended meanwhile: only the mirrors' copies are left to delete
            for node in inp.holders:
                self._emit(DeleteCall(node, self.call_id, delete_delay=0))
            return
        if inp.carrier is None:
            why = (f"no node of the set carries the call's media after the loss of "
                   f"{self.lost_node}" + (f" ({inp.error})" if inp.error else ""))
            for s in list(self.sessions.values()):
                if s.open and s.state is not State.TERMINATING:
                    self._terminate(s, Ev.ERROR, why, now, bye=True, unsubscribe=False)
            for i, sl in enumerate(self.slots):
                if not sl.exhausted:
                    self._exhaust(i, sl.session, why, now, "node_lost")
            return
        if inp.carrier == self.lost_node:
            # a false alarm (a stalled controller, a blip): the node answers and still
            # carries the call; subscribe again there all the same (the same tag replaces
            # the fork if it survived), and Kamailio's delete will reach it at the end
            self.lost_node = None
        self.node = self.record.node = inp.carrier
        self._reforking.clear()
        self._emit(PersistCall(self.record))
        for s in self.sessions.values():
            if s.open:
                s.note(f"the call is on {inp.carrier} now (offer/answer replayed)", now,
                       "relocated")
                self._touch(s)
        # _settle re-forks the relocating sessions and fills the empty slots

    def _refork(self, s: RecordingSession, now: float) -> None:
        """A relocating session with nothing pending: subscribe on the carrier (same tag)."""
        assert self.group is not None
        if s.tx is not None or s.session_id in self._reforking:
            return
        self._reforking.add(s.session_id)
        s.node = self.node
        s.tx = Tx("SUBSCRIBE", -1, now + self.group.timeout, "refork_sub")
        self.had_subscription = True
        self._touch(s)
        self._emit(Subscribe(s.session_id, self.node, self.call_id, s.sub_to_tag))

    def _refork_offer(self, s: RecordingSession, sdp: bytes, now: float) -> None:
        if s.tx is None or s.tx.purpose != "refork_sub":
            return
        s.tx = None
        try:
            offer = _sendonly_offer(s, sdp)
        except SipError as exc:
            self._refork_failed(s, f"unusable SDP from {self.node}: {exc}", now)
            return
        # RFC 3261 §14: a re-INVITE in the same recording session; the SRS keeps one
        # recording with a gap rather than a second session
        self._request(s, "INVITE", "refork", offer, None, now)

    def _refork_answered(self, s: RecordingSession, r: RsReply, ok: bool, offer: bytes,
                         now: float) -> None:
        if not ok:
            self.slots[s.slot].tried.add(s.srs_uri or "")
            self._terminate(s, Ev.ERROR, f"the SRS refused the re-fork: {r.code} {r.reason}",
                            now, bye=True)
            return  # _fill gives the slot a new session on the carrier
        s.offer_sdp = offer
        s.answer_sdp = _answer_sdp(r, s.answer_sdp)
        s.last_alive = now
        self._emit(SubscribeAnswer(s.session_id, self.node, self.call_id, s.sub_to_tag,
                                   s.answer_sdp))
        if s.dialog is not None:
            self._emit(EdgeSdp(self.sip_edge, s.dialog.call_id, s.offer_sdp))
        self._ev(s, Ev.REFORKED, f"fork re-created on {self.node}", now)
        self._close_gap(s.slot, now, now, f"media on {s.srs_uri} again through {self.node}")

    def _refork_failed(self, s: RecordingSession, why: str, now: float) -> None:
        """The fork cannot be re-created on the carrier: the media is lost for the rest of
        the call (the node_lost gap runs to its end)."""
        self._terminate(s, Ev.ERROR, why, now, bye=True, unsubscribe=False)
        self._exhaust(s.slot, s, why, now, "node_lost")

    def _edge_lost(self, inp: EdgeLost, now: float) -> None:
        """The call's edge is gone for good (README "After an edge loss"): its end will never
        be reported and no request can pass it. Stop the forks first (unsubscribe, then the
        call's delete: the order rtpengine 10.5 frees), close the recording sessions through
        a connected edge, and count the recording as cut short (``edge_lost``)."""
        if inp.edge != self.call.edge or not self.live:
            return
        self.via = inp.via
        why = (f"edge {inp.edge} lost (unreachable since {_hms(inp.since)}); the call's end "
               "cannot be observed")
        for s in list(self.sessions.values()):
            if s.state in (State.ESTABLISHED, State.SUBSCRIBING, State.SUBSCRIBED,
                           State.INVITING) or (s.state is State.RELOCATING
                                               and s.node == self.node):
                self._unsubscribe(s)
        slots = {sl.session.slot for sl in self.slots
                 if sl.session is not None and sl.session.open} if self.slots else set()
        for i in sorted(slots):
            self._loss(self.slots[i].session, "edge_lost", 0.0, why, now)
        if not slots and (self.record.record_local or self.policy_wanted):
            self._loss(None, "edge_lost", 0.0, why, now)
        for i in range(len(self.slots)):
            self._close_gap(i, now, now, "until the edge was lost")
        self._call_ended(CallEnded(inp.edge, self.call_id, now, by="controller: edge lost"),
                         now)

    # ------------------------------------------------------------------ teardown
    def _abandon_invite(self, s: RecordingSession) -> None:
        if s.dialog is None or s.tx is None or s.tx.purpose != "invite":
            return
        self._emit(CancelInvite(self.sip_edge, s.dialog.call_id, s.tx.cseq))
        att = s.attempts[-1]
        att.outcome = att.outcome or "abandoned"
        self._orphans[att.rs_call_id] = att
        s.tx = None

    def _terminate(self, s: RecordingSession, ev: Ev, reason: str, now: float, *,
                   bye: bool, unsubscribe: bool = True, force: bool = False) -> None:
        """End ``s``: the final metadata update and a BYE when it was established,
        unsubscribe while the call lives (never after it ended: the edge's delete frees
        the fork)."""
        if not s.open:
            return
        was = s.state
        if was is State.INVITING:
            self._abandon_invite(s)
            self._ev(s, ev if ev in (Ev.CALL_ENDED, Ev.STOP) else Ev.ERROR, reason, now)
        elif was in (State.NEW, State.SUBSCRIBING, State.SUBSCRIBED):
            self._ev(s, ev if ev in (Ev.CALL_ENDED, Ev.STOP) else Ev.ERROR, reason, now)
        else:  # established, paused, terminating
            if was is State.TERMINATING:
                if force:  # after a restart nothing is pending any more: close it
                    s.tx = None
                    self._ev(s, Ev.DONE, reason, now)
                return
            self._ev(s, ev, reason, now)
            if s.media_until is None:
                s.media_until = now
            if not bye:
                self._ev(s, Ev.DONE, reason, now)
            # else _pump_close sends the final update, then the BYE, once nothing is pending
        # a relocating session forks only once re-subscribed on the carrier
        forked = was is not State.RELOCATING or s.node == self.node != self.lost_node
        if unsubscribe and self.live and forked and was in (
                State.SUBSCRIBING, State.SUBSCRIBED, State.INVITING, State.ESTABLISHED,
                State.RELOCATING):
            self._unsubscribe(s)
        if not s.open and s.dialog is not None and was in (State.ESTABLISHED, State.PAUSED):
            self._emit(EdgeForget(self.sip_edge, s.dialog.call_id))

    def _pump_close(self, s: RecordingSession, now: float) -> None:
        """A terminating session with nothing pending: first the final metadata update
        (stop-time, disassociate-times) in a re-INVITE carrying the current SDP unchanged,
        then a BYE without a body. RFC 7866 §9.1 carries metadata in INVITE/UPDATE, never
        in BYE; an SRS may answer a BYE body 415 and keep the dialog (RFC 3261 §21.4.16)."""
        assert s.dialog is not None and self.group is not None
        if not s.final_sent:
            s.final_sent = True
            try:
                final = end_of_call_update(self._snapshot_now(s), datetime.fromtimestamp(
                    s.media_until or now, UTC))
                self._request(s, "INVITE", "final", s.offer_sdp, _metadata(final), now)
                return
            except MetadataError as exc:
                s.note(f"final metadata not built: {exc}", now)
        ruri, hdrs, cseq = s.dialog.request("BYE")
        s.tx = Tx("BYE", cseq, now + self.group.timeout, "bye")
        self._touch(s)
        self._emit(SendRequest(s.session_id, self.sip_edge, s.dialog.call_id, "BYE", ruri,
                               s.dialog.nexthop(), hdrs, b"", cseq))

    def _closed_after_bye(self, s: RecordingSession, detail: str, now: float) -> None:
        if s.state is State.TERMINATING:
            self._ev(s, Ev.DONE, detail, now)
        if s.dialog is not None:
            self._emit(EdgeForget(self.sip_edge, s.dialog.call_id))

    # ------------------------------------------------------------------ timers
    def _timers(self, now: float) -> None:
        for s in list(self.sessions.values()):
            tx = s.tx
            if tx is None or now < tx.deadline:
                continue
            assert self.group is not None
            if tx.purpose == "invite":
                self._abandon_invite(s)
                self._invite_failed(s, f"no answer in {self.group.timeout:g} s", now)
            elif tx.purpose == "refork_sub":
                s.tx = None
                self._refork_failed(s, f"subscribe request on {self.node}: no reply", now)
            elif tx.purpose == "resubscribe":
                s.tx = None
                s.note("resubscribe for the resume: no reply from rtpengine", now)
                self.pause_wanted = True
                self._fail_ops("resume", "rtpengine did not answer the subscribe request")
            elif tx.purpose == "final":
                assert s.dialog is not None
                self._emit(CancelInvite(self.sip_edge, s.dialog.call_id, tx.cseq))
                s.tx = None
                s.note(f"final metadata update unanswered in {self.group.timeout:g} s", now)
            elif tx.purpose == "ack_gap":
                s.tx = None  # the BYE goes now (_settle)
            elif tx.purpose == "bye":
                s.tx = None
                self._loss(s, "bye_failed", 0.0, f"BYE to {s.srs_uri}: no answer in "
                           f"{self.group.timeout:g} s", now)
                self._closed_after_bye(s, "BYE unanswered", now)
            elif s.state is State.TERMINATING:
                if tx.method == "INVITE" and s.dialog is not None:
                    self._emit(CancelInvite(self.sip_edge, s.dialog.call_id, tx.cseq))
                s.tx = None
                s.note(f"{tx.purpose} unanswered in {self.group.timeout:g} s while closing",
                       now)
            else:
                self._srs_lost(s, f"{tx.method} ({tx.purpose}) unanswered in "
                               f"{self.group.timeout:g} s", now, s.last_alive)
        for op in list(self._ops):
            if now >= op.deadline:
                self._ops.remove(op)
                self._emit(Reply(op.token, False, {"error": f"{op.op} did not complete in "
                                                   f"{self.op_timeout:g} s"}))

    # ------------------------------------------------------------------ updates
    @staticmethod
    def _snapshot(s: RecordingSession) -> Recording:
        if s.snapshot is None:  # a session loaded from the store after a restart
            s.snapshot = parse_metadata(s.metadata)
        return s.snapshot

    def _snapshot_now(self, s: RecordingSession) -> Recording:
        """The complete snapshot as things stand (RFC 7866 §9.2: holds included)."""
        held = [s.participants[r] for r in sorted(self.holds) if r in s.participants]
        return with_holds(self._snapshot(s), held) if held else self._snapshot(s)

    def _current_snapshot(self, s: RecordingSession) -> bytes:
        return s.metadata if not self.holds else _metadata(self._snapshot_now(s))

    def _settle(self, now: float) -> None:
        """After every input: open what the slots need, send what sessions owe."""
        self._fill(now)
        for s in list(self.sessions.values()):
            if s.tx is not None:
                continue
            if s.state is State.TERMINATING:
                self._pump_close(s, now)
            elif s.state is State.RELOCATING:
                if self.live and not self.relocating:
                    self._refork(s, now)
            elif s.live and self.live:
                self._pump(s, now)
        self._check_ops(now)

    def _pump(self, s: RecordingSession, now: float) -> None:
        """Start the next in-dialog transaction ``s`` owes, if any (one at a time)."""
        assert s.dialog is not None and self.group is not None
        if s.state is State.ESTABLISHED and self.pause_wanted:
            offer = bump_version(set_direction(s.offer_sdp, "inactive"))
            # RFC 7866 §7.1.1.1: stop the media first (no audio leaks), then a=inactive;
            # rtpengine 10.5 keeps forking after a=inactive, so the subscription goes
            self._unsubscribe(s)
            self._request(s, "INVITE", "pause", offer, None, now)
            return
        if s.state is State.PAUSED and not self.pause_wanted and self.wanted:
            # a fresh subscription (same tag) gives the SDP to offer; see _resume_offer
            s.tx = Tx("SUBSCRIBE", -1, now + self.group.timeout, "resubscribe")
            self._emit(Subscribe(s.session_id, self.node, self.call_id, s.sub_to_tag))
            return
        if s.snapshot_after_ack:
            return
        holds = frozenset(self.holds)
        if s.snapshot_due:
            self._request(s, "INVITE", "snapshot", s.offer_sdp, self._current_snapshot(s),
                          now, holds)
        elif holds != s.announced_holds:
            changed = holds ^ s.announced_holds
            if len(changed) == 1:
                role = next(iter(changed))
                pid = s.participants.get(role)
                if pid is None:
                    s.announced_holds = holds
                    return
                snap = self._snapshot(s)
                # RFC 7865 §6.9: the time of the change in the association tuple (the edge's)
                at = datetime.fromtimestamp(self.hold_ts or now, UTC)
                update = (hold_update(snap, pid, at) if role in holds
                          else resume_update(snap, pid, at))
                doc = _metadata(update)
            else:
                doc = self._current_snapshot(s)
            self._request(s, "INVITE", "update", s.offer_sdp, doc, now, holds)

    def _request(self, s: RecordingSession, method: str, purpose: str, sdp: bytes,
                 metadata: bytes | None, now: float, holds: frozenset[str] | None = None) -> None:
        assert s.dialog is not None and self.group is not None
        ctype, body = build_siprec_body(sdp, metadata)
        ruri, hdrs, cseq = s.dialog.request(method, ctype)
        s.tx = Tx(method, cseq, now + self.group.timeout, purpose, sdp, holds)
        self._touch(s)
        self._emit(SendRequest(s.session_id, self.sip_edge, s.dialog.call_id, method, ruri,
                               s.dialog.nexthop(), hdrs, body, cseq, sdp=sdp))

    def _resume_offer(self, s: RecordingSession, sdp: bytes, now: float) -> None:
        if s.tx is None or s.tx.purpose != "resubscribe":
            return
        s.tx = None
        try:
            offer = _sendonly_offer(s, sdp)
        except SipError as exc:
            s.note(f"resume: unusable SDP from rtpengine: {exc}", now)
            self._unsubscribe(s)
            self.pause_wanted = True
            self._fail_ops("resume", str(exc))
            return
        self._request(s, "INVITE", "resume", offer, None, now)

    # ------------------------------------------------------------------ operator
    def _operator(self, op: Operator, now: float) -> None:
        who = op.actor
        if op.op == "stop":
            self._op_stop(op, now)
            return
        if op.op == "start":
            if op.local:
                self._emit(StartLocal(self.node, self.call_id))
                self.record.record_local = True
            if op.group is None:
                self._emit(Reply(op.token, True, {"call_id": self.call_id,
                                                  "local": "started"}))
                return
            if self.group is None or op.group != self.group.name:
                if self.open_sessions():
                    self._emit(Reply(op.token, False, {
                        "error": f"already recording to group {self.group.name if self.group else '?'}",
                        "status": 409}))
                    return
                group = self.selector.groups.get(op.group)
                if group is None:
                    self._emit(Reply(op.token, False, {"error": f"unknown SRS group "
                                                       f"{op.group!r}", "status": 404}))
                    return
                self.group = group
                self.slots = [_Slot() for _ in range(group.simultaneous)]
                self.record.group, self.record.slots = group.name, group.simultaneous
                self.record.required = _required(group)
                self._emit(PersistCall(self.record))
            self.wanted = True
            for sl in self.slots:
                sl.exhausted, sl.tried = False, set()
            self._ops.append(_PendingOp(op.token, "start", now + self.op_timeout, who))
            for s in self.open_sessions():
                s.note(f"start requested by {who}", now, "operator")
                self._touch(s)
            return
        live = [s for s in self.sessions.values() if s.live]
        if not live:
            self._emit(Reply(op.token, False, {"error": f"call {self.call_id} has no "
                                               "established recording session",
                                               "status": 404}))
            return
        if op.op == "pause":
            if self.pause_wanted or any(s.state is State.PAUSED for s in live):
                self._emit(Reply(op.token, False, {"error": "already paused", "status": 409,
                                                   "state": State.PAUSED.value}))
                return
            self.pause_wanted = True
        else:
            if not self.pause_wanted and not any(s.state is State.PAUSED for s in live):
                self._emit(Reply(op.token, False, {"error": "not paused", "status": 409,
                                                   "state": live[0].state.value}))
                return
            self.pause_wanted = False
        for s in live:
            s.note(f"{op.op} requested by {who}", now, "operator")
            self._touch(s)
        self._ops.append(_PendingOp(op.token, op.op, now + self.op_timeout, who))

    def _op_stop(self, op: Operator, now: float) -> None:
        out: dict[str, object] = {"call_id": self.call_id}
        if op.local:
            self._emit(StopLocal(self.node, self.call_id))
            out["local"] = "stopped"
            if self.record.record_local:
                self._emit(Loss(self.call_id, None, None, "operator_stop_local", 0.0,
                                f"local recording stopped by {op.actor}", now))
        opened = self.open_sessions()
        if not opened and not op.local:
            self._emit(Reply(op.token, False, {"error": f"call {self.call_id} has no open "
                                               "recording session", "status": 404}))
            return
        self.wanted = False
        self.pause_wanted = False
        for s in opened:
            s.note(f"stop requested by {op.actor}", now, "operator")
            if self.policy_wanted:
                self._loss(s, "operator_stop", 0.0, f"stopped by {op.actor}", now)
            self._terminate(s, Ev.STOP, f"stopped by {op.actor}", now, bye=True)
        self._fail_ops("start", "stopped")
        if any(s.open for s in opened):  # answered once the BYEs are
            self._ops.append(_PendingOp(op.token, "stop", now + self.op_timeout, op.actor,
                                        out))
            return
        out["sessions"] = [s.summary() for s in opened]
        if opened:
            out["session"] = opened[-1].summary()
        self._emit(Reply(op.token, True, out))

    def _fail_ops(self, kind: str, error: str) -> None:
        for op in [o for o in self._ops if o.op == kind]:
            self._ops.remove(op)
            self._emit(Reply(op.token, False, {"error": error, "status": 502}))

    def _check_ops(self, now: float) -> None:
        for op in list(self._ops):
            sessions = [sl.session for sl in self.slots if sl.session is not None]
            result: tuple[bool, dict[str, object]] | None = None
            if op.op == "start":
                if any(s.state is State.ESTABLISHED for s in sessions):
                    result = (True, {})
                elif all(sl.exhausted for sl in self.slots):
                    last = next((s.reason for s in reversed(sessions) if s.reason), "see log")
                    result = (False, {"error": f"SIPREC set-up failed: {last}", "status": 502})
            elif op.op == "stop":
                if not any(s.open for s in sessions):
                    result = (True, op.extra)
            elif op.op in ("pause", "resume"):
                live = [s for s in sessions if s.live]
                want = State.PAUSED if op.op == "pause" else State.ESTABLISHED
                if not live:
                    result = (False, {"error": "the recording session was lost",
                                      "status": 502})
                elif all(s.state is want and s.tx is None for s in live):
                    result = (True, {})
            if result is not None:
                self._ops.remove(op)
                ok, extra = result
                doc: dict[str, object] = {}
                if op.op in ("pause", "resume") and sessions:
                    doc.update(sessions[-1].summary())  # the session itself, as before
                doc["call_id"] = self.call_id
                doc["sessions"] = [s.summary() for s in sessions]
                if op.op in ("start", "stop") and sessions:
                    doc["session"] = sessions[-1].summary()
                doc.update(extra)
                self._emit(Reply(op.token, ok, doc))

    # ------------------------------------------------------------------ identities
    def _call_info(self) -> CallInfo:
        c = self.call
        return CallInfo(from_header=party(c.from_display, c.from_uri),
                        to_header=party(c.to_display, c.to_uri),
                        from_tag=c.from_tag, to_tag=c.to_tag,
                        # the PAI's own name, else the From name: one person
                        p_asserted_identity=party(c.pai_display or c.from_display, c.pai)
                        if c.pai else None,
                        sip_session_id=c.session_id,
                        start_time=datetime.fromtimestamp(self.record.answered_at, UTC))

    # ------------------------------------------------------------------ restart
    def adopt(self, stored: list[RecordingSession], subscribed: set[str],
              now: float) -> list[Action]:
        """After a controller restart: take the store's open sessions of this live call.
        Established ones whose subscription rtpengine still has are kept; anything else is
        torn down and the slot set up again (the gap counted from the restart)."""
        for s in stored:
            self.sessions[s.session_id] = s
            if s.slot >= len(self.slots):
                self._terminate(s, Ev.STOP, "slot no longer in the group", now, bye=True)
                continue
            self.slots[s.slot].session = s
            if s.srs_uri and s.open and s.state is not State.SUBSCRIBED:
                self.selector.opened(s.srs_uri)
            if s.live and (s.state is State.PAUSED or s.sub_to_tag in subscribed):
                s.note("adopted after a controller restart", now, "adopt")
                self._touch(s)
                self.had_subscription = True
                if s.state is State.PAUSED:
                    self.pause_wanted = True
                continue
            if s.state is State.INVITING:
                self._abandon_invite_stored(s)
            self._terminate(s, Ev.STOP, "set-up interrupted by a controller restart", now,
                            bye=True, force=True)
            sl = self.slots[s.slot]
            sl.gap_since, sl.gap_reason = now, "controller_restart"
        self._settle(now)
        return self._flush()

    def _abandon_invite_stored(self, s: RecordingSession) -> None:
        if s.dialog is not None and s.attempts:
            self._emit(CancelInvite(self.sip_edge, s.dialog.call_id, s.dialog.invite_cseq))
            self._orphans[s.attempts[-1].rs_call_id] = s.attempts[-1]
        s.tx = None

    def end_orphaned(self, now: float) -> list[Action]:
        """The call ended while the controller was down: close what the store left open
        (BYE with the final metadata; no unsubscribe — the edge deleted the call)."""
        self.live = False
        for s in list(self.sessions.values()):
            if s.state is State.INVITING:
                self._abandon_invite_stored(s)
            self._terminate(s, Ev.CALL_ENDED, "the call ended while the controller was down",
                            now, bye=True, unsubscribe=False, force=True)
        if self.had_subscription:
            self._emit(DeleteCall(self.node, self.call_id))
        self._settle(now)
        return self._flush()
