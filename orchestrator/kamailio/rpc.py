"""Kamailio JSON-RPC: a client with two transports (HTTP via xhttp+jsonrpcs, kamcli).

::

    with KamailioClient(HttpRpcTransport("http://127.0.0.1:5071/RPC")) as kam:
        kam.version(); kam.rtpengine_show()

Errors: an ``error`` member → :class:`KamailioRpcError` (code, message); no answer, a
refused connection or unparsable output → :class:`KamailioUnreachable`.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ..errors import KamailioError, KamailioRpcError, KamailioUnreachable

__all__ = ["DEFAULT_TIMEOUT", "HttpRpcTransport", "KamailioClient", "KamcliTransport",
           "RpcTransport", "RtpengineNode"]

DEFAULT_TIMEOUT = 5.0
Param = str | int


def _result(doc: Any, method: str) -> Any:
    if not isinstance(doc, dict):
        raise KamailioUnreachable(f"{method}: reply is not a JSON-RPC object: {doc!r:.200}")
    err = doc.get("error")
    if err is not None:
        if isinstance(err, dict):
            code = err.get("code", 0)
            raise KamailioRpcError(int(code) if isinstance(code, int) else 0,
                                   str(err.get("message", "")), method=method)
        raise KamailioRpcError(0, str(err), method=method)
    if "result" not in doc:
        raise KamailioUnreachable(f"{method}: reply without result or error: {doc!r:.200}")
    return doc["result"]


class RpcTransport:
    """Send one JSON-RPC call, return its ``result`` (or raise)."""

    label = "rpc"

    def call(self, method: str, params: list[Param], timeout: float) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (idempotent)."""


class HttpRpcTransport(RpcTransport):
    """JSON-RPC 2.0 over HTTP (``jsonrpc_dispatch()`` in ``event_route[xhttp:request]``).

    Kamailio 5.6 answers a fault with HTTP status = fault code plus the error JSON, and
    sends *no reply at all* to invalid JSON (so a timeout is the only signal).

    ``secret`` (the edge's ``jsonrpc-<edge>.secret``) goes as ``Authorization: Bearer``; the
    generated config answers 401 without it and 403 for a method off its allow-list (both
    as :class:`KamailioRpcError`). The body is written in the one form that config accepts:
    ``{"jsonrpc":"2.0","method":…,"params":[…],"id":…}``, compact, keys in that order.
    """

    def __init__(self, url: str, *, secret: str | None = None,
                 connect_timeout: float = 2.0, pool_size: int = 16) -> None:
        import requests
        import requests.adapters

        self.url = url
        self.label = url
        self.connect_timeout = connect_timeout
        self._requests = requests
        self._session = requests.Session()
        # no proxy/netrc lookups in the environment on every call (they cost more than the
        # call on loopback), and a connection per worker thread: urllib3 keeps 10 by default
        # and logs "Connection pool is full" beyond that
        self._session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Content-Type"] = "application/json"
        if secret is not None:
            self._session.headers["Authorization"] = f"Bearer {secret}"
        self._ids = itertools.count(1)

    @classmethod
    def for_edge(cls, site: Any, edge: Any) -> HttpRpcTransport:
        """The JSON-RPC transport of ``edge`` of ``site``, with the edge's secret."""
        from ..site.secrets import jsonrpc_secret_path, load_secret

        return cls(f"http://{edge.jsonrpc.address}:{edge.jsonrpc.port}/RPC",
                   secret=load_secret(jsonrpc_secret_path(site, edge.name)))

    def call(self, method: str, params: list[Param], timeout: float) -> Any:
        rq = self._requests
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                           "id": next(self._ids)}, separators=(",", ":")).encode()
        try:
            r = self._session.post(self.url, data=body,
                                   timeout=(min(self.connect_timeout, timeout), timeout))
        except rq.Timeout as exc:
            raise KamailioUnreachable(f"{self.url}: {method}: no reply in {timeout:g} s") from exc
        except rq.RequestException as exc:
            raise KamailioUnreachable(f"{self.url}: {method}: {exc}") from exc
        try:
            doc = r.json()
        except ValueError as exc:
            raise KamailioUnreachable(f"{self.url}: {method}: HTTP {r.status_code}, not "
                                      f"JSON: {r.text[:200]!r}") from exc
        return _result(doc, method)

    def close(self) -> None:
        self._session.close()


class KamcliTransport(RpcTransport):
    """``kamcli -c CONFIG rpc METHOD PARAMS…`` (kamcli 2.0.0, unix datagram socket only).

    kamcli exits 0 even for RPC faults, timeouts and a missing socket, so its stdout is
    parsed: no JSON → :class:`KamailioUnreachable`, an ``error`` member →
    :class:`KamailioRpcError`. Integers go as ``i:N`` (``rtpengine.enable`` reads an int;
    a string "1" *disables* every node), strings as ``s:…``; kamcli does not JSON-escape
    parameters, so strings holding ``"`` or ``\\`` are refused.
    """

    def __init__(self, config: str | Path, *, kamcli: str = "/usr/bin/kamcli") -> None:
        self.config = str(config)
        self.kamcli = kamcli
        self.label = f"kamcli:{self.config}"

    @staticmethod
    def _arg(p: Param) -> str:
        if isinstance(p, bool):
            raise TypeError("RPC parameters are str or int")
        if isinstance(p, int):
            return f"i:{p}"
        if '"' in p or "\\" in p or any(ord(c) < 0x20 for c in p):
            raise KamailioError(f"kamcli cannot pass {p!r}: it does not JSON-escape "
                                f"parameters (use the HTTP transport)")
        return f"s:{p}"

    def call(self, method: str, params: list[Param], timeout: float) -> Any:
        argv = [self.kamcli, "--no-default-configs", "-c", self.config, "rpc", method,
                *(self._arg(p) for p in params)]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise KamailioUnreachable(f"{self.label}: {method}: no reply in {timeout:g} s") \
                from exc
        except OSError as exc:
            raise KamailioUnreachable(f"{self.label}: cannot run kamcli: {exc}") from exc
        out = p.stdout
        start = out.find("{")
        if start < 0:
            why = p.stderr.strip().splitlines()[-1:] or ["no output (is the socket there?)"]
            raise KamailioUnreachable(f"{self.label}: {method}: {why[0]}")
        try:
            doc = json.loads(out[start:])
        except ValueError as exc:
            raise KamailioUnreachable(f"{self.label}: {method}: unparsable output "
                                      f"{out[start:start + 200]!r}") from exc
        return _result(doc, method)


@dataclass(frozen=True, slots=True)
class RtpengineNode:
    """One entry of ``rtpengine.show all``."""

    url: str
    set: int
    index: int
    weight: int
    disabled: bool
    permanent: bool  # disabled through RPC ("1(permanent)"), not by failed pings
    recheck_ticks: int | None

    @classmethod
    def from_raw(cls, d: dict[str, Any]) -> RtpengineNode:
        dis = d.get("disabled", 0)
        # 5.6: an int normally; the *string* "1(permanent)" after rtpengine.enable ... 0
        disabled = dis != 0 and dis != "0"
        ticks = d.get("recheck_ticks")
        return cls(url=str(d.get("url", "")), set=int(d.get("set", 0)),
                   index=int(d.get("index", 0)), weight=int(d.get("weight", 1)),
                   disabled=bool(disabled), permanent=isinstance(dis, str) and "permanent" in dis,
                   recheck_ticks=ticks if isinstance(ticks, int) else None)

    @property
    def state(self) -> str:
        if not self.disabled:
            return "enabled"
        return "disabled (admin)" if self.permanent else "disabled (failed)"


class KamailioClient:
    """Kamailio RPC with a default timeout on every call; a context manager."""

    def __init__(self, transport: RpcTransport, *, timeout: float = DEFAULT_TIMEOUT,
                 name: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.transport = transport
        self.timeout = timeout
        self.name = name or transport.label

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def call(self, method: str, *params: Param, timeout: float | None = None) -> Any:
        """Any RPC method; returns its ``result``."""
        return self.transport.call(method, list(params),
                                   self.timeout if timeout is None else timeout)

    def version(self) -> str:
        return str(self.call("core.version")).strip()

    def uptime(self) -> int:
        """Seconds since start (``core.uptime``)."""
        r = self.call("core.uptime")
        return int(r.get("uptime", 0)) if isinstance(r, dict) else int(r)

    def active_dialogs(self) -> dict[str, int]:
        """``dlg.stats_active``: starting/connecting/answering/ongoing/all."""
        r = self.call("dlg.stats_active")
        return {k: int(v) for k, v in r.items()} if isinstance(r, dict) else {}

    def rtpengine_show(self, url: str = "all") -> list[RtpengineNode]:
        r = self.call("rtpengine.show", url)
        items = r if isinstance(r, list) else [r]
        return [RtpengineNode.from_raw(x) for x in items if isinstance(x, dict)]

    def rtpengine_enable(self, url: str, enabled: bool) -> str:
        """``rtpengine.enable URL 0|1``; the flag must be a JSON *integer* (5.6 scans it
        with "d": a string reads as 0, i.e. disables). Returns the reported status."""
        r = self.call("rtpengine.enable", url, 1 if enabled else 0)
        return str(r.get("status", "")) if isinstance(r, dict) else str(r)

    def rtpengine_ping(self, url: str = "all") -> bool:
        r = self.call("rtpengine.ping", url)
        return isinstance(r, dict) and r.get("status") == "success"
