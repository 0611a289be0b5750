"""Kamailio RPC against a real Kamailio started from the rendered lab config, over HTTP
JSON-RPC and through kamcli (unix datagram socket)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemons import Kamailio, Rtpengine, free_port, free_ports
from orchestrator.errors import KamailioError, KamailioRpcError, KamailioUnreachable
from orchestrator.kamailio import HttpRpcTransport, KamailioClient, KamcliTransport
from tests.conftest import lab_secrets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LAB_CFG = ROOT / "kamailio" / "edge1" / "kamailio.cfg"


class Edge:
    def __init__(self, rpc_port: int, run_dir: Path, kamcli_ini: Path, rtp_url: str,
                 ng_port: int, started: float, secret: str = "",
                 secret_file: str = "") -> None:
        self.started = started  # time.monotonic() just before Kamailio was started
        self.secret = secret
        self.secret_file = secret_file
        self.url = f"http://127.0.0.1:{rpc_port}/RPC"
        self.rpc_port = rpc_port
        self.run_dir = run_dir
        self.kamcli_ini = kamcli_ini
        self.rtp_url = rtp_url
        self.ng_port = ng_port


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("kamailio")
    ng = free_port()
    rtp = Rtpengine(ROOT / "rtpengine/rtp1/rtpengine.conf", tmp / "rtp", ng=("127.0.0.1", ng),
                    overrides=[f"--listen-ng=127.0.0.1:{ng}",
                               f"--listen-tcp-ng=127.0.0.1:{free_port('tcp')}",
                               f"--listen-http=127.0.0.1:{free_port('tcp')}",
                               "--port-min=46300", "--port-max=46399",
                               f"--recording-dir={tmp / 'rec'}"])
    sip, rpc, evapi = free_ports(3)
    cfg = LAB_CFG.read_text()
    subs = {"127.0.0.1:5060": f"127.0.0.1:{sip}", "tcp:127.0.0.1:5071": f"tcp:127.0.0.1:{rpc}",
            "$Rp != 5071": f"$Rp != {rpc}", "127.0.0.1:8448": f"127.0.0.1:{evapi}",
            "udp:127.0.0.1:2223": f"udp:127.0.0.1:{ng}"}
    for old, new in subs.items():
        assert old in cfg, old  # the lab config changed: update this fixture
        cfg = cfg.replace(old, new)
    cfg, secrets = lab_secrets(tmp, cfg)
    path = tmp / "kamailio.cfg"
    path.write_text(cfg)
    kam = Kamailio(path, tmp / "kam", ready_tcp=("127.0.0.1", rpc))
    ini = tmp / "kamcli.ini"
    ini.write_text("[jsonrpc]\ntransport=socket\n"
                   f"srvaddr={kam.run_dir / 'kamailio_rpc.sock'}\n"
                   f"rcvaddr={tmp / 'kamcli_reply.sock'}\noutformat=json\n")
    with rtp.started():
        started = time.monotonic()
        with kam.started(timeout=20):
            yield Edge(rpc, kam.run_dir, ini, f"udp:127.0.0.1:{ng}", ng, started,
                       secrets.jsonrpc, str(tmp / "secrets" / "jsonrpc-edge1.secret"))


@pytest.fixture(params=["http", "kamcli"])
def kam(request: pytest.FixtureRequest, edge: Edge) -> Iterator[KamailioClient]:
    t: Any = HttpRpcTransport(edge.url, secret=edge.secret) if request.param == "http" else \
        KamcliTransport(edge.kamcli_ini)
    with KamailioClient(t, timeout=8.0) as client:
        yield client


def test_version_uptime_dialogs(kam: KamailioClient, edge: Edge) -> None:
    assert kam.version().startswith("kamailio 5.")
    raw = kam.call("core.uptime")
    up = kam.uptime()
    # this Kamailio's own uptime (not a default, not another instance's): since the fixture
    # started it, give or take the second it rounds to
    assert isinstance(raw, dict) and int(raw["uptime"]) <= up
    assert 0 <= up <= time.monotonic() - edge.started + 1
    d = kam.active_dialogs()
    assert d.get("all") == 0 and "ongoing" in d


def test_rpc_error_is_typed(kam: KamailioClient) -> None:
    with pytest.raises(KamailioRpcError) as ei:
        kam.call("no.such.method")
    if isinstance(kam.transport, HttpRpcTransport):
        # over HTTP only the toolkit's methods pass the config's allow-list
        assert ei.value.code == 403 and "method not allowed" in ei.value.rpc_message
    else:  # kamcli, the local admin path (owner-only unix socket): every method
        assert ei.value.code == 500 and "Not Found" in ei.value.rpc_message
        with pytest.raises(KamailioRpcError, match="No Database URL"):
            kam.call("rtpengine.reload")


def test_rtpengine_disable_enable_roundtrip(kam: KamailioClient, edge: Edge) -> None:
    nodes = kam.rtpengine_show()
    assert [n.url for n in nodes] == [edge.rtp_url]
    assert kam.rtpengine_ping(edge.rtp_url) is True
    assert kam.rtpengine_enable(edge.rtp_url, False) == "disable"
    (n,) = kam.rtpengine_show(edge.rtp_url)
    assert n.disabled and n.permanent and n.state == "disabled (admin)"
    # the flag goes as an integer: a string "1" would *disable* (field notes)
    assert kam.rtpengine_enable(edge.rtp_url, True) == "enable"
    (n,) = kam.rtpengine_show(edge.rtp_url)
    assert not n.disabled and n.state == "enabled"


def test_string_flag_really_disables(edge: Edge) -> None:
    # the quirk the integer encoding protects against, seen on the real daemon
    with KamailioClient(HttpRpcTransport(edge.url, secret=edge.secret)) as kam:
        r = kam.call("rtpengine.enable", edge.rtp_url, "1")
        assert r["status"] == "disable"
        assert kam.rtpengine_enable(edge.rtp_url, True) == "enable"


def test_kamcli_refuses_unescapable_params(edge: Edge) -> None:
    with KamailioClient(KamcliTransport(edge.kamcli_ini)) as kam:
        with pytest.raises(KamailioError, match="JSON-escape"):
            kam.call("rtpengine.show", 'a"b')


def test_kamcli_missing_socket_raises(tmp_path: Path) -> None:
    ini = tmp_path / "kamcli.ini"
    ini.write_text(f"[jsonrpc]\ntransport=socket\nsrvaddr={tmp_path / 'nope.sock'}\n"
                   f"rcvaddr={tmp_path / 'reply.sock'}\noutformat=json\n")
    # kamcli exits 0 here with no output: that must not pass for success
    with KamailioClient(KamcliTransport(ini)) as kam, pytest.raises(KamailioUnreachable):
        kam.version()


def test_http_unreachable() -> None:
    port = free_port("tcp")
    with KamailioClient(HttpRpcTransport(f"http://127.0.0.1:{port}/RPC"), timeout=1) as kam:
        with pytest.raises(KamailioUnreachable):
            kam.version()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("via", ["--jsonrpc", "--kamcli"])
def test_cli_edge(edge: Edge, via: str) -> None:
    target = ([via, edge.url, "--secret-file", edge.secret_file] if via == "--jsonrpc"
              else [via, str(edge.kamcli_ini)])
    p = cli("edge", "status", *target, "--json")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)
    assert row["version"].startswith("kamailio") and row["dialogs"]["all"] == 0
    assert row["rtpengine"][0]["url"] == edge.rtp_url and row["rtpengine"][0]["enabled"]
    p = cli("edge", "rtpengine", "disable", edge.rtp_url, *target, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["nodes"][0]["enabled"] is False
    p = cli("edge", "rtpengine", "enable", edge.rtp_url, *target)
    assert p.returncode == 0 and "enabled" in p.stdout
    p = cli("edge", "rtpengine", "show", *target)
    assert p.returncode == 0 and edge.rtp_url in p.stdout


def test_cli_edge_exit_codes(edge: Edge) -> None:
    assert cli("edge", "rtpengine", "enable", "nosuchnode", "--jsonrpc", edge.url).returncode == 2
    dead = f"http://127.0.0.1:{free_port('tcp')}/RPC"
    assert cli("edge", "status", "--jsonrpc", dead, "--timeout", "1").returncode == 3
    assert cli("edge", "status", "--jsonrpc", edge.url, "--kamcli", "x").returncode == 2
