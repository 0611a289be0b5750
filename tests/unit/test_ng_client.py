"""NgClient over MockTransport and a scripted loopback UDP peer (no rtpengine here)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import (
    NgError,
    NgOverloaded,
    NgProtocolError,
    NgTimeout,
    NgTransportError,
    NgUnsupported,
)
from orchestrator.ng import MockTransport, NgClient, Reply, UdpTransport
from orchestrator.ng.codec import decode_body, decode_message, encode_message, text


def client(handler: Callable[[dict[str, Any]], Any], **kw: Any) -> tuple[NgClient, MockTransport]:
    t = MockTransport(handler)
    return NgClient(transport=t, **kw), t


# ----------------------------------------------------------------------------- replies
def test_ok_returns_data_and_request_keys() -> None:
    ng, t = client(lambda r: {"result": "ok", "sdp": "v=0\r\n", "recordings": ["/x.pcap"]})
    r = ng.offer("c1", "ft", b"v=0\r\n", label="caller", record_call=True,
                 metadata={"case": "42", "agent": "bob"}, flags=["trust-address"])
    assert r.sdp == b"v=0\r\n" and r.recordings == ["/x.pcap"]
    assert t.requests == [{"command": "offer", "call-id": "c1", "from-tag": "ft",
                           "sdp": "v=0\r\n", "label": "caller", "record call": "yes",
                           "metadata": "case:42|agent:bob", "flags": ["trust-address"]}]


def test_warning_is_kept_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    ng, _ = client(lambda r: {"result": "ok", "warning": "Call-ID not found or tags didn't match"})
    with caplog.at_level("WARNING"):
        r = ng.delete("nope", "ft")
    assert r.warning == "Call-ID not found or tags didn't match"
    assert "tags didn't match" in caplog.text


def test_error_raises_ngerror_with_reason() -> None:
    ng, _ = client(lambda r: {"result": "error", "error-reason": "Unknown call-id"})
    with pytest.raises(NgError) as ei:
        ng.query("c1")
    assert ei.value.reason == "Unknown call-id" and ei.value.command == "query"
    assert ei.value.exit_code == 1


def test_load_limit_raises_overloaded() -> None:
    ng, _ = client(lambda r: {"result": "load limit", "message": "Parallel session limit reached"})
    with pytest.raises(NgOverloaded, match="Parallel session limit reached"):
        ng.offer("c1", "ft", "v=0")


def test_unknown_result_is_protocol_error() -> None:
    ng, _ = client(lambda r: {"result": "maybe"})
    with pytest.raises(NgProtocolError):
        ng.ping()


def test_ping_needs_pong() -> None:
    ng, _ = client(lambda r: {"result": "ok"})
    with pytest.raises(NgProtocolError, match="pong"):
        ng.ping()


@pytest.mark.parametrize("raw", [b"d6:result4:po", b"[1]", b"", b"d6:resulti1ee"])
def test_malformed_reply_bytes(raw: bytes) -> None:
    ng, _ = client(lambda r: raw)
    with pytest.raises(NgProtocolError):
        ng.ping()


def test_unrecognized_command_remembered_and_fallback() -> None:
    seen: list[str] = []

    def handler(r: dict[str, Any]) -> dict[str, Any]:
        seen.append(r["command"])
        if r["command"] == "pause recording":
            return {"result": "error", "error-reason": "Unrecognized command"}
        return {"result": "ok"}

    ng, t = client(handler)
    assert ng.supports("pause recording") is None
    with pytest.raises(NgUnsupported):
        ng.pause_recording("c1")
    assert ng.supports("pause recording") is False
    with pytest.raises(NgUnsupported):  # remembered: not sent again
        ng.pause_recording("c1")
    assert seen == ["pause recording"]
    assert ng.pause_recording("c1", fallback=True) == "stopped"
    assert seen == ["pause recording", "stop recording"]
    assert t.requests[-1] == {"command": "stop recording", "call-id": "c1", "flags": ["pause"]}


def test_pause_supported() -> None:
    ng, _ = client(lambda r: {"result": "ok"})
    assert ng.pause_recording("c1") == "paused"
    assert ng.supports("pause recording") is True


def test_default_encodings() -> None:
    ng, _ = client(lambda r: {"result": "pong"})
    assert ng.encoding == "json"  # JSON replies are parsed in C
    bng, _ = client(lambda r: {"result": "pong"}, encoding="bencode")
    bng.ping()
    assert bng.encoding == "bencode"


def test_non_utf8_goes_as_bencode_on_the_wire() -> None:
    wires: list[bytes] = []

    class Capture(MockTransport):
        def request(self, cookie: bytes, message: bytes, timeout: float) -> bytes:
            wires.append(message)
            return super().request(cookie, message, timeout)

    ng = NgClient(transport=Capture(lambda r: {"result": "ok"}))
    ng.start_recording("c1", metadata="a:b")
    ng.call("start recording", {"metadata": b"\xff"}, call_id="c1")
    assert decode_message(wires[0])[2] == "json"
    _, body, enc = decode_message(wires[1])
    assert enc == "bencode" and body[b"metadata"] == b"\xff"


def test_tcp_refuses_json() -> None:
    with pytest.raises(ValueError, match="does not carry json"):
        NgClient(("127.0.0.1", 9), transport="tcp", encoding="json")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NgClient(transport=MockTransport(lambda r: {}), timeout=0)


def test_subscribe_request_typed() -> None:
    reply = {"result": "ok", "sdp": "v=0\r\nm=audio 1 RTP/AVP 0\r\na=label:1\r\n",
             "to-tag": "srs1", "from-tags": ["ft", "tt"],
             "tag-medias": [{"tag": "ft", "label": "caller", "medias": [
                 {"index": 1, "type": "audio", "label": "1", "mode": "sendrecv"}]}],
             "media-labels": {
                 "1": {"tag": "ft", "index": 1, "type": "audio", "label": "caller",
                       "mode": "sendrecv"},
                 "0": {"tag": "tt", "index": 1, "type": "audio", "label": "callee",
                       "mode": "sendrecv"}}}
    ng, t = client(lambda r: reply)
    sub = ng.subscribe_request("c1", all=True, siprec=True, to_tag="srs1")
    assert t.requests[0]["flags"] == ["all", "SIPREC"]
    assert sub.to_tag == "srs1" and sub.from_tags == ["ft", "tt"]
    assert sub.media_labels["0"].tag == "tt"
    assert sub.media_labels["1"].participant_label == "caller"
    assert sub.label_for_tag("ft") == ["1"]
    assert sub.tag_medias[0].medias[0].label == "1"


def test_query_typed() -> None:
    reply = {"result": "ok", "created": 100, "created_us": 500000, "last signal": 101,
             "tags": {
                 "ft": {"tag": "ft", "label": "caller", "created": 100,
                        "subscriptions": [{"tag": "tt", "type": "offer/answer"}],
                        "subscribers": [{"tag": "tt", "type": "offer/answer"},
                                        {"tag": "srs", "type": "pub/sub"}],
                        "medias": [{"streams": [{"stats": {"packets": 5, "bytes": 800}}]}]},
                 "tt": {"tag": "tt", "subscriptions": [{"tag": "ft", "type": "offer/answer"}]},
                 "srs": {"tag": "srs", "subscriptions": [{"tag": "ft", "type": "pub/sub"}]}},
             "totals": {"RTP": {"packets": 5}}}
    ng, _ = client(lambda r: reply)
    info = ng.query("c1")
    assert info.created == 100.5 and info.packets == 5
    assert [t.tag for t in info.legs] == ["ft", "tt"]
    assert [t.tag for t in info.subscribers] == ["srs"]
    assert info.tags["ft"].packets == 5 and info.tags["ft"].label == "caller"


def test_call_many_mixes_results_and_errors() -> None:
    def handler(r: dict[str, Any]) -> dict[str, Any]:
        if r.get("call-id") == "bad":
            return {"result": "error", "error-reason": "Unknown call-id"}
        return {"result": "ok", "n": r.get("call-id")}

    ng, _ = client(handler)
    out = ng.call_many([("query", {"call-id": "a"}), ("query", {"call-id": "bad"})])
    assert out[0]["n"] == b"a"  # type: ignore[index]
    assert isinstance(out[1], NgError)


def test_cookies_unique_per_command() -> None:
    ng, t = client(lambda r: {"result": "pong"})
    for _ in range(50):
        ng.ping()
    assert len(set(t.cookies)) == 50


def test_context_manager_closes_transport() -> None:
    closed = []

    class T(MockTransport):
        def close(self) -> None:
            closed.append(True)

    with NgClient(transport=T(lambda r: {"result": "pong"})) as ng:
        ng.ping()
    assert closed == [True]


# ----------------------------------------------------------------------------- UDP peer
class Peer:
    """A scripted UDP peer on loopback: ``script(cookie, body) -> list of datagrams``."""

    def __init__(self, script: Callable[[bytes, dict[bytes, Any], int], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.script = script
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.received.append(data)
            cookie, body, _ = decode_message(data)
            for out in self.script(cookie, body, len(self.received)):
                self.sock.sendto(out, src)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.sock.close()


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(script: Callable[[bytes, dict[bytes, Any], int], list[bytes]]) -> Peer:
        p = Peer(script)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def test_udp_wrong_cookie_is_ignored_then_timeout(peer_factory: Callable[..., Peer]) -> None:
    p = peer_factory(lambda ck, body, n: [encode_message(b"other" + ck, {"result": "pong"})])
    with NgClient(p.address, timeout=0.3, first_retry=0.1) as ng:
        with pytest.raises(NgTimeout):
            ng.ping()
    assert len(p.received) >= 2  # retransmitted before giving up
    assert len({d for d in p.received}) == 1  # same cookie and bytes every time


def test_udp_garbage_reply_is_protocol_error(peer_factory: Callable[..., Peer]) -> None:
    p = peer_factory(lambda ck, body, n: [ck + b" d6:result4:po"])
    with NgClient(p.address, timeout=0.5) as ng, pytest.raises(NgProtocolError):
        ng.ping()


def test_udp_non_dict_json_reply(peer_factory: Callable[..., Peer]) -> None:
    p = peer_factory(lambda ck, body, n: [ck + b' ["pong"]'])
    with NgClient(p.address, timeout=0.5) as ng, pytest.raises(NgProtocolError):
        ng.ping()


def test_udp_huge_length_prefix(peer_factory: Callable[..., Peer]) -> None:
    p = peer_factory(lambda ck, body, n: [ck + b" d6:result99999999999:pong"])
    with NgClient(p.address, timeout=0.5, encoding="bencode") as ng:
        with pytest.raises(NgProtocolError, match="exceeds"):
            ng.ping()


def test_udp_retransmits_until_answered(peer_factory: Callable[..., Peer]) -> None:
    p = peer_factory(lambda ck, body, n: [] if n < 3 else
                     [encode_message(ck, {"result": "pong"}, "json")])
    with NgClient(p.address, timeout=2.0, first_retry=0.05) as ng:
        ng.ping()
        assert isinstance(ng.transport, UdpTransport)
        assert ng.transport.retransmissions == 2
    assert len(set(p.received)) == 1


def test_udp_refused_is_transport_error() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with NgClient(("127.0.0.1", port), timeout=1.0, first_retry=0.05) as ng:
        with pytest.raises(NgTransportError) as ei:
            ng.ping()
    assert ei.value.exit_code == 3


def test_udp_replies_reach_their_callers(peer_factory: Callable[..., Peer]) -> None:
    # the peer answers in reverse order of arrival in bursts: matching must be by cookie
    held: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def script(ck: bytes, body: dict[bytes, Any], n: int) -> list[bytes]:
        with lock:
            held.append((ck, body.get(b"call-id", b"")))
            if len(held) < 4:
                return []
            out = [encode_message(c, {"result": "ok", "echo": cid}, "json")
                   for c, cid in reversed(held)]
            held.clear()
            return out

    p = peer_factory(script)
    results: dict[int, bytes] = {}
    with NgClient(p.address, timeout=3.0, first_retry=2.0) as ng:
        def worker(i: int) -> None:
            results[i] = ng.call("query", call_id=f"call-{i}")["echo"]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert results == {i: f"call-{i}".encode() for i in range(16)}


# ----------------------------------------------------------------------------- lazy replies
QUERY = (b'{"created":1700000000,"tags":{"ft":{"tag":"ft","label":"caller","medias":'
         b'[{"streams":[{"stats":{"packets":3,"bytes":480}}]}]}},"sdp":"v=0\\r\\n\xff",'
         b'"result":"ok"}')


def test_lazy_json_reply_equals_full_decode() -> None:
    ng, _ = client(lambda r: QUERY)
    r = ng.call("query", call_id="c1")
    tags = r["tags"]  # converted on first look-up, then the same object
    assert r["tags"] is tags and tags[b"ft"][b"label"] == b"caller"
    assert r["sdp"] == b"v=0\r\n\xff" and r.text("sdp") == "v=0\r\n\udcff"
    assert "created" in r and "nope" not in r and r.get("nope") is None
    assert len(r) == 4 and sorted(r) == ["created", "result", "sdp", "tags"]
    assert r.data == decode_body(QUERY)[0] and r.data[b"tags"] is tags
    assert r == Reply(decode_body(QUERY)[0], "query")
    assert r.to_json()["sdp"] == "v=0\r\n\ufffd"
    info = ng.query("c1")
    assert info.tags["ft"].packets == 3 and info.tags["ft"].label == "caller"


def test_call_many_replies_keep_json_text_until_used() -> None:
    ng, _ = client(lambda r: QUERY if r.get("call-id") != "bad" else
                   {"result": "error", "error-reason": "Unknown call-id"})
    out = ng.call_many([("query", {"call-id": "a"}), ("query", {"call-id": "bad"})])
    assert isinstance(out[0], Reply) and isinstance(out[1], NgError)
    assert out[0]["tags"][b"ft"][b"tag"] == b"ft"
    assert out[0].data == decode_body(QUERY)[0]


@pytest.mark.parametrize("body", [b'{"result":"pong"}', b'{"result":"ok"}',
                                  b"d6:result4:ponge", b"d6:result2:oke"])
def test_result_only_replies_equal_full_decode(body: bytes) -> None:
    # these bodies skip the parser: the reply must be the one a full decode gives
    ng, _ = client(lambda r: body)
    for r in (ng.call("delete", call_id="c"), ng.call_many([("delete", {"call-id": "c"})])[0]):
        assert isinstance(r, Reply)
        assert r.data == decode_body(body)[0] and dict(r) == {"result": r["result"]}
        assert r.result in ("ok", "pong") and r.command == "delete"
    assert ng.supports("delete") is True


def test_json_reply_with_lone_surrogate_escape_is_protocol_error() -> None:
    # \ud800 cannot become bytes: such replies are decoded in full at once, and fail there
    ng, _ = client(lambda r: b'{"result":"ok","x":"\\ud800"}')
    with pytest.raises(NgProtocolError):
        ng.call("query", call_id="c1")
    ng, _ = client(lambda r: b'{"result":"ok","x":"\\u00e9"}')
    assert ng.call("query", call_id="c1")["x"] == "é".encode()


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_any_reply_body_gives_a_reply_or_a_typed_error(body: bytes) -> None:
    ng, _ = client(lambda r: body)
    for fetch in (lambda: [ng.call("query", call_id="c")], lambda: ng.call_many([("query", {})])):
        try:
            out = fetch()
        except (NgError, NgProtocolError):
            continue
        for r in out:
            if isinstance(r, Reply):  # a reply, once returned, converts without errors
                assert r.data == decode_body(body)[0]
                assert dict(r) == {text(k): v for k, v in r.data.items()}
            else:
                assert isinstance(r, (NgError, NgProtocolError))


# ----------------------------------------------------------------------------- UDP pipelining
def test_udp_call_many_retransmits_each_request(peer_factory: Callable[..., Peer]) -> None:
    # the first datagram of every request is lost: each is retransmitted on its own timer
    seen: set[bytes] = set()

    def script(ck: bytes, body: dict[bytes, Any], n: int) -> list[bytes]:
        if ck not in seen:
            seen.add(ck)
            return []
        return [encode_message(ck, {"result": "ok", "echo": body.get(b"call-id")}, "json")]

    p = peer_factory(script)
    with NgClient(p.address, timeout=3.0, first_retry=0.05) as ng:
        out = ng.call_many([("query", {"call-id": f"c{i}"}) for i in range(10)], window=3)
        assert [r["echo"] for r in out] == [f"c{i}".encode() for i in range(10)]  # type: ignore[index]
        assert isinstance(ng.transport, UdpTransport)
        assert ng.transport.retransmissions == 10


def test_udp_call_many_keeps_retransmitting_after_a_timeout(peer_factory: Callable[..., Peer]) -> None:
    # "dead" is never answered and times out with the window empty behind it; the requests
    # sent after that still get their own retransmission schedule (first datagrams lost)
    seen: set[bytes] = set()

    def script(ck: bytes, body: dict[bytes, Any], n: int) -> list[bytes]:
        if body.get(b"call-id") == b"dead" or ck not in seen:
            seen.add(ck)
            return []
        return [encode_message(ck, {"result": "ok"}, "json")]

    p = peer_factory(script)
    with NgClient(p.address, timeout=0.4, first_retry=0.05, max_retry=0.05) as ng:
        out = ng.call_many([("query", {"call-id": "dead"}), ("query", {"call-id": "a"}),
                            ("query", {"call-id": "b"})], window=1)
    assert isinstance(out[0], NgTimeout)
    assert isinstance(out[1], Reply) and isinstance(out[2], Reply)


def test_udp_threads_and_call_many_share_the_socket(peer_factory: Callable[..., Peer]) -> None:
    # one thread pipelines while others wait: whoever reads the socket hands replies over
    p = peer_factory(lambda ck, body, n: [encode_message(
        ck, {"result": "ok", "echo": body.get(b"call-id")}, "json")])
    results: dict[str, bytes] = {}
    batch: list[Any] = []
    with NgClient(p.address, timeout=5.0, first_retry=1.0) as ng:
        def single(i: int) -> None:
            for k in range(20):
                results[f"t{i}-{k}"] = ng.call("query", call_id=f"t{i}-{k}")["echo"]

        def many() -> None:
            batch.extend(ng.call_many([("query", {"call-id": f"m{k}"}) for k in range(200)],
                                      window=16))

        threads = [threading.Thread(target=single, args=(i,)) for i in range(6)]
        threads.append(threading.Thread(target=many))
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results == {k: k.encode() for k in results} and len(results) == 120
    assert [r["echo"] for r in batch] == [f"m{k}".encode() for k in range(200)]


def test_udp_without_kernel_timeouts(peer_factory: Callable[..., Peer],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # platforms without a usable SO_RCVTIMEO fall back to Python socket timeouts
    import orchestrator.ng.transports as transports

    monkeypatch.setattr(transports, "_KERNEL_TIMEOUT", False)
    p = peer_factory(lambda ck, body, n: [] if n < 2 else
                     [encode_message(ck, {"result": "pong"}, "json")])
    with NgClient(p.address, timeout=2.0, first_retry=0.05) as ng:
        ng.ping()
        assert len(ng.call_many([("ping", None)] * 5)) == 5
        assert isinstance(ng.transport, UdpTransport)
        assert not ng.transport._kernel_timeout and ng.transport.retransmissions == 1
    p2 = peer_factory(lambda ck, body, n: [])
    with NgClient(p2.address, timeout=0.2, first_retry=0.05) as ng, pytest.raises(NgTimeout):
        ng.ping()
