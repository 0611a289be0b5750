"""A minimal streaming pcap reader (stdlib ``struct``, sans-IO: fed bytes, never opens files).

Counts packets per UDP flow and destination port, which is what checking a recording needs:
rtpengine writes each received packet with a synthesized IP/UDP header whose destination is
its own local port, the port its SDP advertised (reference/rtpengine.md §4.2). Link types:
DLT_EN10MB (1), raw IP (101 on Linux, 12/14 elsewhere), DLT_IPV4 (228), DLT_IPV6 (229).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from ..errors import RecordingError

__all__ = ["PcapReader", "PcapSummary", "summarize_pcap"]

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
LINKTYPES = {1: "EN10MB", 12: "RAW", 14: "RAW", 101: "RAW", 228: "IPV4", 229: "IPV6"}
Flow = tuple[str, int, str, int]


@dataclass
class PcapSummary:
    """What a pcap holds: packets, UDP flows, and whether it ends cleanly."""

    linktype: int | None = None
    packets: int = 0
    udp_packets: int = 0
    truncated: bool = False
    dst_ports: Counter[int] = field(default_factory=Counter)
    flows: Counter[Flow] = field(default_factory=Counter)
    first_ts: float | None = None
    last_ts: float | None = None


class PcapReader:
    """Feed the file's bytes in chunks with :meth:`feed`, then :meth:`close` for the summary."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._endian: str | None = None
        self._tick = 1e-6
        self.summary = PcapSummary()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if self._endian is None:
            if len(self._buf) < 24:
                return
            self._header(bytes(self._buf[:24]))
            del self._buf[:24]
        self._records()

    def close(self) -> PcapSummary:
        """The summary; a header-less file raises, a partial last record marks it truncated."""
        if self._endian is None:
            raise RecordingError(f"not a pcap file: {len(self._buf)} bytes, no complete header")
        if self._buf:
            self.summary.truncated = True
        return self.summary

    def _header(self, head: bytes) -> None:
        magic = _MAGICS.get(head[:4])
        if magic is None:
            raise RecordingError(f"not a pcap file: magic {head[:4].hex()}")
        self._endian, self._tick = magic
        _major, _minor, _zone, _sig, _snap, linktype = struct.unpack(self._endian + "HHiIII",
                                                                     head[4:])
        if linktype not in LINKTYPES:
            raise RecordingError(f"unsupported pcap link type {linktype}")
        self.summary.linktype = linktype

    def _records(self) -> None:
        buf = self._buf
        rec = struct.Struct(self._endian + "IIII")  # type: ignore[operator]
        pos = 0
        s = self.summary
        while len(buf) - pos >= 16:
            sec, frac, incl, _orig = rec.unpack_from(buf, pos)
            if incl > 262144:
                raise RecordingError(f"packet {s.packets + 1}: implausible length {incl}")
            if len(buf) - pos - 16 < incl:
                break
            data = bytes(buf[pos + 16:pos + 16 + incl])
            pos += 16 + incl
            ts = sec + frac * self._tick
            if s.first_ts is None:
                s.first_ts = ts
            s.last_ts = ts
            s.packets += 1
            flow = self._udp(data)
            if flow is not None:
                s.udp_packets += 1
                s.flows[flow] += 1
                s.dst_ports[flow[3]] += 1
        del buf[:pos]

    def _udp(self, data: bytes) -> Flow | None:
        lt = self.summary.linktype
        if lt == 1:
            if len(data) < 14:
                return None
            ethertype = int.from_bytes(data[12:14], "big")
            off = 14
            if ethertype == 0x8100 and len(data) >= 18:  # 802.1Q tag
                ethertype = int.from_bytes(data[16:18], "big")
                off = 18
            if ethertype not in (0x0800, 0x86DD):
                return None
            data = data[off:]
        if not data:
            return None
        version = data[0] >> 4
        if version == 4 and len(data) >= 20:
            ihl = (data[0] & 0x0F) * 4
            if data[9] != 17 or int.from_bytes(data[6:8], "big") & 0x1FFF:  # not UDP / fragment
                return None
            src, dst = _ip4(data[12:16]), _ip4(data[16:20])
            udp = data[ihl:ihl + 8]
        elif version == 6 and len(data) >= 40:
            if data[6] != 17:
                return None
            src, dst = data[8:24].hex(), data[24:40].hex()
            udp = data[40:48]
        else:
            return None
        if len(udp) < 8:
            return None
        sport, dport = struct.unpack("!HH", udp[:4])
        return (src, sport, dst, dport)


def _ip4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def summarize_pcap(data: bytes) -> PcapSummary:
    """Summary of a whole pcap held in memory."""
    reader = PcapReader()
    reader.feed(data)
    return reader.close()
