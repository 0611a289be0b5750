"""Typed views of NG replies (rtpengine 10.5 shapes; unknown keys stay in ``raw``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .codec import text, to_text
from .reply import Reply

__all__ = ["CallInfo", "MediaLabel", "Reply", "SdpReply", "Subscription", "TagInfo",
           "TagMedias"]


def _int(v: Any, default: int = 0) -> int:
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _opt_text(v: Any) -> str | None:
    return None if v is None else text(v)


@dataclass(frozen=True, slots=True)
class SdpReply:
    """offer/answer/publish reply: the rewritten SDP and, with pcap recording on, the files."""

    sdp: bytes
    recordings: list[str]
    reply: Reply

    @classmethod
    def from_reply(cls, r: Reply) -> SdpReply:
        return cls(sdp=r.get("sdp", b""), recordings=[text(x) for x in r.get("recordings", [])],
                   reply=r)


@dataclass(frozen=True, slots=True)
class TagInfo:
    """One call participant (monologue) from ``query``."""

    tag: str
    label: str | None
    created: int
    subscriptions: list[tuple[str, str]]  # (tag, type) this one receives media from
    subscribers: list[tuple[str, str]]  # (tag, type) receiving this one's media
    packets: int
    octets: int
    raw: Mapping[bytes, Any] = field(repr=False)

    @classmethod
    def from_raw(cls, d: Mapping[bytes, Any]) -> TagInfo:
        def links(key: bytes) -> list[tuple[str, str]]:
            return [(text(x.get(b"tag", b"")), text(x.get(b"type", b"")))
                    for x in d.get(key, []) if isinstance(x, dict)]

        packets = octets = 0
        for m in d.get(b"medias", []):
            for s in m.get(b"streams", []) if isinstance(m, dict) else []:
                st = s.get(b"stats", {}) if isinstance(s, dict) else {}
                packets += _int(st.get(b"packets"))
                octets += _int(st.get(b"bytes"))
        return cls(tag=text(d.get(b"tag", b"")), label=_opt_text(d.get(b"label")),
                   created=_int(d.get(b"created")), subscriptions=links(b"subscriptions"),
                   subscribers=links(b"subscribers"), packets=packets, octets=octets, raw=d)

    @property
    def is_subscriber(self) -> bool:
        """A pub/sub participant (e.g. a SIPREC fork), not a leg of the call."""
        return bool(self.subscriptions) and all(t == "pub/sub" for _, t in self.subscriptions)


class CallInfo:
    """``query`` reply: participants, totals, and the counts a table needs.

    Built lazily from the reply (a query reply has a hundred-odd keys; callers that only
    want one number should not pay for the rest).
    """

    def __init__(self, call_id: str, reply: Reply) -> None:
        self.call_id = call_id
        self.reply = reply

    @classmethod
    def from_reply(cls, call_id: str, r: Reply) -> CallInfo:
        return cls(call_id, r)

    @cached_property
    def created(self) -> float:
        """Epoch seconds (``created`` + ``created_us``)."""
        return _int(self.reply.get("created")) + _int(self.reply.get("created_us")) / 1e6

    @cached_property
    def last_signal(self) -> int:
        return _int(self.reply.get("last signal"))

    @cached_property
    def tags(self) -> dict[str, TagInfo]:
        return {text(k): TagInfo.from_raw(v) for k, v in (self.reply.get("tags") or {}).items()
                if isinstance(v, dict)}

    @cached_property
    def totals(self) -> dict[str, Any]:
        t = to_text(self.reply.get("totals") or {})
        return t if isinstance(t, dict) else {}

    @property
    def legs(self) -> list[TagInfo]:
        """Participants of the offer/answer dialogue (not subscribers)."""
        return [t for t in self.tags.values() if not t.is_subscriber]

    @property
    def subscribers(self) -> list[TagInfo]:
        """pub/sub subscribers (SIPREC forks made by ``subscribe request``)."""
        return [t for t in self.tags.values() if t.is_subscriber]

    @property
    def packets(self) -> int:
        rtp = self.totals.get("RTP", {})
        return _int(rtp.get("packets")) if isinstance(rtp, dict) else 0

    def __repr__(self) -> str:
        return f"CallInfo({self.call_id!r}, tags={list(self.tags)})"


@dataclass(frozen=True, slots=True)
class MediaLabel:
    """One forked media stream of a SIPREC subscription (``a=label:`` in the SDP)."""

    label: str  # the media label, as in a=label
    tag: str  # the source participant's call tag
    index: int  # media index within that participant
    type: str  # audio / video
    participant_label: str | None  # the participant's label (offer ``label``), if set
    mode: str | None  # sendrecv / sendonly / recvonly / inactive (10.5+)

    @classmethod
    def from_raw(cls, label: str, d: Mapping[bytes, Any]) -> MediaLabel:
        return cls(label=label, tag=text(d.get(b"tag", b"")), index=_int(d.get(b"index")),
                   type=text(d.get(b"type", b"")),
                   participant_label=_opt_text(d.get(b"label")), mode=_opt_text(d.get(b"mode")))


@dataclass(frozen=True, slots=True)
class TagMedias:
    """``tag-medias`` entry: a source participant and its subscribed media."""

    tag: str
    label: str | None
    medias: list[MediaLabel]


@dataclass(frozen=True, slots=True)
class Subscription:
    """``subscribe request`` reply. With flag ``SIPREC`` (undocumented, 10.3+) each m= line
    carries ``a=label:N`` and ``media_labels`` maps N to the source tag."""

    sdp: bytes
    to_tag: str
    from_tags: list[str]
    from_tag: str | None
    media_labels: dict[str, MediaLabel]
    tag_medias: list[TagMedias]
    reply: Reply = field(repr=False)

    @classmethod
    def from_reply(cls, r: Reply) -> Subscription:
        labels = {text(k): MediaLabel.from_raw(text(k), v)
                  for k, v in (r.get("media-labels") or {}).items() if isinstance(v, dict)}
        tms = []
        for tm in r.get("tag-medias") or []:
            if not isinstance(tm, dict):
                continue
            medias = [MediaLabel(label=text(m.get(b"label", b"")), tag=text(tm.get(b"tag", b"")),
                                 index=_int(m.get(b"index")), type=text(m.get(b"type", b"")),
                                 participant_label=_opt_text(tm.get(b"label")),
                                 mode=_opt_text(m.get(b"mode")))
                      for m in tm.get(b"medias", []) if isinstance(m, dict)]
            tms.append(TagMedias(tag=text(tm.get(b"tag", b"")), label=_opt_text(tm.get(b"label")),
                                 medias=medias))
        return cls(sdp=r.get("sdp", b""), to_tag=r.text("to-tag", "") or "",
                   from_tags=[text(t) for t in r.get("from-tags") or []],
                   from_tag=r.text("from-tag"), media_labels=labels, tag_medias=tms, reply=r)

    def label_for_tag(self, tag: str) -> list[str]:
        """The media labels forking participant ``tag`` (in SDP order of appearance)."""
        return [m.label for m in self.media_labels.values() if m.tag == tag]
