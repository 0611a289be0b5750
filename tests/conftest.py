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
