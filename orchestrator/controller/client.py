"""A small client of the controller's HTTP API (used by ``siprecctl record`` and the lab)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..errors import ControllerUnreachable

__all__ = ["api_request"]


def api_request(url: str, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> tuple[int, Any]:
    """One API call: (HTTP status, the JSON document, or the text for non-JSON replies
    such as ``/metrics``). Error statuses are returned, not raised; a controller that does
    not answer raises :class:`ControllerUnreachable`."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
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
