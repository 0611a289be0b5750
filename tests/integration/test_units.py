"""The rendered systemd units pass ``systemd-analyze verify`` (Debian's systemd 252; no
systemd as PID 1 needed). verify exits 0 even for a bad value (it prints "Failed to parse
…, ignoring"), so a unit passes only with exit 0 *and* nothing printed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.render import render_site, write
from orchestrator.render.systemd import SIPRECCTL_BIN
from orchestrator.site import load
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SITES = [None] + sorted((ROOT / "examples").glob("*.yaml"))


def verify(units: list[Path]) -> tuple[int, str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "run ./scripts/setup: Debian's systemd package provides systemd-analyze"
    # --man=no: whether the daemons' man pages are installed is not the units' business
    proc = subprocess.run([analyze, "verify", "--man=no", *map(str, units)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def rendered_units(site_file: Path | None, out: Path) -> list[Path]:
    """The site's units as rendered, with one directory changed: the controller's
    ExecStart names this checkout's siprecctl instead of the production venv's (verify
    checks that the program exists)."""
    write(out, render_site(load(site_file)))
    units = sorted((out / "systemd").glob("*.service"))
    here = str(Path(sys.executable).parent / "siprecctl")
    assert Path(here).is_file()
    for unit in units:
        unit.write_text(unit.read_text().replace(SIPRECCTL_BIN, here))
    return units


@pytest.mark.parametrize("site_file", SITES, ids=["lab"] + [p.stem for p in SITES[1:]])
def test_rendered_units_verify_clean(site_file: Path | None, tmp_path: Path) -> None:
    units = rendered_units(site_file, tmp_path)
    assert len(units) >= 3
    rc, out = verify(units)
    assert rc == 0 and out == "", out


@pytest.mark.parametrize("change, expected", [
    (("ProtectSystem=strict", "ProtectSystem=stritc"), "Failed to parse protect system value"),
    (("LoadCredential=", "LoadCredentials="), "Unknown key 'LoadCredentials'"),
    (("ExecStart=/usr/sbin/kamailio", "ExecStart=/usr/sbin/kamailioo"), "is not executable"),
])
def test_verify_catches_a_bad_unit(change: tuple[str, str], expected: str,
                                   tmp_path: Path) -> None:
    # the check above can fail: the same verify on a damaged Kamailio unit prints the fault
    units = rendered_units(None, tmp_path)
    kam = next(u for u in units if u.name.startswith("siprecctl-kamailio-"))
    text = kam.read_text()
    assert change[0] in text
    kam.write_text(text.replace(change[0], change[1], 1))
    rc, out = verify([kam])
    assert expected in out, out
