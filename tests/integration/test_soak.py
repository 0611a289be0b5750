"""Soak: 200 recorded calls at 20 calls/s through the rendered configs (delete-delay as the
site ships it), half to a callee that honours Record-Route and half to one that ignores it
(sipp's built-in uas, like many PBXs). Afterwards nothing is left anywhere: rtpengine holds
no call, Kamailio no dialog (its shm back where it was), the controller no open session, and
the SRS has 200 complete sessions with media on every stream."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.store import SessionStore
from orchestrator.daemons import free_port, free_ports
from orchestrator.kamailio.rpc import HttpRpcTransport, KamailioClient
from orchestrator.lab import sipp
from orchestrator.lab.srs import SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.ng import NgClient
from orchestrator.site.loader import validate_data
from orchestrator.site.secrets import edge_secrets
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CALLS = 200
SHM_TOLERANCE = 256 * 1024  # allocator fragmentation; 200 leaked dialogs would be ~2 MB


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1, "name": "soak",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]},
                       {"proto": "tcp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "honours-rr", "uri": f"sip:127.0.0.1:{ports['uas_rr']}",
                        "match_ruri": "^sip:honours@"},
                       {"name": "ignores-rr", "uri": f"sip:127.0.0.1:{ports['uas']}"}],
            "default_trunk": "ignores-rr",
            "jsonrpc": {"address": "127.0.0.1", "port": ports["rpc"], "allow": ["127.0.0.1/32"]},
            "evapi": {"address": "127.0.0.1", "port": ports["evapi"]},
            "run_dir": str(work / "run" / "edge1"),
        }],
        "media": {
            "recording": {"method": "pcap", "dir": str(work / "recordings")},
            "delete_delay": 2,
            "nodes": [{"name": "rtp1", "ng": {"address": "127.0.0.1", "port": ports["ng"]},
                       "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                       "ports": {"port_min": 42000, "port_max": 44999}}],
        },
        "recording": {
            "default": True, "local": True, "siprec": "main", "metadata_headers": ["X-Customer-Id"],
            "srs_groups": [{"name": "main",
                            "servers": [{"uri": f"sip:srs@127.0.0.1:{ports['srs']}"}]}],
        },
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    work = tmp_path_factory.mktemp("soak")
    free = iter(free_ports(9))
    ports = {k: next(free) for k in ("sip", "uas", "uas_rr", "rpc", "evapi", "ng", "api", "srs")}
    site = validate_data(_site(work, ports), file="soak-site")
    srs = SrsConfig(address="127.0.0.1", port=ports["srs"], name="srs", record_dir=work / "srs",
                    rtp_port_min=45000, rtp_port_max=45999)
    srs.record_dir.mkdir(parents=True)
    with LabStack(site, work, srs=[srs]) as st:
        cwd = sipp.workdir(work / "sipp")
        callees = [sipp.uas(cwd, "127.0.0.1", ports["uas"]),
                   sipp.uas(cwd, "127.0.0.1", ports["uas_rr"], record_route=True)]
        st.sipp_cwd = cwd  # type: ignore[attr-defined]
        try:
            yield st
        finally:
            for c in callees:
                sipp.stop(c)


def test_200_recorded_calls_leave_nothing_behind(soak: LabStack) -> None:
    stack = soak
    secrets = edge_secrets(stack.site, stack.edge.name)
    rpc = KamailioClient(HttpRpcTransport(
        f"http://{stack.edge.jsonrpc.address}:{stack.edge.jsonrpc.port}/RPC",
        secret=secrets.jsonrpc))
    cwd = stack.sipp_cwd  # type: ignore[attr-defined]
    target = f"{stack.sip[0]}:{stack.sip[1]}"

    def run(calls: int, rate: float, tag: str) -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen(
            sipp.uac_argv(cwd, target, local=("127.0.0.1", free_port()), calls=calls,
                          rate=rate, duration_ms=2000, customer=f"{tag}-{kind}",
                          extra=["-s", kind]),
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for kind in ("honours", "ignores")]

    # warm-up: the first calls allocate Kamailio's caches; shm is measured after them
    assert [p.wait(60) for p in run(5, 5, "WARM")] == [0, 0]
    wait_for(lambda: not rpc.call("dlg.list"), 15, "no dialog after the warm-up")
    shm_before = int(rpc.call("core.shmmem")["free"])

    procs = run(CALLS // 2, 10, "SOAK")  # 2 × 10 calls/s
    assert [p.wait(120) for p in procs] == [0, 0], \
        [f.read_text()[-1500:] for f in Path(cwd).glob("uac_*errors.log")]

    def soak_sessions() -> list[dict[str, Any]]:
        return [s for s in stack.api("GET", "/sessions?limit=500") if (
            s["call"].get("headers") or {}).get("X-Customer-Id", "").startswith("SOAK-")]

    ss = wait_for(lambda: (x := soak_sessions()) and len(x) >= CALLS and all(
        s["state"] == "closed" for s in x) and x, 30, f"{CALLS} closed sessions")
    calls = {s["call_id"] for s in ss}
    assert len(ss) == CALLS and len(calls) == CALLS  # each call recorded once
    # nothing left behind
    with NgClient((stack.site.media.nodes[0].ng.address, stack.site.media.nodes[0].ng.port)) as ng:
        wait_for(lambda: not ng.list_calls(5000), stack.site.media.delete_delay + 5,
                 "rtpengine to hold no call")
    wait_for(lambda: not rpc.call("dlg.list"), 15, "Kamailio to hold no dialog")
    shm_after = wait_for(lambda: (f := int(rpc.call("core.shmmem")["free"])) >=
                         shm_before - SHM_TOLERANCE and f, 15, "Kamailio's shm to come back")
    assert stack.api("GET", "/sessions?open=1") == []
    store = SessionStore(stack.store, readonly=True)
    try:
        assert [x for x in store.losses() if x["call_id"] in calls] == []
    finally:
        store.close()
    rs = {s["rs_call_id"] for s in ss}
    at_srs = [x for x in stack.srs["srs"].sessions() if x.call_id in rs]
    assert len(at_srs) == CALLS
    assert all(x.state == "terminated" and x.bye_from == "src" for x in at_srs)
    assert all(len(x.labels) == 2 and all(st.packets > 0 for st in x.labels.values())
               for x in at_srs), "a stream without media"
    assert all(not [f for f in x.metadata_findings if f.severity.value == "error"]
               for x in at_srs)
    print(f"\nsoak: {CALLS} calls, leftovers: rtpengine 0, dialogs 0, open sessions 0; "
          f"Kamailio shm free {shm_before} → {shm_after} bytes")
    rpc.close()
