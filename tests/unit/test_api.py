"""The controller's HTTP API over real sockets: bearer tokens and roles, the operator audit,
and malformed requests (each one refused or answered, nothing executed from a bad one).

The controller behind the server is a recording stub: these tests are about the HTTP
surface; tests/integration/test_security.py drives the same probes against the real
controller."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.api import ApiServer, tls_context
from orchestrator.controller.auth import TokenAuth
from orchestrator.controller.client import ApiTarget, api_request
from orchestrator.errors import ControllerError

OPERATOR = "op-" + "a" * 40
READER = "ro-" + "b" * 40


class Stub:
    """Records the actions the API asks for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.metrics = self
        self.store = self

    def render(self) -> bytes:
        return b"siprecctl_sessions_active 0\n"

    def health(self) -> dict[str, Any]:
        return {"edges": {"edge1": True}}

    def session_views(self, *, open_only: bool = False, limit: int = 200) -> list[Any]:
        return [{"open_only": open_only}]

    def get(self, sid: str) -> None:
        return None

    def for_call(self, call_id: str) -> list[Any]:
        return []

    def _act(self, name: str, call_id: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((name, call_id, kw))
        if call_id == "missing":
            raise ControllerError(f"call {call_id} has no open recording session")
        return {"call_id": call_id, "state": "ok"}

    def start_recording(self, call_id: str, **kw: Any) -> dict[str, Any]:
        return self._act("start", call_id, **kw)

    def stop_recording(self, call_id: str, **kw: Any) -> dict[str, Any]:
        return self._act("stop", call_id, **kw)

    def pause(self, call_id: str, **kw: Any) -> dict[str, Any]:
        return self._act("pause", call_id, **kw)

    def resume(self, call_id: str, **kw: Any) -> dict[str, Any]:
        return self._act("resume", call_id, **kw)


AUTH = TokenAuth([("operator", "operator", OPERATOR), ("dashboard", "readonly", READER)])


def _server() -> tuple[ApiServer, Stub]:
    stub = Stub()
    server = ApiServer(stub, "127.0.0.1", 0, auth=AUTH, workers=4, request_timeout=1.5,
                       idle_timeout=1.0)  # type: ignore[arg-type]
    server.start()
    return server, stub


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ApiServer, Stub]]:
    server, stub = _server()
    yield server, stub
    server.close()


@pytest.fixture
def api(shared: tuple[ApiServer, Stub]) -> tuple[ApiServer, Stub]:
    shared[1].calls.clear()
    return shared


@pytest.fixture
def fresh_api() -> Iterator[tuple[ApiServer, Stub]]:
    """A server of its own, for tests that tie up every worker."""
    server, stub = _server()
    yield server, stub
    server.close()


def raw(server: ApiServer, data: bytes, *, close_write: bool = False,
        timeout: float = 5.0) -> tuple[bytes, float]:
    """Send bytes, read until the server closes: (reply, seconds until closed)."""
    t0 = time.monotonic()
    with socket.create_connection((server.address, server.port), timeout=timeout) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out, time.monotonic() - t0


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def post(path: str, body: bytes, *headers: str, token: str = OPERATOR) -> bytes:
    hdrs = "".join(h + "\r\n" for h in headers)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}{hdrs}\r\n").encode() + body


def cl(body: bytes) -> str:
    return f"Content-Length: {len(body)}"


# ------------------------------------------------------------------ authentication
@pytest.mark.parametrize("method,path", [
    ("GET", "/health"), ("GET", "/metrics"), ("GET", "/sessions"), ("GET", "/sessions/x"),
    ("GET", "/calls/c1"), ("POST", "/calls/c1/start"), ("POST", "/calls/c1/stop"),
    ("POST", "/calls/c1/pause"), ("POST", "/calls/c1/resume")])
@pytest.mark.parametrize("token", [None, "wrong", OPERATOR + "x", OPERATOR[:-1], ""])
def test_no_valid_token_is_401(api: tuple[ApiServer, Stub], method: str, path: str,
                               token: str | None) -> None:
    server, stub = api
    code, doc = api_request(server.url, method, path, {} if method == "POST" else None,
                            token=token, timeout=5)
    assert code == 401 and "bearer token" in doc["error"]
    assert stub.calls == []


def test_401_names_the_scheme(api: tuple[ApiServer, Stub]) -> None:
    reply, _ = raw(api[0], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(reply) == 401 and b'WWW-Authenticate: Bearer realm="siprecctl"' in reply


def test_two_authorization_headers_are_refused(api: tuple[ApiServer, Stub]) -> None:
    reply, _ = raw(api[0], (f"GET /health HTTP/1.1\r\nAuthorization: Bearer {READER}\r\n"
                            f"Authorization: Bearer {OPERATOR}\r\n\r\n").encode())
    assert status(reply) == 401


def test_readonly_token_reads_but_does_not_act(api: tuple[ApiServer, Stub]) -> None:
    server, stub = api
    for path in ("/health", "/metrics", "/sessions?open=1", "/calls/c1"):
        assert api_request(server.url, "GET", path, token=READER, timeout=5)[0] == 200, path
    for action in ("start", "stop", "pause", "resume"):
        code, doc = api_request(server.url, "POST", f"/calls/c1/{action}", {}, token=READER,
                                timeout=5)
        assert code == 403 and "readonly" in doc["error"]
    assert stub.calls == []


def test_operator_action_carries_the_actor(api: tuple[ApiServer, Stub],
                                           caplog: pytest.LogCaptureFixture) -> None:
    server, stub = api
    caplog.set_level("INFO", logger="siprecctl.api")
    target = ApiTarget(server.url, OPERATOR)
    assert api_request(target, "POST", "/calls/c%2F1/stop", {"local": True})[0] == 200
    assert api_request(target, "POST", "/calls/c1/pause", None)[0] == 200
    code, doc = api_request(target, "POST", "/calls/missing/resume", {})
    assert code == 404 and "no open recording session" in doc["error"]
    assert stub.calls == [("stop", "c/1", {"local": True, "actor": "operator@127.0.0.1"}),
                          ("pause", "c1", {"actor": "operator@127.0.0.1"}),
                          ("resume", "missing", {"actor": "operator@127.0.0.1"})]
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]
    assert audit[0] == 'audit: operator@127.0.0.1 stop call c/1 {"local": true} -> 200'
    assert audit[2].endswith("-> 404")


# ------------------------------------------------------------------ malformed requests
BAD_POSTS = [
    ("string-false", post("/calls/c1/stop", b'{"local":"false"}', cl(b'{"local":"false"}')),
     400, b"must be a JSON boolean"),
    ("number-bool", post("/calls/c1/stop", b'{"local":0}', cl(b'{"local":0}')), 400,
     b"must be a JSON boolean"),
    ("group-number", post("/calls/c1/start", b'{"group":5}', cl(b'{"group":5}')), 400,
     b"must be a string or null"),
    ("group-empty", post("/calls/c1/start", b'{"group":""}', cl(b'{"group":""}')), 400,
     b"non-empty"),
    ("unknown-key", post("/calls/c1/stop", b'{"lokal":true}', cl(b'{"lokal":true}')), 400,
     b"unknown key"),
    ("pause-with-keys", post("/calls/c1/pause", b'{"local":true}', cl(b'{"local":true}')),
     400, b"unknown key"),
    ("not-object", post("/calls/c1/stop", b"[true]", cl(b"[true]")), 400,
     b"must be a JSON object"),
    ("not-json", post("/calls/c1/stop", b"{local}", cl(b"{local}")), 400, b"not JSON"),
    ("nan", post("/calls/c1/stop", b'{"local":NaN}', cl(b'{"local":NaN}')), 400, b"not JSON"),
    ("not-utf8", post("/calls/c1/stop", b'{"local":"\xff"}', cl(b'{"local":"\xff"}')), 400,
     b"not JSON"),
    ("deep-nesting", post("/calls/c1/stop", b"[" * 60000, cl(b"[" * 60000)), 400,
     b"nests deeper"),
    ("deep-in-object", post("/calls/c1/stop", b'{"a":' + b"{" * 20, cl(b'{"a":' + b"{" * 20)),
     400, b"nests deeper"),
    ("chunked", post("/calls/c1/stop", b"5\r\n{}   \r\n0\r\n\r\n",
                     "Transfer-Encoding: chunked"), 411, b"chunked"),
    ("chunked-and-length", post("/calls/c1/stop", b"{}", "Transfer-Encoding: chunked",
                                "Content-Length: 2"), 411, b"chunked"),
    ("no-length", post("/calls/c1/stop", b"{}"), 411, b"Content-Length is required"),
    ("negative-length", post("/calls/c1/stop", b"{}", "Content-Length: -1"), 400,
     b"bad Content-Length"),
    ("plus-length", post("/calls/c1/stop", b"{}", "Content-Length: +2"), 400,
     b"bad Content-Length"),
    ("hex-length", post("/calls/c1/stop", b"{}", "Content-Length: 0x2"), 400,
     b"bad Content-Length"),
    ("two-lengths", post("/calls/c1/stop", b"{}", "Content-Length: 2", "Content-Length: 2"),
     400, b"bad Content-Length"),
    ("huge-length", post("/calls/c1/stop", b"{}", "Content-Length: 99999999999"), 400,
     b"bad Content-Length"),
    ("too-large", post("/calls/c1/stop", b"{}", "Content-Length: 70000"), 413,
     b"larger than"),
    ("unknown-action", post("/calls/c1/delete", b"{}", cl(b"{}")), 404, b"no such action"),
    ("control-char-id", post("/calls/c%0A1/stop", b"{}", cl(b"{}")), 400, b"malformed"),
    ("long-id", post("/calls/" + "x" * 300 + "/stop", b"{}", cl(b"{}")), 400, b"malformed"),
    ("bad-escape-id", post("/calls/%ff%fe/stop", b"{}", cl(b"{}")), 400, b"malformed"),
]


@pytest.mark.parametrize("case,data,code,needle", BAD_POSTS, ids=[c[0] for c in BAD_POSTS])
def test_malformed_post_is_refused_and_not_executed(api: tuple[ApiServer, Stub], case: str,
                                                    data: bytes, code: int,
                                                    needle: bytes) -> None:
    server, stub = api
    reply, _ = raw(server, data)
    assert status(reply) == code, reply[:200]
    assert needle in reply
    assert stub.calls == []


BAD_GETS = [
    ("bad-query", "/sessions?open=yes"), ("extra-query", "/sessions?page=5"), ("bad-limit", "/sessions?limit=0"),
    ("query-elsewhere", "/health?x=1"), ("two-opens", "/sessions?open=1&open=0"),
]


@pytest.mark.parametrize("case,path", BAD_GETS, ids=[c[0] for c in BAD_GETS])
def test_malformed_get_is_400(api: tuple[ApiServer, Stub], case: str, path: str) -> None:
    assert api_request(api[0].url, "GET", path, token=READER, timeout=5)[0] == 400


def test_garbage_request_lines(api: tuple[ApiServer, Stub]) -> None:
    server, stub = api
    for data in (b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                 b"BREW /pot HTTP/1.1\r\n\r\n", b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 200
                 + b"\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        reply, took = raw(server, data)
        assert 400 <= status(reply) < 600, (data[:30], reply[:100])
        assert took < 3
    assert stub.calls == []


def test_truncated_body_is_not_executed(api: tuple[ApiServer, Stub]) -> None:
    """The client announces 17 bytes, sends 10 and closes: nothing runs."""
    server, stub = api
    reply, took = raw(server, post("/calls/c1/stop", b'{"local":t', "Content-Length: 17"),
                      close_write=True)
    assert status(reply) == 400 and b"truncated" in reply
    assert stub.calls == []


def test_half_sent_requests_do_not_hold_workers(fresh_api: tuple[ApiServer, Stub]) -> None:
    """As many idle half-sent requests as workers: meanwhile other clients get 503 at once;
    each half-sent one is closed at the request deadline (1.5 s) and the API answers again."""
    server, stub = fresh_api
    socks = []
    t0 = time.monotonic()
    for _ in range(4):  # as many as workers
        s = socket.create_connection((server.address, server.port))
        s.sendall(b"POST /calls/c1/stop HTTP/1.1\r\nContent-Length: 5\r\n")
        socks.append(s)
    time.sleep(0.2)
    reply, took = raw(server, b"GET /health HTTP/1.1\r\n\r\n")
    assert status(reply) == 503 and took < 1.0
    for s in socks:
        s.settimeout(5)
        s.recv(1024)  # EOF (or a reset) from the server, not our timeout
        s.close()
    assert time.monotonic() - t0 < 3.0
    deadline = time.monotonic() + 3
    while api_request(server.url, "GET", "/health", token=READER, timeout=5)[0] != 200:
        assert time.monotonic() < deadline, "the API did not recover after the deadline"
        time.sleep(0.05)
    assert server.refused_busy >= 1
    assert stub.calls == []


def test_slow_drip_is_cut_at_the_deadline(fresh_api: tuple[ApiServer, Stub]) -> None:
    """One byte every 0.3 s keeps each read under the idle timeout (1 s), not under the
    request deadline (1.5 s): the server closes the connection."""
    server, stub = fresh_api
    data = post("/calls/c1/stop", b"{}", "Content-Length: 2")
    with socket.create_connection((server.address, server.port)) as s:
        stop = threading.Event()

        def drip() -> None:
            for b in data:
                if stop.wait(0.3):
                    return
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    return

        t = threading.Thread(target=drip)
        t0 = time.monotonic()
        t.start()
        s.settimeout(5)
        try:
            got = s.recv(1024)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - t0
        stop.set()
        t.join()
    assert got == b"" and 1.2 < took < 3.0
    assert stub.calls == []


def test_tls_client_hello_on_the_plain_port(api: tuple[ApiServer, Stub]) -> None:
    server, _ = api
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()
    with socket.create_connection((server.address, server.port), timeout=5) as s:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s).close()
    assert time.monotonic() - t0 < 2.0


def test_raw_client_hello_gets_a_plain_400(api: tuple[ApiServer, Stub]) -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)
    reply, took = raw(api[0], hello)
    assert status(reply) == 400 and b"plain HTTP, not TLS" in reply and took < 1.0


def test_connect_and_close_is_harmless(api: tuple[ApiServer, Stub]) -> None:
    server, stub = api
    for _ in range(20):
        socket.create_connection((server.address, server.port)).close()
    deadline = time.monotonic() + 2  # 503 while the workers finish those is fine
    while api_request(server.url, "GET", "/health", token=READER, timeout=5)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stub.calls == []


# ------------------------------------------------------------------ TLS
@pytest.fixture
def cert(tmp_path: Path) -> tuple[str, str]:
    key, crt = tmp_path / "api.key", tmp_path / "api.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True,
                   timeout=60)
    key.chmod(0o600)
    return str(crt), str(key)


def test_tls_api(cert: tuple[str, str]) -> None:
    stub = Stub()
    server = ApiServer(stub, "127.0.0.1", 0, auth=AUTH, tls=tls_context(*cert),  # type: ignore[arg-type]
                       request_timeout=1.5, idle_timeout=1.0)
    server.start()
    try:
        assert server.url.startswith("https://")
        target = ApiTarget(server.url, OPERATOR, cert[0])
        assert api_request(target, "GET", "/health")[0] == 200
        assert api_request(target, "POST", "/calls/c1/stop", {"local": False})[0] == 200
        assert stub.calls == [("stop", "c1", {"local": False, "actor": "operator@127.0.0.1"})]
        # plain HTTP on the TLS port: closed within the deadline, nothing done
        reply, took = raw(server, post("/calls/c1/stop", b"{}", cl(b"{}")))
        assert status(reply) == 0 and took < 3
        assert len(stub.calls) == 1
        # failed handshakes leave no watchdog behind
        before = threading.active_count()
        for _ in range(30):
            raw(server, b"GET / HTTP/1.1\r\n\r\n")
        time.sleep(0.2)
        assert threading.active_count() <= before + 2
    finally:
        server.close()


def test_world_readable_tls_key_is_refused(cert: tuple[str, str]) -> None:
    from orchestrator.errors import SecretError

    Path(cert[1]).chmod(0o644)
    with pytest.raises(SecretError, match="readable by everyone"):
        tls_context(*cert)


def test_concurrent_clients_all_answered(api: tuple[ApiServer, Stub]) -> None:
    server, _ = api
    codes: list[int] = []

    def one() -> None:
        for _ in range(10):
            code = 503
            while code == 503:
                code = api_request(server.url, "GET", "/health", token=READER, timeout=5)[0]
            codes.append(code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200] * 80


def test_body_checker_is_pure() -> None:
    from orchestrator.controller.api import BadRequest, parse_action_body

    assert parse_action_body("start", b'{"group":null,"local":true}') == {"group": None,
                                                                         "local": True}
    assert parse_action_body("pause", b"  ") == {}
    with pytest.raises(BadRequest):
        parse_action_body("stop", json.dumps({"local": [[[[[[[[[[1]]]]]]]]]]}).encode())
