"""EvapiClient against scripted TCP peers, for what a real Kamailio will not do on demand:
stop reading (a full socket), stay silent after the secret, answer "refused". The real
edge's authentication is tested in tests/integration/test_security.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from orchestrator.errors import KamailioUnreachable
from orchestrator.kamailio.evapi import EvapiClient, NetstringDecoder, encode_netstring


class Peer:
    """A one-port TCP server; ``script(conn, first_frame)`` runs per connection."""

    def __init__(self, script: Callable[[socket.socket, dict], None]) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.addr = self.srv.getsockname()[:2]
        self.script = script
        self.accepted = 0
        self.firsts: list[dict] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        dec = NetstringDecoder()
        frames: list[bytes] = []
        conn.settimeout(5)
        try:
            while not frames:
                data = conn.recv(4096)
                if not data:
                    return
                frames = dec.feed(data)
        except OSError:
            return
        first = json.loads(frames[0])
        self.firsts.append(first)
        self.script(conn, first)

    def close(self) -> None:
        self.srv.close()
        for c in self.conns:
            c.close()


def send_event(conn: socket.socket, ev: dict) -> None:
    conn.sendall(encode_netstring(json.dumps(ev).encode()))


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def client(peer: Peer, events: list[dict], **kw: object) -> EvapiClient:
    c = EvapiClient(peer.addr, events.append, secret="s" * 43, name="t",  # type: ignore[arg-type]
                    backoff=(0.05, 0.2), **kw)
    c.start()
    return c


def test_authenticates_first_then_receives_events(peers: list[Peer]) -> None:
    def ok(conn: socket.socket, first: dict) -> None:
        send_event(conn, {"event": "auth", "result": "ok"})
        send_event(conn, {"event": "answered", "call_id": "c1"})
        time.sleep(5)

    peers.append(p := Peer(ok))
    events: list[dict] = []
    c = client(p, events)
    try:
        assert c.wait_connected(3)
        assert p.firsts == [{"cmd": "auth", "secret": "s" * 43}]
        deadline = time.monotonic() + 3
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events == [{"event": "answered", "call_id": "c1"}]  # not the auth answer
    finally:
        c.close()


def test_events_before_the_auth_answer_are_kept_in_order(peers: list[Peer]) -> None:
    """A busy edge tags the connection at once but answers from a timer route: events for
    it may come first. They are this connection's, delivered in order after the answer."""
    def busy(conn: socket.socket, first: dict) -> None:
        send_event(conn, {"event": "answered", "call_id": "c1"})
        send_event(conn, {"event": "ended", "call_id": "c1"})
        send_event(conn, {"event": "auth", "result": "ok"})
        send_event(conn, {"event": "answered", "call_id": "c2"})
        time.sleep(5)

    peers.append(p := Peer(busy))
    events: list[dict] = []
    c = client(p, events)
    try:
        assert c.wait_connected(3)
        deadline = time.monotonic() + 3
        while len(events) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(e["event"], e["call_id"]) for e in events] == [
            ("answered", "c1"), ("ended", "c1"), ("answered", "c2")]
        assert p.accepted == 1  # no reconnection
    finally:
        c.close()


def test_refused_stops_for_good(peers: list[Peer]) -> None:
    def refuse(conn: socket.socket, first: dict) -> None:
        send_event(conn, {"event": "auth", "result": "refused", "edge": "edge1",
                          "reason": "another controller of this site is connected"})
        time.sleep(5)

    peers.append(p := Peer(refuse))
    c = client(p, [])
    try:
        t0 = time.monotonic()
        assert c.wait_connected(5) is False
        assert time.monotonic() - t0 < 2  # returns on the refusal, not the timeout
        assert c.refused is not None and "another controller" in str(c.refused)
        time.sleep(0.5)
        assert p.accepted == 1  # no reconnection attempts
        with pytest.raises(KamailioUnreachable):
            c.send({"cmd": "forget", "call_id": "siprec-1"})
    finally:
        c.close()


def test_silence_after_the_secret_is_retried(peers: list[Peer]) -> None:
    """A wrong secret gets no answer from the edge: time out, retry with backoff."""
    peers.append(p := Peer(lambda conn, first: time.sleep(5)))
    c = client(p, [], auth_timeout=0.3)
    try:
        assert c.wait_connected(1.5) is False and c.refused is None
        assert p.accepted >= 2
    finally:
        c.close()


def test_send_to_a_peer_that_stopped_reading_times_out_and_reconnects(
        peers: list[Peer]) -> None:
    """Kamailio stuck: its socket buffer fills. The send gives up after send_timeout (no
    blocked lock for the other senders), the connection is dropped and made again."""
    def stuck(conn: socket.socket, first: dict) -> None:
        send_event(conn, {"event": "auth", "result": "ok"})
        time.sleep(30)  # never reads again

    peers.append(p := Peer(stuck))
    c = client(p, [], send_timeout=0.5)
    try:
        assert c.wait_connected(3)
        big = {"cmd": "sdp", "call_id": "siprec-1", "sdp": "x" * 60000}
        t0 = time.monotonic()
        with pytest.raises(KamailioUnreachable, match="not reading|not connected|send"):
            for _ in range(200):  # fills both socket buffers
                c.send(big)
        assert time.monotonic() - t0 < 3
        # another sender is not blocked behind the stuck one
        t1 = time.monotonic()
        with pytest.raises(KamailioUnreachable):
            c.send({"cmd": "forget", "call_id": "siprec-1"})
        assert time.monotonic() - t1 < 1.0
        deadline = time.monotonic() + 5
        while p.accepted < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.accepted >= 2 and c.wait_connected(3)
        assert c.reconnects >= 1
    finally:
        c.close()


def test_refused_reconnection_is_retried(peers: list[Peer]) -> None:
    """Once connected, a refusal on reconnection is the edge still holding our old
    connection: keep trying instead of stopping."""
    def script(conn: socket.socket, first: dict) -> None:
        if p.accepted == 1:
            send_event(conn, {"event": "auth", "result": "ok"})
            time.sleep(0.2)
            conn.close()  # the connection is lost
        elif p.accepted == 2:
            send_event(conn, {"event": "auth", "result": "refused", "reason": "busy"})
        else:
            send_event(conn, {"event": "auth", "result": "ok"})
            time.sleep(5)

    peers.append(p := Peer(script))
    c = client(p, [])
    try:
        assert c.wait_connected(3)
        deadline = time.monotonic() + 5
        while p.accepted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.accepted >= 3 and c.refused is None
        assert c.wait_connected(3)
    finally:
        c.close()
