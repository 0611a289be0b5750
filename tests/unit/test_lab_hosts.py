"""The lab's plan without daemons: where hosts go, what the lab changes in a site (only
addresses, ports and directories), the loopback fallback, the registry, sipp's counters,
report figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import hosts, netns
from orchestrator.lab.hosts import BAND, Lab, lab_site
from orchestrator.lab.load import read_sipp_stat
from orchestrator.lab.netns import NetPlan
from orchestrator.lab.report import percentile
from orchestrator.site import load, validate_data


def _strip(d: Any) -> Any:
    """The site with every address, port, path and URI host:port blanked."""
    if isinstance(d, dict):
        return {k: ("*" if k in ("address", "port", "port_min", "port_max", "run_dir", "dir",
                                 "store", "secrets_dir", "uri") else _strip(v))
                for k, v in d.items() if k not in ("advertise", "advertised")}
    if isinstance(d, list):
        return [_strip(x) for x in d]
    return d


def test_netns_plan_names_and_addresses() -> None:
    plan = NetPlan.from_settings(load().lab)
    assert plan.switch == "slab-sw"
    assert [plan.address(h) for h in netns.HOSTS] == [
        "198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"]
    assert plan.netns("edge") == "slab-edge"
    assert max(len(h) for h in netns.HOSTS) <= 15  # the switch's port names


def test_lab_site_netns_changes_only_addresses_ports_and_dirs(tmp_path: Path) -> None:
    site = load()
    plan = NetPlan.from_settings(site.lab)
    lsite = lab_site(site, tmp_path, plan)
    assert _strip(lsite.model_dump(mode="json")) == _strip(site.model_dump(mode="json"))
    e = lsite.edges[0]
    assert {ls.address for ls in e.listen} == {"198.18.0.4"}
    assert [ls.port for ls in e.listen] == [ls.port for ls in site.edges[0].listen]
    assert e.trunks[0].uri == "sip:198.18.0.3:5080"
    servers = [s.uri for s in lsite.recording.srs_groups[0].servers]
    assert servers == ["sip:srs@198.18.0.5:5090", "sip:srs@198.18.0.6:5091"]
    # control surfaces stay on the edge host's own loopback
    assert e.jsonrpc.address == e.evapi.address == lsite.controller.api.address == "127.0.0.1"
    assert lsite.media.nodes[0].ng.address == "127.0.0.1"
    assert lsite.media.nodes[0].interfaces[0].address == "198.18.0.4"
    assert lsite.media.recording.dir == str(tmp_path.resolve() / "recordings")
    assert lsite.controller.store == str(tmp_path.resolve() / "controller.sqlite")
    assert lsite.security.secrets_dir == str(tmp_path.resolve() / "secrets")


def test_lab_site_loopback_uses_the_band(tmp_path: Path) -> None:
    site = load()
    lsite = lab_site(site, tmp_path, None)
    assert _strip(lsite.model_dump(mode="json")) == _strip(site.model_dump(mode="json"))
    from orchestrator.site.model import _listeners

    ports = [port for _, _, addr, port in _listeners(lsite)]
    assert all(addr == "127.0.0.1" for _, _, addr, _ in _listeners(lsite))
    assert all(6100 <= p <= 6999 for p in ports), ports
    n = lsite.media.nodes[0]
    assert BAND.rtp[0] <= n.ports.port_min < n.ports.port_max <= BAND.rtp[1]
    assert [s.uri for s in lsite.recording.srs_groups[0].servers] == [
        "sip:srs@127.0.0.1:6191", "sip:srs@127.0.0.1:6192"]


def test_not_root_falls_back_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    lab = Lab.plan(load(), tmp_path, "auto")
    assert lab.mode == "loopback"
    assert lab.reg["fallback_reason"] == "not running as root"
    assert lab.netplan is None and lab.host_ns("edge") is None
    with pytest.raises(LabError, match="not available: not running as root"):
        Lab.plan(load(), tmp_path, "netns")


def test_three_srs_do_not_fit_the_lab(tmp_path: Path) -> None:
    data = load().model_dump(mode="json", exclude_none=True)
    data["recording"]["srs_groups"][0]["servers"].append({"uri": "sip:srs@127.0.0.1:5099"})
    with pytest.raises(LabError, match="two SRS hosts; the site names 3"):
        lab_site(validate_data(data), tmp_path, None)


def test_lab_settings_are_validated() -> None:
    from orchestrator.errors import SiteError

    data = load().model_dump(mode="json", exclude_none=True)
    for bad, msg in ((dict(subnet="8.8.8.0/24"), "must be a private network"),
                     (dict(subnet="198.18.0.0/30"), "at least 8 addresses"),
                     (dict(netns_prefix="Lab-1"), "not usable in an interface"),
                     (dict(bridge="averylongbridge"), "not usable in an interface")):
        with pytest.raises(SiteError, match=msg):
            validate_data({**data, "lab": bad})


def test_lab_section_does_not_change_rendered_configs() -> None:
    from orchestrator.render import render_site

    data = load().model_dump(mode="json", exclude_none=True)
    other = validate_data({**data, "lab": {"subnet": "198.18.5.0/24", "netns_prefix": "x"}})
    assert [r.content for r in render_site(load())] == [r.content for r in render_site(other)]


def test_registry_refuses_a_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(LabError, match="not a lab registry"):
        Lab.open(tmp_path)
    (tmp_path / "lab.json").write_text("{")
    with pytest.raises(LabError, match="unreadable lab registry"):
        Lab.open(tmp_path)
    (tmp_path / "lab.json").unlink()
    with pytest.raises(LabError, match="no lab is up"):
        Lab.open(tmp_path)


def test_a_recycled_pid_is_not_the_recorded_process() -> None:
    import os

    me = {"pid": os.getpid(), "start": hosts._proc_start(os.getpid())}
    assert hosts.proc_alive(me)
    assert not hosts.proc_alive({**me, "start": me["start"] + 1})
    assert not hosts.proc_alive({"pid": None})


def test_sipp_stat_last_line(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("StartTime;OutgoingCall(C);SuccessfulCall(C);FailedCall(C);CurrentCall;\n"
                 "x;1;0;0;1;\nx;10;8;1;1;\n")
    assert read_sipp_stat(f) == {"OutgoingCall(C)": 10, "SuccessfulCall(C)": 8,
                                 "FailedCall(C)": 1, "CurrentCall": 1}
    assert read_sipp_stat(tmp_path / "missing.csv") == {}


@pytest.mark.parametrize("q,want", [(50, 5), (95, 10), (99, 10), (10, 1)])
def test_percentile_nearest_rank(q: float, want: float) -> None:
    assert percentile([float(x) for x in range(1, 11)], q) == want
    assert percentile([], q) is None
