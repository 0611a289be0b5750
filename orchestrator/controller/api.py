"""The controller's HTTP API (JSON) and ``/metrics`` (Prometheus), on a private listener.

    GET  /health                       edges connected, open sessions
    GET  /sessions[?open=1]            recording sessions (newest first)
    GET  /sessions/<id>                one session with its history
    GET  /calls/<call-id>              the sessions of a call
    POST /calls/<call-id>/start        {"group": "…", "local": false}
    POST /calls/<call-id>/stop         {"local": false}
    POST /calls/<call-id>/pause        a=inactive towards the SRS, media paused
    POST /calls/<call-id>/resume
    GET  /metrics
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ControllerError, IllegalTransition, SiprecctlError

if TYPE_CHECKING:
    from .service import Controller

__all__ = ["ApiServer"]

log = logging.getLogger("siprecctl.api")
MAX_BODY = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.client_address[0], *args)

    def _send(self, code: int, doc: Any, ctype: str = "application/json") -> None:
        body = doc if isinstance(doc, bytes) else (json.dumps(doc, indent=1) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        c = self.server.controller
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        try:
            if parts == ["health"]:
                self._send(200, c.health())
            elif parts == ["metrics"]:
                self._send(200, c.metrics.render(), "text/plain; version=0.0.4")
            elif parts == ["sessions"]:
                q = parse_qs(url.query)
                self._send(200, c.session_views(open_only=q.get("open", ["0"])[0] == "1"))
            elif len(parts) == 2 and parts[0] == "sessions":
                s = c.store.get(parts[1])
                if s is None:
                    self._error(404, f"no session {parts[1]}")
                else:
                    self._send(200, s.summary())
            elif len(parts) == 2 and parts[0] == "calls":
                self._send(200, [s.summary() for s in c.store.for_call(parts[1])])
            else:
                self._error(404, f"no such resource {url.path}")
        except SiprecctlError as exc:
            self._error(500, str(exc))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        c = self.server.controller
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/") if p]
        if len(parts) != 3 or parts[0] != "calls" or parts[2] not in (
                "start", "stop", "pause", "resume"):
            self._error(404, f"no such action {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._error(400, "bad Content-Length")
            return
        if length > MAX_BODY:
            self._error(413, "body too large")
            return
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._error(400, f"body is not a JSON object: {exc}")
            return
        call_id, action = parts[1], parts[2]
        try:
            if action == "start":
                group = body.get("group")
                result = c.start_recording(call_id, group=str(group) if group else None,
                                           local=bool(body.get("local", False)))
            elif action == "stop":
                result = c.stop_recording(call_id, local=bool(body.get("local", False)))
            elif action == "pause":
                result = c.pause(call_id)
            else:
                result = c.resume(call_id)
        except IllegalTransition as exc:
            self._error(409, str(exc))
        except ControllerError as exc:
            self._error(404 if "no open recording session" in str(exc) or "not a live call"
                        in str(exc) else 502, str(exc))
        except SiprecctlError as exc:
            self._error(502, str(exc))
        except TimeoutError:
            self._error(504, "the call's work queue did not finish in time")
        else:
            self._send(200, result)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    controller: Controller


class ApiServer:
    """Serves the API in a background thread; ``port=0`` picks a free port."""

    def __init__(self, controller: Controller, address: str, port: int) -> None:
        self._server = _Server((address, port), _Handler)
        self._server.controller = controller
        host, port_ = self._server.server_address[:2]
        self.address, self.port = str(host), int(port_)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
