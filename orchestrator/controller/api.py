"""The controller's HTTP API (JSON) and ``/metrics`` (Prometheus), on a private listener.

    GET  /health                       edges connected, open sessions
    GET  /sessions[?open=1][&limit=N]  recording sessions (newest first, 200 by default)
    GET  /sessions/<id>                one session with its history
    GET  /calls/<call-id>              the sessions of a call
    POST /calls/<call-id>/start        {"group": "…", "local": false}
    POST /calls/<call-id>/stop         {"local": false}
    POST /calls/<call-id>/pause        a=inactive towards the SRS, media paused
    POST /calls/<call-id>/resume
    GET  /metrics

Every request needs ``Authorization: Bearer <token>`` (401 without a valid one); a
``readonly`` token may only GET (403 otherwise). Every action is logged and passed to the
controller as ``actor="<token name>@<client address>"``.

The server is the standard library's HTTP parser behind a hardened connection layer: a
fixed pool of worker threads with one connection each (more get 503 at once), a deadline
for reading the whole request and an idle timeout per socket operation, one request per
connection, ``Content-Length`` required for a body (no chunked bodies), bodies read whole
before anything runs, strict JSON (bounded nesting, exact types, no unknown keys) and
optional TLS (handshake in the worker, under the same deadline).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ControllerError, IllegalTransition, SecretError, SiprecctlError
from .auth import Principal, TokenAuth

if TYPE_CHECKING:
    from .service import Controller

__all__ = ["ApiServer", "BadRequest", "parse_action_body", "tls_context"]

log = logging.getLogger("siprecctl.api")
MAX_BODY = 64 * 1024
MAX_DEPTH = 8  # the action bodies are flat objects
MAX_ID = 256  # call-ids and session ids in paths
_LENGTH_RE = re.compile(r"[0-9]{1,9}")
# per action: key -> (accepted JSON types, description)
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "start": {"group": ((str, type(None)), "a string or null"),
              "local": ((bool,), "a JSON boolean (true/false)")},
    "stop": {"local": ((bool,), "a JSON boolean (true/false)")},
    "pause": {},
    "resume": {},
}


class BadRequest(ValueError):
    """The request is malformed; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _json_type(v: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object", type(None): "null"}.get(type(v), "a value")


def _depth_ok(raw: bytes, limit: int) -> bool:
    """True when no array/object nests deeper than ``limit`` (strings skipped)."""
    depth = 0
    in_str = esc = False
    for c in raw:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif c in (0x5D, 0x7D):
            depth -= 1
    return True


def _no_constants(name: str) -> Any:
    raise BadRequest(400, f"{name} is not JSON")


def parse_action_body(action: str, raw: bytes) -> dict[str, Any]:
    """The body of ``POST /calls/<id>/<action>`` as a checked dict, or :class:`BadRequest`."""
    if not raw.strip():
        return {}
    if not _depth_ok(raw, MAX_DEPTH):
        raise BadRequest(400, f"body nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"body is not JSON: {str(exc)[:100]}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"body must be a JSON object, got {_json_type(body)}")
    schema = _SCHEMA[action]
    for key, value in body.items():
        if key not in schema:
            allowed = ", ".join(schema) or "none"
            raise BadRequest(400, f"unknown key {key[:40]!r} for {action} (allowed: {allowed})")
        types, what = schema[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise BadRequest(400, f"{key!r} must be {what}, got {_json_type(value)}")
    group = body.get("group")
    if isinstance(group, str) and not 0 < len(group) <= 64:
        raise BadRequest(400, "'group' must be a non-empty name")
    return body


def tls_context(certificate: str, private_key: str) -> ssl.SSLContext:
    """A server context for the API (TLS 1.2+); a world-readable key is refused."""
    key = Path(private_key)
    try:
        if key.stat().st_mode & 0o004:
            raise SecretError(f"{key}: the API's TLS private key is readable by everyone: "
                              f"chmod o-r {key}")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise SecretError(f"controller API TLS: cannot load {certificate} / {private_key}: "
                          f"{exc}") from None
    return ctx


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "siprecctl"
    sys_version = ""

    # ------------------------------------------------------------------ connection
    def setup(self) -> None:
        srv = self.server
        raw: socket.socket = self.request
        raw.settimeout(srv.idle_timeout)
        # the whole request (TLS handshake included) must arrive before this deadline
        self._timer = threading.Timer(srv.request_timeout, _expire, args=(raw,))
        self._timer.daemon = True
        self._timer.start()
        self._tls_on_plain_port = False
        # what the stdlib's logging needs before a request line was parsed
        self.requestline, self.command, self.request_version = "", "", "HTTP/1.1"
        try:
            if srv.tls is not None:
                self.request = srv.tls.wrap_socket(raw, server_side=True)
            else:
                first = raw.recv(1, socket.MSG_PEEK)
                self._tls_on_plain_port = first == b"\x16"  # a TLS handshake record
            super().setup()
        except BaseException:
            self._timer.cancel()  # finish() is not called when setup fails
            raise

    def finish(self) -> None:
        self._timer.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        self.close_connection = True
        if self._tls_on_plain_port:
            self._send_raw(400, {"error": "this port speaks plain HTTP, not TLS"})
            return
        try:
            self.handle_one_request()
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.debug("api: %s: %s", self.client_address[0], exc)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.client_address[0], *args)

    def _send_raw(self, code: int, doc: Any, ctype: str = "application/json",
                  extra: dict[str, str] | None = None) -> None:
        body = doc if isinstance(doc, bytes) else (json.dumps(doc, indent=1) + "\n").encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:
            log.debug("api: reply to %s failed: %s", self.client_address[0], exc)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The stdlib's parser errors (bad request line, too many headers…) as JSON, with a
        status line even for an HTTP/0.9-looking request."""
        self.request_version = "HTTP/1.1"
        self.close_connection = True
        self._send_raw(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _send(self, code: int, doc: Any, ctype: str = "application/json") -> None:
        self._send_raw(code, doc, ctype)

    def _error(self, code: int, message: str) -> None:
        extra = {"WWW-Authenticate": 'Bearer realm="siprecctl"'} if code == 401 else None
        self._send_raw(code, {"error": message}, extra=extra)

    # ------------------------------------------------------------------ requests
    def _principal(self, method: str) -> Principal | None:
        headers = self.headers.get_all("Authorization") or []
        who = self.server.auth.authenticate(headers[0]) if len(headers) == 1 else None
        if who is None:
            log.warning("api: refused %s %s from %s: %s", method, self.path[:100],
                        self.client_address[0],
                        "several Authorization headers" if len(headers) > 1 else
                        "no valid token")
            self._error(401, "a valid bearer token is required (Authorization: Bearer …)")
            return None
        if not who.may(method):
            log.warning("api: refused %s %s from %s: token %r is %s", method, self.path[:100],
                        self.client_address[0], who.name, who.role)
            self._error(403, f"token {who.name!r} is {who.role}: it may not {method}")
            return None
        return who

    def _parts(self) -> list[str]:
        parts = [unquote(p, errors="strict") for p in urlsplit(self.path).path.strip("/")
                 .split("/") if p]
        for p in parts:
            if len(p) > MAX_ID or any(ord(c) < 0x20 or c == "\x7f" for c in p):
                raise BadRequest(400, "malformed path")
        return parts

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self._principal("GET") is None:
            return
        self._timer.cancel()
        c = self.server.controller
        url = urlsplit(self.path)
        try:
            parts = self._parts()
            query = parse_qs(url.query, keep_blank_values=True, strict_parsing=False)
            limit = 200
            if parts == ["sessions"]:
                if set(query) - {"open", "limit"} or \
                        query.get("open", ["0"])[-1] not in ("0", "1") or \
                        any(len(v) > 1 for v in query.values()):
                    raise BadRequest(400, "query: open=0|1 and limit=1..10000 only")
                if "limit" in query:
                    raw = query["limit"][0]
                    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
                        raise BadRequest(400, "query: limit must be 1..10000")
                    limit = int(raw)
            elif query:
                raise BadRequest(400, "this resource takes no query")
            if parts == ["health"]:
                self._send(200, c.health())
            elif parts == ["metrics"]:
                self._send(200, c.metrics.render(), "text/plain; version=0.0.4")
            elif parts == ["sessions"]:
                self._send(200, c.session_views(open_only=query.get("open", ["0"])[0] == "1",
                                                limit=limit))
            elif len(parts) == 2 and parts[0] == "sessions":
                s = c.store.get(parts[1])
                if s is None:
                    self._error(404, f"no session {parts[1]}")
                else:
                    self._send(200, s.summary())
            elif len(parts) == 2 and parts[0] == "calls":
                self._send(200, [s.summary() for s in c.store.for_call(parts[1])])
            else:
                self._error(404, f"no such resource {url.path[:100]}")
        except BadRequest as exc:
            self._error(exc.status, str(exc))
        except (UnicodeDecodeError, ValueError):
            self._error(400, "malformed path")
        except SiprecctlError as exc:
            self._error(500, str(exc))

    def _read_body(self) -> bytes:
        if self.headers.get_all("Transfer-Encoding"):
            raise BadRequest(411, "Transfer-Encoding (chunked) bodies are not accepted: send "
                                  "Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise BadRequest(411, "Content-Length is required")
        if len(lengths) > 1 or not _LENGTH_RE.fullmatch(lengths[0].strip()):
            raise BadRequest(400, "bad Content-Length")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise BadRequest(413, f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        if len(raw) != length:
            raise BadRequest(400, f"truncated body ({len(raw)} of {length} bytes): nothing "
                                  "was done")
        return raw

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        who = self._principal("POST")
        if who is None:
            return
        c = self.server.controller
        try:
            parts = self._parts()
            if len(parts) != 3 or parts[0] != "calls" or parts[2] not in _SCHEMA:
                raise BadRequest(404, f"no such action {urlsplit(self.path).path[:100]}")
            raw = self._read_body()
            self._timer.cancel()
            body = parse_action_body(parts[2], raw)
        except BadRequest as exc:
            self._error(exc.status, str(exc))
            return
        except (TimeoutError, OSError):
            log.warning("api: %s sent an incomplete request in time; nothing was done",
                        self.client_address[0])
            self._error(400, "incomplete request: nothing was done")
            return
        except (UnicodeDecodeError, ValueError):
            self._error(400, "malformed path")
            return
        call_id, action = parts[1], parts[2]
        actor = who.actor(self.client_address[0])
        status, doc = self._act(c, action, call_id, body, actor)
        log.info("audit: %s %s call %s %s -> %d", actor, action, call_id,
                 json.dumps(body, sort_keys=True), status)
        self._send(status, doc)

    @staticmethod
    def _act(c: Controller, action: str, call_id: str, body: dict[str, Any],
             actor: str) -> tuple[int, Any]:
        try:
            if action == "start":
                result = c.start_recording(call_id, group=body.get("group"),
                                           local=body.get("local", False), actor=actor)
            elif action == "stop":
                result = c.stop_recording(call_id, local=body.get("local", False), actor=actor)
            elif action == "pause":
                result = c.pause(call_id, actor=actor)
            else:
                result = c.resume(call_id, actor=actor)
        except IllegalTransition as exc:
            return 409, {"error": str(exc)}
        except ControllerError as exc:
            missing = "no open recording session" in str(exc) or "not a live call" in str(exc)
            return (404 if missing else 502), {"error": str(exc)}
        except SiprecctlError as exc:
            return 502, {"error": str(exc)}
        except TimeoutError:
            return 504, {"error": "the call's work queue did not finish in time"}
        return 200, result


def _expire(sock: socket.socket) -> None:
    """The request deadline passed: unblock the worker reading from ``sock``."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], *, controller: Controller, auth: TokenAuth,
                 tls: ssl.SSLContext | None, workers: int, request_timeout: float,
                 idle_timeout: float) -> None:
        super().__init__(addr, _Handler)
        self.controller = controller
        self.auth = auth
        self.tls = tls
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="api")
        self.refused_busy = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_busy += 1
            try:
                request.settimeout(0.2)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:  # a broken connection must never kill the worker
            log.debug("api: connection from %s: %s", client_address[0], exc)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("api: error on a connection from %s", client_address[0], exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class ApiServer:
    """Serves the API in a background thread; ``port=0`` picks a free port.

    ``auth`` is required (there is no unauthenticated mode); ``tls`` makes it HTTPS."""

    def __init__(self, controller: Controller, address: str, port: int, *, auth: TokenAuth,
                 tls: ssl.SSLContext | None = None, workers: int = 8,
                 request_timeout: float = 10.0, idle_timeout: float = 5.0) -> None:
        self._server = _Server((address, port), controller=controller, auth=auth, tls=tls,
                               workers=workers, request_timeout=request_timeout,
                               idle_timeout=idle_timeout)
        host, port_ = self._server.server_address[:2]
        self.address, self.port = str(host), int(port_)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="api", daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}"

    @property
    def refused_busy(self) -> int:
        """Connections answered 503 because every worker was busy."""
        return self._server.refused_busy

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
