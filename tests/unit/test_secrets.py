"""Owner-only secret files, API tokens, the Kamailio include, and render's overwrite rule."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.controller.auth import TokenAuth
from orchestrator.errors import RenderError, SecretError
from orchestrator.render import ensure_secrets, render_site, write
from orchestrator.site import load, validate_data
from orchestrator.site.secrets import (
    edge_secrets,
    ensure_secret,
    kamailio_include_path,
    load_secret,
    sha256_hex,
)


def site_in(tmp: Path, **security: str) -> object:
    data = load().model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(tmp / "secrets"), **security}
    return validate_data(data)


def test_ensure_creates_owner_only_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "s" / "x.secret"
    value, created = ensure_secret(path)
    assert created and len(value) >= 43  # 256 bits, base64url
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_secret(path) == (value, False)
    assert load_secret(path) == value


def test_umask_does_not_widen_the_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_secret(tmp_path / "t.secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.secret").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "x.secret"
    ensure_secret(path)
    path.chmod(mode)
    with pytest.raises(SecretError, match=f"mode {mode:04o}.*chmod 600") as ei:
        load_secret(path)
    assert path.read_text().strip() not in str(ei.value)  # never the value


@pytest.mark.parametrize("content", ["", "short", "x" * 21, "has space in it " * 3,
                                     "é" * 30, "a" * 5000])
def test_not_a_secret_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(SecretError, match="not a secret"):
        load_secret(path)


def test_symlink_and_directory_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.secret"
    ensure_secret(real)
    link = tmp_path / "link.secret"
    link.symlink_to(real)
    with pytest.raises(SecretError, match="cannot open"):
        load_secret(link)
    (tmp_path / "d.secret").mkdir(mode=0o700)
    with pytest.raises(SecretError):
        load_secret(tmp_path / "d.secret")
    with pytest.raises(SecretError, match="no such secret file"):
        load_secret(tmp_path / "missing")


def test_group_writable_secrets_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o770)
    d.chmod(0o770)
    with pytest.raises(SecretError, match="chmod 700"):
        ensure_secret(d / "x.secret")


def test_ensure_secrets_of_a_site(tmp_path: Path) -> None:
    site = site_in(tmp_path)
    done = ensure_secrets(site)  # type: ignore[arg-type]
    assert len(done) == 5 and not any(load_secret(p) in " ".join(done)
                                      for p in (tmp_path / "secrets").glob("*.secret"))
    sec = edge_secrets(site, "edge1")
    include = kamailio_include_path(site, "edge1").read_text()
    assert sha256_hex(sec.evapi) in include and sha256_hex("Bearer " + sec.jsonrpc) in include
    assert sec.evapi not in include and sec.jsonrpc not in include
    assert ensure_secrets(site) == []  # idempotent  # type: ignore[arg-type]
    names = sorted(p.name for p in (tmp_path / "secrets").iterdir())
    assert names == ["api-dashboard.token", "api-operator.token", "evapi-edge1.secret",
                     "jsonrpc-edge1.secret", "kamailio-edge1.secrets.cfg"]
    for p in (tmp_path / "secrets").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_rotation_rewrites_the_include(tmp_path: Path) -> None:
    site = site_in(tmp_path)
    ensure_secrets(site)  # type: ignore[arg-type]
    old = kamailio_include_path(site, "edge1").read_text()
    (tmp_path / "secrets" / "evapi-edge1.secret").unlink()
    done = ensure_secrets(site)  # type: ignore[arg-type]
    assert any("restart Kamailio" in d for d in done)
    assert kamailio_include_path(site, "edge1").read_text() != old


def test_token_auth_roles_and_constant_time_lookup(tmp_path: Path) -> None:
    site = site_in(tmp_path)
    auth = TokenAuth.from_site(site, create=True)
    op = load_secret(tmp_path / "secrets" / "api-operator.token")
    ro = load_secret(tmp_path / "secrets" / "api-dashboard.token")
    assert auth.authenticate(f"Bearer {op}").role == "operator"  # type: ignore[union-attr]
    assert auth.authenticate(f"bearer  {ro} ").name == "dashboard"  # type: ignore[union-attr]
    for bad in (None, "", "Bearer", f"Basic {op}", f"Bearer {op}x", op, f"Bearer {ro[:-1]}"):
        assert auth.authenticate(bad) is None, bad
    p = auth.authenticate(f"Bearer {op}")
    assert p is not None and p.may("POST") and p.actor("10.0.0.5") == "operator@10.0.0.5"
    r = auth.authenticate(f"Bearer {ro}")
    assert r is not None and r.may("GET") and not r.may("POST")


# ------------------------------------------------------------------ files: no overwrite
def test_render_refuses_a_foreign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    out = tmp_path / "out"
    (out / "kamailio" / "edge1").mkdir(parents=True)
    foreign = out / "kamailio" / "edge1" / "kamailio.cfg"
    foreign.write_text("my own config\n")
    assert main(["render", "-o", str(out)]) == 1
    assert "would overwrite 1 file(s)" in capsys.readouterr().err
    assert foreign.read_text() == "my own config\n"
    assert not (out / "render-manifest.json").exists()
    assert main(["render", "-o", str(out), "--force"]) == 0
    assert foreign.read_text() != "my own config\n"


def test_render_again_is_fine_but_an_edited_file_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = render_site(load())
    write(out, files)
    write(out, files)  # its own previous output: replaced without --force
    cfg = out / "kamailio" / "edge1" / "kamailio.cfg"
    cfg.write_text(cfg.read_text() + "# a local edit\n")
    with pytest.raises(RenderError, match="edited since.*kamailio/edge1/kamailio.cfg"):
        write(out, files)
    assert cfg.read_text().endswith("# a local edit\n")


def test_render_never_writes_into_a_recording_dir(tmp_path: Path) -> None:
    data = load().model_dump(mode="json", exclude_none=True)
    data["media"]["recording"]["dir"] = str(tmp_path / "rec")
    site = validate_data(data)
    (tmp_path / "rec").mkdir()
    with pytest.raises(RenderError, match="inside the recording directory"):
        write(tmp_path / "rec" / "configs", render_site(site), site=site, force=True)
    assert list((tmp_path / "rec").iterdir()) == []


def test_serve_store_inside_recordings_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serve", "--store", "/var/spool/siprecctl/state.sqlite"])
    assert rc == 2 and "inside the recording directory" in capsys.readouterr().err


def test_recordings_index_never_inside_the_recording_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "spool"
    rec.mkdir()
    rc = main(["recordings", "collect", str(rec), "--index", str(rec / "index.sqlite")])
    assert rc == 2 and "inside the recording directory" in capsys.readouterr().err
    assert list(rec.iterdir()) == []


def test_lab_keeps_a_site_file_it_did_not_write(tmp_path: Path) -> None:
    from orchestrator.errors import LabError
    from orchestrator.lab.stack import LabStack

    mine = tmp_path / "site.yaml"
    mine.write_text("name: my own site\n")
    with pytest.raises(LabError, match="was not written by the lab"):
        LabStack(load(), tmp_path, controller=False).render()
    assert mine.read_text() == "name: my own site\n"
    other = tmp_path / "again"
    LabStack(load(), other, controller=False).render()
    LabStack(load(), other, controller=False).render()  # its own: rendered again
    assert (other / "site.yaml").read_text().startswith("# written by siprecctl lab")
