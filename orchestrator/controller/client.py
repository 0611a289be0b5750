"""A small client of the controller's HTTP API (used by ``siprecctl record`` and the lab)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import ControllerUnreachable, SecretError

__all__ = ["ApiTarget", "api_request", "api_target"]


@dataclass(frozen=True)
class ApiTarget:
    """Where the API is and how to authenticate: URL, bearer token, CA file (HTTPS)."""

    url: str
    token: str | None
    cafile: str | None = None


def api_target(site: Any, *, role: str = "operator", url: str | None = None) -> ApiTarget:
    """The site's API with the first token of ``role`` (read from its owner-only file).
    With TLS, the site's certificate is the trust anchor (a private, often self-signed
    one)."""
    from ..site.secrets import api_token_path, load_secret

    api = site.controller.api
    tok = next((t for t in api.tokens if t.role == role), None)
    if tok is None:
        raise SecretError(f"the site has no {role} token in controller.api.tokens")
    scheme = "https" if api.tls else "http"
    return ApiTarget(url or f"{scheme}://{api.address}:{api.port}",
                     load_secret(api_token_path(site, tok.name)),
                     api.tls.certificate if api.tls else None)


def api_request(url: str | ApiTarget, method: str, path: str,
                body: dict[str, Any] | None = None, *, token: str | None = None,
                cafile: str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One API call: (HTTP status, the JSON document, or the text for non-JSON replies
    such as ``/metrics``). Error statuses are returned, not raised; a controller that does
    not answer raises :class:`ControllerUnreachable`."""
    if isinstance(url, ApiTarget):
        token, cafile, url = token or url.token, cafile or url.cafile, url.url
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers=headers)
    ctx = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            raw = resp.read()
            if resp.headers.get_content_type() != "application/json":
                return resp.status, raw.decode()
            return resp.status, json.loads(raw or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (OSError, urllib.error.URLError) as exc:
        raise ControllerUnreachable(f"controller at {url}: {exc}") from exc
