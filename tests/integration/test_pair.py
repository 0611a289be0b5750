"""An active/standby controller pair on Redis, with the real daemons: both connected to the
edge, only the lease holder acts. SIGKILL of the leader → the standby leads within 3 s,
adopts the live calls (no duplicate session, no orphan), records new ones, and closes the
sessions of calls that ended in between; a leader paused (SIGSTOP) past its lease loses it,
and when it wakes it stops acting instead of competing."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.client import api_request, api_target
from orchestrator.daemons import Daemon, RedisServer, free_ports
from orchestrator.lab.srs import SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.site.loader import validate_data
from orchestrator.site.secrets import load_secret
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1, "name": "pair",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"}],
            "jsonrpc": {"address": "127.0.0.1", "port": ports["rpc"], "allow": ["127.0.0.1/32"]},
            "evapi": {"address": "127.0.0.1", "port": ports["evapi"]},
            "run_dir": str(work / "run" / "edge1"),
        }],
        "media": {"recording": {"method": "pcap", "dir": str(work / "recordings")},
                  "delete_delay": 2,
                  "nodes": [{"name": "rtp1",
                             "ng": {"address": "127.0.0.1", "port": ports["ng"]},
                             "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                             "ports": {"port_min": 47000, "port_max": 47499}}]},
        "recording": {"default": True, "local": False, "siprec": "main",
                      "srs_groups": [{"name": "main", "servers": [
                          {"uri": f"sip:srs@127.0.0.1:{ports['srs']}"}]}]},
        "controller": {
            "api": {"address": "127.0.0.1", "port": ports["api_a"]},
            "instances": [{"name": "a", "api": {"address": "127.0.0.1", "port": ports["api_a"]}},
                          {"name": "b", "api": {"address": "127.0.0.1", "port": ports["api_b"]}}],
        },
        # the pair's state and lease (password: <secrets_dir>/redis.secret, made at render)
        "redis": {"address": "127.0.0.1", "port": ports["redis"], "controller_db": 0},
    }


class Pair:
    def __init__(self, stack: LabStack, ports: dict[str, Any]) -> None:
        self.stack, self.ports = stack, ports
        self.procs: dict[str, Daemon] = {}

    def start(self, name: str) -> None:
        # as the unit runs it: Redis, its password and the API come from the site
        d = Daemon([sys.executable, "-m", "orchestrator.cli", "serve",
                    str(self.stack.site_file), "--instance", name, "--lease-ttl", "2"],
                   self.stack.workdir, name=f"controller-{name}",
                   log_path=self.stack.workdir / "logs" / f"controller-{name}.log",
                   ready=lambda: self.health(name) is not None)
        d.start()
        d.wait_ready(15)
        self.procs[name] = d

    def health(self, name: str) -> dict[str, Any] | None:
        target = api_target(self.stack.site, url=f"http://127.0.0.1:{self.ports[f'api_{name}']}")
        try:
            status, doc = api_request(target, "GET", "/health", timeout=2)
        except Exception:
            return None
        return doc if status == 200 else None

    def acting(self, name: str) -> bool:
        h = self.health(name)
        return bool(h and h["leader"] and h["leader"]["acting"])

    def sessions(self, name: str, call_id: str) -> list[dict[str, Any]]:
        target = api_target(self.stack.site, url=f"http://127.0.0.1:{self.ports[f'api_{name}']}")
        return api_request(target, "GET", f"/calls/{call_id}", timeout=5)[1]


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[Pair]:
    free = iter(free_ports(9))
    ports = {k: next(free) for k in ("sip", "callee", "rpc", "evapi", "ng", "api_a", "api_b",
                                     "srs", "redis")}
    site = validate_data(_site(tmp_path, ports), file="pair-site")
    srs = SrsConfig(address="127.0.0.1", port=ports["srs"], name="srs", record_dir=tmp_path / "srs",
                    rtp_port_min=47600, rtp_port_max=47799)
    srs.record_dir.mkdir()
    with LabStack(site, tmp_path, srs=[srs], controller=False) as st:
        st.callee = CalleeServer("127.0.0.1", ports["callee"])  # type: ignore[attr-defined]
        redis = RedisServer(st.cfgdir / "redis" / "redis.conf", tmp_path / "redis",
                            address="127.0.0.1", port=ports["redis"],
                            password=load_secret(st.site.redis_auth_file))
        p = Pair(st, ports)
        try:
            redis.start()
            redis.wait_ready(10)
            p.start("a")
            wait_for(lambda: p.acting("a"), 10, "controller a to lead")
            p.start("b")
            assert not p.acting("b")  # connected to the edge, standing by
            yield p
        finally:
            for d in p.procs.values():
                d.stop(5.0, kill=True)
            redis.stop()
            st.callee.close()  # type: ignore[attr-defined]


def call(stack: LabStack) -> LabCall:
    c = LabCall(stack.sip, stack.callee, headers={})  # type: ignore[attr-defined]
    c.start()
    return c


def srs_sessions(stack: LabStack, rs_ids: set[str]) -> list[Any]:
    return [x for x in stack.srs["srs"].sessions() if x.call_id in rs_ids]


def test_leader_killed_the_standby_takes_over_within_3_s(pair: Pair) -> None:
    st = pair.stack
    live, ends = call(st), call(st)
    try:
        for c in (live, ends):
            wait_for(lambda c=c: any(s["state"] == "established"
                                     for s in pair.sessions("a", c.call_id)), 10,
                     "recorded by a")
        killed = time.monotonic()
        pair.procs["a"].stop(5.0, kill=True)  # SIGKILL
        ends.bye()  # ends while nobody acts
        wait_for(lambda: pair.acting("b"), 5, "controller b to lead")
        takeover = time.monotonic() - killed
        print(f"\ntakeover after SIGKILL of the leader: {takeover:.2f} s")
        assert takeover <= 3.0
        # the live call: still one open session, adopted (the same one), one at the SRS
        # (b acts once it holds the lease; its reconcile adopts the call just after)
        ss = wait_for(lambda: [s for s in pair.sessions("b", live.call_id)
                               if any(h["event"] == "adopt" for h in s["history"])], 5,
                      "b adopts the call")
        assert [s["state"] for s in pair.sessions("b", live.call_id)] == ["established"]
        assert len([x for x in srs_sessions(st, {ss[0]["rs_call_id"]}) if not x.ended]) == 1
        # the call that ended meanwhile: its session closed by b's reconcile (BYE sent)
        done = wait_for(lambda: [s for s in pair.sessions("b", ends.call_id)
                                 if s["state"] == "closed"], 10, "the orphan closed")
        at_srs = srs_sessions(st, {done[0]["rs_call_id"]})
        wait_for(lambda: all(x.ended for x in srs_sessions(st, {done[0]["rs_call_id"]})), 5,
                 "its SRS session ended")
        assert at_srs and at_srs[0].bye_from == "src"
        # a new call is recorded by b
        new = call(st)
        try:
            wait_for(lambda: any(s["state"] == "established"
                                 for s in pair.sessions("b", new.call_id)), 10,
                     "recorded by b")
        finally:
            new.bye()
            new.close()
    finally:
        live.bye()
        live.close()
        ends.close()


def test_a_paused_leader_loses_the_lease_and_stays_out(pair: Pair) -> None:
    st = pair.stack
    a = pair.procs["a"]
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: pair.acting("b"), 5, "controller b to lead")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    # a wakes up: its own clock says its lease is gone; it must not act (nor compete)
    wait_for(lambda: (h := pair.health("a")) is not None and not h["leader"]["acting"], 5,
             "a to know it no longer leads")
    c = call(st)
    try:
        ss = wait_for(lambda: [s for s in pair.sessions("b", c.call_id)
                               if s["state"] == "established"], 10, "recorded by b")
        time.sleep(1.0)
        all_rs = {s["rs_call_id"] for s in pair.sessions("b", c.call_id)}
        assert len(all_rs) == 1 and len(srs_sessions(st, all_rs)) == 1  # no duplicate
        assert ss[0]["session_id"]
        assert pair.acting("b") and not pair.acting("a")
    finally:
        c.bye()
        c.close()
