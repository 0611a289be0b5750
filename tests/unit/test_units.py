"""systemd units rendered from the site model (``systemd-analyze verify`` of them runs in
``tests/integration/test_units.py``, where the daemons' binaries are installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import RenderError
from orchestrator.render import render_site
from orchestrator.render.systemd import CONFIG_DIR, SIPRECCTL_BIN, SITE_FILE
from orchestrator.site import load, validate_data
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
             "SystemCallFilter": "@system-service"}


def units(site) -> dict[str, dict[str, list[str]]]:  # type: ignore[no-untyped-def]
    """{unit file name: {"Section.Key": [values…]}} of the site's rendered units."""
    out = {}
    for r in render_site(site):
        if r.kind != "systemd":
            continue
        assert r.path.startswith("systemd/")
        keys: dict[str, list[str]] = {}
        section = ""
        for line in r.content.splitlines():
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif line and not line.startswith("#"):
                key, _, value = line.partition("=")
                keys.setdefault(f"{section}.{key}", []).append(value)
        out[r.path.removeprefix("systemd/")] = keys
    return out


def one(keys: dict[str, list[str]], key: str) -> str:
    values = keys[key]
    assert len(values) == 1, (key, values)
    return values[0]


def variant(**changes: object):  # type: ignore[no-untyped-def]
    data = load(ROOT / "examples" / "single-box.yaml").model_dump(mode="json", exclude_none=True)
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return validate_data(data)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_one_unit_per_edge_and_node_and_the_controller(example: Path) -> None:
    site = load(example)
    got = units(site)
    assert set(got) == ({f"siprecctl-kamailio-{e.name}.service" for e in site.edges}
                        | {f"siprecctl-rtpengine-{n.name}.service" for n in site.media.nodes}
                        | {"siprecctl-controller.service"})
    rendered = {r.path for r in render_site(site)}
    for name, keys in got.items():
        # three sections, once each, and the hardening
        sections = [ln for ln in render_text(site, name).splitlines() if ln.startswith("[")]
        assert sections == ["[Unit]", "[Service]", "[Install]"], name
        for key, value in HARDENING.items():
            assert one(keys, f"Service.{key}") == value, (name, key)
        assert one(keys, "Service.Restart") == "on-failure"
        assert one(keys, "Install.WantedBy") == "multi-user.target"
        exec_start = one(keys, "Service.ExecStart").split()
        configs = [a.split("=", 1)[-1] for a in exec_start if a.startswith(CONFIG_DIR + "/")
                   or a.startswith(f"--config-file={CONFIG_DIR}/")]
        for cfg in configs:  # every config a unit names is one the render wrote (or the site)
            assert cfg == SITE_FILE or cfg.removeprefix(CONFIG_DIR + "/") in rendered, (name, cfg)
        assert configs, name
    for edge in site.edges:
        keys = got[f"siprecctl-kamailio-{edge.name}.service"]
        argv = one(keys, "Service.ExecStart").split()
        assert argv[:3] == ["/usr/sbin/kamailio", "-DD", "-E"]  # foreground, journal
        assert argv[argv.index("-f") + 1] == f"{CONFIG_DIR}/kamailio/{edge.name}/kamailio.cfg"
        assert argv[argv.index("-Y") + 1] == edge.runtime_dir
        assert argv[argv.index("-m") + 1] == str(edge.shm_mb)
        assert one(keys, "Service.User") == "kamailio"
        # Kamailio gets its digests include alone, as a credential, not the secrets
        include = f"{site.security.secrets_dir}/kamailio-{edge.name}.secrets.cfg"
        assert keys["Service.LoadCredential"] == [f"kamailio-{edge.name}.secrets.cfg:{include}"]
        assert keys["Service.BindReadOnlyPaths"] == [f"%d:{site.security.secrets_dir}"]
        # started after the rtpengine nodes of its set
        after = one(keys, "Unit.After").split()
        assert {f"siprecctl-rtpengine-{n.name}.service"
                for n in site.nodes_in_set(edge.media_set)} <= set(after)
    for node in site.media.nodes:
        keys = got[f"siprecctl-rtpengine-{node.name}.service"]
        assert one(keys, "Service.Type") == "notify"
        assert one(keys, "Service.User") == "rtpengine"
        rec = f"{site.media.recording.dir}/{node.name}"
        assert one(keys, "Service.ReadWritePaths") == rec
        assert one(keys, "Service.InaccessiblePaths") == f"-{site.security.secrets_dir}"
        assert "Service.LoadCredential" not in keys
        assert int(one(keys, "Service.LimitNOFILE")) > 2 * (node.ports.port_max
                                                           - node.ports.port_min)
    keys = got["siprecctl-controller.service"]
    assert one(keys, "Service.ExecStart") == f"{SIPRECCTL_BIN} serve {SITE_FILE}"
    assert one(keys, "Service.User") == "siprecctl"
    assert one(keys, "Service.UMask") == "0077"
    creds = {v.split(":", 1)[0] for v in keys["Service.LoadCredential"]}
    expected = {f"api-{t.name}.token" for t in site.controller.api.tokens}
    for e in site.edges:
        expected |= {f"evapi-{e.name}.secret", f"jsonrpc-{e.name}.secret",
                     f"kamailio-{e.name}.secrets.cfg"}
    if site.redis is not None and len(site.controller.instances) > 1:
        expected.add("redis.secret")  # a pair: its state and lease are in Redis
    assert creds == expected


def render_text(site, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(r.content for r in render_site(site) if r.path == f"systemd/{name}")


def test_directories_under_run_and_var_lib_are_systemds_own() -> None:
    lab = units(load())
    kam = lab["siprecctl-kamailio-edge1.service"]
    assert one(kam, "Service.RuntimeDirectory") == "siprecctl/edge1"
    assert "Service.ReadWritePaths" not in kam
    ctl = lab["siprecctl-controller.service"]
    assert one(ctl, "Service.StateDirectory") == "siprecctl"
    # elsewhere: created (as root, before the sandbox) and opened read-write
    site = variant(controller__store="/srv/siprecctl/state.sqlite", edges__0__run_dir="/srv/run")
    got = units(site)
    ctl = got["siprecctl-controller.service"]
    assert one(ctl, "Service.ReadWritePaths") == "/srv/siprecctl"
    assert one(ctl, "Service.ExecStartPre") == \
        "+/usr/bin/install -d -o siprecctl -g siprecctl -m 0750 /srv/siprecctl"
    kam = got["siprecctl-kamailio-edge.service"]
    assert one(kam, "Service.ReadWritePaths") == "/srv/run"


def test_low_ports_get_the_bind_capability_and_nothing_else() -> None:
    got = units(load(ROOT / "examples" / "single-box.yaml"))
    for keys in got.values():
        assert one(keys, "Service.CapabilityBoundingSet") == ""  # empty: no capability
        assert one(keys, "Service.AmbientCapabilities") == ""
    site = variant(controller__api__port=443)
    ctl = units(site)["siprecctl-controller.service"]
    assert one(ctl, "Service.CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(units(site)["siprecctl-kamailio-edge.service"],
               "Service.CapabilityBoundingSet") == ""


@pytest.mark.parametrize("change, message", [
    ({"edges__0__run_dir": "/run/my edge"}, "edges[0].run_dir: '/run/my edge' cannot go into "
                                             "a systemd unit"),
    ({"controller__store": "/var/lib/siprecctl/100%.sqlite"}, "controller.store: "),
    ({"media__recording__dir": "/srv/$rec"}, "media.recording.dir: "),
    ({"security__secrets_dir": "/etc"}, "kamailio config: '/etc/siprecctl/kamailio/edge/"
                                        "kamailio.cfg' is inside security.secrets_dir (/etc)"),
    ({"security__secrets_dir": "/srv"}, "media.recording.dir: '/srv/rec/rtp' is inside "
                                        "security.secrets_dir (/srv)"),
])
def test_paths_a_unit_cannot_hold_are_located_errors(change: dict[str, str],
                                                     message: str) -> None:
    if "media__recording__dir" not in change:
        change = {"media__recording__dir": "/srv/rec", **change}
    with pytest.raises(RenderError) as exc:
        render_site(variant(**change))
    assert message in str(exc.value)
