"""The scale lab's plan without daemons: its hosts and addresses, what it changes in the
site (only addresses and directories), what it starts where, and its refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import netns
from orchestrator.lab.drills import all_drills, run_drill
from orchestrator.lab.hosts import Lab
from orchestrator.lab.load import _spread
from orchestrator.lab.netns import NetPlan
from orchestrator.lab.scale import ScaleLab, is_scale, scale_hosts, scale_lab_site
from orchestrator.site import load, validate_data
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "lab-scale.yaml"


def _strip(d: Any) -> Any:
    """The site with every address, path and URI blanked (the lab changes only those)."""
    if isinstance(d, dict):
        return {k: ("*" if k in ("address", "run_dir", "dir", "store", "secrets_dir", "uri",
                                 "allow", "auth_file") else _strip(v))
                for k, v in d.items() if k not in ("advertise", "advertised")}
    if isinstance(d, list):
        return [_strip(x) for x in d]
    return d


def _plan() -> NetPlan:
    site = load(EXAMPLE)
    return NetPlan(site.lab.netns_prefix, site.lab.bridge, site.lab.subnet, scale_hosts(site))


def test_hosts_and_addresses_follow_the_example() -> None:
    site = load(EXAMPLE)
    assert is_scale(site) and not is_scale(load())
    plan = _plan()
    assert plan.hosts == ("caller", "callee", "edge-a", "edge-b", "rtp-a1", "rtp-a2",
                          "rtp-b1", "redis", "ctl-1", "ctl-2", "srs1", "srs2")
    assert plan.address("caller") == "198.18.3.2" and plan.address("srs2") == "198.18.3.13"
    # the example's addresses are the ones the lab gives: it reads as deployed
    lsite = scale_lab_site(site, Path("/tmp/x"), plan)
    assert [ls.address for e in lsite.edges for ls in e.listen] == \
        [ls.address for e in site.edges for ls in e.listen]
    assert [n.ng.address for n in lsite.media.nodes] == [n.ng.address for n in site.media.nodes]
    assert site.redis is not None and lsite.redis is not None
    assert lsite.redis.address == site.redis.address == plan.address("redis")
    assert [i.api.address for i in lsite.controller.instances] == \
        [i.api.address for i in site.controller.instances]


def test_scale_lab_site_changes_only_addresses_and_dirs(tmp_path: Path) -> None:
    site = load(EXAMPLE)
    plan = NetPlan("x", "x0", "198.18.7.0/24", scale_hosts(site))
    lsite = scale_lab_site(site, tmp_path, plan)
    assert _strip(lsite.model_dump(mode="json")) == _strip(site.model_dump(mode="json"))
    assert [ls.address for ls in lsite.edges[1].listen] == ["198.18.7.5"]
    assert lsite.edges[0].jsonrpc.allow == ["198.18.7.0/24"]  # the controllers' hosts
    assert lsite.edges[0].trunks[0].uri == "sip:198.18.7.3:5060"
    assert lsite.media.nodes[2].interfaces[0].address == "198.18.7.8"
    assert [s.uri for s in lsite.recording.srs_groups[0].servers] == [
        "sip:srs@198.18.7.12:5090", "sip:srs@198.18.7.13:5090"]
    assert lsite.security.secrets_dir == str(tmp_path.resolve() / "secrets")
    assert lsite.redis_auth_file.startswith(str(tmp_path.resolve()))


def test_specs_start_each_daemon_on_its_host(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "unavailable", lambda: None)
    lab = Lab.plan(load(EXAMPLE), tmp_path, "auto")
    assert isinstance(lab, ScaleLab) and lab.reg["topology"] == "scale"
    specs = lab.specs()
    assert list(specs) == ["srs1", "srs2", "callee", "redis", "rtp-a1", "rtp-a2", "rtp-b1",
                           "edge-a", "edge-b", "ctl-1", "ctl-2"]
    assert all(s["host"] == n for n, s in specs.items() if n not in ("callee",))
    argv = specs["ctl-2"]["argv"]
    assert argv[argv.index("--instance") + 1] == "ctl-2"
    assert argv[argv.index("--redis") + 1] == "198.18.3.9:6379"
    assert argv[argv.index("--api") + 1] == "198.18.3.11:8090"
    assert specs["redis"]["argv"][0] == "/usr/bin/redis-server"
    main = Path(specs["redis"]["argv"][1]).read_text()
    assert "daemonize no" in main and f"include {tmp_path.resolve()}/configs/redis/redis.conf" \
        in main
    assert specs["rtp-a1"]["env_file"].endswith("secrets/rtpengine-redis.env")
    assert "--config-file=" + str(tmp_path.resolve() / "configs/rtpengine/rtp-b1/"
                                  "rtpengine.conf") in specs["rtp-b1"]["argv"]
    # the registry brings the same lab back (hosts, topology)
    again = Lab.of(tmp_path, lab.reg)
    assert isinstance(again, ScaleLab) and again.netplan == lab.netplan


def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "unavailable", lambda: None)
    site = load(EXAMPLE)
    with pytest.raises(LabError, match="network namespaces only"):
        Lab.plan(site, tmp_path, "loopback")
    data = site.model_dump(mode="json", exclude_none=True)
    small = validate_data({**data, "lab": {"subnet": "198.18.3.0/29"}})
    with pytest.raises(LabError, match="too small"):
        Lab.plan(small, tmp_path, "netns")
    data["media"]["nodes"][0]["name"] = "a-very-long-node-name"
    data["media"]["nodes"][1]["redis"]["peers"] = ["a-very-long-node-name"]
    with pytest.raises(LabError, match="at most 15 characters"):
        scale_hosts(validate_data(data))
    monkeypatch.setattr(netns, "unavailable", lambda: "not running as root")
    with pytest.raises(LabError, match="cannot be used here: not running as root"):
        Lab.plan(site, tmp_path, "auto")


def test_drills_belong_to_their_topology(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "unavailable", lambda: None)
    assert {"leader-kill", "leader-redis-partition", "srs-kill"} <= set(all_drills())
    scale = Lab.plan(load(EXAMPLE), tmp_path / "s", "auto")
    with pytest.raises(LabError, match="its drills: leader-kill, leader-redis-partition"):
        run_drill(scale, "srs-kill")
    single = Lab.plan(load(), tmp_path / "1", "loopback")
    with pytest.raises(LabError, match="no drill 'leader-kill'"):
        run_drill(single, "leader-kill")


@pytest.mark.parametrize("n,parts,want", [(10, 2, [5, 5]), (7, 2, [4, 3]), (1, 2, [1, 0]),
                                          (0, 2, [0, 0]), (5, 1, [5])])
def test_calls_spread_over_edges(n: int, parts: int, want: list[int]) -> None:
    assert _spread(n, parts) == want


def test_drill_list_names_the_scale_drills(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    assert main(["lab", "drill", "list"]) == 0
    out = capsys.readouterr().out
    assert "leader-kill" in out and "leader-redis-partition" in out and "srs-kill" in out
