"""SDP offer/answer for the SRS (RFC 3264, RFC 7866 §7.1.1), sans-IO.

The offer is read with :func:`orchestrator.siprec.parse_sdp` (m-lines, labels, directions);
this module adds what answering needs (``a=rtpmap`` of each m-line) and builds the answer:
one m-line per offered m-line in the same order, the first offered payload type, the label
echoed, ``recvonly`` for a stream offered ``sendonly`` and ``inactive`` for one offered
``inactive``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SipError
from ...siprec.sdp import parse_sdp

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "AnswerStream",
    "OfferedStream",
    "answer_direction",
    "build_sdp",
    "offer_direction",
    "parse_offer",
]

#: RFC 3551 §6 static audio payload types the SRS knows by number.
STATIC_PAYLOAD_TYPES = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000",
                        9: "G722/8000", 18: "G729/8000"}
RECORDABLE_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})


@dataclass(frozen=True, slots=True)
class OfferedStream:
    """One offered m-line, as far as answering it goes."""

    index: int
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    label: str | None
    direction: str
    rtpmap: tuple[tuple[int, str], ...] = ()

    @property
    def payload_type(self) -> int | None:
        """The first offered payload type (None if the format is not numeric)."""
        return int(self.formats[0]) if self.formats and self.formats[0].isdigit() else None

    @property
    def codec(self) -> str | None:
        """``encoding/clock`` of the first payload type (rtpmap, else the static table)."""
        pt = self.payload_type
        if pt is None:
            return None
        return dict(self.rtpmap).get(pt) or STATIC_PAYLOAD_TYPES.get(pt)

    @property
    def recordable(self) -> bool:
        return self.port != 0 and self.proto.upper() in RECORDABLE_PROTOS \
            and self.payload_type is not None


def parse_offer(data: bytes) -> list[OfferedStream]:
    """The m-lines of an offer; :class:`SipError` if it is not SDP."""
    sdp = parse_sdp(data)
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    rtpmaps: list[list[tuple[int, str]]] = []
    for line in text.split("\n"):
        if line.startswith("m="):
            rtpmaps.append([])
        elif line.startswith("a=rtpmap:") and rtpmaps:
            pt, _, enc = line[9:].strip().partition(" ")
            if pt.isdigit() and enc:
                rtpmaps[-1].append((int(pt), enc.strip()))
    if len(rtpmaps) != len(sdp.media):
        raise SipError("SDP m-lines could not be read consistently")
    return [OfferedStream(i, m.media, m.port, m.proto, m.formats,
                          m.labels[0] if m.labels else None, sdp.effective_direction(m),
                          tuple(rtpmaps[i]))
            for i, m in enumerate(sdp.media)]


def answer_direction(offered: str) -> str:
    """The SRS's direction for an offered one: it only ever receives (RFC 3264 §6.1)."""
    return "recvonly" if offered in ("sendonly", "sendrecv") else "inactive"


def offer_direction(answered: str) -> str:
    """The SRS's direction implied by the SRC's answer to an SRS offer."""
    return "recvonly" if answered in ("sendonly", "sendrecv") else "inactive"


@dataclass(frozen=True, slots=True)
class AnswerStream:
    """One m-line of the SRS's SDP; ``port`` 0 declines the stream (RFC 3264 §6)."""

    media: str
    port: int
    proto: str
    payload_type: int | str
    codec: str | None
    label: str | None
    direction: str


def build_sdp(streams: list[AnswerStream], *, address: str, session_id: int, version: int,
              username: str = "-") -> bytes:
    """The SRS's SDP (answer, or its offer in a refresh re-INVITE)."""
    lines = ["v=0", f"o={username} {session_id} {version} IN IP4 {address}",
             "s=siprecctl SRS", f"c=IN IP4 {address}", "t=0 0"]
    for s in streams:
        lines.append(f"m={s.media} {s.port} {s.proto} {s.payload_type}")
        if s.codec and s.port:
            lines.append(f"a=rtpmap:{s.payload_type} {s.codec}")
        if s.label is not None:
            lines.append(f"a=label:{s.label}")
        lines.append(f"a={s.direction}")
    return ("\r\n".join(lines) + "\r\n").encode()
