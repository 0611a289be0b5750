"""Drills: the faults an operator meets, against the real daemons started from the rendered
configs (only addresses, ports and directories changed).

- an SRS killed mid-call (SIGKILL of a ``siprecctl srs`` process): the controller notices
  by its probes, moves the session to the group's next SRS with a complete snapshot, and
  counts the gap;
- a call that ends while its SRS is dead: the unanswered BYE is a counted loss;
- a controller that stalls (SIGSTOP) while calls arrive: nothing is set up for a call that
  already ended, calls still up are recorded late and the late part is counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.store import SessionStore
from orchestrator.daemons import free_ports, tcp_open
from orchestrator.lab.srs import Behaviour, SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.ng import NgClient
from orchestrator.site.loader import validate_data

pytestmark = pytest.mark.integration


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    uri = {n: f"sip:srs@127.0.0.1:{p}" for n, p in ports["srs"].items()}
    return {
        "version": 1, "name": "drills",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]},
                       {"proto": "tcp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"}],
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
            "default": True, "local": False, "siprec": "main",
            # the killable SRS first: hunt sends every new session to it while it is up
            "srs_groups": [{"name": "main", "servers": [{"uri": uri["a"]}, {"uri": uri["b"]}],
                            "timeout": 2.0}],
        },
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


class KillableSrs:
    """A reference SRS in its own process (``siprecctl srs``), so it can be SIGKILLed."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "srs.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "srs", "--listen",
             f"127.0.0.1:{self.port}", "--transport", "udp", "--dir", str(self.workdir),
             "--rtp-ports", "37000-37199", "--name", "a"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait(lambda: b"listening" in (self.workdir / "srs.log").read_bytes()
             or self.proc.poll() is not None, 10, "the SRS process to listen")  # type: ignore[union-attr]
        assert self.proc.poll() is None, (self.workdir / "srs.log").read_text()

    def kill(self) -> float:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        at = time.time()
        self.proc.wait(5)
        return at


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabStack, KillableSrs]]:
    work = tmp_path_factory.mktemp("drills")
    free = iter(free_ports(8))
    ports: dict[str, Any] = {k: next(free) for k in ("sip", "callee", "rpc", "evapi", "ng",
                                                     "api")}
    ports["srs"] = {"a": next(free), "b": next(free)}
    site = validate_data(_site(work, ports), file="drill-site")
    b = SrsConfig(address="127.0.0.1", port=ports["srs"]["b"], name="b",
                  record_dir=work / "srs-b", rtp_port_min=37200, rtp_port_max=37399,
                  behaviour=Behaviour())
    b.record_dir.mkdir(parents=True)
    srs_a = KillableSrs(ports["srs"]["a"], work / "srs-a")
    srs_a.start()
    with LabStack(site, work, srs=[b]) as st:
        st.callee = CalleeServer("127.0.0.1", ports["callee"])  # type: ignore[attr-defined]
        try:
            yield st, srs_a
        finally:
            st.callee.close()  # type: ignore[attr-defined]
            if srs_a.proc is not None and srs_a.proc.poll() is None:
                srs_a.kill()


def wait(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sessions_of(stack: LabStack, call_id: str) -> list[dict[str, Any]]:
    return stack.api("GET", f"/calls/{urllib.parse.quote(call_id, safe='')}")


def losses_of(stack: LabStack, call_id: str) -> list[dict[str, Any]]:
    store = SessionStore(stack.store, readonly=True)
    try:
        return store.losses(call_id=call_id)
    finally:
        store.close()


def srs_up(stack: LabStack, uri: str) -> bool:
    return stack.metrics().get(f'siprecctl_srs_up{{srs="{uri}"}}') == 1.0


def new_call(stack: LabStack) -> LabCall:
    call = LabCall(stack.sip, stack.callee, headers={})  # type: ignore[attr-defined]
    call.start()
    return call


def established_on(stack: LabStack, call_id: str, uri: str, timeout: float = 10.0) -> Any:
    return wait(lambda: next((s for s in sessions_of(stack, call_id)
                              if s["state"] == "established" and s["srs"] == uri), None),
                timeout, f"a session of {call_id} established on {uri}")


# ---------------------------------------------------------------------------- drills

def test_srs_killed_mid_call_fails_over_within_5_s(drill: tuple[LabStack, KillableSrs]) -> None:
    stack, srs_a = drill
    uri_a, uri_b = (s.uri for s in stack.site.recording.srs_groups[0].servers)
    if srs_a.proc is None or srs_a.proc.poll() is not None:
        srs_a.start()
    wait(lambda: srs_up(stack, uri_a), 10, "the prober to see SRS a up")
    call = new_call(stack)
    try:
        first = established_on(stack, call.call_id, uri_a)
        time.sleep(1.0)  # media flows to a
        killed = srs_a.kill()
        second = established_on(stack, call.call_id, uri_b, timeout=10)
        failover = second["established_at"] - killed
        print(f"\nfailover: SRS SIGKILL → new session on the next SRS in {failover:.2f} s")
        assert failover <= 5.0, f"failover took {failover:.2f} s"
        ss = sessions_of(stack, call.call_id)
        lost = next(s for s in ss if s["session_id"] == first["session_id"])
        assert lost["state"] == "failed" and "SRS down" in lost["reason"]
        assert second["slot"] == lost["slot"] == 0
        (loss,) = losses_of(stack, call.call_id)
        assert loss["reason"] == "srs_lost"
        # the gap runs from the last probe a answered (at most one interval before the kill)
        # to the new session's 2xx
        assert failover - 0.05 <= loss["seconds"] <= failover + 1.1, (loss, failover)
        srs_b = stack.srs["b"]
        s = wait(lambda: next((x for x in srs_b.sessions() if x.call_id == second["rs_call_id"]
                               and all(st.packets > 20 for st in x.labels.values())
                               and len(x.labels) == 2), None), 5, "media at SRS b")
        assert not [f for f in s.metadata_findings if f.severity.value == "error"]
        assert s.metadata_docs and s.metadata_docs[0][0] == "complete"
    finally:
        call.bye()
        call.close()
    wait(lambda: all(x["state"] in ("closed", "failed") for x in sessions_of(stack, call.call_id)),
         10, "every session of the call to close")
    with NgClient(("127.0.0.1", stack.site.media.nodes[0].ng.port)) as ng:
        wait(lambda: call.call_id not in ng.list_calls(1000), stack.site.media.delete_delay + 3,
             "rtpengine to free the call")


def test_call_ending_while_its_srs_is_dead_counts_the_unanswered_bye(
        drill: tuple[LabStack, KillableSrs]) -> None:
    stack, srs_a = drill
    uri_a = stack.site.recording.srs_groups[0].servers[0].uri
    if srs_a.proc is None or srs_a.proc.poll() is not None:
        srs_a.start()
    wait(lambda: srs_up(stack, uri_a), 10, "the prober to see SRS a up")
    call = new_call(stack)
    try:
        established_on(stack, call.call_id, uri_a)
        srs_a.kill()
    finally:
        call.bye()  # before the prober can notice: the BYE goes to the dead SRS
        call.close()
    losses = wait(lambda: losses_of(stack, call.call_id), 10, "the loss record")
    assert [x["reason"] for x in losses] == ["bye_failed"]
    assert "no answer" in losses[0]["detail"]
    m = stack.metrics()
    assert m.get('siprecctl_recording_losses_total{reason="bye_failed"}', 0) >= 1
    (s,) = sessions_of(stack, call.call_id)
    assert s["state"] == "closed" and any(h["event"] == "loss" for h in s["history"])
    # operators see it with `siprecctl losses` (read-only on the running controller's store)
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "losses", "--store",
                          str(stack.store), "--call", call.call_id, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [r["reason"] for r in json.loads(out.stdout)] == ["bye_failed"]
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "losses", "--store",
                          str(stack.store), "--summary"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "bye_failed" in out.stdout, out.stderr


def test_stalled_controller_never_sets_up_an_ended_call(
        drill: tuple[LabStack, KillableSrs]) -> None:
    """SIGSTOP the controller for 3 s while 3 short calls come and go and 2 long ones are
    answered: on SIGCONT the short ones are ``ended_before_setup`` with no SRS session at
    all, the long ones are recorded late with the late part counted."""
    stack, srs_a = drill
    uri_b = stack.site.recording.srs_groups[0].servers[1].uri
    proc = stack.controller_proc
    assert proc is not None
    before_b = {s.call_id for s in stack.srs["b"].sessions()}
    os.kill(proc.pid, signal.SIGSTOP)
    short: list[LabCall] = []
    long: list[LabCall] = []
    try:
        for _ in range(2):
            long.append(new_call(stack))
        for _ in range(3):
            c = new_call(stack)
            time.sleep(0.3)
            c.bye()
            c.close()
            short.append(c)
        time.sleep(max(0.0, 3.0 - 0.3 * 3))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        for c in short:
            losses = wait(lambda c=c: losses_of(stack, c.call_id), 10, "the short call's loss")
            assert [x["reason"] for x in losses] == ["ended_before_setup"]
            assert all(s["state"] == "failed" and not s["attempts"]
                       for s in sessions_of(stack, c.call_id))
        for c in long:
            s = wait(lambda c=c: next((x for x in sessions_of(stack, c.call_id)
                                       if x["state"] == "established"), None), 10,
                     "the late set-up of a long call")
            assert s["srs"] in (uri_b, stack.site.recording.srs_groups[0].servers[0].uri)
            losses = wait(lambda c=c: losses_of(stack, c.call_id), 5, "the late part")
            assert [x["reason"] for x in losses] == ["setup_late"]
            assert 2.0 <= losses[0]["seconds"] <= 6.0, losses
    finally:
        for c in long:
            c.bye()
            c.close()
    # no SRS ever saw a session for a call that had ended
    new_rs = {s.call_id for s in stack.srs["b"].sessions()} - before_b
    short_rs = {x["rs_call_id"] for c in short for x in sessions_of(stack, c.call_id)}
    assert not (new_rs & short_rs)
    assert tcp_open("127.0.0.1", stack.site.controller.api.port)


def test_rtpengine_restarted_mid_call_is_a_counted_loss(
        drill: tuple[LabStack, KillableSrs]) -> None:
    """rtpengine restarted (no Redis: it forgets every call) under a recorded call: the
    media and the fork stop, and at the call's end the node no longer knows the call — the
    controller counts the recording as lost (``media_state_lost`` from the set-up, an upper
    bound; or ``node_lost`` if its pings saw the node down meanwhile) instead of closing
    it as complete."""
    stack, _ = drill
    uri_b = stack.site.recording.srs_groups[0].servers[1].uri
    wait(lambda: srs_up(stack, uri_b), 10, "the prober to see SRS b up")
    call = new_call(stack)
    rtp = stack.daemons[0]
    try:
        first = wait(lambda: next((s for s in sessions_of(stack, call.call_id)
                                   if s["state"] == "established"), None), 10, "recorded")
        time.sleep(1.0)
        restarted = time.time()
        rtp.stop()
        rtp.start()
        rtp.wait_ready(10)
        time.sleep(1.0)
    finally:
        call.bye()
        call.close()
    ended = time.time()
    losses = wait(lambda: losses_of(stack, call.call_id), 10, "the loss record")
    reasons = {x["reason"] for x in losses}
    print(f"\nrtpengine restart: losses {[(x['reason'], x['seconds']) for x in losses]}")
    assert reasons and reasons <= {"media_state_lost", "node_lost"}, losses
    lost = sum(float(x["seconds"]) for x in losses)
    assert lost >= ended - restarted - 0.5  # at least the time without media is counted
    if "media_state_lost" in reasons:
        assert lost <= ended - first["established_at"] + 1.0
        assert stack.metrics().get(
            'siprecctl_recording_losses_total{reason="media_state_lost"}', 0) >= 1
    wait(lambda: all(x["state"] in ("closed", "failed")
                     for x in sessions_of(stack, call.call_id)), 10, "the session closed")
