"""Shared test helpers. Integration tests run the real daemons (installed by scripts/setup)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _daemons_installed() -> None:
    # A missing daemon is a set-up bug: fail loudly, never skip.
    missing = [b for b in ("kamailio", "rtpengine", "sipp", "kamcli") if not shutil.which(b)
               and not Path("/usr/sbin", b).exists()]
    assert not missing, f"run ./scripts/setup: missing {missing}"


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
