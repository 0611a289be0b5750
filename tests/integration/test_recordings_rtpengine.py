"""A real rtpengine (userspace, pcap recording, loopback only) records a call; the recording's
metadata is collected, parsed and validated; a truncated or missing pcap is reported.

rtpengine (the shared ``rtpengine`` fixture) is driven by a tiny NG helper written here (JSON
over UDP), not by orchestrator.ng.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.recordings import (
    RecordingIndex,
    check_metafile,
    collect,
    parse_pcap_metafile,
    summarize_pcap,
)
from orchestrator.siprec import (
    CallInfo,
    build_metadata,
    has_errors,
    recording_from_call,
    validate_metadata,
)
from tests.conftest import wait_for
from tests.integration.conftest import RtpengineUnderTest

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
Ng = Callable[[dict[str, Any]], dict[str, Any]]


class _NgClient:
    """Just enough NG for this test: JSON dicts, unique cookies, retransmit same bytes."""

    def __init__(self, port: int) -> None:
        self.addr = (LOOPBACK, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)

    def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        cookie = uuid.uuid4().hex  # never reused: rtpengine caches replies by cookie
        msg = cookie.encode() + b" " + json.dumps(command).encode()
        for _ in range(10):
            self.sock.sendto(msg, self.addr)
            try:
                while True:
                    data = self.sock.recv(65535)
                    got_cookie, _, body = data.partition(b" ")
                    if got_cookie == cookie.encode():
                        return dict(json.loads(body))
            except TimeoutError:
                continue
        raise TimeoutError(f"rtpengine did not answer {command['command']!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ng(rtpengine: RtpengineUnderTest) -> Iterator[Ng]:
    client = _NgClient(rtpengine.udp)
    yield client
    client.close()


def _sdp(port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def _port_of(sdp: str) -> int:
    m = re.search(r"^m=audio (\d+)", sdp, re.MULTILINE)
    assert m, sdp
    return int(m.group(1))


def _rtp(seq: int, ssrc: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") \
        + ssrc.to_bytes(4, "big") + b"\xff" * 160


def _record_call(ng: Ng, recdir: Path, call_id: str) -> tuple[Path, dict[str, Any]]:
    """Offer/answer with recording on, RTP both ways, a SIPREC subscribe, then delete."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind((LOOPBACK, 0))
        b.bind((LOOPBACK, 0))
        offer = ng({"command": "offer", "call-id": call_id, "from-tag": "ft1",
                    "sdp": _sdp(a.getsockname()[1]), "record-call": "on",
                    "metadata": "k1:v1|k2:v2", "label": "caller"})
        assert offer["result"] == "ok", offer
        answer = ng({"command": "answer", "call-id": call_id, "from-tag": "ft1", "to-tag": "tt1",
                     "sdp": _sdp(b.getsockname()[1]), "label": "callee"})
        assert answer["result"] == "ok", answer
        to_b, to_a = _port_of(answer["sdp"]), _port_of(offer["sdp"])
        for seq in range(5):  # A sends to the port in the answer, B to the port in the offer
            a.sendto(_rtp(seq, 0x1111), (LOOPBACK, to_b))
            b.sendto(_rtp(seq, 0x2222), (LOOPBACK, to_a))
            time.sleep(0.01)
        sub = ng({"command": "subscribe request", "call-id": call_id, "flags": ["all", "SIPREC"],
                  "to-tag": "srs1"})
        assert sub["result"] == "ok", sub
        deleted = ng({"command": "delete", "call-id": call_id, "from-tag": "ft1"})
        assert deleted["result"] == "ok", deleted
    finally:
        a.close()
        b.close()
    escaped = call_id.replace("@", "%40")
    pattern = f"rtpengine-meta-{escaped}-*.txt"
    meta = wait_for(lambda: sorted((recdir / "metadata").glob(pattern)), 10,
                    f"{pattern} in {recdir / 'metadata'}")[0]
    return meta, sub


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_recorded_call_is_collected_parsed_and_validated(rtpengine: RtpengineUnderTest, ng: Ng,
                                                         tmp_path: Path) -> None:
    recdir = rtpengine.rec
    call_id = f"it-{os.getpid()}@test"
    meta, sub = _record_call(ng, recdir, call_id)

    parsed = parse_pcap_metafile(meta.read_bytes())
    assert parsed.metadata_pairs == {"k1": "v1", "k2": "v2"}
    assert [(blk.mode, blk.label) for blk in parsed.blocks] == [("offer", "caller"),
                                                               ("answer", "callee")]
    assert parsed.call_end is not None
    pcap = Path(parsed.pcap_path)
    assert summarize_pcap(pcap.read_bytes()).packets == 10

    before = _snapshot(recdir)
    with RecordingIndex(tmp_path / "index.sqlite") as index:
        checks = [c for c in collect(recdir, index, required_keys=["k1", "k2"])
                  if c.call_id == call_id]
        rows = [r for r in index.rows() if r["call_id"] == call_id]
    assert [(c.status, c.problems) for c in checks] == [("ok", [])]
    assert [(s["label"], s["packets"]) for s in checks[0].streams] == [("caller", 5),
                                                                      ("callee", 5)]
    assert [(r["status"], r["packets"]) for r in rows] == [("ok", 10)]
    assert _snapshot(recdir) == before  # collecting never touches the recording

    # The SIPREC subscribe reply turns into metadata whose labels match rtpengine's SDP.
    call = CallInfo('"Alice <A&B>" <sip:alice@atlanta.example.com>;tag=ft1',
                    "<sip:bob@biloxi.example.com>;tag=tt1", "ft1", "tt1", lang="en")
    xml = build_metadata(recording_from_call(call, sub))
    findings = validate_metadata(xml, sdp=sub["sdp"])
    assert not has_errors(findings), findings
    assert sorted(sub["media-labels"]) == sorted(re.findall(r"a=label:(\S+)", sub["sdp"]))


def test_truncated_or_missing_pcap_is_reported(rtpengine: RtpengineUnderTest, ng: Ng,
                                               tmp_path: Path) -> None:
    recdir = rtpengine.rec
    call_id = f"it2-{os.getpid()}@test"
    meta, _sub = _record_call(ng, recdir, call_id)
    pcap = Path(parse_pcap_metafile(meta.read_bytes()).pcap_path)
    original = _snapshot(recdir)

    copy = tmp_path / "copy"
    (copy / "metadata").mkdir(parents=True)
    (copy / "pcaps").mkdir()
    shutil.copy2(meta, copy / "metadata" / meta.name)
    copied_pcap = copy / "pcaps" / pcap.name
    shutil.copy2(pcap, copied_pcap)
    copied_meta = copy / "metadata" / meta.name
    assert check_metafile(copied_meta).problems == []

    data = copied_pcap.read_bytes()
    copied_pcap.write_bytes(data[:len(data) - 50])
    truncated = check_metafile(copied_meta)
    assert truncated.status == "problem"
    assert truncated.problems[0] == (f"pcap truncated: {copied_pcap} ends inside a packet "
                                     "record (9 whole packets)")

    copied_pcap.write_bytes(data[:24])  # header only: nothing recorded
    empty = check_metafile(copied_meta)
    assert empty.problems[0] == f"pcap holds no packets: {copied_pcap}"
    assert len(empty.problems) == 3  # and no packets for either stream

    copied_pcap.unlink()
    with RecordingIndex(tmp_path / "index.sqlite") as index:
        (missing,) = collect(copy, index)
        audit = index.rows(problems_only=True)
    assert missing.problems == [f"pcap missing: {copied_pcap}"]
    assert [r["problems"] for r in audit] == [[f"pcap missing: {copied_pcap}"]]
    assert _snapshot(recdir) == original
