"""The completeness ledger against the real daemons (rtpengine, Kamailio from the rendered
config, the controller as ``siprecctl serve``, reference SRSs, sipp): ``siprecctl audit``
joins the edge's own records, the controller's store, the local recordings and the SRSs'
session records.

- calls that begin and end while no controller runs: missing SIPREC, "controller down",
  known from the edge's records alone (and a rejected attempt is recorded with its code);
- an SRS SIGKILLed mid-call: the gap equals the kill-to-failover time within 1 s;
- pause/resume: the paused seconds are not a loss;
- opted-out calls: not required;
- a clean run of 100 calls: 100.0 %, every stream at least 99 % of its packets.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.store import SessionStore
from orchestrator.daemons import free_ports
from orchestrator.lab import sipp
from orchestrator.lab.srs import Behaviour, SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.sip import build_response, parse_sip_message
from orchestrator.site.loader import validate_data
from tests.conftest import wait_for
from tests.integration.test_drills import KillableSrs, established_on, sessions_of, srs_up

pytestmark = pytest.mark.integration


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    uri = {n: f"sip:srs@127.0.0.1:{p}" for n, p in ports["srs"].items()}
    return {
        "version": 1, "name": "audit",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"},
                       {"name": "busy", "uri": f"sip:127.0.0.1:{ports['busy']}",
                        "match_ruri": "^sip:busy@"},
                       {"name": "sipp", "uri": f"sip:127.0.0.1:{ports['uas']}",
                        "match_ruri": "^sip:service@"}],
            "default_trunk": "phones",
            "jsonrpc": {"address": "127.0.0.1", "port": ports["rpc"], "allow": ["127.0.0.1/32"]},
            "evapi": {"address": "127.0.0.1", "port": ports["evapi"]},
            "run_dir": str(work / "run" / "edge1"),
        }],
        "media": {
            "recording": {"method": "pcap", "dir": str(work / "recordings")},
            "delete_delay": 2,
            "nodes": [{"name": "rtp1", "ng": {"address": "127.0.0.1", "port": ports["ng"]},
                       "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                       "ports": {"port_min": 36000, "port_max": 36999}}],
        },
        "recording": {
            "default": True, "local": True, "siprec": "main",
            "rules": [{"name": "opt-out", "match": {"header": {"name": "X-Record",
                                                              "pattern": "^no$"}},
                       "record": False}],
            "srs_groups": [{"name": "main", "servers": [{"uri": uri["a"]}, {"uri": uri["b"]}],
                            "timeout": 2.0}],
        },
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


class BusyCallee:
    """A callee that answers every INVITE 486 (a failed call attempt)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
                msg = parse_sip_message(data)
            except Exception:  # timeouts and anything unparsable: keep serving
                continue
            if msg.method == "INVITE":
                self.sock.sendto(build_response(msg, 486, to_tag="busy1"), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabStack, KillableSrs]]:
    work = tmp_path_factory.mktemp("audit")
    free = iter(free_ports(10))
    ports: dict[str, Any] = {k: next(free) for k in ("sip", "callee", "busy", "uas", "rpc",
                                                     "evapi", "ng", "api")}
    ports["srs"] = {"a": next(free), "b": next(free)}
    site = validate_data(_site(work, ports), file="audit-site")
    b = SrsConfig(address="127.0.0.1", port=ports["srs"]["b"], name="b",
                  record_dir=work / "srs-b", rtp_port_min=37200, rtp_port_max=37399,
                  behaviour=Behaviour())
    b.record_dir.mkdir(parents=True)
    srs_a = KillableSrs(ports["srs"]["a"], work / "srs-a")
    srs_a.start()
    with LabStack(site, work, srs=[b]) as st:
        callee = CalleeServer("127.0.0.1", ports["callee"])
        busy = BusyCallee(ports["busy"])
        cwd = sipp.workdir(work / "sipp")
        uas = sipp.uas(cwd, "127.0.0.1", ports["uas"])
        st.callee, st.sipp_cwd = callee, cwd  # type: ignore[attr-defined]
        try:
            yield st, srs_a
        finally:
            sipp.stop(uas)
            busy.close()
            callee.close()
            if srs_a.proc is not None and srs_a.proc.poll() is None:
                srs_a.kill()


def audit(stack: LabStack, since: float, *extra: str) -> tuple[int, dict[str, Any]]:
    """``siprecctl audit --json`` on the lab's site, store and SRS records."""
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "audit", str(stack.site_file), "--store",
         str(stack.store), "--srs-records", str(stack.workdir / "srs-a"), "--srs-records",
         str(stack.workdir / "srs-b"), "--since", datetime.fromtimestamp(since).isoformat(),
         "--json", *extra], capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["call_id"]: e for e in doc["entries"]}


def call(stack: LabStack, **headers: str) -> LabCall:
    c = LabCall(stack.sip, stack.callee, headers=headers)  # type: ignore[attr-defined]
    c.start()
    return c


def settled(stack: LabStack, call_ids: list[str], timeout: float = 20.0) -> None:
    """Every session of these calls closed or failed, and their local recordings final."""
    def done() -> bool:
        store = SessionStore(stack.store, readonly=True)
        try:
            return all(s.state.value in ("closed", "failed")
                       for cid in call_ids for s in store.for_call(cid))
        finally:
            store.close()
    wait_for(done, timeout, "the calls' sessions to close")
    time.sleep(stack.site.media.delete_delay + 1.0)  # rtpengine finalises the pcaps


def ensure_a_up(stack: LabStack, srs_a: KillableSrs) -> None:
    if srs_a.proc is None or srs_a.proc.poll() is not None:
        srs_a.start()
    uri_a = stack.site.recording.srs_groups[0].servers[0].uri
    wait_for(lambda: srs_up(stack, uri_a), 10, "the prober to see SRS a up")


# ---------------------------------------------------------------------------- the cases

def test_calls_while_the_controller_is_down_are_missing(
        lab: tuple[LabStack, KillableSrs]) -> None:
    stack, _ = lab
    t0 = time.time()
    stack.stop_controller()
    try:
        calls = [call(stack) for _ in range(3)]
        time.sleep(1.0)
        for c in calls:
            c.bye()
            c.close()
        busy = LabCall(stack.sip, stack.callee, user="busy")  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="486"):
            busy.start()
        busy.close()
    finally:
        stack.start_controller()
    time.sleep(stack.site.media.delete_delay + 1.0)
    rc, doc = audit(stack, t0)
    assert rc == 1
    got = entries(doc)
    for c in calls:
        e = got[c.call_id]
        assert e["verdict"] == "missing", e
        assert e["reasons"] == ["controller down"]
        assert e["sources"] == {"edge": True, "controller": False}
        assert e["gaps"][0]["reason"] == "controller down"
        assert 0.8 <= e["gaps"][0]["seconds"] <= 3.0, e["gaps"]
        assert e["local"]["status"] == "ok"  # the edge asked rtpengine to record
    assert doc["summary"]["failed_attempts"] == 1
    assert doc["summary"]["missing"] == 3


def test_srs_killed_mid_call_gap_is_the_failover_time(
        lab: tuple[LabStack, KillableSrs]) -> None:
    stack, srs_a = lab
    uri_a, uri_b = (s.uri for s in stack.site.recording.srs_groups[0].servers)
    ensure_a_up(stack, srs_a)
    t0 = time.time()
    c = call(stack)
    try:
        established_on(stack, c.call_id, uri_a)
        time.sleep(1.0)
        killed = srs_a.kill()
        second = established_on(stack, c.call_id, uri_b, timeout=10)
        failover = second["established_at"] - killed
        time.sleep(1.0)
    finally:
        c.bye()
        c.close()
    settled(stack, [c.call_id])
    rc, doc = audit(stack, t0)
    e = entries(doc)[c.call_id]
    assert e["verdict"] == "recorded-with-gaps", e
    assert len(e["gaps"]) == 1, json.dumps(e, indent=1)
    (gap,) = e["gaps"]
    print(f"\nSRS killed: failover {failover:.2f} s, ledger gap {gap['seconds']:.2f} s "
          f"({gap['reason']}), coverage {e['coverage']:.1%}")
    assert gap["reason"] == "srs_lost"
    assert abs(gap["seconds"] - failover) <= 1.0, (gap, failover)
    assert set(e["srs_coverage"]) == {uri_a, uri_b}
    # the loss is the slot's: stored with the session that closed the gap
    assert [g["reason"] for x in e["sessions"] for g in x["gaps"]] == ["srs_lost"]
    assert rc == 1  # a 3 s gap in a call of a few seconds is below 99 %


def test_pause_and_resume_are_not_losses(lab: tuple[LabStack, KillableSrs]) -> None:
    stack, srs_a = lab
    ensure_a_up(stack, srs_a)
    t0 = time.time()
    c = call(stack)
    try:
        wait_for(lambda: any(s["state"] == "established" for s in sessions_of(stack,
                                                                               c.call_id)),
                 10, "the session")
        time.sleep(1.0)
        assert stack.api("POST", f"/calls/{c.call_id}/pause")["state"] == "paused"
        time.sleep(2.0)
        assert stack.api("POST", f"/calls/{c.call_id}/resume")["state"] == "established"
        time.sleep(1.5)
    finally:
        c.bye()
        c.close()
    settled(stack, [c.call_id])
    rc, doc = audit(stack, t0)
    e = entries(doc)[c.call_id]
    print(f"\npause: paused {e['paused']:.2f} s, coverage {e['coverage']:.1%}, media "
          f"{e['media_ratio']:.1%}")
    assert e["verdict"] == "recorded", e
    assert e["gaps"] == [] and e["reasons"] == []
    assert 1.8 <= e["paused"] <= 3.0, e["paused"]
    assert e["coverage"] >= 0.99
    assert e["media_ratio"] is not None and e["media_ratio"] >= 0.97, e["sessions"]
    assert rc == 0


def test_opted_out_calls_are_not_required(lab: tuple[LabStack, KillableSrs]) -> None:
    stack, _ = lab
    t0 = time.time()
    c = call(stack, **{"X-Record": "no"})
    time.sleep(0.5)
    c.bye()
    c.close()
    time.sleep(1.0)
    rc, doc = audit(stack, t0)
    e = entries(doc)[c.call_id]
    assert e["verdict"] == "not-required"
    assert e["policy"] == {"rule": "opt-out", "local": False, "siprec": None,
                           "required": "no", "sampled_out": False}
    assert e["sessions"] == [] and e["local"]["status"] == "not-wanted"
    assert doc["summary"]["not_required"] == 1 and doc["summary"]["required"] == 0
    assert rc == 0


def test_clean_run_of_100_calls(lab: tuple[LabStack, KillableSrs], tmp_path: Path) -> None:
    """7-s calls: sipp plays g711a.pcap (about 33 packets/s), and the packet or two a leg
    sends before its SRS session is set up (~10 ms) must stay under 1 % of a stream."""
    stack, srs_a = lab
    ensure_a_up(stack, srs_a)
    t0 = time.time()
    cwd = stack.sipp_cwd  # type: ignore[attr-defined]
    argv = sipp.uac_argv(cwd, f"{stack.sip[0]}:{stack.sip[1]}",
                         local=("127.0.0.1", free_ports(1)[0]), calls=100,
                         duration_ms=7000, rate=10)
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, "sipp saw failed calls"
    store = SessionStore(stack.store, readonly=True)
    try:
        ids = [r["call_id"] for r in store.calls(t0)]
    finally:
        store.close()
    assert len(ids) == 100
    settled(stack, ids, timeout=30)
    page = tmp_path / "audit.html"
    rc, doc = audit(stack, t0, "--html", str(page))
    s = doc["summary"]
    streams = [m for e in doc["entries"] for x in e["sessions"] for m in x["media"]]
    worst = min(m["ratio"] for m in streams)
    print(f"\nclean run: {s['recorded']}/{s['required']} recorded, completeness "
          f"{s['completeness']:.1%}, coverage {s['coverage']:.2%}, worst stream {worst:.1%}")
    assert (s["required"], s["recorded"], s["completeness"]) == (100, 100, 1.0), s
    assert len(streams) == 200 and worst >= 0.99
    assert all(e["local"]["status"] == "ok" for e in doc["entries"])
    assert rc == 0
    assert "<svg" in page.read_text()


def test_the_controller_counts_what_the_ledger_found(
        lab: tuple[LabStack, KillableSrs]) -> None:
    """The restarted controller read the edge's records: the calls it never saw count as
    missing (``controller down``) in its Prometheus counters, each judged once, after its
    end has settled (10 s, then the next 15-s round: by now, after the other cases)."""
    stack, _ = lab
    key = 'siprecctl_ledger_missing_calls_total{reason="controller down",site="audit"}'
    got = wait_for(lambda: stack.metrics().get(key), 40, "the ledger's missing-call counter")
    assert got == 3.0
    opted_out = ('siprecctl_ledger_calls_total{edge="edge1",group="-",site="audit",'
                 'verdict="not-required"}')
    wait_for(lambda: stack.metrics().get(opted_out), 40, "the opted-out call judged")
    m = stack.metrics()
    print("\n" + "\n".join(f"{k} {v}" for k, v in m.items() if "ledger" in k))
    assert m[opted_out] >= 1
    assert 'siprecctl_ledger_completeness_ratio{edge="edge1",group="main",site="audit"}' in m
