"""The reference SRS's sessions: by id and by dialog, what their bodies carry, their
metadata, and how they end."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import SipError
from ...sip import SipMessage, tag_of
from ...siprec.multipart import (
    METADATA_TYPES,
    SNAPSHOT_REQUEST_TYPE,
    parse_content_type,
    parse_multipart,
    parse_siprec_body,
)
from .checks import metadata_datamode
from .config import SrsConfig
from .records import write_record
from .session import SrsSession, next_state
from .state import Call
from .streams import Streams

__all__ = ["SessionBook", "split_body"]

log = logging.getLogger(__name__)


def split_body(msg: SipMessage) -> tuple[bytes | None, bytes | None, str | None]:
    """``(sdp, metadata, problem)`` of a request body; problem is None if it is usable.

    ``problem`` mentions "no SDP" when the body is fine but carries no offer.
    """
    if not msg.body.strip():
        return None, None, "no SDP offer: the request has no body"
    ctype = msg.header("content-type")
    if ctype is None:
        return None, None, "body without Content-Type"
    mime, _ = parse_content_type(ctype)
    if mime == SNAPSHOT_REQUEST_TYPE:
        return None, None, "a snapshot request is for the SRC, not the SRS (RFC 7866 §9.2)"
    try:
        body = parse_siprec_body(ctype, msg.body)
    except SipError as exc:
        meta_only = _metadata_only(ctype, msg.body)
        if meta_only is not None:
            return None, meta_only, "no SDP offer in the multipart body"
        return None, None, str(exc)
    sdp = body.sdp if body.sdp.strip() else None
    if sdp is None and mime not in METADATA_TYPES:
        return None, body.metadata, f"no SDP offer in a {mime} body"
    return sdp, body.metadata, None if sdp is not None else "no SDP offer"


def _metadata_only(ctype: str, body: bytes) -> bytes | None:
    """The metadata of a multipart body with no SDP part and one metadata part."""
    try:
        parts, _problems = parse_multipart(ctype, body)
    except SipError:
        return None
    metas = [p for p in parts if p.content_type in METADATA_TYPES]
    if len(metas) == 1 and not any(p.content_type == "application/sdp" for p in parts):
        return metas[0].body
    return None


class SessionBook:
    """Every session the SRS has seen (at most ``max_sessions`` kept in memory: the oldest
    ended ones are dropped, their files stay) and the confirmed ones by dialog id."""

    def __init__(self, config: SrsConfig, streams: Streams,
                 on_end: Callable[[SrsSession], None] | None) -> None:
        self.config = config
        self._streams = streams
        self._on_end = on_end
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[tuple[str, str, str], Call] = {}

    def new_session_id(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return f"{self.config.name}-{stamp}-{os.urandom(4).hex()}"

    def add(self, call: Call) -> None:
        self.calls[call.record.session_id] = call
        excess = len(self.calls) - self.config.max_sessions
        if excess > 0:
            for sid in [sid for sid, c in self.calls.items() if c.record.ended][:excess]:
                del self.calls[sid]

    def confirmed(self, call: Call) -> None:
        """The session's dialog exists (its 2xx went out): in-dialog requests find it."""
        d = call.dialog
        assert d is not None
        self._by_dialog[(d.call_id, d.local_tag, d.remote_tag)] = call

    def of_request(self, msg: SipMessage) -> Call | None:
        """The session of an in-dialog request from the SRC (To carries the SRS's tag)."""
        return self._by_dialog.get((msg.header("call-id") or "", tag_of(msg.header("to")) or "",
                                    tag_of(msg.header("from")) or ""))

    def of_response(self, msg: SipMessage) -> Call | None:
        """The session of a response to the SRS's own request (From carries its tag)."""
        return self._by_dialog.get((msg.header("call-id") or "",
                                    tag_of(msg.header("from")) or "",
                                    tag_of(msg.header("to")) or ""))

    def record_metadata(self, call: Call, data: bytes, *, in_request: bool) -> str:
        """Note a metadata document (its data mode, the participants of each stream)."""
        rec = call.record
        mode, model = metadata_datamode(data)
        now = time.time()
        rec.metadata_docs.append((mode, now))
        if model is not None:
            call.participants.apply(model)
            by_label = call.participants.by_label()
            for label, stats in rec.labels.items():
                stats.participants = by_label.get(label, [])
        if in_request and mode == "complete" and rec.snapshot_requested_at is not None:
            rec.snapshot_received_after_request = True
        return mode

    def write(self, call: Call) -> None:
        write_record(Path(self.config.record_dir), call.record)

    def end(self, call: Call, event: str, reason: str) -> None:
        """The session ends: timers stop, media files are finalised, the record is written
        and ``on_end`` gets a copy of it."""
        rec = call.record
        rec.state = next_state(rec.state, event)
        rec.ended_at = time.time()
        rec.end_reason = reason
        for t in call.timers:
            t.cancel()
        for p in call.pending_2xx.values():
            if p.timer is not None:
                p.timer.cancel()
        call.pending_2xx.clear()
        if call.dialog is not None:
            d = call.dialog
            self._by_dialog.pop((d.call_id, d.local_tag, d.remote_tag), None)
        self._streams.close(call)
        log.info("session %s: %s (%s)", rec.session_id, rec.state, reason)
        self.write(call)
        if self._on_end is not None:
            try:
                self._on_end(copy.deepcopy(rec))
            except Exception:
                log.exception("on_session_end callback failed")
