"""Typed views of NG replies (rtpengine 10.5 shapes; unknown keys stay in ``raw``).

A value of the wrong type anywhere (``"tags": [1, 2]``, a string where a number belongs) is
an :class:`~orchestrator.errors.NgProtocolError` naming the command and the key path, never
an ``AttributeError``; a missing optional value is ``None`` (shown as unknown), never a
made-up number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import NgProtocolError
from .codec import text, to_text
from .reply import Reply

__all__ = ["CallInfo", "MediaLabel", "Reply", "SdpReply", "Subscription", "TagInfo",
           "TagMedias"]

_MISSING: Any = object()
_KINDS = {bytes: "a string", str: "a string", int: "an integer", float: "a number",
          dict: "a dictionary", list: "a list", bool: "a boolean"}


def _kind(v: Any) -> str:
    return _KINDS.get(type(v), type(v).__name__)


class _At:
    """A key path inside one reply, for error messages: ``query reply: tags.abc.medias[0]``."""

    def __init__(self, command: str, path: str = "") -> None:
        self.command, self.path = command or "NG", path

    def key(self, k: Any) -> _At:
        k = text(k)
        return _At(self.command, f"{self.path}.{k}" if self.path else k)

    def index(self, i: int) -> _At:
        return _At(self.command, f"{self.path}[{i}]")

    def fail(self, v: Any, expected: str) -> NgProtocolError:
        return NgProtocolError(f"{self.command} reply: '{self.path}' is {_kind(v)}, "
                               f"expected {expected}")


def _get(d: Mapping[Any, Any], key: str, at: _At, kind: type, default: Any = _MISSING,
         ) -> Any:
    """``d[key]`` (bytes keys in decoded dicts, str keys for a :class:`Reply`) checked to be
    of ``kind``; ``default`` when missing (None when not given)."""
    k: Any = key if isinstance(d, Reply) else key.encode()
    v = d.get(k, _MISSING)
    if v is _MISSING or v is None:
        return None if default is _MISSING else default
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, int | bytes):
            raise at.key(key).fail(v, "an integer")
        if isinstance(v, bytes):  # some counters come as numeric strings
            try:
                return int(v)
            except ValueError:
                raise at.key(key).fail(v, "an integer") from None
        return v
    if not isinstance(v, kind):
        raise at.key(key).fail(v, _KINDS.get(kind, kind.__name__))
    return v


def _str(d: Mapping[Any, Any], key: str, at: _At, default: Any = _MISSING) -> Any:
    v = _get(d, key, at, bytes, default)
    return v if v is None or isinstance(v, str) else text(v)


def _dicts(v: list[Any], at: _At) -> list[dict[bytes, Any]]:
    for i, x in enumerate(v):
        if not isinstance(x, dict):
            raise at.index(i).fail(x, "a dictionary")
    return v


def _strs(v: list[Any], at: _At) -> list[str]:
    for i, x in enumerate(v):
        if not isinstance(x, bytes):
            raise at.index(i).fail(x, "a string")
    return [text(x) for x in v]


@dataclass(frozen=True, slots=True)
class SdpReply:
    """offer/answer/publish reply: the rewritten SDP and, with pcap recording on, the files."""

    sdp: bytes
    recordings: list[str]
    reply: Reply

    @classmethod
    def from_reply(cls, r: Reply) -> SdpReply:
        at = _At(r.command)
        return cls(sdp=_get(r, "sdp", at, bytes, b""),
                   recordings=_strs(_get(r, "recordings", at, list, []), at.key("recordings")),
                   reply=r)


@dataclass(frozen=True, slots=True)
class TagInfo:
    """One call participant (monologue) from ``query``."""

    tag: str
    label: str | None
    created: int | None
    subscriptions: list[tuple[str, str]]  # (tag, type) this one receives media from
    subscribers: list[tuple[str, str]]  # (tag, type) receiving this one's media
    packets: int
    octets: int
    raw: Mapping[bytes, Any] = field(repr=False)

    @classmethod
    def from_raw(cls, d: Mapping[bytes, Any], at: _At | None = None) -> TagInfo:
        at = at or _At("query", "tags")

        def links(key: str) -> list[tuple[str, str]]:
            lat = at.key(key)
            return [(_str(x, "tag", lat.index(i), ""), _str(x, "type", lat.index(i), ""))
                    for i, x in enumerate(_dicts(_get(d, key, at, list, []), lat))]

        packets = octets = 0
        mat = at.key("medias")
        for mi, m in enumerate(_dicts(_get(d, "medias", at, list, []), mat)):
            sat = mat.index(mi).key("streams")
            for si, st in enumerate(_dicts(_get(m, "streams", mat.index(mi), list, []), sat)):
                stats = _get(st, "stats", sat.index(si), dict, {})
                packets += _get(stats, "packets", sat.index(si).key("stats"), int, 0)
                octets += _get(stats, "bytes", sat.index(si).key("stats"), int, 0)
        return cls(tag=_str(d, "tag", at, ""), label=_str(d, "label", at),
                   created=_get(d, "created", at, int), subscriptions=links("subscriptions"),
                   subscribers=links("subscribers"), packets=packets, octets=octets, raw=d)

    @property
    def is_subscriber(self) -> bool:
        """A pub/sub participant (e.g. a SIPREC fork), not a leg of the call."""
        return bool(self.subscriptions) and all(t == "pub/sub" for _, t in self.subscriptions)


_STATIC_PT = {"PCMU/8000": 0, "GSM/8000": 3, "PCMA/8000": 8, "G722/8000": 9,
              "G729/8000": 18}


class CallInfo:
    """``query`` reply: participants, totals, and the counts a table needs.

    Built lazily from the reply (a query reply has a hundred-odd keys; callers that only
    want one number should not pay for the rest).
    """

    def __init__(self, call_id: str, reply: Reply) -> None:
        self.call_id = call_id
        self.reply = reply
        self._at = _At(reply.command or "query")

    @classmethod
    def from_reply(cls, call_id: str, r: Reply) -> CallInfo:
        return cls(call_id, r)

    @cached_property
    def created(self) -> float | None:
        """Epoch seconds (``created`` + ``created_us``); None when the reply has none."""
        secs = _get(self.reply, "created", self._at, int)
        if secs is None:
            return None
        return secs + _get(self.reply, "created_us", self._at, int, 0) / 1e6

    def age(self, now: float) -> float | None:
        """Seconds since the call was created, or None (unknown)."""
        return None if self.created is None else now - self.created

    @cached_property
    def last_signal(self) -> int | None:
        return _get(self.reply, "last signal", self._at, int)

    @cached_property
    def tags(self) -> dict[str, TagInfo]:
        tags = _get(self.reply, "tags", self._at, dict, {})
        tat = self._at.key("tags")
        out = {}
        for k, v in tags.items():
            if not isinstance(v, dict):
                raise tat.key(k).fail(v, "a dictionary")
            out[text(k)] = TagInfo.from_raw(v, tat.key(k))
        return out

    def leg_sdp(self, tag: str) -> str:
        """An SDP for leg ``tag`` rebuilt from this reply: per media the address and port
        the leg sends from (its ``endpoint``), the protocol and the codec. rtpengine 10.5
        does not replicate a leg's SDP through Redis; offering/answering this on a mirror
        lets it fork the call again (README "After a node loss")."""
        at = self._at.key("tags").key(tag)
        tags = self.reply.plain().get("tags") or {}
        leg = tags.get(tag) if isinstance(tags, dict) else None
        medias = leg.get("medias") if isinstance(leg, dict) else None
        if not isinstance(medias, list) or not medias:
            raise at.key("medias").fail(medias, "a non-empty list")
        lines: list[str] = []
        first_addr = ""
        for i, m in enumerate(medias):
            streams = m.get("streams") if isinstance(m, dict) else None
            ep = streams[0].get("endpoint") if isinstance(streams, list) and streams \
                and isinstance(streams[0], dict) else None
            if not isinstance(ep, dict) or "address" not in ep or "port" not in ep:
                raise at.key("medias").index(i).fail(ep, "a stream with an endpoint")
            codec = str(m.get("codec") or "PCMA/8000")
            pt = _STATIC_PT.get(codec.upper(), 96)
            first_addr = first_addr or str(ep["address"])
            lines += [f"m={m.get('type', 'audio')} {int(ep['port'])} "
                      f"{m.get('protocol', 'RTP/AVP')} {pt}",
                      f"c=IN IP4 {ep['address']}", f"a=rtpmap:{pt} {codec}", "a=sendrecv"]
        head = ["v=0", f"o=- 1 2 IN IP4 {first_addr}", "s=-", "t=0 0"]
        return "\r\n".join(head + lines) + "\r\n"

    def counters(self) -> dict[str, tuple[int, int]]:
        """``{tag: (packets, bytes)}`` rtpengine received per call tag, summed over its
        streams — what :attr:`tags` gives, without building a :class:`TagInfo` per tag (the
        controller reads it for every recorded call)."""
        at = self._at.key("tags")
        tags = self.reply.plain().get("tags") or {}
        if not isinstance(tags, dict):
            raise at.fail(tags, "a dictionary")
        out: dict[str, tuple[int, int]] = {}
        for tag, t in tags.items():
            packets = octets = 0
            medias = t.get("medias") if isinstance(t, dict) else None
            if not isinstance(medias, list):
                raise at.key(tag).key("medias").fail(medias, "a list")
            for m in medias:
                for st in (m.get("streams") or []) if isinstance(m, dict) else ():
                    stats = st.get("stats") if isinstance(st, dict) else None
                    if not isinstance(stats, dict):
                        continue
                    p, b = stats.get("packets", 0), stats.get("bytes", 0)
                    if isinstance(p, bool) or not isinstance(p, int) or \
                            isinstance(b, bool) or not isinstance(b, int):
                        raise at.key(tag).key("medias").fail(stats, "integer counters")
                    packets, octets = packets + p, octets + b
            out[str(tag)] = (packets, octets)
        return out

    @cached_property
    def totals(self) -> dict[str, Any]:
        t = to_text(_get(self.reply, "totals", self._at, dict, {}))
        assert isinstance(t, dict)
        return t

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
        at = self._at.key("totals")
        if not isinstance(rtp, dict):
            raise at.key("RTP").fail(rtp, "a dictionary")
        v = rtp.get("packets", 0)
        if isinstance(v, bool) or not isinstance(v, int):
            raise at.key("RTP").key("packets").fail(v, "an integer")
        return v

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
    def from_raw(cls, label: str, d: Mapping[bytes, Any], at: _At | None = None) -> MediaLabel:
        at = at or _At("subscribe request", f"media-labels.{label}")
        return cls(label=label, tag=_str(d, "tag", at, ""), index=_get(d, "index", at, int, 0),
                   type=_str(d, "type", at, ""), participant_label=_str(d, "label", at),
                   mode=_str(d, "mode", at))


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
        at = _At(r.command or "subscribe request")
        lat = at.key("media-labels")
        labels = {}
        for k, v in _get(r, "media-labels", at, dict, {}).items():
            if not isinstance(v, dict):
                raise lat.key(k).fail(v, "a dictionary")
            labels[text(k)] = MediaLabel.from_raw(text(k), v, lat.key(k))
        tms = []
        tat = at.key("tag-medias")
        for i, tm in enumerate(_dicts(_get(r, "tag-medias", at, list, []), tat)):
            mat = tat.index(i).key("medias")
            medias = [MediaLabel(label=_str(m, "label", mat.index(j), ""),
                                 tag=_str(tm, "tag", tat.index(i), ""),
                                 index=_get(m, "index", mat.index(j), int, 0),
                                 type=_str(m, "type", mat.index(j), ""),
                                 participant_label=_str(tm, "label", tat.index(i)),
                                 mode=_str(m, "mode", mat.index(j)))
                      for j, m in enumerate(_dicts(_get(tm, "medias", tat.index(i), list, []),
                                                   mat))]
            tms.append(TagMedias(tag=_str(tm, "tag", tat.index(i), ""),
                                 label=_str(tm, "label", tat.index(i)), medias=medias))
        return cls(sdp=_get(r, "sdp", at, bytes, b""), to_tag=_str(r, "to-tag", at, ""),
                   from_tags=_strs(_get(r, "from-tags", at, list, []), at.key("from-tags")),
                   from_tag=_str(r, "from-tag", at), media_labels=labels, tag_medias=tms,
                   reply=r)

    def label_for_tag(self, tag: str) -> list[str]:
        """The media labels forking participant ``tag`` (in SDP order of appearance)."""
        return [m.label for m in self.media_labels.values() if m.tag == tag]
