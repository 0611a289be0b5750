"""The lab as an operator runs it: ``siprecctl lab demo`` on hosts in network namespaces,
``lab up``/``status``/``call``/``report``/``down`` on the loopback fallback, ``lab down``
after the lab command was killed, and ``lab run`` (the one-process loopback check)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.lab import netns
from orchestrator.lab.hosts import Lab, proc_alive
from orchestrator.site.loader import embedded_text
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _site(tmp: Path, prefix: str) -> Path:
    """The embedded lab with its own namespace prefix (an operator's lab may be up)."""
    path = tmp / "site.yaml"
    path.write_text(embedded_text("lab").replace("netns_prefix: slab", f"netns_prefix: {prefix}"))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=180)


def _listening(pid: int) -> list[tuple[str, str, int]]:
    """(proto, address, port) of every TCP listener and bound UDP socket in ``pid``'s
    network namespace."""
    out = []
    for proto in ("tcp", "udp"):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            if proto == "tcp" and f[3] != "0A":  # LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            addr = ".".join(str(int(hexaddr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out.append((proto, addr, int(hexport, 16)))
    return out


@pytest.mark.root
def test_lab_demo_on_hosts_in_namespaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    site = _site(tmp_path, "tlab")
    labdir = tmp_path / "lab"
    rc = main(["lab", "demo", str(site), "--dir", str(labdir), "--json"])
    doc = json.loads(capsys.readouterr().out)
    (rep,) = doc["runs"]
    assert rc == 0, rep["problems"]
    assert rep["ok"] and rep["mode"] == "netns"
    assert rep["calls"] == {"placed": 10, "answered": 10, "failed": 0, "ended": 10}
    # 2 of the 10 calls carry X-Record: no (the lab's opt-out rule)
    assert rep["policy"] == {"siprec": 8, "local": 8, "not_recorded": 2}
    assert rep["siprec"]["calls_established"] == rep["siprec"]["srs_complete"] == 8
    assert rep["siprec"]["metadata_valid"] == 8 and rep["local"]["recorded"] == 8
    for leg in ("caller", "callee"):
        assert rep["rtp"][leg]["calls"] == 8 and rep["rtp"][leg]["min"] >= 0.95, rep["rtp"]
    assert rep["setup_ms"]["n"] == 8 and 0 < rep["setup_ms"]["p50"] < 500
    assert {"controller", "edge1", "rtp1", "srs1", "callee"} <= set(rep["usage"])
    assert all(u["mem_mb_peak"] > 0 for u in rep["usage"].values())
    opted = [r for r in rep["per_call"] if not r["siprec"]]
    assert len(opted) == 2 and all(r["sessions"] == 0 for r in opted)
    page = Path(doc["html"]).read_text()
    assert page.count("<svg") == 1 and "set-up latency" in page
    # torn down: no namespace, no process of the lab left
    assert not netns.existing([f"tlab-{h}" for h in (*netns.HOSTS, "sw")])
    reg = json.loads((labdir / "lab.json").read_text())
    assert reg["state"] == "down"
    assert not [n for n, p in reg["processes"].items() if proc_alive(p)]


@pytest.mark.root
def test_lab_hosts_bind_their_own_addresses_and_stay_authenticated(tmp_path: Path) -> None:
    labdir = tmp_path / "lab"
    r = _cli("lab", "up", str(_site(tmp_path, "tlab")), "--dir", str(labdir), "--json")
    try:
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["healthy"] and status["mode"] == "netns"
        lab = Lab.open(labdir)
        seen = 0
        for h in status["hosts"]:
            for name in h["processes"]:
                pid = lab.reg["processes"][name]["pid"]
                for proto, addr, port in _listening(pid):
                    assert addr in (h["address"], "127.0.0.1"), (name, proto, addr, port)
                    seen += 1
        assert seen >= 10
        # the controller's API refuses a request without the lab's token
        from orchestrator.controller.client import api_request

        with lab.inside("edge"):
            api = lab.site.controller.api
            status_code, _ = api_request(f"http://{api.address}:{api.port}", "GET", "/sessions",
                                         timeout=5)
        assert status_code == 401
    finally:
        d = _cli("lab", "down", "--dir", str(labdir))
        assert d.returncode == 0, d.stderr
    assert not netns.existing(lab.netplan.namespaces())  # type: ignore[union-attr]


def test_lab_loopback_fallback_up_call_report_down(tmp_path: Path) -> None:
    labdir = tmp_path / "lab"
    r = _cli("lab", "up", "--mode", "loopback", "--dir", str(labdir), "--json")
    try:
        assert r.returncode == 0, r.stderr
        assert "hosts on loopback, ports 6100-6999" in r.stderr
        status = json.loads(r.stdout)
        assert status["mode"] == "loopback" and status["healthy"]
        assert {h["address"] for h in status["hosts"]} == {"127.0.0.1"}
        s = _cli("lab", "status", "--dir", str(labdir))
        assert s.returncode == 0 and "NG ping answered" in s.stdout, s.stdout
        c = _cli("lab", "call", "--dir", str(labdir), "--calls", "4", "--rate", "4",
                 "--duration", "1", "--json")
        assert c.returncode == 0, c.stdout + c.stderr
        run_id = json.loads(c.stdout)["run_id"]
        rep = _cli("lab", "report", "--dir", str(labdir), "--run", run_id, "--json")
        assert rep.returncode == 0, rep.stdout
        (figures,) = json.loads(rep.stdout)["runs"]
        assert figures["siprec"]["srs_complete"] == 4 and figures["rtp"] is None
        table = _cli("lab", "report", "--dir", str(labdir), "--run", run_id)
        assert "RUN OK" in table.stdout and "set-up latency" in table.stdout
    finally:
        d = _cli("lab", "down", "--dir", str(labdir))
    assert d.returncode == 0 and "stopped controller" in d.stdout, d.stdout + d.stderr
    again = _cli("lab", "down", "--dir", str(labdir))
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    assert _cli("lab", "status", "--dir", str(labdir)).returncode == 1


@pytest.mark.root
def test_lab_down_cleans_up_after_the_lab_command_was_killed(tmp_path: Path) -> None:
    labdir = tmp_path / "lab"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "lab", "up",
                             str(_site(tmp_path, "tlab")), "--dir", str(labdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def started() -> bool:
        try:
            reg = json.loads((labdir / "lab.json").read_text())
        except (OSError, ValueError):
            return False
        return len(reg["processes"]) >= 3

    try:
        wait_for(started, 30, "lab up to start three processes")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the lab command crashes mid-way
        proc.wait(5)
    reg = json.loads((labdir / "lab.json").read_text())
    assert reg["state"] == "starting"
    left = [p for p in reg["processes"].values() if proc_alive(p)]
    assert left and netns.existing(reg["namespaces"])
    d = _cli("lab", "down", "--dir", str(labdir))
    assert d.returncode == 0, d.stderr
    assert not [p for p in left if proc_alive(p)]
    assert not netns.existing(reg["namespaces"])
    assert not netns.pids_in("tlab-edge")
    # a new lab comes up in the same directory afterwards
    r = _cli("lab", "up", str(_site(tmp_path, "tlab")), "--dir", str(labdir), "--json")
    _cli("lab", "down", "--dir", str(labdir))
    assert r.returncode == 0, r.stderr


def test_lab_run(tmp_path, capsys) -> None:
    """``lab run`` (retired in favour of ``lab demo``, kept working): one process on
    loopback with the shipped ports."""
    rc = main(["lab", "run", "--workdir", str(tmp_path), "--calls", "2", "--duration-ms", "1500",
               "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["ok"] is True
    kinds = sorted(c["kind"] for c in report["calls"])
    assert kinds == ["opt-out", "recorded", "recorded"]
    for call in report["calls"]:
        assert call["answered"] and call["ended"]
        if call["kind"] == "recorded":
            assert call["pcap_packets"] > 50
            assert {"call-id", "from", "to", "rule", "edge"} <= set(call["metadata_keys"])
            # recorded over SIPREC too: both streams carried media to the reference SRS
            assert call["siprec_srs"] == "lab-srs-1"
            assert len(call["siprec_packets"]) == 2
            assert all(n > 20 for n in call["siprec_packets"].values()), call
        else:
            assert call["pcap_packets"] is None and call["rule"] == "opt-out"
            assert call["siprec_srs"] is None
    # what it ran is kept for the operator
    assert (tmp_path / "configs" / "kamailio" / "edge1" / "kamailio.cfg").is_file()
    assert list((tmp_path / "recordings" / "rtp1" / "metadata").glob("rtpengine-meta-*.txt"))
    assert len(list((tmp_path / "srs" / "lab-srs-1").glob("*.json"))) == 2  # SRS session records
