"""docker-compose.scale.yml agrees with the site it runs (examples/compose-scale.yaml): every
host's address, port and rendered config path, the pair's Redis and instance arguments, the
secrets each container gets; it stays inside the lab's address range apart from the other
labs, and keeps the hardening of docker-compose.yml. (Bringing it up:
tests/integration/test_compose_scale.py.)"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile
from pathlib import PurePosixPath
from typing import Any

import yaml

from orchestrator.render import render_site
from orchestrator.render.systemd import CONFIG_DIR, SITE_FILE
from orchestrator.site import load
from orchestrator.site.secrets import (
    kamailio_include_path,
    redis_acl_path,
    rtpengine_redis_env_path,
)
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.scale.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SINGLE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SITE = load(ROOT / "examples" / "compose-scale.yaml")
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking
NETNS_LAB = ipaddress.ip_network(SITE.lab.subnet)  # siprecctl lab's namespaces
DIR = "./.compose-scale"
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def defaults(value: str) -> str:
    """A compose string with each ``${VAR:-default}`` at its default."""
    return _DEFAULT.sub(lambda m: m.group(2), value)


def volumes(service: str) -> dict[str, tuple[str, str]]:
    """{target: (source at its default, mode)} of a service's bind mounts."""
    out = {}
    for v in SERVICES[service].get("volumes", []):
        src, target, *mode = defaults(v).split(":")
        out[target] = (src, mode[0] if mode else "rw")
    return out


def argv(service: str, key: str = "command") -> list[str]:
    return [defaults(a) for a in SERVICES[service][key]]


def address(service: str) -> str:
    return str(SERVICES[service]["networks"]["scale"]["ipv4_address"])


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_addresses_stay_in_the_lab_range_apart_from_the_other_labs() -> None:
    assert list(COMPOSE["networks"]) == ["scale"]
    cfg = COMPOSE["networks"]["scale"]["ipam"]["config"][0]
    net = ipaddress.ip_network(cfg["subnet"])
    single = ipaddress.ip_network(SINGLE["networks"]["lab"]["ipam"]["config"][0]["subnet"])
    assert net.subnet_of(LAB_RANGE)
    assert not net.overlaps(single) and not net.overlaps(NETNS_LAB)  # all three at once
    assert ipaddress.ip_address(cfg["gateway"]) in net
    # every daemon its own host: the topology
    assert sorted(SERVICES) == sorted(
        ["caller", "callee", "redis", "srs1", "srs2"] + [e.name for e in SITE.edges]
        + [n.name for n in SITE.media.nodes] + [i.name for i in SITE.controller.instances])
    assert (len(SITE.edges), len(SITE.media.nodes), len(SITE.controller.instances)) == (2, 3, 2)
    own = [address(s) for s in SERVICES]
    assert len(set(own)) == len(own) and all(ipaddress.ip_address(a) in net for a in own)
    assert not any("network_mode" in d or "ports" in d for d in SERVICES.values()), \
        "nothing published on the host, no shared namespaces"


def test_the_site_matches_the_containers() -> None:
    controllers = [ipaddress.ip_address(address(i.name)) for i in SITE.controller.instances]
    for edge in SITE.edges:
        # SIP, JSON-RPC and evapi on the edge's own address: the pair reaches them across hosts
        assert {ls.address for ls in edge.listen} == {address(edge.name)}
        assert edge.jsonrpc.address == edge.evapi.address == address(edge.name)
        # JSON-RPC allowed from both controllers
        allow = [ipaddress.ip_network(a) for a in edge.jsonrpc.allow]
        assert all(any(c in n for n in allow) for c in controllers), edge.name
        host, _, port = edge.trunk_default.uri.removeprefix("sip:").partition(":")
        callee = argv("callee")
        assert (arg(callee, "-i"), arg(callee, "-p")) == (host, port) == (address("callee"),
                                                                          port)
    for node in SITE.media.nodes:
        assert node.ng.address == address(node.name)
        assert {i.address for i in node.interfaces} == {address(node.name)}
    assert SITE.redis is not None and SITE.redis.address == address("redis")
    srs = [s.uri.split("@", 1)[1] for s in SITE.recording.srs_groups[0].servers]
    listen = [arg(argv(s), "--listen") for s in ("srs1", "srs2")]
    assert srs == listen and [x.split(":")[0] for x in listen] == [address("srs1"),
                                                                   address("srs2")]
    # the site's default API is one of the pair's
    assert (SITE.controller.api.address, SITE.controller.api.port) in {
        (i.api.address, i.api.port) for i in SITE.controller.instances}


def test_the_pair_runs_on_redis_with_its_instances() -> None:
    assert SITE.redis is not None
    for inst in SITE.controller.instances:
        cmd = argv(inst.name)
        assert cmd[:3] == ["siprecctl", "serve", SITE_FILE]
        assert arg(cmd, "--redis") == f"{SITE.redis.address}:{SITE.redis.port}"
        assert arg(cmd, "--redis-password-file") == SITE.redis_auth_file
        assert "--redis-db" not in cmd and SITE.redis.controller_db == 0  # serve's default
        assert arg(cmd, "--instance") == inst.name
        assert arg(cmd, "--api") == f"{inst.api.address}:{inst.api.port}" \
            and inst.api.address == address(inst.name)
        assert "--store" not in cmd  # the state is in Redis
        vols = volumes(inst.name)
        assert vols[SITE_FILE] == ("./examples/compose-scale.yaml", "ro")
        # the secrets dir (the Redis password among them), read-only
        assert vols[SITE.security.secrets_dir] == (SITE.security.secrets_dir, "ro")
        assert PurePosixPath(SITE.redis_auth_file).parent == \
            PurePosixPath(SITE.security.secrets_dir)
        # the edges' call records for the leader's ledger, read-only
        assert vols[SITE.accounting.dir] == (f"{DIR}/accounting", "ro")
        assert set(vols) == {SITE_FILE, SITE.security.secrets_dir, SITE.accounting.dir}
        assert set(SERVICES[inst.name]["depends_on"]) == {"redis"} | {e.name for e in
                                                                       SITE.edges}


def test_edges_run_their_rendered_configs() -> None:
    for edge in SITE.edges:
        svc = SERVICES[edge.name]
        cfg = f"{CONFIG_DIR}/kamailio/{edge.name}/kamailio.cfg"
        cmd = argv(edge.name)
        assert arg(cmd, "-f") == cfg and arg(cmd, "-Y") == edge.runtime_dir
        assert (arg(cmd, "-m"), arg(cmd, "-M")) == (str(edge.shm_mb), str(edge.pkg_mb))
        assert svc["tmpfs"] == [edge.runtime_dir]
        # it waits for the NG listeners of its set's nodes, and starts after them
        entry = argv(edge.name, "entrypoint")
        assert entry[entry.index("--") + 1:] == ["/usr/sbin/kamailio", "-DD", "-E"]
        ng = [f"{n.ng.address}:{n.ng.port}" for n in SITE.nodes_in_set(edge.media_set)]
        assert entry[1:entry.index("--")] == ng
        assert {n.name for n in SITE.nodes_in_set(edge.media_set)} <= set(svc["depends_on"])
        vols = volumes(edge.name)
        assert vols[str(PurePosixPath(cfg).parent)] == (f"{DIR}/configs/kamailio/{edge.name}",
                                                        "ro")
        include = str(kamailio_include_path(SITE, edge.name))
        assert vols[include] == (include, "ro")  # the digests, not the secrets
        acc = SITE.accounting.edge_dir(edge.name)
        assert vols[acc] == (f"{DIR}/accounting/{edge.name}", "rw")
        assert len(vols) == 3


def test_nodes_and_redis_run_their_rendered_configs() -> None:
    assert SITE.redis is not None
    env_file = str(rtpengine_redis_env_path(SITE))
    for node in SITE.media.nodes:
        conf = f"{CONFIG_DIR}/rtpengine/{node.name}/rtpengine.conf"
        # the password from the rendered env file, once Redis answers
        assert argv(node.name) == [env_file, f"{SITE.redis.address}:{SITE.redis.port}", "--",
                                   f"--config-file={conf}"]
        vols = volumes(node.name)
        assert vols[str(PurePosixPath(conf).parent)] == (
            f"{DIR}/configs/rtpengine/{node.name}", "ro")
        assert vols[env_file] == (env_file, "ro")
        assert vols[SITE.media.recording.dir] == (f"{DIR}/recordings", "rw")
        assert len(vols) == 3
        assert "redis" in SERVICES[node.name]["depends_on"]
    cmd = argv("redis")
    conf = f"{CONFIG_DIR}/redis/redis.conf"
    assert cmd == ["--dir", "/var/lib/redis", "--include", conf]
    vols = volumes("redis")
    assert vols[str(PurePosixPath(conf).parent)] == (f"{DIR}/configs/redis", "ro")
    assert vols["/var/lib/redis"] == (f"{DIR}/redis", "rw")
    # the rendered config includes the ACL file: mounted there, read-only, alone of the
    # secrets (the password's digest)
    rendered = next(r.content for r in render_site(SITE) if r.path == "redis/redis.conf")
    assert f"include {redis_acl_path(SITE)}\n" in rendered
    assert vols[str(redis_acl_path(SITE))] == (str(redis_acl_path(SITE)), "ro")
    assert len(vols) == 3


def test_hardened_and_no_secret_in_an_image() -> None:
    for name, svc in SERVICES.items():
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["read_only"] is True, name
        assert "privileged" not in svc and "environment" not in svc \
            and "env_file" not in svc, name
        assert set(svc.get("cap_add", [])) <= {"NET_RAW"}, name
    assert [s for s, d in SERVICES.items() if d.get("cap_add")] == ["caller"]
    built = {svc["image"]: (svc["build"]["context"], svc["build"]["dockerfile"])
             for svc in SERVICES.values() if "build" in svc}
    # the single-box lab's siprecctl and Kamailio images as they are (the same tags), plus
    # Redis and the replicating rtpengine node
    single = {svc["image"]: (svc["build"]["context"], svc["build"]["dockerfile"])
              for svc in SINGLE["services"].values() if "build" in svc}
    assert {k: v for k, v in built.items() if k in single} == {
        k: v for k, v in single.items() if "rtpengine" not in k}
    assert set(built) - set(single) == {"siprecctl-lab/redis:latest",
                                        "siprecctl-lab/rtpengine-redis:latest"}
    for context, dockerfile in built.values():
        text = (ROOT / context / dockerfile).read_text()
        assert re.findall(r"^FROM (.+)$", text, re.M) == ["debian:bookworm"], context
        copied = re.findall(r"^(?:COPY|ADD) (\S+)", text, re.M)
        assert set(copied) <= {"wheels/", "wait-for-ng", "rtpengine-redis"}, (context, copied)
    # each image built by one service, used as it is (never pulled) by the others
    for image in built:
        users = [s for s, d in SERVICES.items() if d["image"] == image and "build" not in d]
        assert all(SERVICES[s].get("pull_policy") == "never" for s in users), image
    assert {d["image"] for d in SERVICES.values()} == set(built)


def test_scripts_compose_runs_the_scale_file() -> None:
    script = (ROOT / "scripts" / "compose").read_text()
    assert "files=(-f docker-compose.scale.yml)" in script
    assert 'SIPRECCTL_COMPOSE_SITE="${SIPRECCTL_COMPOSE_SITE:-./examples/compose-scale.yaml}"' \
        in script
    assert f'SIPRECCTL_COMPOSE_DIR="${{SIPRECCTL_COMPOSE_DIR:-{DIR}}}"' in script
    # and its own project name: it never takes down the single-box lab
    assert 'COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-siprecctl-scale}"' in script


def test_the_node_entry_refuses_bad_input_before_waiting() -> None:
    """rtpengine-redis (the replicating node's entry): a usage error or an env file line that
    is not KEY=VALUE exits 2 at once, naming the file — never waits, never starts rtpengine."""
    entry = ROOT / "containers" / "rtpengine-redis" / "rtpengine-redis"
    with tempfile.TemporaryDirectory() as tmp:
        bad = PurePosixPath(tmp, "rtpengine-redis.env")
        with open(bad, "w") as f:
            f.write("# siprecctl\nRTPENGINE_REDIS_AUTH_PW=x\nrm -rf /\n")
        for args, expected in (([str(bad), "198.18.2.40:6379"], "usage: rtpengine-redis"),
                               ([str(bad), "198.18.2.40:6379", "--"],
                                f"{bad}: not a KEY=VALUE line")):
            proc = subprocess.run(["bash", str(entry), *args], capture_output=True, text=True,
                                  timeout=5, check=False)
            assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
