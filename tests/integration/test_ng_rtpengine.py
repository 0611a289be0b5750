"""NgClient against a real rtpengine (userspace, loopback), every transport and encoding."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemons import free_port
from orchestrator.errors import NgError, NgUnsupported
from orchestrator.ng import NgClient, Reply, UdpTransport
from orchestrator.ng.codec import decode_message
from orchestrator.site import load
from tests.conftest import wait_for
from tests.integration.conftest import RtpengineUnderTest

pytestmark = pytest.mark.integration


def sdp(port: int, *, extra: str = "") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8\r\n{extra}a=sendrecv\r\n")


COMBOS = [("udp", "json"), ("udp", "bencode"), ("tcp", "bencode"), ("http", "json"),
          ("http", "bencode")]


@pytest.mark.parametrize(("transport", "encoding"), COMBOS)
def test_offer_answer_query_delete(rtpengine: RtpengineUnderTest, transport: str, encoding: str) -> None:
    cid = f"oa-{transport}-{encoding}"
    with rtpengine.client(transport, encoding) as ng:
        ng.ping()
        o = ng.offer(cid, "ft", sdp(5000), label="caller")
        a = ng.answer(cid, "ft", "tt", sdp(6000), label="callee")
        # SDP rewritten to rtpengine's own ports
        assert b"m=audio 5000 " not in o.sdp and b"m=audio 6000 " not in a.sdp
        o_port = int(o.sdp.split(b"m=audio ")[1].split()[0])
        a_port = int(a.sdp.split(b"m=audio ")[1].split()[0])
        lo, hi = rtpengine.port_min, rtpengine.port_max
        assert lo <= o_port <= hi and lo <= a_port <= hi
        info = ng.query(cid)
        assert set(info.tags) == {"ft", "tt"}
        assert info.tags["ft"].label == "caller" and info.tags["tt"].label == "callee"
        assert [t.tag for t in info.legs] == ["ft", "tt"] or {t.tag for t in info.legs} == \
            {"ft", "tt"}
        assert cid in ng.list_calls()
        ng.delete(cid, "ft")

        def gone() -> bool:
            try:
                ng.query(cid)
            except NgError as exc:
                assert "Unknown call-id" in str(exc)
                return True
            return False

        # the rendered config's delete-delay holds the call a moment longer
        wait_for(gone, load().media.delete_delay + 3, "rtpengine to forget the deleted call")


def test_recording_pcap_and_metadata(rtpengine: RtpengineUnderTest) -> None:
    cid = "rec-1@lab"
    with rtpengine.client() as ng:
        o = ng.offer(cid, "ft", sdp(5010), record_call=True, metadata="case:1")
        assert o.recordings and o.recordings[0].endswith(".pcap")
        ng.answer(cid, "ft", "tt", sdp(6010))
        ng.start_recording(cid, metadata={"case": "42", "agent": "bob"})
        ng.stop_recording(cid)
        pcap = Path(o.recordings[0])
        assert pcap.exists() and pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")
        metas = list((rtpengine.rec / "metadata").glob("rtpengine-meta-rec-1%40lab-*.txt"))
        assert len(metas) == 1, list((rtpengine.rec).rglob("*"))
        body = metas[0].read_text()
        assert str(pcap) in body and "case:42|agent:bob" in body  # the last metadata wins
        assert "m=audio" in body  # SDPs written while recording was on
        ng.delete(cid, "ft")


def test_subscribe_siprec_all(rtpengine: RtpengineUnderTest) -> None:
    cid = "sub-1"
    with rtpengine.client() as ng:
        ng.offer(cid, "ft", sdp(5020), label="caller")
        ng.answer(cid, "ft", "tt", sdp(6020), label="callee")
        sub = ng.subscribe_request(cid, all=True, siprec=True, to_tag="srs1")
        assert sub.sdp.count(b"m=audio") == 2
        labels_in_sdp = [ln.split(b":", 1)[1].decode() for ln in sub.sdp.split(b"\r\n")
                         if ln.startswith(b"a=label:")]
        assert sorted(labels_in_sdp) == sorted(sub.media_labels)
        assert {m.tag for m in sub.media_labels.values()} == {"ft", "tt"}
        by_tag = {m.tag: m for m in sub.media_labels.values()}
        assert by_tag["ft"].participant_label == "caller" and by_tag["ft"].type == "audio"
        assert sub.to_tag == "srs1" and sorted(sub.from_tags) == ["ft", "tt"]
        assert b"a=sendonly" in sub.sdp
        answer = sdp(7020).replace("a=sendrecv", "a=recvonly") + \
            "m=audio 7022 RTP/AVP 0 8\r\nc=IN IP4 127.0.0.1\r\na=recvonly\r\n"
        ng.subscribe_answer(cid, "srs1", answer)
        info = ng.query(cid)
        assert [t.tag for t in info.subscribers] == ["srs1"]
        ng.unsubscribe(cid, "srs1")
        ng.delete(cid, "ft")


def test_pause_recording_unsupported_on_10_5(rtpengine: RtpengineUnderTest) -> None:
    with rtpengine.client() as ng:
        ng.offer("p-1", "ft", sdp(5030), record_call=True)
        with pytest.raises(NgUnsupported):
            ng.pause_recording("p-1")
        assert ng.supports("pause recording") is False
        assert ng.pause_recording("p-1", fallback=True) == "stopped"
        ng.delete("p-1", "ft")


def test_non_utf8_metadata_survives_json_client(rtpengine: RtpengineUnderTest) -> None:
    with rtpengine.client("udp", "json") as ng:
        ng.offer("u-1", "ft", sdp(5040), record_call=True)
        ng.start_recording("u-1", metadata=b"k:\xff\xfe".decode("utf-8", "surrogateescape"))
        ng.stop_recording("u-1")
        metas = list((rtpengine.rec / "metadata").glob("rtpengine-meta-u-1-*.txt"))
        assert metas and b"k:\xff\xfe" in metas[0].read_bytes()
        ng.delete("u-1", "ft")


# ----------------------------------------------------------------------------- faults
class Relay:
    """A UDP fault injector between the client and rtpengine (loopback only).

    ``drop_requests``/``drop_replies``: drop that many first datagrams of each direction;
    ``hold_first_reply``: keep the first reply back and deliver it just before the reply
    to the ``release_on``-th request (a late duplicate arriving while another request
    waits).
    """

    def __init__(self, target: tuple[str, int], *, drop_requests: int = 0,
                 drop_replies: int = 0, hold_first_reply: bool = False,
                 release_on: int = 0) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.address = self.front.getsockname()
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(target)
        self.drop_requests, self.drop_replies = drop_requests, drop_replies
        self.hold_first_reply, self.release_on = hold_first_reply, release_on
        self.requests: list[bytes] = []
        self.replies: list[bytes] = []
        self.held: bytes | None = None
        self.client: Any = None
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            r, _, _ = select.select([self.front, self.back], [], [], 0.05)
            if self.front in r:
                data, self.client = self.front.recvfrom(65535)
                self.requests.append(data)
                if self.drop_requests > 0:
                    self.drop_requests -= 1
                else:
                    self.back.send(data)
            if self.back in r:
                data = self.back.recv(65535)
                self.replies.append(data)
                if self.drop_replies > 0:
                    self.drop_replies -= 1
                    continue
                if self.hold_first_reply and self.held is None and len(self.replies) == 1:
                    self.held = data
                    continue
                if self.held is not None and len(self.requests) >= self.release_on:
                    self.front.sendto(self.held, self.client)
                    self.held = b""
                self.front.sendto(data, self.client)

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.front.close()
        self.back.close()


def _offercount(ng: NgClient) -> int:
    stats = ng.statistics().to_json()["statistics"]["controlstatistics"]["proxies"]
    return sum(int(p.get("offercount", 0)) for p in stats)


@pytest.mark.parametrize(("drop_requests", "drop_replies"), [(2, 0), (0, 2), (1, 1)])
def test_retransmission_through_lossy_relay(rtpengine: RtpengineUnderTest, drop_requests: int,
                                            drop_replies: int) -> None:
    cid = f"rt-{drop_requests}-{drop_replies}"
    relay = Relay(("127.0.0.1", rtpengine.udp), drop_requests=drop_requests,
                  drop_replies=drop_replies)
    try:
        with rtpengine.client() as direct, NgClient(relay.address, timeout=3.0,
                                                    first_retry=0.05) as ng:
            before = _offercount(direct)
            reply = ng.offer(cid, "ft", sdp(5050))
            assert b"m=audio" in reply.sdp
            assert _offercount(direct) == before + 1  # executed once, duplicates cached
            sent = relay.requests
            assert len(sent) == 1 + drop_requests + drop_replies
            assert len(set(sent)) == 1  # same cookie, same bytes
            assert isinstance(ng.transport, UdpTransport)
            assert ng.transport.retransmissions == drop_requests + drop_replies
            direct.delete(cid, "ft")
    finally:
        relay.close()


def test_late_duplicate_is_not_taken_for_another_reply(rtpengine: RtpengineUnderTest) -> None:
    relay = Relay(("127.0.0.1", rtpengine.udp), hold_first_reply=True, release_on=3)
    try:
        with NgClient(relay.address, timeout=3.0, first_retry=0.1) as ng:
            a = ng.call("list")  # first reply held back; the retransmission is answered
            assert a.result == "ok"
            ng.ping()  # the held (stale) list reply arrives first: must be ignored
        cookies = [decode_message(r)[0] for r in relay.requests]
        assert cookies[0] == cookies[1] != cookies[2]
        assert relay.held == b""  # the stale reply was really delivered
    finally:
        relay.close()


def test_500_concurrent_requests_from_8_threads(rtpengine: RtpengineUnderTest) -> None:
    with rtpengine.client() as ng:
        for i in range(5):
            ng.offer(f"cc-{i}", f"ft{i}", sdp(5100 + 2 * i), label=f"label-{i}")
        errors: list[BaseException] = []
        mismatches: list[tuple[int, Any]] = []

        def worker(w: int) -> None:
            try:
                for j in range(500 // 8 + (1 if w < 500 % 8 else 0)):
                    i = (w + j) % 5
                    info = ng.query(f"cc-{i}")
                    # after an offer only, rtpengine also lists an "<untagged N>" placeholder
                    mine = [t for t in info.tags if t.startswith("ft")]
                    if mine != [f"ft{i}"] or info.tags[f"ft{i}"].label != f"label-{i}":
                        mismatches.append((i, list(info.tags)))
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not mismatches
        for i in range(5):
            ng.delete(f"cc-{i}", f"ft{i}")


def test_call_many_pipelined(rtpengine: RtpengineUnderTest) -> None:
    with rtpengine.client() as ng:
        ng.offer("cm-1", "ft", sdp(5200))
        out = ng.call_many([("query", {"call-id": "cm-1"}), ("query", {"call-id": "nope"})]
                           + [("ping", None)] * 200, window=32)
        assert out[0]["tags"]  # type: ignore[index]
        assert isinstance(out[1], NgError)
        assert all(r["result"] == b"pong" for r in out[2:])  # type: ignore[index]
        ng.delete("cm-1", "ft")


def test_lazy_json_query_equals_bencode_query(rtpengine: RtpengineUnderTest) -> None:
    # the JSON client converts a reply on first use (and call_many keeps only its text):
    # the same call queried over bencode, decoded in full, must give the same data
    with rtpengine.client(encoding="json") as js, rtpengine.client(encoding="bencode") as be:
        js.offer("lz-1", "ft", sdp(5300), label="caller")
        js.answer("lz-1", "ft", "tt", sdp(5302), label="callee")
        volatile = {b"last signal", b"last redis update"}
        lazy, many = js.call("query", call_id="lz-1"), js.call_many([("query", {"call-id": "lz-1"})])[0]
        full = be.call("query", call_id="lz-1")
        assert isinstance(many, Reply)
        assert lazy["tags"] == full["tags"] == many["tags"]
        for r in (lazy, many):
            assert {k: v for k, v in r.data.items() if k not in volatile} == \
                {k: v for k, v in full.data.items() if k not in volatile}
        js.delete("lz-1", "ft")


def test_tcp_large_message_single_write(rtpengine: RtpengineUnderTest) -> None:
    # > 1024 bytes: rtpengine drops a connection buffering more than that of an incomplete
    # message; one sendall of the whole message keeps it whole on loopback
    with rtpengine.client("tcp") as ng:
        big = sdp(5300, extra="".join(f"a=x-pad{i}:{'y' * 40}\r\n" for i in range(60)))
        assert len(big) > 2048
        r = ng.offer("tcp-big", "ft", big)
        assert b"m=audio" in r.sdp
        ng.delete("tcp-big", "ft")


# ----------------------------------------------------------------------------- CLI
def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_ng_and_record(rtpengine: RtpengineUnderTest) -> None:
    ngaddr = f"127.0.0.1:{rtpengine.udp}"
    p = cli("ng", "ping", "--ng", ngaddr)
    assert p.returncode == 0 and "pong" in p.stdout
    p = cli("ng", "ping", "--ng", f"127.0.0.1:{rtpengine.http}", "--transport", "http",
            "--json")
    assert p.returncode == 0 and '"ok": true' in p.stdout
    with rtpengine.client() as ng:
        ng.offer("cli-1", "ft", sdp(5400))
        ng.answer("cli-1", "ft", "tt", sdp(6400))
        p = cli("ng", "list", "--ng", ngaddr)
        assert p.returncode == 0 and "cli-1" in p.stdout.split()
        p = cli("ng", "query", "cli-1", "--ng", ngaddr, "--json")
        assert p.returncode == 0 and '"ft"' in p.stdout
        p = cli("record", "start", "cli-1", "--ng", ngaddr, "--metadata", "who:cli|n:1")
        assert p.returncode == 0, p.stderr
        p = cli("calls", "--ng", ngaddr, "--recording-dir", str(rtpengine.rec), "--json")
        assert p.returncode == 0
        assert '"recording": true' in p.stdout and '"legs": 2' in p.stdout
        p = cli("record", "stop", "cli-1", "--ng", ngaddr)
        assert p.returncode == 0
        metas = list((rtpengine.rec / "metadata").glob("rtpengine-meta-cli-1-*.txt"))
        assert metas and "who:cli|n:1" in metas[0].read_text()
        p = cli("ng", "stats", "--ng", ngaddr, "--json")
        assert p.returncode == 0 and "currentstatistics" in p.stdout
        ng.delete("cli-1", "ft")


def test_cli_exit_codes(rtpengine: RtpengineUnderTest) -> None:
    ngaddr = f"127.0.0.1:{rtpengine.udp}"
    assert cli("ng", "query", "no-such-call", "--ng", ngaddr).returncode == 1
    assert cli("record", "start", "no-such-call", "--ng", ngaddr).returncode == 1
    assert cli("ng", "ping", "--ng", "nonsense").returncode == 2
    assert cli("ng", "ping", "--ng", ngaddr, "--transport", "tcp",
               "--encoding", "json").returncode == 2
    assert cli("ng", "frobnicate").returncode == 2
    dead = free_port()
    t = time.monotonic()
    assert cli("ng", "ping", "--ng", f"127.0.0.1:{dead}", "--timeout", "1").returncode == 3
    assert time.monotonic() - t < 10
