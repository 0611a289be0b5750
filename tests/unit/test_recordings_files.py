"""rtpengine metadata files, the pcap reader, checks, the index and the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import RecordingError
from orchestrator.recordings import (
    PcapReader,
    RecordingIndex,
    call_id_from_filename,
    check_metafile,
    collect,
    follow,
    parse_metadata_string,
    parse_pcap_metafile,
    parse_proc_metafile,
    summarize_pcap,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "recordings"
SPOOL = DATA / "spool"
META = next((SPOOL / "metadata").glob("*.txt"))
PCAP = next((SPOOL / "pcaps").glob("*.pcap"))


def snapshot(root: Path) -> dict[str, tuple[str, float]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    dst = tmp_path / "spool"
    shutil.copytree(SPOOL, dst)
    return dst


# ------------------------------------------------------------------ metafiles

def test_parse_real_pcap_metafile() -> None:
    pm = parse_pcap_metafile(META.read_bytes())
    assert pm.pcap_path.endswith("/pcaps/c1%40test-da756a1e1951d7d5.pcap")
    assert [(b.label, b.mode, b.before_packet) for b in pm.blocks] == [
        ("caller", "offer", 1), ("callee", "answer", 1)]
    assert [b.media_ports for b in pm.blocks] == [[("audio", 42000)], [("audio", 42010)]]
    assert pm.metadata == "k1:v1|k2:v2" and pm.metadata_pairs == {"k1": "v1", "k2": "v2"}
    assert pm.call_start is not None and pm.call_end is not None
    assert pm.terminated_ms is not None and pm.blocks[0].started_ms is not None


def test_parse_metafile_with_proc_chunks_after_metadata() -> None:
    data = META.read_bytes() + b"RECORDING 1\n0:\n\n"
    pm = parse_pcap_metafile(data)
    assert (pm.metadata, pm.trailing) == ("k1:v1|k2:v2", "RECORDING 1\n0:")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "line 1: expected the absolute path of the pcap"),
    (b"relative.pcap\n", "line 1: expected the absolute path of the pcap"),
    (b"/x.pcap\n\nGarbage here\n", "line 3: unexpected line 'Garbage here'"),
    (b"/x.pcap\n\nTimestamp terminated ms(first monologue): soon\n",
     "line 3: terminated timestamp 'soon' is not a number"),
    (b"/x.pcap\xff\n", "metadata file is not UTF-8"),
])
def test_malformed_pcap_metafile(data: bytes, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        parse_pcap_metafile(data)


def test_parse_proc_metafile() -> None:
    pm = parse_proc_metafile((DATA / "c2%40test-0123456789abcdef.meta").read_bytes())
    assert (pm.call_id, pm.parent, pm.recording) == ("c2@test", "c2%40test-0123456789abcdef", True)
    assert pm.metadata_pairs == {"k3": "v3"}  # the last METADATA chunk wins
    assert (pm.labels, pm.tags) == ({"0": "caller", "1": "callee"}, {"0": "ft2", "1": "tt2"})
    assert pm.sdps[0][0] == "SDP from 0 before offer"


def test_truncated_proc_metafile() -> None:
    with pytest.raises(RecordingError, match="section 'METADATA' is truncated: 50 bytes"):
        parse_proc_metafile(b"METADATA\n50:\nk1:v1\n")


def test_call_id_from_filename_and_metadata_string() -> None:
    assert call_id_from_filename("rtpengine-meta-c1%40test-da756a1e1951d7d5.txt") == "c1@test"
    assert call_id_from_filename("notes.txt") is None
    assert parse_metadata_string("a:1|b:x:y||c") == {"a": "1", "b": "x:y"}


# ------------------------------------------------------------------ pcap

def pcap(linktype: int, packets: list[bytes], endian: str = "<") -> bytes:
    out = struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, p in enumerate(packets):
        out += struct.pack(endian + "IIII", 1700000000 + i, 0, len(p), len(p)) + p
    return out


def ipv4_udp(sport: int, dport: int, payload: bytes = b"\x80" * 12) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                        bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp)


def test_real_pcap_counts_per_port() -> None:
    s = summarize_pcap(PCAP.read_bytes())
    assert (s.linktype, s.packets, s.truncated) == (101, 10, False)
    assert dict(s.dst_ports) == {42000: 5, 42010: 5}


@pytest.mark.parametrize("endian", ["<", ">"])
def test_ethernet_and_vlan(endian: str) -> None:
    eth = b"\x00" * 12 + b"\x08\x00"
    vlan = b"\x00" * 12 + b"\x81\x00\x00\x05\x08\x00"
    arp = b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28
    s = summarize_pcap(pcap(1, [eth + ipv4_udp(5000, 6000), vlan + ipv4_udp(5002, 6002), arp],
                            endian))
    assert (s.packets, s.udp_packets) == (3, 2)
    assert s.flows[("127.0.0.1", 5000, "127.0.0.1", 6000)] == 1 and s.dst_ports[6002] == 1


def test_ipv6_raw() -> None:
    udp = struct.pack("!HHHH", 1000, 2000, 8, 0)
    ip6 = bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", 8, 17, 64) + b"\x00" * 15 + b"\x01" \
        + b"\x00" * 15 + b"\x01" + udp
    assert summarize_pcap(pcap(229, [ip6])).dst_ports == {2000: 1}


def test_truncated_pcap_is_flagged_streaming() -> None:
    data = pcap(101, [ipv4_udp(1, 2), ipv4_udp(1, 2)])[:-5]
    reader = PcapReader()
    for i in range(0, len(data), 7):  # fed in small chunks
        reader.feed(data[i:i + 7])
    s = reader.close()
    assert (s.packets, s.truncated) == (1, True)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no complete header"),
    (b"GIF89a" + b"\x00" * 30, "magic 47494638"),
    (pcap(105, []), "unsupported pcap link type 105"),
])
def test_bad_pcap(data: bytes, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        summarize_pcap(data)


# ------------------------------------------------------------------ checks and index

def test_check_ok_and_read_only(spool: Path) -> None:
    before = snapshot(spool)
    chk = check_metafile(next((spool / "metadata").glob("*.txt")), required_keys=["k1"])
    assert (chk.status, chk.problems, chk.call_id, chk.packets) == ("ok", [], "c1@test", 10)
    assert [(s["label"], s["port"], s["packets"]) for s in chk.streams] == [
        ("caller", 42000, 5), ("callee", 42010, 5)]
    assert snapshot(spool) == before


def test_missing_pcap(spool: Path) -> None:
    pcap_file = next((spool / "pcaps").glob("*.pcap"))
    pcap_file.unlink()
    chk = check_metafile(next((spool / "metadata").glob("*.txt")))
    assert chk.problems == [f"pcap missing: {pcap_file}"]


def test_truncated_pcap(spool: Path) -> None:
    pcap_file = next((spool / "pcaps").glob("*.pcap"))
    pcap_file.write_bytes(pcap_file.read_bytes()[:24 + 216 * 3 + 100])
    chk = check_metafile(next((spool / "metadata").glob("*.txt")))
    assert chk.problems == [
        f"pcap truncated: {pcap_file} ends inside a packet record (3 whole packets)"]
    assert [s["packets"] for s in chk.streams] == [1, 2]


def test_stream_without_packets(spool: Path) -> None:
    pcap_file = next((spool / "pcaps").glob("*.pcap"))
    data = pcap_file.read_bytes()
    recs, pos = [data[:24]], 24
    while pos < len(data):  # keep only the packets sent to port 42000
        n = struct.unpack_from("<I", data, pos + 8)[0]
        rec = data[pos:pos + 16 + n]
        if struct.unpack_from("!H", rec, 16 + 22)[0] == 42000:
            recs.append(rec)
        pos += 16 + n
    pcap_file.write_bytes(b"".join(recs))
    chk = check_metafile(next((spool / "metadata").glob("*.txt")))
    assert chk.problems == ["no packets for the audio stream on port 42010 (label callee, SDP "
                            "answer): one side not recorded"]


def test_required_key_missing_and_malformed_metafile(spool: Path) -> None:
    meta = next((spool / "metadata").glob("*.txt"))
    assert check_metafile(meta, required_keys=["k1", "agent", "queue"]).problems == [
        "metadata lacks required key(s): agent, queue"]
    bad = spool / "metadata" / "rtpengine-meta-x-0000000000000000.txt"
    bad.write_bytes(b"not a metafile\n")
    assert check_metafile(bad).problems == [
        "metadata file malformed: line 1: expected the absolute path of the pcap, got "
        "'not a metafile'"]


def _with_metadata(spool: Path, metadata: str) -> Path:
    """The spool's recording with its metadata string replaced (an edited copy)."""
    meta = next((spool / "metadata").glob("*.txt"))
    meta.write_bytes(meta.read_bytes().replace(b"k1:v1|k2:v2", metadata.encode()))
    return meta


EDGE = "call-id:c1%40test|rule:default|edge:edge1"


@pytest.mark.parametrize(("metadata", "problems"), [
    (f"{EDGE}|from:sip%3aa%ff%40h|to:sip%3ab%40h", []),
    (f"{EDGE}|from:|to:sip%3ab%40h|pai:sip%3a%2b44%40h", []),  # PAI names the caller
    # what a byte the edge could not encode used to leave behind
    (f"{EDGE}|from:|to:sip%3ab%40h",
     ["caller identity empty: metadata 'from' is empty (and no 'pai')"]),
    (f"{EDGE}|from:%20%09|to:sip%3ab%40h",
     ["caller identity empty: metadata 'from' is empty (and no 'pai')"]),
    (f"{EDGE}|from:sip%3aa%40h",
     ["callee identity empty: metadata 'to' is missing"]),
    (EDGE, ["caller identity empty: metadata 'from' is missing (and no 'pai')",
            "callee identity empty: metadata 'to' is missing"]),
    (f"{EDGE}|from:sip%zz|to:sip%3ab%40h",
     ["metadata 'from': not percent-encoded at offset 3: '%zz'"]),
    ("k1:v1|k2:v2", []),  # not an edge's recording (no edge/from/to): nothing expected
])
def test_edge_recording_names_both_parties(spool: Path, metadata: str,
                                           problems: list[str]) -> None:
    chk = check_metafile(_with_metadata(spool, metadata))
    assert chk.problems == problems
    assert chk.status == ("problem" if problems else "ok")


def test_cli_collect_flags_an_empty_identity(spool: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _with_metadata(spool, f"{EDGE}|from:|to:sip%3ab%40h")
    idx = str(tmp_path / "idx.sqlite")
    assert main(["recordings", "collect", str(spool), "--index", idx, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == 1
    assert out["collected"][0]["problems"] == [
        "caller identity empty: metadata 'from' is empty (and no 'pai')"]


def test_collect_indexes_once_then_audit(spool: Path, tmp_path: Path) -> None:
    with RecordingIndex(tmp_path / "idx.sqlite") as index:
        first = collect(spool, index)
        assert [c.status for c in first] == ["ok"]
        assert collect(spool, index) == []  # unchanged files are not checked again
        assert len(collect(spool, index, recheck=True)) == 1
        next((spool / "pcaps").glob("*.pcap")).unlink()
        (again,) = collect(spool, index, recheck=True)
        rows = index.rows(problems_only=True)
    assert again.status == "problem"
    assert [(r["call_id"], r["status"], r["problems"]) for r in rows] == [
        ("c1@test", "problem", again.problems)]


def test_follow_rounds(spool: Path, tmp_path: Path) -> None:
    slept: list[float] = []
    with RecordingIndex(tmp_path / "idx.sqlite") as index:
        n = follow(spool, index, interval=0.5, rounds=3, sleep=slept.append)
    assert (n, slept) == (1, [0.5, 0.5])


def test_cli_collect_and_audit(spool: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    idx = str(tmp_path / "idx.sqlite")
    assert main(["recordings", "collect", str(spool), "--index", idx, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["problems"], out["collected"][0]["call_id"]) == (0, "c1@test")
    assert main(["recordings", "audit", "--index", idx, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recordings"] == []
    assert main(["recordings", "collect", str(spool), "--index", idx, "--recheck",
                 "--require-key", "agent"]) == 1
    assert "1 recording(s) collected, 1 with problems" in capsys.readouterr().out
    assert main(["recordings", "audit", "--index", idx, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["recordings"]
    assert [r["problems"] for r in rows] == [["metadata lacks required key(s): agent"]]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recordings", "collect", str(tmp_path / "nope"), "--index",
                 str(tmp_path / "i.sqlite")]) == 2
    assert main(["recordings", "audit", "--index", str(tmp_path / "none.sqlite")]) == 2
    assert "no index at" in capsys.readouterr().err
