"""Shared test helpers, for unit and integration tests. The integration tests' fixtures
(real daemons) are in ``tests/integration/conftest.py``: unit tests need no daemon."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

T = TypeVar("T")

def lab_secrets(tmp: Path, cfg_text: str) -> tuple[str, object]:
    """The committed lab config (text) with its secrets include pointed at a fresh secrets
    dir under ``tmp`` (a directory change, as an operator's ``secrets_dir`` would be), and
    the edge's secrets (``.evapi``, ``.jsonrpc``)."""
    from orchestrator.render import ensure_secrets
    from orchestrator.site import load, validate_data
    from orchestrator.site.secrets import edge_secrets, kamailio_include_path

    lab = load()
    data = lab.model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(tmp / "secrets")}
    site = validate_data(data)
    ensure_secrets(site)
    old = str(kamailio_include_path(lab, "edge1"))
    assert old in cfg_text, old  # the lab config changed: update this helper
    return (cfg_text.replace(old, str(kamailio_include_path(site, "edge1"))),
            edge_secrets(site, "edge1"))



def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail the test
    naming ``what`` if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
