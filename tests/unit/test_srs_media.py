"""SRS media: RTP parsing, pcap and WAV writers (read back with the project's pcap reader
and the stdlib wave module), exclusive file creation, RTP port pool, stream counting."""

from __future__ import annotations

import io
import socket
import struct
import wave
from pathlib import Path

import pytest

from orchestrator.errors import LabError, RecordingError
from orchestrator.lab.srs import PcapWriter, RtpPortPool, StreamStats, WavWriter, parse_rtp
from orchestrator.lab.srs.media import (
    StreamRecorder,
    alaw_to_linear,
    ipv4_udp_packet,
    open_exclusive,
    ulaw_to_linear,
)
from orchestrator.recordings.pcap import summarize_pcap


def rtp(seq: int, ts: int, *, ssrc: int = 0x1234, pt: int = 0, payload: bytes = b"\xff" * 160,
        marker: bool = False, csrc: int = 0, ext: bytes | None = None, pad: int = 0) -> bytes:
    b0 = 0x80 | csrc | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc)
    out += b"\x00\x00\x00\x01" * csrc
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\x00" * (pad - 1) + bytes([pad])
    return out


# --------------------------------------------------------------------------- RTP

def test_parse_rtp_fields_csrc_extension_padding() -> None:
    p = parse_rtp(rtp(7, 1120, ssrc=9, pt=8, payload=b"abc", marker=True, csrc=2,
                      ext=b"\x01\x02\x03\x04", pad=3))
    assert p is not None
    assert (p.payload_type, p.marker, p.seq, p.timestamp, p.ssrc, p.payload) == \
        (8, True, 7, 1120, 9, b"abc")


@pytest.mark.parametrize("data", [
    b"", b"\x80\x00", b"\x40" + b"\x00" * 20,              # too short; RTP version 1
    bytes([0x80, 200]) + b"\x00" * 26,                      # an RTCP sender report (PT 200)
    bytes([0x8F, 0]) + b"\x00" * 20,                        # 15 CSRCs announced, not there
])
def test_parse_rtp_rejects(data: bytes) -> None:
    assert parse_rtp(data) is None


# --------------------------------------------------------------------------- pcap

def test_ipv4_udp_packet_header_checksum() -> None:
    pkt = ipv4_udp_packet(("10.0.0.1", 1000), ("10.0.0.2", 2000), b"xyz")
    assert len(pkt) == 20 + 8 + 3
    words = struct.unpack("!10H", pkt[:20])
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # a correct header checksum sums to all ones
    assert struct.unpack("!HHH", pkt[20:26]) == (1000, 2000, 11)


def test_pcap_writer_is_readable_by_the_recordings_reader(tmp_path: Path) -> None:
    w = PcapWriter.create(tmp_path / "s-1.pcap")
    for i in range(3):
        w.write(1700000000.25 + i * 0.02, ("127.0.0.1", 30000), ("127.0.0.1", 40000), rtp(i, i))
    w.write(1700000001.0, ("127.0.0.1", 30002), ("127.0.0.1", 40000), rtp(9, 9))
    w.close()
    s = summarize_pcap((tmp_path / "s-1.pcap").read_bytes())
    assert (s.linktype, s.packets, s.udp_packets, s.truncated) == (101, 4, 4, False)
    assert s.dst_ports == {40000: 4}
    assert s.flows[("127.0.0.1", 30000, "127.0.0.1", 40000)] == 3
    assert s.first_ts == pytest.approx(1700000000.25) and s.last_ts == pytest.approx(1700000001.0)


def test_open_exclusive_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.pcap").write_bytes(b"old")
    (tmp_path / "a-1.pcap").write_bytes(b"old")
    f, path = open_exclusive(tmp_path / "a.pcap")
    f.close()
    assert path == tmp_path / "a-2.pcap"
    assert (tmp_path / "a.pcap").read_bytes() == b"old"
    with pytest.raises(RecordingError):
        open_exclusive(tmp_path / "missing-dir" / "x.pcap")


# --------------------------------------------------------------------------- G.711 and WAV

@pytest.mark.parametrize(("byte", "ulaw", "alaw"), [
    (0xFF, 0, 848), (0x7F, 0, -848), (0x00, -32124, -5504), (0x80, 32124, 5504),
    (0xD5, 716, 8), (0x55, -716, -8),
])
def test_g711_decoding(byte: int, ulaw: int, alaw: int) -> None:
    # reference values of ITU-T G.711 (as produced by the former stdlib audioop)
    assert (ulaw_to_linear(byte), alaw_to_linear(byte)) == (ulaw, alaw)


def test_wav_writer_fills_gaps_and_drops_late_packets(tmp_path: Path) -> None:
    w = WavWriter.create(tmp_path / "s.wav", "PCMU")
    for seq, ts in [(1, 0), (2, 160), (4, 480), (3, 320), (4, 480)]:  # 3 is late, 4 duplicate
        p = parse_rtp(rtp(seq, ts, payload=b"\x80" * 160))
        assert p is not None
        w.write(p)
    p = parse_rtp(rtp(1, 999_999, ssrc=5, payload=b"\xff" * 80))  # new SSRC: no gap filled
    assert p is not None
    w.write(p)
    w.close()
    with wave.open(str(tmp_path / "s.wav")) as r:
        assert (r.getnchannels(), r.getsampwidth(), r.getframerate()) == (1, 2, 8000)
        assert r.getnframes() == 160 * 4 + 80  # 3 packets + 1 packet of silence + 80
        frames = r.readframes(r.getnframes())
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    assert samples[0] == 32124 and samples[320] == 0 and samples[480] == 32124


def test_wav_writer_only_g711() -> None:
    with pytest.raises(RecordingError):
        WavWriter(io.BytesIO(), "opus")


# --------------------------------------------------------------------------- ports, recorder

def test_port_pool_binds_even_ports_and_skips_taken_ones() -> None:
    # hold an even port ourselves (retrying until one is free), so the pool must skip it
    for _ in range(100):
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        base = blocker.getsockname()[1]
        if base % 2 == 0:
            break
        blocker.close()
    else:
        raise AssertionError("the kernel gave no even UDP port in 100 tries")
    pool = RtpPortPool("127.0.0.1", base, base + 5)
    socks = []
    try:
        socks = [pool.bind(), pool.bind()]
        ports = [s.getsockname()[1] for s in socks]
        assert ports == [base + 2, base + 4] or all(p % 2 == 0 and p != base for p in ports)
        with pytest.raises(LabError, match="no free RTP port"):
            pool.bind()
    finally:
        blocker.close()
        for s in socks:
            s.close()
    with pytest.raises(LabError):
        RtpPortPool("127.0.0.1", 10, 5)


def test_stream_recorder_counts_and_ignores_while_inactive(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stats = StreamStats("1", sock.getsockname()[1], 0, "PCMU/8000", "recvonly")
    try:
        rec = StreamRecorder(sock, stats, record_dir=tmp_path, basename="sess-1")
        src = ("127.0.0.1", 31000)
        rec.on_datagram(rtp(1, 0), src, now=10.0)
        rec.on_datagram(rtp(2, 160, ssrc=77), src, now=10.5)
        rec.on_datagram(b"garbage", src, now=10.6)
        stats.direction = "inactive"
        rec.on_datagram(rtp(3, 320), src, now=11.0)
        rec.close()
        rec.on_datagram(rtp(4, 480), src, now=12.0)  # after close: dropped
    finally:
        sock.close()
    assert (stats.packets, stats.bytes, stats.ssrcs, stats.packets_while_inactive,
            stats.invalid_packets, stats.first_at, stats.last_at) == \
        (2, 344, [0x1234, 77], 1, 1, 10.0, 10.5)
    assert stats.pcap_path == str(tmp_path / "sess-1.pcap")
    assert summarize_pcap(Path(stats.pcap_path).read_bytes()).packets == 2
    with wave.open(stats.wav_path or "") as r:
        assert r.getnframes() == 320


def test_stream_recorder_survives_a_write_error(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stats = StreamStats("1", sock.getsockname()[1], 8, "PCMA/8000", "recvonly")
    try:
        rec = StreamRecorder(sock, stats, record_dir=tmp_path, basename="full")
        assert rec.pcap is not None

        def disk_full(*_args: object) -> None:
            raise OSError(28, "No space left on device")

        rec.pcap.write = disk_full  # type: ignore[method-assign]
        rec.on_datagram(rtp(1, 0, pt=8), ("127.0.0.1", 1), now=1.0)
        rec.on_datagram(rtp(2, 160, pt=8), ("127.0.0.1", 1), now=2.0)
        rec.close()
    finally:
        sock.close()
    assert stats.packets == 2 and "No space" in (stats.write_error or "")
    assert rec.pcap is None and rec.wav is None
