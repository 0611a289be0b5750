"""Zero-gap recording with the real daemons: two SIPREC sessions per call on two SRSs at
once (rtpengine 10.5 forks to both), one SRS killed mid-call while the other keeps every
second, and the group strategies spreading 100 calls over three SRSs."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemons import free_port, free_ports
from orchestrator.lab import sipp
from orchestrator.lab.srs import Behaviour, SrsConfig
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.site.loader import validate_data

from .test_drills import KillableSrs, losses_of, sessions_of, srs_up, wait

pytestmark = pytest.mark.integration

NAMES = ("a", "b", "c", "d")


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    uri = {n: f"sip:srs@127.0.0.1:{ports['srs'][n]}" for n in NAMES}
    groups = [
        {"name": "dual", "simultaneous": 2, "servers": [{"uri": uri[n]} for n in "abc"],
         "timeout": 2.0},
        {"name": "rr", "strategy": "round-robin",
         "servers": [{"uri": uri[n]} for n in "bcd"]},
        {"name": "lb", "strategy": "least-busy",
         "servers": [{"uri": uri[n]} for n in "bcd"]},
    ]
    rules = [{"name": g, "match": {"ruri": f"^sip:{g}@"}, "siprec": g, "local": False}
             for g in ("rr", "lb")]
    return {
        "version": 1, "name": "zero-gap",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]},
                       {"proto": "tcp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "sipp", "uri": f"sip:127.0.0.1:{ports['uas']}",
                        "match_ruri": "^sip:(rr|lb)@"},
                       {"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"}],
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
                       "ports": {"port_min": 38000, "port_max": 39999}}],
        },
        "recording": {"default": True, "local": False, "siprec": "dual", "rules": rules,
                      "srs_groups": groups},
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


@pytest.fixture(scope="module")
def zstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabStack, KillableSrs]]:
    work = tmp_path_factory.mktemp("zero-gap")
    free = iter(free_ports(7 + len(NAMES)))
    ports: dict[str, Any] = {k: next(free) for k in ("sip", "uas", "callee", "rpc", "evapi",
                                                     "ng", "api")}
    ports["srs"] = {n: next(free) for n in NAMES}
    site = validate_data(_site(work, ports), file="zero-gap-site")
    others = [SrsConfig(address="127.0.0.1", port=ports["srs"][n], name=n,
                        record_dir=work / f"srs-{n}", rtp_port_min=40000 + i * 400,
                        rtp_port_max=40000 + i * 400 + 399, behaviour=Behaviour())
              for i, n in enumerate(NAMES[1:])]
    for cfg in others:
        cfg.record_dir.mkdir(parents=True)
    srs_a = KillableSrs(ports["srs"]["a"], work / "srs-a")
    srs_a.start()
    with LabStack(site, work, srs=others) as st:
        st.callee = CalleeServer("127.0.0.1", ports["callee"])  # type: ignore[attr-defined]
        cwd = sipp.workdir(work / "sipp")
        uas = sipp.uas(cwd, "127.0.0.1", ports["uas"])
        st.sipp_cwd = cwd  # type: ignore[attr-defined]
        try:
            yield st, srs_a
        finally:
            sipp.stop(uas)
            st.callee.close()  # type: ignore[attr-defined]
            if srs_a.proc is not None and srs_a.proc.poll() is None:
                srs_a.kill()


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] that no interval covers."""
    gap, t = 0.0, start
    for a, b in sorted(intervals):
        if a > t:
            gap += min(a, end) - t
        t = max(t, b)
        if t >= end:
            break
    return gap + max(0.0, end - t)


def test_two_srs_at_once_and_one_killed_loses_no_second(
        zstack: tuple[LabStack, KillableSrs]) -> None:
    stack, srs_a = zstack
    uri_a, uri_b, uri_c = (s.uri for s in stack.site.recording.srs_groups[0].servers)
    wait(lambda: srs_up(stack, uri_a), 10, "the prober to see SRS a up")
    call = LabCall(stack.sip, stack.callee, headers={})  # type: ignore[attr-defined]
    call.start()
    try:
        both = wait(lambda: (ss := [s for s in sessions_of(stack, call.call_id)
                                    if s["state"] == "established"]) and len(ss) == 2 and ss,
                    10, "two established sessions")
        assert sorted(s["srs"] for s in both) == sorted([uri_a, uri_b])
        assert sorted(s["slot"] for s in both) == [0, 1]
        srs_b = stack.srs["b"]
        on_b = next(s for s in both if s["srs"] == uri_b)

        def b_packets() -> dict[str, int]:
            x = next(x for x in srs_b.sessions() if x.call_id == on_b["rs_call_id"])
            return {k: st.packets for k, st in x.labels.items()}

        wait(lambda: len(b_packets()) == 2 and all(n > 20 for n in b_packets().values()), 5,
             "media on both streams at SRS b")
        killed = srs_a.kill()
        replacement = wait(lambda: next((s for s in sessions_of(stack, call.call_id)
                                         if s["state"] == "established"
                                         and s["srs"] == uri_c), None), 10,
                           "slot 0 replaced on SRS c")
        print(f"\nreplacement of the killed SRS's session on SRS c after "
              f"{replacement['established_at'] - killed:.2f} s")
        assert replacement["slot"] == 0
        before = b_packets()
        time.sleep(1.0)
        after = b_packets()
        assert all(after[k] >= before[k] + 30 for k in before), (before, after)  # b never stopped
        srs_c = stack.srs["c"]
        wait(lambda: any(x.call_id == replacement["rs_call_id"] and len(x.labels) == 2
                         and all(st.packets > 10 for st in x.labels.values())
                         for x in srs_c.sessions()), 5, "media at SRS c")
    finally:
        call.bye()
        call.close()
    ss = wait(lambda: (x := sessions_of(stack, call.call_id)) and all(
        s["state"] in ("closed", "failed") for s in x) and x, 10, "every session to end")
    # the call was recorded by at least one SRS for every second
    start = min(s["established_at"] for s in ss if s["established_at"])
    end = max(s["media_until"] for s in ss if s["media_until"])
    intervals = [(s["established_at"], s["media_until"]) for s in ss
                 if s["established_at"] and s["media_until"]]
    # (the killed SRS's session counts as recording only up to its last proof of life, its
    # 2xx here, so the few ms between the two set-ups are all that may show)
    assert covered(intervals, start, end) <= 0.05, intervals
    # ... while slot 0 alone had a gap, which is counted
    assert [x["reason"] for x in losses_of(stack, call.call_id)] == ["srs_lost"]
    srs_a.start()


@pytest.mark.parametrize("group", ["rr", "lb"])
def test_strategies_spread_100_calls_evenly(zstack: tuple[LabStack, KillableSrs],
                                            group: str) -> None:
    stack, _ = zstack
    cwd = stack.sipp_cwd  # type: ignore[attr-defined]
    argv = sipp.uac_argv(cwd, f"{stack.sip[0]}:{stack.sip[1]}", local=("127.0.0.1", free_port()),
                         calls=100, rate=25, duration_ms=1000, customer=f"SPREAD-{group}",
                         extra=["-s", group])
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
    assert p.returncode == 0, [f.read_text()[-1500:] for f in Path(cwd).glob("uac_*errors.log")]

    def mine() -> list[dict[str, Any]] | None:
        ss = [s for s in stack.api("GET", "/sessions") if s["group"] == group]
        return ss if len(ss) >= 100 and all(s["state"] == "closed" for s in ss) else None

    ss = wait(mine, 30, f"100 closed sessions of group {group}")
    assert len({s["call_id"] for s in ss}) == 100
    per = Counter(s["srs"] for s in ss)
    assert len(per) == 3 and all(abs(n - 100 / 3) <= 100 / 3 * 0.1 for n in per.values()), per
    m = stack.metrics()
    strategy = {"rr": "round-robin", "lb": "least-busy"}[group]
    assert m[f'siprecctl_srs_selections_total{{group="{group}",strategy="{strategy}"}}'] >= 100
