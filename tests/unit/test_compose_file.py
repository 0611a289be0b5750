"""docker-compose.yml agrees with the site it runs (examples/compose-lab.yaml) and with the
conventions of the rendered units, stays inside the lab's address range, and keeps secrets
out of images. (Bringing it up: tests/integration/test_compose.py.)"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from orchestrator.render.systemd import CONFIG_DIR, SITE_FILE
from orchestrator.site import load
from orchestrator.site.secrets import kamailio_include_path
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SITE = load(ROOT / "examples" / "compose-lab.yaml")
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking
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


def address(service: str) -> str:
    return str(SERVICES[service]["networks"]["lab"]["ipv4_address"])


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_addresses_stay_in_the_lab_network() -> None:
    cfg = COMPOSE["networks"]["lab"]["ipam"]["config"][0]
    net = ipaddress.ip_network(cfg["subnet"])
    # inside 198.18.0.0/15, and not the network-namespace lab's 198.18.0.0/24
    assert net.subnet_of(LAB_RANGE) and net != ipaddress.ip_network("198.18.0.0/24")
    assert ipaddress.ip_address(cfg["gateway"]) in net
    hosts = sorted(s for s, d in SERVICES.items() if "networks" in d)
    assert hosts == ["callee", "caller", "edge", "srs1", "srs2"]  # the lab's hosts
    own = [address(s) for s in hosts]
    assert len(set(own)) == len(own)
    assert all(ipaddress.ip_address(a) in net for a in own)
    # the three daemons of the edge host share its network namespace
    for s in ("rtpengine", "kamailio", "controller"):
        assert SERVICES[s]["network_mode"] == "service:edge"
    assert not any("ports" in d for d in SERVICES.values()), "nothing published on the host"


def test_the_site_matches_the_containers() -> None:
    edge, node = SITE.edges[0], SITE.media.nodes[0]
    assert {ls.address for ls in edge.listen} == {address("edge")}
    assert {i.address for i in node.interfaces} == {address("edge")}
    assert SITE.controller.api.address == address("edge")
    # control listeners on the edge host's loopback (shared by its three containers)
    assert edge.jsonrpc.address == edge.evapi.address == node.ng.address == "127.0.0.1"
    callee = SERVICES["callee"]["command"]
    host, _, port = edge.trunk_default.uri.removeprefix("sip:").partition(":")
    assert (arg(callee, "-i"), arg(callee, "-p")) == (host, port) == (address("callee"), port)
    srs = [s.uri.split("@", 1)[1] for s in SITE.recording.srs_groups[0].servers]
    listen = [arg(SERVICES[s]["command"], "--listen") for s in ("srs1", "srs2")]
    assert srs == listen and [x.split(":")[0] for x in listen] == [address("srs1"),
                                                                   address("srs2")]


def test_daemons_run_the_rendered_configs_as_the_units_do() -> None:
    edge, node = SITE.edges[0], SITE.media.nodes[0]
    kam = SERVICES["kamailio"]
    cfg = f"{CONFIG_DIR}/kamailio/{edge.name}/kamailio.cfg"
    argv = kam["command"]
    assert arg(argv, "-f") == cfg and arg(argv, "-Y") == edge.runtime_dir
    assert (arg(argv, "-m"), arg(argv, "-M")) == (str(edge.shm_mb), str(edge.pkg_mb))
    assert kam["tmpfs"] == [edge.runtime_dir]
    # it waits for the NG listeners of its rtpengine nodes
    entry = kam["entrypoint"]
    assert entry[entry.index("--") + 1:] == ["/usr/sbin/kamailio", "-DD", "-E"]
    assert entry[1:entry.index("--")] == [f"{n.ng.address}:{n.ng.port}"
                                          for n in SITE.nodes_in_set(edge.media_set)]
    vols = volumes("kamailio")
    assert vols[str(PurePosixPath(cfg).parent)] == (f"./.compose/configs/kamailio/{edge.name}",
                                                    "ro")
    # of the secrets, Kamailio gets the digests include only, read-only, where the config
    # includes it
    include = str(kamailio_include_path(SITE, edge.name))
    assert vols[include] == (include, "ro")
    # ... and writes its call records where the site says (the ledger's evidence)
    acc = SITE.accounting.edge_dir(edge.name)
    assert vols[acc] == (f"./.compose/accounting/{edge.name}", "rw")
    assert len(vols) == 3
    rtp = SERVICES["rtpengine"]
    conf = f"{CONFIG_DIR}/rtpengine/{node.name}/rtpengine.conf"
    assert rtp["command"] == [f"--config-file={conf}"]
    vols = volumes("rtpengine")
    assert vols[str(PurePosixPath(conf).parent)][1] == "ro"
    assert vols[SITE.media.recording.dir] == ("./.compose/recordings", "rw")
    ctl = SERVICES["controller"]
    assert ctl["command"] == ["siprecctl", "serve", SITE_FILE]
    vols = volumes("controller")
    assert vols[SITE_FILE] == ("./examples/compose-lab.yaml", "ro")
    assert vols[SITE.security.secrets_dir] == (SITE.security.secrets_dir, "ro")
    assert vols[str(PurePosixPath(SITE.controller.store).parent)] == ("./.compose/state", "rw")
    assert vols[SITE.accounting.dir] == ("./.compose/accounting", "ro")


def test_hardened_and_no_secret_in_an_image() -> None:
    for name, svc in SERVICES.items():
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["read_only"] is True, name
        assert "privileged" not in svc, name
        assert set(svc.get("cap_add", [])) <= {"NET_RAW"}, name  # sipp's pcap play (caller)
    built = {svc["build"]["context"]: svc["build"]["dockerfile"]
             for svc in SERVICES.values() if "build" in svc}
    assert built == {"containers/siprecctl": "Containerfile", "kamailio": "Containerfile",
                     "rtpengine": "Containerfile"}
    for context, dockerfile in built.items():
        text = (ROOT / context / dockerfile).read_text()
        assert re.findall(r"^FROM (.+)$", text, re.M) == ["debian:bookworm"], context
        copied = re.findall(r"^(?:COPY|ADD) (\S+)", text, re.M)
        assert set(copied) <= {"wheels/", "wait-for-ng"}, (context, copied)
    # one image for the controller, the SRSs and sipp, built once, never pulled
    users = [s for s, d in SERVICES.items() if d.get("image") == SERVICES["edge"]["image"]]
    assert sorted(users) == ["callee", "caller", "controller", "edge", "srs1", "srs2"]
    assert all(SERVICES[s].get("pull_policy") == "never" for s in users if s != "edge")
