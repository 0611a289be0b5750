"""Carrier scale in the site model and the rendering: Redis, node replication, controller
instances — each bad combination gives its located error; the rendered rtpengine, Redis and
systemd files carry what the README's "Scaling out" says, and no secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import SiteError, SiteErrors
from orchestrator.render import NOTIFY_KEYSPACE_EVENTS, ensure_secrets, render_site
from orchestrator.site import load, load_text, validate_data
from orchestrator.site.secrets import (
    load_secret,
    redis_acl_path,
    rtpengine_redis_env_path,
    sha256_hex,
)

ROOT = Path(__file__).resolve().parents[2]
SCALE = (ROOT / "examples" / "carrier-scale.yaml").read_text()


def variant(old: str, new: str) -> str:
    assert old in SCALE, old
    return SCALE.replace(old, new, 1)


def messages(text: str) -> list[str]:
    try:
        load_text(text, file="site.yaml")
    except SiteErrors as exc:
        return [str(e) for e in exc.errors]
    except SiteError as exc:
        return [str(exc)]
    return []


CASES = [
    ("node-redis-without-server",
     variant("redis: {address: 10.20.0.30, port: 6379, controller_db: 0}\n", ""),
     ["site.yaml:47 media.nodes[0].redis: node replication needs the top-level redis section "
      "(address, port, auth_file)",
      "site.yaml:54 media.nodes[1].redis: node replication needs the top-level redis section "
      "(address, port, auth_file)",
      "site.yaml:60 media.nodes[2].redis: node replication needs the top-level redis section "
      "(address, port, auth_file)",
      "site.yaml:71 controller.instances: 2 controller instances need the top-level redis "
      "section (their shared state and the leader lease)"]),
    ("peer-in-other-set",
     variant("redis: {db: 2, peers: [rtp-a1]}", "redis: {db: 2, peers: [rtp-a1, rtp-b1]}"),
     ["site.yaml:54 media.nodes[1].redis.peers[1]: node 'rtp-b1' is in set 1, not in set 0: "
      "replication only between nodes of one set (Kamailio sends a call's later commands to "
      "its set)"]),
    ("unknown-peer",
     variant("peers: [rtp-a2]", "peers: [rtp-a9]"),
     ["site.yaml:47 media.nodes[0].redis.peers[0]: unknown node 'rtp-a9' (defined: rtp-a1, "
      "rtp-a2, rtp-b1)"]),
    ("self-peer",
     variant("peers: [rtp-a2]", "peers: [rtp-a1]"),
     ["site.yaml:47 media.nodes[0].redis.peers[0]: node 'rtp-a1' cannot mirror itself"]),
    ("peer-without-db",
     variant("      redis: {db: 2, peers: [rtp-a1]}\n", ""),
     ["site.yaml:47 media.nodes[0].redis.peers[0]: node 'rtp-a2' has no redis.db: it writes "
      "no calls to mirror"]),
    ("shared-db",
     variant("redis: {db: 3}", "redis: {db: 0}"),
     ["site.yaml:60 media.nodes[2].redis.db: database 0 is already used by "
      "redis.controller_db"]),
    ("interface-missing-on-peer",
     variant("interfaces: [{name: pub, address: 10.20.0.22}]",
             "interfaces: [{name: core, address: 10.20.0.22}]"),
     ["site.yaml:47 media.nodes[0].redis.peers[0]: node 'rtp-a2' has interface(s) core that "
      "this node lacks: its calls could not be restored here",
      "site.yaml:54 media.nodes[1].redis.peers[0]: node 'rtp-a1' has interface(s) pub that "
      "this node lacks: its calls could not be restored here"]),
    ("public-redis",
     variant("redis: {address: 10.20.0.30,", "redis: {address: 1.2.3.4,"),
     ["site.yaml:75 redis.address: '1.2.3.4' is not a loopback or private address: "
      "control listeners (NG, JSON-RPC, evapi, API) must not be exposed"]),
    ("db-out-of-range",
     variant("redis: {db: 3}", "redis: {db: 16}"),
     ["site.yaml:60 media.nodes[2].redis.db: must be <= 15, got 16"]),
    ("legacy-media-redis",
     variant("  delete_delay: 10\n", "  delete_delay: 10\n  redis: {address: 10.20.0.30, "
             "port: 6379, db: 2}\n"),
     ["site.yaml:39 media.redis: media.redis is replaced by the top-level redis section "
      "(address, port, auth_file) and media.nodes[].redis (db, peers) per node: rtpengine "
      "writes every call of a node to its own database, so nodes must not share one"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_located_errors(text: str, expected: list[str]) -> None:
    assert messages(text) == expected


def test_existing_sites_stay_valid_without_redis() -> None:
    for name in ("single-box", "compose-lab"):
        site = load(ROOT / "examples" / f"{name}.yaml")
        assert site.redis is None and not any(n.redis for n in site.media.nodes)
        assert not any(r.path.startswith("redis/") for r in render_site(site))
    assert load().redis is None  # the embedded lab


def scale_site(tmp: Path, **redis: str) -> object:
    data = load_text(SCALE).model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(tmp / "secrets")}
    data["redis"].update(redis)
    return validate_data(data)


def test_auth_file_must_be_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "redis.pw"
    scale_site(tmp_path, auth_file=str(path))  # missing: render --secrets creates it
    path.write_text("x" * 40 + "\n")
    path.chmod(0o640)
    with pytest.raises(SiteError) as exc:
        scale_site(tmp_path, auth_file=str(path))
    assert str(exc.value) == (f"<site> redis.auth_file: {path} is readable or writable by "
                              f"group/others (mode 0640); refusing to use it: chmod 600 {path}")
    path.chmod(0o600)
    scale_site(tmp_path, auth_file=str(path))


def test_rendered_replication() -> None:
    files = {r.path: r.content for r in render_site(load_text(SCALE))}
    a1 = files["rtpengine/rtp-a1/rtpengine.conf"].splitlines()
    b1 = files["rtpengine/rtp-b1/rtpengine.conf"].splitlines()
    assert "redis = 10.20.0.30:6379/1" in a1 and "subscribe-keyspace = 2" in a1
    assert "redis-expires = 86400" in a1 and "redis-cmd-timeout = 250" in a1
    assert "redis = 10.20.0.30:6379/3" in b1
    assert not any(ln.startswith("subscribe-keyspace") for ln in b1)  # no peers: no mirror
    every = "\n".join(files[p] for p in files if p.startswith("rtpengine/"))
    assert "redis-write" not in every.replace("No redis-write", "")
    assert "@10.20.0.30" not in every  # never a PW@ in the config
    conf = files["redis/redis.conf"].splitlines()
    assert f"notify-keyspace-events {NOTIFY_KEYSPACE_EVENTS}" in conf
    assert {"bind 10.20.0.30", "port 6379", "appendonly yes", "appendfsync always",
            "include /etc/siprecctl/secrets/redis-acl.conf"} <= set(conf)
    unit = files["systemd/siprecctl-rtpengine-rtp-a1.service"].splitlines()
    assert "EnvironmentFile=/etc/siprecctl/secrets/rtpengine-redis.env" in unit
    assert "InaccessiblePaths=-/etc/siprecctl/secrets" in unit
    single = {r.path: r.content for r in render_site(load(ROOT / "examples" / "single-box.yaml"))}
    assert "EnvironmentFile" not in single["systemd/siprecctl-rtpengine-rtp.service"]


def test_secrets_for_redis(tmp_path: Path) -> None:
    site = scale_site(tmp_path)
    done = ensure_secrets(site)  # type: ignore[arg-type]
    pw = load_secret(tmp_path / "secrets" / "redis.secret")
    acl, env = redis_acl_path(site), rtpengine_redis_env_path(site)
    for f in (acl, env):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert acl.read_text().splitlines()[-1] == f"user default on #{sha256_hex(pw)} ~* &* +@all"
    assert pw not in acl.read_text()
    assert env.read_text() == f"RTPENGINE_REDIS_AUTH_PW={pw}\n"
    assert any("created the Redis password" in d for d in done)
    assert pw not in "\n".join(done)
    assert ensure_secrets(site) == []  # idempotent: nothing rewritten  # type: ignore[arg-type]
