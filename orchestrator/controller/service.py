"""``siprecctl serve``: SIPREC sessions from a Kamailio edge + rtpengine to recording servers.

Flow of one recorded call (ARCHITECTURE.md): the edge emits ``answered`` over evapi with the
policy's decision (``siprec`` group, ``record_local``); the controller asks the call's
rtpengine node for a SIPREC subscription, builds RFC 7865 metadata, has Kamailio send the
INVITE to the group's SRSs in order (``tm.t_uac_wait``), hands the SRS answer to rtpengine
(``subscribe answer``), and follows the call: hold/resume → partial metadata re-INVITE,
pause/resume → a=inactive/a=sendonly, end → BYE with final metadata + ``unsubscribe``.
In-dialog requests go out as evapi commands to the config's ``t_uac_send()``; their replies
and the SRS's own requests come back as evapi events.

Threads: one evapi reader per edge (never blocks: it resolves waiting requests and queues
call work), a pool running each call's work in order (:class:`KeyedExecutor`), the HTTP API.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from ..errors import (
    ControllerError,
    IllegalTransition,
    KamailioError,
    KamailioRpcError,
    KamailioUnreachable,
    MetadataError,
    NgError,
    NgTransportError,
    SipError,
)
from ..kamailio.evapi import EvapiClient
from ..kamailio.rpc import HttpRpcTransport, KamailioClient
from ..ng.pool import NodePool
from ..siprec import (
    CallInfo,
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
from ..site.secrets import edge_secrets
from .dialog import (
    SRC_USER,
    RsDialog,
    RsReply,
    bump_version,
    media_targets,
    new_rs_call_id,
    parse_rs_reply,
    reply_from_event,
    set_direction,
    with_origin,
)
from .metrics import Metrics
from .session import Ev as E
from .session import RecordingSession, State
from .store import DuplicateSession, SessionStore

__all__ = ["Controller", "KeyedExecutor"]

log = logging.getLogger("siprecctl.controller")
T = TypeVar("T")

IN_DIALOG_TIMEOUT = 5.0  # seconds to wait for the SRS's reply to an in-dialog request


class KeyedExecutor:
    """A thread pool that runs the tasks of one key (a call-id) one at a time, in order."""

    def __init__(self, workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="call")
        self._queues: dict[str, deque[tuple[Callable[[], Any], Future[Any]]]] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        with self._lock:
            q = self._queues.get(key)
            if q is not None:
                q.append((fn, fut))
                return fut
            self._queues[key] = deque([(fn, fut)])
        self._pool.submit(self._drain, key)
        return fut

    def _drain(self, key: str) -> None:
        while True:
            with self._lock:
                q = self._queues[key]
                if not q:
                    del self._queues[key]
                    return
                fn, fut = q[0]
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # delivered to whoever waits on the future
                    fut.set_exception(exc)
            with self._lock:
                q.popleft()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: RsReply | None = None
    error: str | None = None


@dataclass
class EdgeLink:
    """What the controller holds per Kamailio edge."""

    name: str
    rpc: KamailioClient
    evapi: EvapiClient
    host: str  # the edge's SIP address (our Contact, and From host)
    ports: dict[str, int]  # SIP port per transport

    def contact(self, transport: str) -> str:
        port = self.ports.get(transport) or next(iter(self.ports.values()))
        uri = f"sip:{SRC_USER}@{self.host}:{port}"
        return uri if transport == "udp" else f"{uri};transport={transport}"

    @property
    def src_uri(self) -> str:
        return f"sip:{SRC_USER}@{self.host}"


def _name_addr(display: Any, uri: Any) -> str:
    uri = str(uri or "sip:unknown@invalid")
    if display:
        d = str(display).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{d}" <{uri}>'
    return f"<{uri}>"


class Controller:
    """The recording controller of one site. ``start()`` connects, reconciles, serves."""

    def __init__(self, site: Any, *, store: SessionStore | None = None, workers: int = 16,
                 evapi_backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        self.site = site
        self.metrics = Metrics()
        self.store = store if store is not None else SessionStore(site.controller.store)
        self.pool = NodePool.from_site(site)
        self.groups = {g.name: g for g in site.recording.srs_groups}
        self._node_by_url = {f"udp:{n.ng.address}:{n.ng.port}": n.name for n in site.media.nodes}
        self._nodes_by_set: dict[int, list[str]] = {}
        for n in site.media.nodes:
            self._nodes_by_set.setdefault(n.set, []).append(n.name)
        self.executor = KeyedExecutor(workers)
        self.metrics.sessions_active.set_function(
            lambda: sum(1 for s in list(self.sessions.values())
                        if s.state in (State.ESTABLISHED, State.PAUSED)))
        self.sessions: dict[str, RecordingSession] = {}  # open sessions by call-id
        self._by_rs: dict[str, RecordingSession] = {}  # ... by recording-session Call-ID
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._abandoned: set[str] = set()  # RS Call-IDs given up on (timeout): BYE a late 2xx
        self._snapshot_due: set[str] = set()  # RS Call-IDs owing a snapshot after the ACK
        self.calls: dict[str, dict[str, Any]] = {}  # last answered event per live call
        self._lock = threading.RLock()
        self.edges: dict[str, EdgeLink] = {}
        for e in site.edges:
            self.edges[e.name] = self._link(e, evapi_backoff)
        self._started = False

    # ------------------------------------------------------------------ wiring
    def _link(self, edge: Any, backoff: tuple[float, float]) -> EdgeLink:
        secrets = edge_secrets(self.site, edge.name)  # owner-only files (README "Security")
        rpc = KamailioClient(HttpRpcTransport(
            f"http://{edge.jsonrpc.address}:{edge.jsonrpc.port}/RPC", secret=secrets.jsonrpc))
        name = edge.name

        def on_event(ev: dict[str, Any]) -> None:
            self._on_event(name, ev)

        def on_state(up: bool) -> None:
            self.metrics.evapi_up.labels(name).set(1 if up else 0)
            if up and self._started:
                self.metrics.evapi_reconnects.labels(name).inc()
                # events were lost while disconnected: catch up from Kamailio's dialogs
                self.executor.submit(f"reconcile:{name}", lambda: self._reconcile_edge(name))

        evapi = EvapiClient((edge.evapi.address, edge.evapi.port), on_event, on_state=on_state,
                            name=name, backoff=backoff, secret=secrets.evapi)
        ports: dict[str, int] = {}
        host = edge.listen[0].advertise or edge.listen[0].address
        for listen in edge.listen:
            ports.setdefault(listen.proto, listen.port)
        return EdgeLink(name, rpc, evapi, str(host).split(":")[0], ports)

    def start(self, *, connect_timeout: float = 5.0, reconcile: bool = True) -> None:
        """Connect to every edge, reconcile the store with the daemons, then follow events."""
        for link in self.edges.values():
            self.metrics.evapi_up.labels(link.name).set(0)
            link.evapi.start()
        for link in self.edges.values():
            if not link.evapi.wait_connected(connect_timeout):
                log.warning("edge %s: evapi not connected yet; retrying in the background",
                            link.name)
        if reconcile:
            self.reconcile()
        self._started = True

    def close(self) -> None:
        self._started = False
        for link in self.edges.values():
            link.evapi.close()
        self.executor.shutdown()
        for link in self.edges.values():
            link.rpc.close()
        self.pool.close()
        self.store.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ events
    def _on_event(self, edge: str, ev: dict[str, Any]) -> None:
        kind = str(ev.get("event", "?"))
        self.metrics.events.labels(edge, kind).inc()
        received = time.monotonic()
        call_id = str(ev.get("call_id", ""))
        if kind == "rs_reply":
            self._on_rs_reply(edge, ev)
        elif kind == "rs_error":
            with self._lock:
                for (cid, _cseq), p in list(self._pending.items()):
                    if cid == call_id:
                        p.error = f"t_uac_send {ev.get('method')} failed at the edge"
                        p.done.set()
        elif kind == "rs_request":
            s = self._by_rs.get(call_id)
            if s is None:
                log.info("edge %s: %s for unknown recording session %s", edge,
                         ev.get("method"), call_id)
                return
            self.executor.submit(s.call_id, lambda: self._rs_request(s, ev))
        elif kind in ("answered", "reinvite", "ended", "failed"):
            handler = {"answered": self._answered, "reinvite": self._reinvite,
                       "ended": self._ended, "failed": self._ended}[kind]
            self.executor.submit(call_id, lambda: self._guard(handler, edge, ev, received))
        else:
            log.debug("edge %s: ignoring event %s", edge, kind)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("handling %s failed", getattr(fn, "__name__", fn))

    def _on_rs_reply(self, edge: str, ev: dict[str, Any]) -> None:
        call_id = str(ev.get("call_id", ""))
        try:
            code, cseq = int(ev.get("code", 0)), int(ev.get("cseq", 0))
            reply = reply_from_event(ev)
        except (ValueError, SipError) as exc:
            log.error("edge %s: malformed rs_reply event: %s", edge, exc)
            return
        if code < 200:
            return
        with self._lock:
            p = self._pending.get((call_id, cseq))
            abandoned = call_id in self._abandoned
        if p is not None:
            p.reply = reply
            p.done.set()
        elif abandoned and ev.get("method") == "INVITE" and 200 <= code < 300:
            # an SRS answered after we gave up on it: end that session at once
            self.executor.submit(f"orphan:{call_id}",
                                 lambda: self._bye_orphan(edge, call_id, cseq, reply))

    # ------------------------------------------------------------------ call events
    def _answered(self, edge: str, ev: dict[str, Any], received: float) -> None:
        call_id = str(ev["call_id"])
        with self._lock:
            self.calls[call_id] = dict(ev, edge=edge)
        group = ev.get("siprec")
        if group:
            self._setup(edge, ev, str(group), received)

    def _reinvite(self, edge: str, ev: dict[str, Any], received: float) -> None:
        s = self.sessions.get(str(ev["call_id"]))
        if s is None or s.state not in (State.ESTABLISHED, State.PAUSED):
            return
        # the re-INVITE's sender holds the other party, who stops sending (RFC 7866 §9.1,
        # the hold example: the held party's <send> elements are omitted)
        held = "callee" if ev.get("by") == "caller" else "caller"
        pid = s.participants.get(held)
        if pid is None:
            return
        snapshot = parse_metadata(s.metadata)
        update = hold_update(snapshot, pid) if ev.get("hold") else resume_update(snapshot, pid)
        what = f"{'hold' if ev.get('hold') else 'resume'} of the {held}"
        # kept whether or not the SRS takes the update: a later snapshot tells the truth
        s.held = sorted(set(s.held) | {pid}) if ev.get("hold") else \
            [p for p in s.held if p != pid]
        self._send_update(s, build_metadata(update), what)

    def _ended(self, edge: str, ev: dict[str, Any], received: float) -> None:
        call_id = str(ev["call_id"])
        with self._lock:
            call = self.calls.pop(call_id, None)
        s = self.sessions.get(call_id)
        if s is not None:
            self._terminate(s, E.CALL_ENDED, f"call {ev.get('event')}"
                            + (f" by {ev['by']}" if ev.get("by") else "")
                            + (f" ({ev['code']})" if ev.get("code") else ""))
        if call is not None and call.get("record_local") and ev.get("event") == "ended":
            # rtpengine finalises the files when the call is deleted; stopping first makes
            # the metadata file final even while delete-delay holds the call
            node = self._node_for(call)
            if node is not None:
                try:
                    self.pool.client(node).stop_recording(call_id)
                except (NgError, NgTransportError) as exc:
                    log.debug("call %s: stop recording: %s", call_id, exc)

    # ------------------------------------------------------------------ set-up
    def _node_for(self, call: dict[str, Any]) -> str | None:
        node = self._node_by_url.get(str(call.get("rtpengine", "")))
        if node is not None:
            return node
        edge = next((e for e in self.site.edges if e.name == call.get("edge")), None)
        names = self._nodes_by_set.get(edge.media_set if edge else 0) or []
        return names[0] if len(names) == 1 else None

    def _setup(self, edge: str, ev: dict[str, Any], group_name: str,
               received: float | None = None) -> RecordingSession | None:
        call_id = str(ev["call_id"])
        if call_id in self.sessions:
            return self.sessions[call_id]  # never a second SRS session for a call
        group = self.groups.get(group_name)
        if group is None:
            log.error("call %s: SRS group %r is not in the site", call_id, group_name)
            self.metrics.failures.labels("unknown_group").inc()
            return None
        node = self._node_for(dict(ev, edge=edge))
        if node is None:
            log.error("call %s: cannot tell its rtpengine node (%s)", call_id, ev.get("rtpengine"))
            self.metrics.failures.labels("unknown_node").inc()
            return None
        s = RecordingSession(
            session_id=str(uuid.uuid4()), call_id=call_id, edge=edge, node=node,
            group=group_name, from_tag=str(ev.get("from_tag", "")),
            to_tag=str(ev.get("to_tag", "")), sub_to_tag=f"srs-{secrets.token_hex(6)}",
            call={k: ev.get(k) for k in ("from", "to", "from_display", "to_display", "pai",
                                         "ruri", "trunk", "rule", "headers", "h_entry",
                                         "h_id", "rtpengine")})
        try:
            self.store.save(s)
        except DuplicateSession:
            log.warning("call %s: already has an open session in the store", call_id)
            return None
        with self._lock:
            self.sessions[call_id] = s
        ng = self.pool.client(node)
        try:
            sub = ng.subscribe_request(call_id, all=True, siprec=True, to_tag=s.sub_to_tag)
            s.offer_sdp = bytes(sub.sdp)
            rec = recording_from_call(self._call_info(s), {"media-labels": {
                label: {"tag": m.tag} for label, m in sub.media_labels.items()}})
            s.metadata = build_metadata(rec)
            s.participants = {"caller": rec.participants[0].participant_id,
                              "callee": rec.participants[1].participant_id}
        except (NgError, NgTransportError, MetadataError, SipError) as exc:
            self._fail(s, f"subscribe request failed: {exc}", "subscribe", group.required)
            return s
        s.handle(E.SUBSCRIBED, f"{len(sub.media_labels)} streams on {node}")
        self.store.save(s)
        reason = "no SRS configured"
        for idx in range(len(group.servers)):
            srv = group.servers[idx]
            link = self.edges[edge]
            s.dialog = RsDialog(call_id=new_rs_call_id(), local_uri=link.src_uri,
                                remote_uri=srv.uri, contact=link.contact(srv.transport),
                                transport=srv.transport)
            s.srs_index, s.srs_uri = idx, srv.uri
            s.handle(E.INVITE, srv.uri)
            with self._lock:
                self._by_rs[s.dialog.call_id] = s
            self.store.save(s)
            ctype, body = build_siprec_body(s.offer_sdp, s.metadata)
            reply, reason = self._invite(link, s.dialog, ctype, body, group.timeout)
            if reply is not None and 200 <= reply.code < 300:
                self._established(s, reply, received)
                return s
            code = reply.code if reply is not None else None
            s.handle(E.REJECTED, reason)
            self.store.save(s)
            if code is not None and code in group.no_failover_codes:
                log.warning("call %s: %s answered %s, listed as no-failover", call_id, srv.uri,
                            code)
                break
            if idx + 1 < len(group.servers):
                self.metrics.failovers.labels(group_name).inc()
                log.warning("call %s: SRS %s failed (%s); trying the next", call_id, srv.uri,
                            reason)
        self._fail(s, f"no SRS took the session (last: {reason})", "no_srs", group.required)
        return s

    def _call_info(self, s: RecordingSession) -> CallInfo:
        c = s.call
        return CallInfo(from_header=_name_addr(c.get("from_display"), c.get("from")),
                        to_header=_name_addr(c.get("to_display"), c.get("to")),
                        from_tag=s.from_tag, to_tag=s.to_tag,
                        p_asserted_identity=str(c["pai"]) if c.get("pai") else None,
                        start_time=datetime.now(UTC))

    def _invite(self, link: EdgeLink, dialog: RsDialog, ctype: str, body: bytes,
                timeout: float) -> tuple[RsReply | None, str]:
        """Send the INVITE through ``tm.t_uac_wait``: (final reply or None, reason)."""
        hdrs = dialog.invite_headers(ctype)
        try:
            r = link.rpc.call("tm.t_uac_wait", "INVITE", dialog.request_uri(), ".", ".", hdrs,
                              body.decode("utf-8"), timeout=timeout)
        except KamailioUnreachable:
            # stop tm's retransmissions; a 2xx arriving later is BYEd (see _on_rs_reply)
            with self._lock:
                self._abandoned.add(dialog.call_id)
            try:
                link.rpc.call("tm.cancel", dialog.call_id, str(dialog.invite_cseq), timeout=2)
            except KamailioError as exc:
                log.debug("tm.cancel %s: %s", dialog.call_id, exc)
            self.metrics.failures.labels("srs_timeout").inc()
            return None, f"no answer from {dialog.remote_uri} in {timeout:g} s"
        except KamailioRpcError as exc:
            self.metrics.failures.labels("srs_transport").inc()
            return None, f"Kamailio could not send the INVITE: {exc.rpc_message}"
        try:
            code, reason = int(r[0]), str(r[1])
        except (TypeError, ValueError, IndexError) as exc:
            return None, f"unreadable t_uac_wait result: {exc}"
        if not 200 <= code < 300:
            self.metrics.failures.labels(f"srs_{code // 100}xx").inc()
            # a final failure is all we need; its headers are not always a full block
            return RsReply(code, reason, None, None, None, None, b""), f"{code} {reason}"
        try:
            reply = parse_rs_reply(code, reason, str(r[5]) if len(r) > 5 else "")
        except SipError as exc:
            return None, f"unreadable 2xx from the SRS: {exc}"
        return reply, f"{code} {reason}"

    def _established(self, s: RecordingSession, reply: RsReply, received: float | None) -> bool:
        assert s.dialog is not None
        try:
            s.dialog.confirm(reply)
            sdp = reply.body
            if reply.content_type and "multipart" in reply.content_type.lower():
                sdp = parse_siprec_body(reply.content_type, reply.body).sdp
            s.answer_sdp = sdp
            self.pool.client(s.node).subscribe_answer(s.call_id, s.sub_to_tag, sdp)
        except (SipError, NgError, NgTransportError) as exc:
            log.error("call %s: SRS answer unusable: %s", s.call_id, exc)
            s.handle(E.ANSWERED, "answer unusable")
            self._terminate(s, E.ERROR, f"SRS answer unusable: {exc}")
            self.metrics.failures.labels("answer_unusable").inc()
            return False
        s.handle(E.ANSWERED, s.srs_uri or "")
        self.store.save(s)
        self._edge_cmd(s, {"cmd": "sdp", "sdp": s.offer_sdp.decode()})
        if received is not None:
            self.metrics.setup_latency.observe(time.monotonic() - received)
        self.metrics.sessions_total.labels("established").inc()
        log.info("call %s: recording on %s (session %s)", s.call_id, s.srs_uri, s.session_id)
        return True

    def _fail(self, s: RecordingSession, reason: str, metric: str, required: bool) -> None:
        log.error("call %s: recording failed: %s", s.call_id, reason)
        self.metrics.failures.labels(metric).inc()
        self.metrics.sessions_total.labels("failed").inc()
        if s.state is State.SUBSCRIBED:
            self._unsubscribe(s)
        s.reason = reason
        s.handle(E.EXHAUSTED if s.state is State.SUBSCRIBED else E.ERROR, reason)
        self.store.save(s)
        with self._lock:
            self.sessions.pop(s.call_id, None)
        if required:
            self._end_call(s, reason)

    def _end_call(self, s: RecordingSession, reason: str) -> None:
        """Recording is required and impossible: end the call (dlg.end_dlg)."""
        link = self.edges[s.edge]
        h_entry, h_id = s.call.get("h_entry"), s.call.get("h_id")
        log.error("call %s: ending the call: recording is required and failed (%s)",
                  s.call_id, reason)
        try:
            if h_entry is None or h_id is None:
                raise ControllerError("the call event has no dialog id (h_entry/h_id)")
            link.rpc.call("dlg.end_dlg", int(h_entry), int(h_id))
            self.metrics.failures.labels("call_ended_required").inc()
        except (KamailioError, ControllerError) as exc:
            log.error("call %s: could not end the call: %s", s.call_id, exc)

    # ------------------------------------------------------------------ in-dialog
    def _edge_cmd(self, s: RecordingSession, cmd: dict[str, Any]) -> None:
        assert s.dialog is not None
        try:
            self.edges[s.edge].evapi.send(dict(cmd, call_id=s.dialog.call_id))
        except KamailioUnreachable as exc:
            log.warning("call %s: %s", s.call_id, exc)

    def _uac(self, s: RecordingSession, method: str, body: bytes = b"",
             content_type: str | None = None, sdp: bytes | None = None,
             timeout: float = IN_DIALOG_TIMEOUT) -> RsReply:
        """Send an in-dialog request through the edge and wait for its final reply."""
        assert s.dialog is not None
        ruri, hdrs, cseq = s.dialog.request(method, content_type if body else None)
        key = (s.dialog.call_id, cseq)
        p = _Pending()
        with self._lock:
            self._pending[key] = p
        cmd: dict[str, Any] = {"cmd": "uac", "call_id": s.dialog.call_id, "method": method,
                               "ruri": ruri, "nexthop": s.dialog.nexthop(), "headers": hdrs,
                               "body": body.decode("utf-8")}
        if sdp is not None:
            cmd["sdp"] = sdp.decode()
        try:
            self.edges[s.edge].evapi.send(cmd)
            if not p.done.wait(timeout):
                raise ControllerError(f"{method} to {s.srs_uri}: no reply in {timeout:g} s")
            if p.error:
                raise ControllerError(f"{method} to {s.srs_uri}: {p.error}")
            assert p.reply is not None
            return p.reply
        finally:
            with self._lock:
                self._pending.pop(key, None)
            self.store.save(s)  # the CSeq moved

    def _reinvite_srs(self, s: RecordingSession, sdp: bytes, metadata: bytes | None,
                      what: str) -> RsReply:
        ctype, body = build_siprec_body(sdp, metadata)
        reply = self._uac(s, "INVITE", body, ctype, sdp=sdp)
        if not 200 <= reply.code < 300:
            raise ControllerError(f"re-INVITE ({what}) answered {reply.code} {reply.reason}")
        return reply

    def _send_update(self, s: RecordingSession, metadata: bytes, what: str) -> None:
        try:
            self._reinvite_srs(s, s.offer_sdp, metadata, what)
        except (ControllerError, KamailioUnreachable) as exc:
            log.error("call %s: metadata update (%s) failed: %s", s.call_id, what, exc)
            self.metrics.failures.labels("update").inc()
            return
        s.handle(E.UPDATE, what)
        self.store.save(s)

    def _rs_request(self, s: RecordingSession, ev: dict[str, Any]) -> None:
        method = str(ev.get("method", ""))
        ctype = str(ev.get("content_type", "")).lower()
        body = str(ev.get("body", ""))
        assert s.dialog is not None
        rs = s.dialog.call_id
        if method == "BYE":
            if s.open and s.state is not State.TERMINATING:
                self._terminate(s, E.SRS_BYE, "the SRS ended the session", bye=False)
        elif method in ("INVITE", "UPDATE"):
            snapshot = "rs-metadata-request" in ctype or "requestsnapshot" in body
            if snapshot:
                # RFC 7866 §9.2: answered by the edge; a complete snapshot follows in a new
                # transaction, after the ACK for an INVITE
                if method == "UPDATE":
                    self._send_snapshot(s)
                else:
                    self._snapshot_due.add(rs)
            elif s.state in (State.ESTABLISHED, State.PAUSED):
                s.handle(E.UPDATE, f"session refresh ({method}) answered by the edge")
                self.store.save(s)
            if body and s.state in (State.ESTABLISHED, State.PAUSED):
                self._srs_offer(s, ctype, body.encode("utf-8", "surrogateescape"))
        elif method == "ACK" and rs in self._snapshot_due:
            self._snapshot_due.discard(rs)
            self._send_snapshot(s)

    def _srs_offer(self, s: RecordingSession, ctype: str, body: bytes) -> None:
        """An SRS offer in a re-INVITE/UPDATE. The edge answered it with our current SDP;
        if the SRS now receives elsewhere (another address or port, e.g. a move to another
        media node), rtpengine is told with a new ``subscribe answer`` (10.5 re-targets the
        fork on a repeated subscribe answer). While paused there is no subscription: the
        SDP is kept for the resume."""
        try:
            sdp = parse_siprec_body(ctype, body).sdp
            if not sdp:
                return
            before, after = media_targets(s.answer_sdp), media_targets(sdp)
        except SipError as exc:
            log.warning("call %s: unreadable SDP from the SRS: %s", s.call_id, exc)
            return
        if after == before:
            return
        s.answer_sdp = sdp
        moved = ", ".join(f"{a}:{p}" for _, a, p in after)
        if s.state is State.ESTABLISHED:
            try:
                self.pool.client(s.node).subscribe_answer(s.call_id, s.sub_to_tag, sdp)
            except (NgError, NgTransportError) as exc:
                log.error("call %s: the SRS moved its media to %s, but rtpengine refused "
                          "it: %s", s.call_id, moved, exc)
                self.metrics.failures.labels("srs_move_refused").inc()
                return
        s.handle(E.UPDATE, f"SRS media moved from {', '.join(f'{a}:{p}' for _, a, p in before)} "
               f"to {moved}")
        self.store.save(s)
        log.info("call %s: SRS media moved to %s", s.call_id, moved)

    def _send_snapshot(self, s: RecordingSession) -> None:
        if s.state not in (State.ESTABLISHED, State.PAUSED):
            return
        doc = s.metadata
        if s.held:
            try:
                doc = build_metadata(with_holds(parse_metadata(s.metadata), s.held))
            except MetadataError as exc:
                log.warning("call %s: snapshot with the holds refused (%s); sending the "
                            "initial one", s.call_id, exc)
        self._send_update(s, doc, "complete snapshot requested by the SRS")

    def _unsubscribe(self, s: RecordingSession) -> None:
        try:
            self.pool.client(s.node).unsubscribe(s.call_id, s.sub_to_tag)
        except NgError as exc:
            # the call (and with it the subscription) may already be gone from rtpengine
            log.debug("call %s: unsubscribe: %s", s.call_id, exc)
        except NgTransportError as exc:
            log.warning("call %s: unsubscribe: %s", s.call_id, exc)

    def _terminate(self, s: RecordingSession, event: E, reason: str, *, bye: bool = True) -> None:
        """End the recording session: BYE with final metadata, unsubscribe, forget."""
        if not s.open:
            return
        was = s.state
        if was is State.NEW:
            s.handle(E.CALL_ENDED if event is E.CALL_ENDED else E.STOP, reason)
        else:
            if was is State.INVITING:
                s.handle(E.ERROR, reason)
            else:
                s.handle(event, reason)
            if bye and was in (State.ESTABLISHED, State.PAUSED):
                try:
                    final = end_of_call_update(parse_metadata(s.metadata), datetime.now(UTC))
                    body = build_metadata(final)
                    reply = self._uac(s, "BYE", body, "application/rs-metadata+xml")
                    if reply.code >= 300:
                        log.warning("call %s: BYE to the SRS answered %d", s.call_id,
                                    reply.code)
                except (ControllerError, KamailioUnreachable, MetadataError) as exc:
                    log.warning("call %s: BYE to the SRS: %s", s.call_id, exc)
            self._unsubscribe(s)
            if s.dialog is not None:
                self._edge_cmd(s, {"cmd": "forget"})
            if s.state is State.TERMINATING:
                s.handle(E.DONE, reason)
        if s.reason is None:
            s.reason = reason
        self.store.save(s)
        with self._lock:
            self.sessions.pop(s.call_id, None)
        log.info("call %s: recording session %s closed: %s", s.call_id, s.session_id, reason)

    def _bye_orphan(self, edge: str, rs_call_id: str, cseq: int, reply: RsReply) -> None:
        s = self._by_rs.get(rs_call_id)
        if s is None or s.dialog is None or s.dialog.call_id != rs_call_id:
            link = self.edges[edge]
            d = RsDialog(call_id=rs_call_id, local_uri=link.src_uri,
                         remote_uri=reply.contact or "sip:invalid", contact=link.contact("udp"))
        else:
            d = RsDialog.from_dict(s.dialog.to_dict())
        d.cseq = cseq
        try:
            d.confirm(reply)
            ruri, hdrs, _ = d.request("BYE")
            self.edges[edge].evapi.send({"cmd": "uac", "call_id": rs_call_id, "method": "BYE",
                                         "ruri": ruri, "headers": hdrs, "body": ""})
            log.warning("late 2xx from %s for abandoned session %s: sent BYE", reply.contact,
                        rs_call_id)
            self.metrics.failures.labels("late_answer").inc()
        except (SipError, KamailioUnreachable) as exc:
            log.error("cannot BYE the late-answered session %s: %s", rs_call_id, exc)

    # ------------------------------------------------------------------ operator actions
    def _session(self, call_id: str) -> RecordingSession:
        s = self.sessions.get(call_id)
        if s is None:
            raise ControllerError(f"call {call_id} has no open recording session")
        return s

    def _run(self, call_id: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
        return self.executor.submit(call_id, fn).result(timeout)

    def start_recording(self, call_id: str, *, group: str | None = None,
                        local: bool = False, actor: str = "operator") -> dict[str, Any]:
        """Record a live call: SIPREC to ``group`` (default: the site's), and/or locally."""
        def go() -> dict[str, Any]:
            call = self.calls.get(call_id)
            if call is None:
                raise ControllerError(f"call {call_id} is not a live call this controller saw")
            out: dict[str, Any] = {"call_id": call_id}
            if local:
                node = self._node_for(call)
                if node is None:
                    raise ControllerError(f"call {call_id}: unknown rtpengine node")
                self.pool.client(node).start_recording(call_id)
                out["local"] = "started"
            g = group or (None if local else (call.get("siprec")
                                              or self.site.recording.siprec))
            if g:
                s = self._setup(str(call["edge"]), call, g, None)
                if s is None or s.state is not State.ESTABLISHED:
                    raise ControllerError(f"call {call_id}: SIPREC set-up failed: "
                                          f"{s.reason if s else 'see the log'}")
                out["session"] = s.summary()
            return out
        return self._run(call_id, go)

    def stop_recording(self, call_id: str, *, local: bool = False,
                       actor: str = "operator") -> dict[str, Any]:
        def go() -> dict[str, Any]:
            out: dict[str, Any] = {"call_id": call_id}
            if local:
                call = self.calls.get(call_id) or {}
                node = self._node_for(call)
                if node is None:
                    raise ControllerError(f"call {call_id}: unknown rtpengine node")
                self.pool.client(node).stop_recording(call_id)
                out["local"] = "stopped"
            s = self.sessions.get(call_id)
            if s is not None:
                self._terminate(s, E.STOP, f"stopped by {actor}")
                out["session"] = s.summary()
            elif not local:
                raise ControllerError(f"call {call_id} has no open recording session")
            return out
        return self._run(call_id, go)

    def _resubscribe(self, s: RecordingSession) -> bytes:
        """A fresh subscription with the same tag; its SDP carrying our o= line, bumped."""
        sub = self.pool.client(s.node).subscribe_request(s.call_id, all=True, siprec=True,
                                                         to_tag=s.sub_to_tag)
        return bump_version(with_origin(bytes(sub.sdp), s.offer_sdp))

    def pause(self, call_id: str, *, actor: str = "operator") -> dict[str, Any]:
        """RFC 7866 §7.1.1.1 pause: stop the media first (no audio leaks), then a=inactive.

        rtpengine 10.5 keeps forking after a ``subscribe answer``/``request`` with
        a=inactive, and ``block media`` silences the call itself (both measured), so the
        pause removes the subscription; resume subscribes again with the same tag."""
        def go() -> dict[str, Any]:
            s = self._session(call_id)
            if s.state is not State.ESTABLISHED:
                raise IllegalTransition("recording session", s.state.value, E.PAUSE.value)
            ng = self.pool.client(s.node)
            ng.unsubscribe(call_id, s.sub_to_tag)
            offer = bump_version(set_direction(s.offer_sdp, "inactive"))
            try:
                self._reinvite_srs(s, offer, None, "pause")
            except (ControllerError, KamailioUnreachable):
                # the SRS still records: fork the media again
                self._resubscribe(s)
                ng.subscribe_answer(call_id, s.sub_to_tag, s.answer_sdp)
                raise
            s.offer_sdp = offer
            s.handle(E.PAUSE, actor)
            self.store.save(s)
            return s.summary()
        return self._run(call_id, go)

    def resume(self, call_id: str, *, actor: str = "operator") -> dict[str, Any]:
        def go() -> dict[str, Any]:
            s = self._session(call_id)
            if s.state is not State.PAUSED:
                raise IllegalTransition("recording session", s.state.value, E.RESUME.value)
            offer = set_direction(self._resubscribe(s), "sendonly")
            try:
                reply = self._reinvite_srs(s, offer, None, "resume")
            except (ControllerError, KamailioUnreachable):
                self._unsubscribe(s)  # stay paused: nothing may flow
                raise
            s.offer_sdp = offer
            s.answer_sdp = reply.body or s.answer_sdp
            self.pool.client(s.node).subscribe_answer(call_id, s.sub_to_tag, s.answer_sdp)
            s.handle(E.RESUME, actor)
            self.store.save(s)
            return s.summary()
        return self._run(call_id, go)

    # ------------------------------------------------------------------ reconciliation
    def _dialogs(self, link: EdgeLink) -> dict[str, dict[str, Any]]:
        """Confirmed dialogs of an edge by call-id, from ``dlg.list``."""
        out: dict[str, dict[str, Any]] = {}
        for d in link.rpc.call("dlg.list", timeout=5.0) or []:
            if not isinstance(d, dict):
                continue
            call_id = d.get("call-id")
            if not call_id or int(d.get("state", 0)) not in (3, 4):  # confirmed (+ACK)
                continue
            variables: dict[str, Any] = {}
            for v in d.get("variables") or []:
                if isinstance(v, dict):
                    variables.update(v)
            caller, callee = d.get("caller") or {}, d.get("callee") or {}
            ev = {"event": "answered", "call_id": call_id, "edge": link.name,
                  "h_entry": d.get("h_entry"), "h_id": d.get("h_id"),
                  "from_tag": caller.get("tag") or variables.get("from_tag"),
                  "to_tag": callee.get("tag") or variables.get("to_tag"),
                  "from": variables.get("from") or d.get("from_uri"),
                  "to": variables.get("to") or d.get("to_uri"),
                  "from_display": variables.get("from_display"),
                  "to_display": variables.get("to_display"), "pai": variables.get("pai"),
                  "rtpengine": variables.get("rtpengine"), "rule": variables.get("rule"),
                  "siprec": variables.get("siprec") or None,
                  "record_local": variables.get("rec_local") == "1"}
            out[str(call_id)] = ev
        return out

    def reconcile(self) -> dict[str, int]:
        """Bring the store in line with Kamailio's dialogs and rtpengine (after a restart)."""
        totals = {"adopted": 0, "closed": 0, "restarted": 0, "started": 0}
        for name in self.edges:
            for k, v in self._reconcile_edge(name).items():
                totals[k] += v
        log.info("reconciled: %s", totals)
        return totals

    def _reconcile_edge(self, edge: str) -> dict[str, int]:
        link = self.edges[edge]
        counts = {"adopted": 0, "closed": 0, "restarted": 0, "started": 0}
        try:
            live = self._dialogs(link)
        except KamailioError as exc:
            log.error("edge %s: cannot list dialogs, not reconciling: %s", edge, exc)
            return counts
        for call_id, ev in live.items():
            with self._lock:
                self.calls.setdefault(call_id, ev)
        for s in self.store.open_sessions():
            if s.edge != edge or s.call_id in self.sessions:
                continue
            outcome = self._run(s.call_id, partial(self._reconcile_session, s, live))
            counts[outcome] += 1
        for call_id, ev in live.items():
            if ev.get("siprec") and call_id not in self.sessions:
                s2 = self._run(call_id, partial(self._setup, edge, ev, str(ev["siprec"]),
                                                None))
                if s2 is not None and s2.state is State.ESTABLISHED:
                    counts["started"] += 1
        return counts

    def _reconcile_session(self, s: RecordingSession, live: dict[str, dict[str, Any]]) -> str:
        if s.dialog is not None:
            with self._lock:
                self._by_rs[s.dialog.call_id] = s
                self.sessions[s.call_id] = s
        if s.call_id not in live:
            self._terminate(s, E.CALL_ENDED, "the call ended while the controller was down")
            return "closed"
        if s.state in (State.ESTABLISHED, State.PAUSED) and self._subscribed(s):
            log.info("call %s: recording session %s adopted", s.call_id, s.session_id)
            return "adopted"
        # set-up interrupted (or the subscription vanished): tear down what may exist,
        # then record the call again, once
        if s.state is State.INVITING and s.dialog is not None:
            with self._lock:
                self._abandoned.add(s.dialog.call_id)
        self._terminate(s, E.STOP, "set-up interrupted by a controller restart")
        ev = live[s.call_id]
        if ev.get("siprec"):
            self._setup(s.edge, ev, str(ev["siprec"]), None)
        return "restarted"

    def _subscribed(self, s: RecordingSession) -> bool:
        try:
            info = self.pool.client(s.node).query(s.call_id)
        except (NgError, NgTransportError):
            return False
        return s.sub_to_tag in info.tags

    # ------------------------------------------------------------------ views
    def session_views(self, *, open_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        if open_only:
            return [s.summary() for s in self.store.open_sessions()]
        return [s.summary() for s in self.store.recent(limit)]

    def health(self) -> dict[str, Any]:
        return {"edges": {n: link.evapi.connected for n, link in self.edges.items()},
                "open_sessions": len(self.sessions), "live_calls": len(self.calls)}
