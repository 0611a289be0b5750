"""RTP reception for the SRS: RTP header parsing, pcap and WAV writers, the RTP port pool.

Writers never overwrite a file: :func:`open_exclusive` creates the file exclusively and adds
a ``-1``, ``-2``… suffix when the name is taken. The pcap is link type raw IPv4 (101) with a
synthesized IPv4/UDP header per packet, which :mod:`orchestrator.recordings.pcap` reads. The
WAV holds G.711 (PCMU/PCMA) decoded to 16-bit PCM, mono, 8 kHz; gaps in the RTP timestamps
become silence, late and duplicate packets are dropped.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import struct
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from ...errors import LabError, RecordingError
from .session import StreamStats

log = logging.getLogger(__name__)

__all__ = [
    "LINKTYPE_RAW",
    "PcapWriter",
    "RtpPacket",
    "RtpPortPool",
    "StreamRecorder",
    "WavWriter",
    "alaw_to_linear",
    "ipv4_udp_packet",
    "open_exclusive",
    "parse_rtp",
    "ulaw_to_linear",
]

LINKTYPE_RAW = 101  # Linux DLT_RAW: packets start with the IP header
_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_SNAPLEN = 65535


def open_exclusive(path: Path) -> tuple[BinaryIO, Path]:
    """Create ``path`` for writing, never replacing a file: ``name-1.ext``… if it exists."""
    path = Path(path)
    for n in itertools.count():
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            return open(candidate, "xb"), candidate
        except FileExistsError:
            if n >= 999:
                raise RecordingError(f"no free file name for {path}") from None
        except OSError as exc:
            raise RecordingError(f"cannot create {candidate}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- RTP

@dataclass(frozen=True, slots=True)
class RtpPacket:
    """The RTP fixed header fields the SRS uses (RFC 3550 §5.1) and the payload."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """Parse an RTP packet; None if it is not RTP version 2 (or an RTCP packet)."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    b1 = data[1]
    if 64 <= (b1 & 0x7F) <= 95:  # RFC 5761 §4: RTCP packet types 192–223 on a muxed port
        return None
    cc = data[0] & 0x0F
    off = 12 + 4 * cc
    if data[0] & 0x10:  # header extension (RFC 3550 §5.3.1)
        if len(data) < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(data[off + 2:off + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding: the last octet counts the padding octets
        end -= data[-1]
    if off > end:
        return None
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[off:end])


# --------------------------------------------------------------------------- pcap

def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes,
                    ident: int = 0) -> bytes:
    """An IPv4 + UDP packet around ``payload`` (UDP checksum 0: "not computed", RFC 768)."""
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident & 0xFFFF, 0x4000, 64, 17, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload


class PcapWriter:
    """Write a classic pcap (µs timestamps, little-endian) of raw IPv4 packets."""

    def __init__(self, fileobj: IO[bytes], path: Path | None = None) -> None:
        self._f = fileobj
        self.path = path
        self.packets = 0
        self._f.write(_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW))

    @classmethod
    def create(cls, path: Path) -> PcapWriter:
        f, actual = open_exclusive(path)
        return cls(f, actual)

    def write(self, ts: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        packet = ipv4_udp_packet(src, dst, payload, self.packets)
        sec = int(ts)
        usec = min(int(round((ts - sec) * 1e6)), 999_999)
        incl = packet[:_SNAPLEN]
        self._f.write(_PCAP_RECORD.pack(sec, usec, len(incl), len(packet)) + incl)
        self.packets += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


# --------------------------------------------------------------------------- G.711 and WAV

def ulaw_to_linear(byte: int) -> int:
    """ITU-T G.711 µ-law octet → 16-bit linear sample."""
    b = ~byte & 0xFF
    magnitude = (((b & 0x0F) << 3) + 0x84) << ((b >> 4) & 0x07)
    return 0x84 - magnitude if b & 0x80 else magnitude - 0x84


def alaw_to_linear(byte: int) -> int:
    """ITU-T G.711 A-law octet → 16-bit linear sample."""
    b = byte ^ 0x55
    exponent = (b >> 4) & 0x07
    mantissa = b & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if b & 0x80 else -magnitude


_ULAW = tuple(struct.pack("<h", ulaw_to_linear(i)) for i in range(256))
_ALAW = tuple(struct.pack("<h", alaw_to_linear(i)) for i in range(256))
_G711 = {"PCMU": _ULAW, "PCMA": _ALAW}
_MAX_GAP = 5 * 8000  # fill at most 5 s of silence for one gap


class WavWriter:
    """G.711 RTP payloads → 16-bit PCM WAV; the header is finalised by :meth:`close`."""

    def __init__(self, fileobj: IO[bytes], encoding: str, path: Path | None = None) -> None:
        table = _G711.get(encoding.upper())
        if table is None:
            raise RecordingError(f"cannot write {encoding} as WAV (only PCMU/PCMA)")
        self._table = table
        self._file = fileobj
        self.path = path
        self._wav = wave.open(fileobj, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(8000)
        self._ssrc: int | None = None
        self._next_ts: int | None = None
        self.frames = 0

    @classmethod
    def create(cls, path: Path, encoding: str) -> WavWriter:
        f, actual = open_exclusive(path)
        try:
            return cls(f, encoding, actual)
        except BaseException:
            f.close()
            raise

    def write(self, pkt: RtpPacket) -> None:
        if pkt.ssrc != self._ssrc or self._next_ts is None:
            self._ssrc = pkt.ssrc
        else:
            delta = (pkt.timestamp - self._next_ts) & 0xFFFFFFFF
            if delta >= 0x80000000:  # behind the expected timestamp: late or duplicate
                return
            if delta:
                gap = min(delta, _MAX_GAP)
                self._wav.writeframesraw(b"\x00\x00" * gap)
                self.frames += gap
        table = self._table
        self._wav.writeframesraw(b"".join([table[b] for b in pkt.payload]))
        self.frames += len(pkt.payload)
        self._next_ts = (pkt.timestamp + len(pkt.payload)) & 0xFFFFFFFF

    def close(self) -> None:
        if not self._file.closed:
            self._wav.close()  # patches the RIFF and data chunk sizes
            self._file.close()


# --------------------------------------------------------------------------- ports

class RtpPortPool:
    """Bind fresh UDP sockets on even ports of ``[low, high]`` (RTP even, RFC 3550 §11)."""

    def __init__(self, address: str, low: int, high: int) -> None:
        if not 0 < low <= high < 65536:
            raise LabError(f"RTP port range {low}-{high} is not within 1-65535")
        self.address = address
        self._ports = [p for p in range(low, high + 1) if p % 2 == 0] or list(range(low, high + 1))
        self._cursor = 0

    def bind(self) -> socket.socket:
        """A bound, non-blocking UDP socket; :class:`LabError` when every port is taken."""
        n = len(self._ports)
        for i in range(n):
            port = self._ports[(self._cursor + i) % n]
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise LabError(f"cannot bind RTP port {self.address}:{port}: {exc}") from exc
            sock.setblocking(False)
            self._cursor = (self._cursor + i + 1) % n
            return sock
        raise LabError(f"no free RTP port in {self._ports[0]}-{self._ports[-1]}")


class StreamRecorder:
    """Receives one stream: counts into ``stats``, writes the pcap (and WAV for G.711).

    Not thread-safe by itself: the server calls :meth:`on_datagram` and :meth:`close`
    holding its lock.
    """

    def __init__(self, sock: socket.socket, stats: StreamStats, *, record_dir: Path,
                 basename: str) -> None:
        self.sock = sock
        self.stats = stats
        self.local = sock.getsockname()[:2]
        self.closed = False
        self.pcap: PcapWriter | None = PcapWriter.create(record_dir / f"{basename}.pcap")
        stats.pcap_path = str(self.pcap.path)
        self.wav: WavWriter | None = None
        encoding = (stats.codec or "").split("/")[0].upper()
        if encoding in _G711 and stats.payload_type in (0, 8):
            try:
                self.wav = WavWriter.create(record_dir / f"{basename}.wav", encoding)
            except BaseException:
                self.pcap.close()
                raise
            stats.wav_path = str(self.wav.path)

    def rebind(self, sock: socket.socket) -> socket.socket:
        """Receive on ``sock`` from now on (same stats and files); returns the old socket."""
        old, self.sock = self.sock, sock
        self.local = sock.getsockname()[:2]
        self.stats.port = self.local[1]
        return old

    def on_datagram(self, data: bytes, src: tuple[str, int], now: float | None = None) -> None:
        if self.closed:
            return
        now = time.time() if now is None else now
        st = self.stats
        pkt = parse_rtp(data)
        if pkt is None:
            st.invalid_packets += 1
            return
        if st.direction == "inactive":
            # RFC 7866 §7.1.1.1: a paused stream is not recorded; count what leaks through.
            st.packets_while_inactive += 1
            return
        st.packets += 1
        st.bytes += len(data)
        if pkt.ssrc not in st.ssrcs:
            st.ssrcs.append(pkt.ssrc)
        if st.first_at is None:
            st.first_at = now
        st.last_at = now
        try:
            if self.pcap is not None:
                self.pcap.write(now, src, self.local, data)
            if self.wav is not None and pkt.payload_type == st.payload_type:
                self.wav.write(pkt)
        except OSError as exc:  # disk full, file gone: keep counting, stop writing
            log.error("stream %s: cannot write the recording, stopped writing: %s",
                      st.label, exc)
            st.write_error = str(exc)
            self._close_writers()
            self.pcap = self.wav = None

    def close(self) -> None:
        """Finalise the files (the socket is closed by the media loop that reads it)."""
        self.closed = True
        self._close_writers()

    def _close_writers(self) -> None:
        for w in (self.pcap, self.wav):
            if w is not None:
                try:
                    w.close()
                except OSError as exc:
                    log.error("stream %s: closing %s: %s", self.stats.label, w.path, exc)

