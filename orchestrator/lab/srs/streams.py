"""The media of the reference SRS's sessions: one slot per m-line, its RTP socket and
recorder on the media :class:`~.loop.EventLoop`, and the SRS's SDP (RFC 3264)."""

from __future__ import annotations

import functools
import logging
import re
import threading
from pathlib import Path

from ...errors import SipError
from ...siprec.rules import Severity
from .config import SrsConfig
from .loop import EventLoop
from .media import RtpPortPool, StreamRecorder
from .sdp import (
    AnswerStream,
    OfferedStream,
    answer_direction,
    build_sdp,
    offer_direction,
    parse_offer,
)
from .session import StreamStats
from .state import Call, Slot

__all__ = ["Streams"]

log = logging.getLogger(__name__)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "_"


class Streams:
    """RTP ports, recorders and SDP of every session. Packets are counted on the media loop
    holding ``lock`` (the lock the SIP loop holds while it handles a message)."""

    def __init__(self, config: SrsConfig, loop: EventLoop, lock: threading.Condition) -> None:
        self.config = config
        self._media = loop
        self._cond = lock
        self._pool = RtpPortPool(config.rtp_address, config.rtp_port_min, config.rtp_port_max)

    def new_slot(self, call: Call, o: OfferedStream) -> Slot:
        rec = call.record
        key = o.label if o.label is not None else f"m{o.index}"
        if key in rec.labels:
            key = f"{key}#{o.index}"
        stats = StreamStats(label=key, port=0, payload_type=o.payload_type, codec=o.codec,
                            direction="inactive")
        recorder = None
        if o.recordable:
            sock = self._pool.bind()
            stats.port = sock.getsockname()[1]
            stats.direction = answer_direction(o.direction)
            try:
                recorder = StreamRecorder(sock, stats, record_dir=Path(self.config.record_dir),
                                          basename=f"{rec.session_id}-{_safe(key)}")
            except BaseException:
                sock.close()
                raise
            self._media.add_reader(sock, lambda: self._on_rtp(recorder))
        elif o.port != 0:
            call.finding("S02", Severity.WARNING,
                         f"m-line {o.index + 1} ({o.media} {o.proto} {' '.join(o.formats)}) "
                         "declined: the SRS records RTP/AVP only")
        rec.labels[key] = stats
        by_label = call.participants.by_label()
        stats.participants = by_label.get(key, [])
        return Slot(o, stats, recorder)

    def move(self, call: Call) -> None:
        """Every live stream to a new RTP port; the old sockets are closed."""
        for slot in call.slots:
            recorder = slot.recorder
            if recorder is None or recorder.closed:
                continue
            old = recorder.rebind(self._pool.bind())
            self._media.remove(old)
            self._media.add_reader(recorder.sock, functools.partial(self._on_rtp, recorder))
            log.info("session %s: %s moved to port %d", call.record.session_id,
                     slot.stats.label, slot.stats.port)

    def _on_rtp(self, recorder: StreamRecorder | None) -> None:
        """Media loop: drain the socket, count each packet under the lock."""
        if recorder is None:
            return
        for _ in range(64):
            try:
                data, src = recorder.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with self._cond:
                recorder.on_datagram(data, src[:2])

    def our_sdp(self, call: Call) -> bytes:
        """The SRS's current SDP; o= version bumped only when it changes (RFC 3264 §8)."""
        streams = []
        for slot in call.slots:
            o = slot.offered
            live = slot.recorder is not None and o.recordable
            pt: int | str = o.formats[0] if o.formats else "0"
            codec = o.codec
            if live and str(slot.stats.payload_type) in o.formats:
                # keep the payload type being recorded while the offer still lists it
                assert slot.stats.payload_type is not None
                pt, codec = slot.stats.payload_type, slot.stats.codec
            streams.append(AnswerStream(o.media, slot.stats.port if live else 0, o.proto, pt,
                                        codec, o.label, slot.stats.direction if live
                                        else "inactive"))

        def build() -> bytes:
            return build_sdp(streams, address=self.config.rtp_address,
                             session_id=call.sdp_session_id, version=call.sdp_version,
                             username=self.config.name)

        body = build()
        if call.last_sdp is not None and body != call.last_sdp:
            call.sdp_version += 1
            body = build()
        call.last_sdp = body
        return body

    def apply_offer(self, call: Call, offered: list[OfferedStream]) -> None:
        """Match a re-offer to the slots by m-line index; new m-lines get new ports."""
        for o in offered:
            if o.index < len(call.slots) and call.slots[o.index].offered.label == o.label:
                slot = call.slots[o.index]
                slot.offered = o
                if slot.recorder is None and o.recordable:  # a declined stream now offered
                    call.record.labels.pop(slot.stats.label, None)
                    call.slots[o.index] = self.new_slot(call, o)
                    continue
                slot.stats.direction = answer_direction(o.direction) if o.recordable \
                    else "inactive"
            elif o.index < len(call.slots):  # the label changed: a different stream
                call.slots[o.index].stats.direction = "inactive"
                call.slots[o.index] = self.new_slot(call, o)
            else:
                call.slots.append(self.new_slot(call, o))


    def apply_answer(self, call: Call, sdp: bytes) -> None:
        """The SRC's answer to an SRS offer: its direction decides the SRS's."""
        try:
            answered = parse_offer(sdp)
        except SipError as exc:
            call.finding("S05", Severity.ERROR, f"unreadable SDP answer from the SRC: {exc}")
            return
        for a in answered:
            if a.index < len(call.slots):
                slot = call.slots[a.index]
                if slot.recorder is not None and slot.stats.direction != "inactive":
                    slot.stats.direction = offer_direction(a.direction) if a.port else "inactive"

    def close(self, call: Call) -> None:
        """Close every recorder of a session that ends (files finalised, ports released)."""
        rec = call.record
        for slot in call.slots:
            if slot.recorder is not None and not slot.recorder.closed:
                try:
                    slot.recorder.close()
                except OSError as exc:
                    log.error("session %s: closing %s: %s", rec.session_id, slot.stats.label,
                              exc)
                self._media.remove(slot.recorder.sock)
            slot.stats.direction = "inactive"
