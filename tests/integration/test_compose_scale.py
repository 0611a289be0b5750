"""The compose lab at carrier scale (docker-compose.scale.yml) brought up with podman as an
operator would (``scripts/compose --scale prepare``, ``build``, ``up -d``): two edges, three
rtpengine nodes replicating through Redis, redis-server, the active/standby controller pair,
two SRSs. Recorded calls go through both edges and are checked where they land (the SRS's
session records, the nodes' pcaps, the pair's state in Redis through the API); exactly one
controller leads. Then the leading controller's container is SIGKILLed during live calls:
the standby takes over within 3 s, adopts the live calls (none duplicated, none orphaned)
and records new ones through both edges; the killed one, started again, stands by, and
takes over in turn when the new leader is killed. The lab is torn down whatever happened.
Changed from the shipped files: directories only (the site's secrets_dir and the compose
host paths point into the test's tmp dir), and the compose project name."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.controller.client import ApiTarget, api_request
from orchestrator.errors import SiprecctlError
from orchestrator.lab import sipp
from orchestrator.ng import NgClient
from orchestrator.recordings import check_metafile
from orchestrator.recordings.encoding import decode_text
from orchestrator.site import Site, load, validate_data
from orchestrator.site.model import Edge
from orchestrator.site.secrets import api_token_path
from tests.conftest import ROOT, wait_for

from .test_compose import _subnet_users, docker_compose_config

pytestmark = pytest.mark.integration

COMPOSE_FILE = ROOT / "docker-compose.scale.yml"
SITE_FILE = ROOT / "examples" / "compose-scale.yaml"
PROJECT = "siprecctl-scale-test"
TAKEOVER_TARGET_S = 3.0  # issue 17: the standby acts within 3 s of the leader's loss


def edge_of(site: Site, name: str) -> Edge:
    return next(e for e in site.edges if e.name == name)


def compose_config() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def address(service: str) -> str:
    return str(compose_config()["services"][service]["networks"]["scale"]["ipv4_address"])


def test_scale_file_follows_the_compose_spec(tmp_path: Path) -> None:
    proc = docker_compose_config(COMPOSE_FILE)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr
    text = COMPOSE_FILE.read_text()  # a dangling reference is refused
    bad = tmp_path / "docker-compose.scale.yml"
    bad.write_text(text.replace("depends_on: [redis, rtp-a1]", "depends_on: [redsi, rtp-a1]", 1))
    proc = docker_compose_config(bad)
    assert proc.returncode != 0 and "redsi" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- the lab
@dataclass
class ScaleLab:
    """The running scale lab: its site (as the controllers read it), host paths, the pair."""

    site: Site
    work: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    last_show: str = ""  # the last `siprecctl edge rtpengine show` output
    takeovers: list[float] = field(default_factory=list)
    # controllers whose container is killed: not asked (their address no longer answers ARP,
    # so a request would wait for its whole timeout)
    killed: set[str] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return self.work / "lab"

    def compose(self, *args: str, timeout: float = 600,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(ROOT / "scripts" / "compose"), "--scale", *args],
                              env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"scripts/compose --scale {' '.join(args)} exited "
                                 f"{proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    def container(self, service: str) -> str:
        out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}",
                              "--filter", f"label=io.podman.compose.project={PROJECT}",
                              "--filter", f"label=io.podman.compose.service={service}"],
                             env=self.env, capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
        assert len(out) == 1, (service, out)
        return out[0]

    def _target(self, instance: str, role: str) -> ApiTarget:
        api = next(i.api for i in self.site.controller.instances if i.name == instance)
        token = api_token_path(self.site, "operator" if role == "operator" else "dashboard")
        return ApiTarget(f"http://{api.address}:{api.port}", token.read_text().strip())

    def health(self, instance: str) -> dict[str, Any] | None:
        try:
            code, doc = api_request(self._target(instance, "readonly"), "GET", "/health",
                                    timeout=2)
        except SiprecctlError:  # not up (yet), or gone
            return None
        return doc if code == 200 else None

    def acts(self, instance: str) -> bool:
        """Does ``instance`` say it leads and acts?"""
        h = self.health(instance)
        return bool(h and h["leader"] and h["leader"]["acting"])

    def acting(self) -> list[str]:
        """The instances that say they lead and act."""
        return [i.name for i in self.site.controller.instances
                if i.name not in self.killed and self.acts(i.name)]

    def leader(self) -> str:
        """The one acting instance (waits for it; fails when both act)."""
        def one() -> str | None:
            acting = self.acting()
            assert len(acting) <= 1, f"both controllers act: {acting}"
            return acting[0] if acting else None
        return wait_for(one, 10, "one controller of the pair to lead", 0.1)

    def api(self, path: str, instance: str | None = None) -> Any:
        code, doc = api_request(self._target(instance or self.leader(), "readonly"), "GET",
                                path, timeout=5)
        assert code == 200, (path, code, doc)
        return doc

    def sipp(self, edge: str, port: int, calls: int, customer: str,
             duration_ms: int = 2000) -> subprocess.Popen[str]:
        """sipp's lab caller in the caller container placing ``calls`` recorded calls with
        X-Customer-Id ``customer`` through ``edge``."""
        sip = edge_of(self.site, edge).listen[0]
        argv = sipp.uac_argv(Path("/tmp"), f"{sip.address}:{sip.port}",
                             local=(address("caller"), port), calls=calls, rate=calls,
                             duration_ms=duration_ms, record="yes", customer=customer)
        return subprocess.Popen([str(ROOT / "scripts" / "compose"), "--scale", "exec", "-T",
                                 "-w", "/srv/sipp", "caller", *argv], env=self.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def done(proc: subprocess.Popen[str], what: str, timeout: float = 90) -> None:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"sipp ({what}) exited {proc.returncode}:\n{out[-2500:]}"

    def sessions_of(self, customer: str, n: int, states: tuple[str, ...] = ("closed",),
                    timeout: float = 20) -> list[dict[str, Any]]:
        """The ``n`` sessions of the calls carrying X-Customer-Id ``customer``, once all are
        in one of ``states``."""
        def ready() -> list[dict[str, Any]] | None:
            mine = [s for s in self.api("/sessions?limit=1000")
                    if s["call"]["headers"].get("X-Customer-Id") == customer]
            return mine if len(mine) == n and all(s["state"] in states for s in mine) else None
        return wait_for(ready, timeout, f"{n} {'/'.join(states)} sessions of {customer}", 0.2)

    def srs_records(self, srs: str) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.data / srs).glob("*.json"))]

    def srs_record(self, srs: str, rs_call_id: str) -> dict[str, Any]:
        """The ended session record (JSON) the SRS container wrote for ``rs_call_id``."""
        def find() -> dict[str, Any] | None:
            return next((r for r in self.srs_records(srs)
                         if r["call_id"] == rs_call_id and r["ended_at"] is not None), None)
        return wait_for(find, 10, f"{srs}'s record of {rs_call_id}", 0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleLab]:
    work = tmp_path_factory.mktemp("compose-scale")
    # the scale site with its secrets in the test's directory; the controllers read this copy
    data = load(SITE_FILE).model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(work / "secrets")}
    site = validate_data(data)
    site_copy = work / "compose-scale.yaml"
    site_copy.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ,
           "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf"),
           "COMPOSE_PROJECT_NAME": PROJECT,
           "SIPRECCTL_COMPOSE_DIR": str(work / "lab"),
           "SIPRECCTL_COMPOSE_SITE": str(site_copy),
           "SIPRECCTL_SECRETS_DIR": site.security.secrets_dir}
    lab = ScaleLab(site, work, env)
    subnet = compose_config()["networks"]["scale"]["ipam"]["config"][0]["subnet"]
    lab.compose("down", check=False)  # what a crashed run of this test left
    others = _subnet_users(subnet, env)
    assert not others, f"podman network(s) {others} already use {subnet}: another scale " \
                       "lab is up (scripts/compose --scale down)"
    t0 = time.monotonic()
    try:
        for step in ("prepare", "build", "up"):
            lab.compose(*(["up", "-d"] if step == "up" else [step]))
            lab.timings[step] = time.monotonic() - t0 - sum(lab.timings.values())
        # ready: both controllers answer and hold both edges' evapi connections, one leads
        # and sees both SRSs; each edge has its set's rtpengine nodes enabled
        for i in site.controller.instances:
            wait_for(lambda i=i: _connected(lab, i.name), 60, f"{i.name} connected", 0.5)
        health = lab.health(lab.leader())
        assert health and health["srs"] and all(health["srs"].values()), health
        try:
            wait_for(lambda: _rtpengine_enabled(lab), 30, "the edges' rtpengine nodes "
                     "enabled", 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last `edge rtpengine show`:\n{lab.last_show}") from None
        lab.timings["ready"] = time.monotonic() - t0 - sum(lab.timings.values())
        yield lab
    finally:
        t1 = time.monotonic()
        logs = lab.compose("logs", check=False, timeout=120)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        down = lab.compose("down", check=False, timeout=300)
        (work / "down.log").write_text(down.stdout + down.stderr)
        lab.timings["down"] = time.monotonic() - t1
        print("\ncompose scale lab timings (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in lab.timings.items()))
    left = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter",
                           f"label=io.podman.compose.project={PROJECT}"], env=env,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert left.strip() == "", f"containers left after down: {left}"
    assert not _subnet_users(subnet, env), "the scale lab's network outlived down"


def _connected(lab: ScaleLab, instance: str) -> bool:
    h = lab.health(instance)
    return bool(h and h["leader"] is not None and h["edges"]
                and set(h["edges"]) == {e.name for e in lab.site.edges}
                and all(h["edges"].values()))


def _rtpengine_enabled(lab: ScaleLab) -> bool:
    """Each edge has the nodes of its set enabled (as its Kamailio sees them, over JSON-RPC
    from a controller's host)."""
    proc = lab.compose("exec", "-T", "ctl-1", "siprecctl", "edge", "rtpengine", "show",
                       "--site", "/etc/siprecctl/site.yaml", "--json", check=False, timeout=30)
    lab.last_show = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return False
    rows = {row["edge"]: {n["node"]: n["enabled"] for n in row.get("nodes", [])}
            for row in json.loads(proc.stdout)}
    return all(rows.get(e.name, {}).get(n.name) is True for e in lab.site.edges
               for n in lab.site.nodes_in_set(e.media_set))


def _check_recorded(lab: ScaleLab, sessions: list[dict[str, Any]], edge: str,
                    srs: str = "srs1") -> None:
    """Each session: of a call through ``edge`` on a node of its set, established at ``srs``
    and ended by the controller's BYE; the SRS saw valid metadata and media on both
    streams; the node's local pcap holds the call with the edge's metadata."""
    srs_uri = next(s.uri for g in lab.site.recording.srs_groups for s in g.servers
                   if address(srs) in s.uri)
    nodes = {n.name for n in lab.site.nodes_in_set(edge_of(lab.site, edge).media_set)}
    for s in sessions:
        assert s["state"] == "closed" and s["established_at"] is not None, s
        assert s["edge"] == edge and s["node"] in nodes, (s["edge"], s["node"])
        assert s["srs"] == srs_uri, s
        assert s["reason"] == "BYE answered 200", s
        rec = lab.srs_record(srs, s["rs_call_id"])
        assert rec["bye_from"] == "src", rec["end_reason"]
        errors = [f for f in rec["metadata_findings"] + rec["sip_findings"]
                  if f["severity"] == "error"]
        assert errors == [], errors
        assert sorted(rec["packets"]) == ["0", "1"], rec["packets"]
        assert all(n > 20 for n in rec["packets"].values()), rec["packets"]
        # the local recording on the node Kamailio chose (its mirror may hold one too)
        prefix = urllib.parse.quote(s["call_id"], safe="")
        metas = sorted((lab.data / "recordings" / s["node"] / "metadata").glob(
            f"rtpengine-meta-{prefix}-*.txt"))
        assert len(metas) == 1, metas
        chk = check_metafile(metas[0], required_keys=lab.site.recording.required_metadata)
        assert chk.problems == [] and chk.packets and chk.packets > 50, chk
        meta = {k: decode_text(v) for k, v in chk.metadata.items()}
        assert meta["call-id"] == s["call_id"]
        assert meta["x-customer-id"] == s["call"]["headers"]["X-Customer-Id"]


def test_calls_through_both_edges_recorded_one_leader(lab: ScaleLab) -> None:
    t0 = time.monotonic()
    procs = {"SCALE-A": lab.sipp("edge-a", 5062, 4, "SCALE-A"),
             "SCALE-B": lab.sipp("edge-b", 5064, 3, "SCALE-B")}
    for what, p in procs.items():
        lab.done(p, what)
    _check_recorded(lab, lab.sessions_of("SCALE-A", 4), "edge-a")
    _check_recorded(lab, lab.sessions_of("SCALE-B", 3), "edge-b")
    # the pair: one acts, the other stands by connected to both edges
    leader = lab.leader()
    standby = [i.name for i in lab.site.controller.instances if i.name != leader]
    assert lab.acting() == [leader] and _connected(lab, standby[0])
    lab.timings["calls"] = time.monotonic() - t0


def kill_leader(lab: ScaleLab) -> tuple[str, str, float]:
    """SIGKILL the leading controller's container; (killed, new leader, takeover seconds:
    from before ``podman kill`` to the standby's ``/health`` saying it acts)."""
    leader = lab.leader()
    standby = next(i.name for i in lab.site.controller.instances if i.name != leader)
    assert _connected(lab, standby), f"{standby} is not standing by"
    container = lab.container(leader)
    killed = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "KILL", container], env=lab.env,
                   capture_output=True, text=True, timeout=30, check=True)
    lab.killed.add(leader)
    wait_for(lambda: lab.acts(standby), 10, f"{standby} to lead", 0.05)
    takeover = time.monotonic() - killed
    lab.takeovers.append(takeover)
    print(f"\ntakeover after SIGKILL of {leader}'s container: {takeover:.2f} s")
    state = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}}", container],
                           env=lab.env, capture_output=True, text=True, timeout=30,
                           check=True).stdout.strip()
    assert state == "exited", state
    return leader, standby, takeover


def test_leader_sigkilled_the_standby_takes_over(lab: ScaleLab) -> None:
    t0 = time.monotonic()
    # one live call through each edge, long enough to outlast the takeover
    live = {"LIVE-A": lab.sipp("edge-a", 5066, 1, "LIVE-A", duration_ms=9000),
            "LIVE-B": lab.sipp("edge-b", 5068, 1, "LIVE-B", duration_ms=9000)}
    try:
        before = {c: lab.sessions_of(c, 1, ("established",))[0] for c in live}
        # rtpengine replication: the mirror of a call on rtp-a1 or rtp-a2 holds it too
        a = before["LIVE-A"]
        peer = next(n for n in lab.site.nodes_in_set(0) if n.name != a["node"])
        with NgClient((peer.ng.address, peer.ng.port), timeout=2) as ng:
            wait_for(lambda: _holds(ng, a["call_id"]), 5, f"{peer.name} to mirror the call")
        leader, standby, takeover = kill_leader(lab)
        assert takeover <= TAKEOVER_TARGET_S
        # new calls through both edges are recorded by the new leader
        new = {"AFTER-A": lab.sipp("edge-a", 5070, 2, "AFTER-A"),
               "AFTER-B": lab.sipp("edge-b", 5072, 2, "AFTER-B")}
        for what, p in new.items():
            lab.done(p, what)
        _check_recorded(lab, lab.sessions_of("AFTER-A", 2), "edge-a")
        _check_recorded(lab, lab.sessions_of("AFTER-B", 2), "edge-b")
    finally:
        for what, p in live.items():
            lab.done(p, what)
    # the live calls: each still one session (adopted, not duplicated), closed by the new
    # leader's BYE when the call ended (not orphaned)
    duplicated = orphaned = 0
    for c in live:
        ss = lab.sessions_of(c, 1, timeout=20)
        duplicated += len(lab.api(f"/calls/{ss[0]['call_id']}")) - 1
        s = ss[0]
        assert s["session_id"] == before[c]["session_id"], (s, before[c])
        assert any(h["event"] == "adopt" for h in s["history"]), s["history"]
        rec = lab.srs_record("srs1", s["rs_call_id"])
        orphaned += rec["bye_from"] != "src"
    orphaned += _open_anywhere(lab)
    print(f"sessions duplicated {duplicated}, orphaned {orphaned}")
    assert duplicated == 0 and orphaned == 0
    # the killed controller, started again, stands by
    lab.compose("start", leader)
    lab.killed.discard(leader)
    wait_for(lambda: _connected(lab, leader), 30, f"{leader} back", 0.2)
    assert lab.acting() == [standby]
    lab.timings["drill"] = time.monotonic() - t0


def test_and_back_the_restarted_one_takes_over(lab: ScaleLab) -> None:
    """The same the other way round (the pair is symmetric): the new leader killed, the
    restarted controller takes over and records calls through both edges."""
    t0 = time.monotonic()
    _, _, takeover = kill_leader(lab)
    assert takeover <= TAKEOVER_TARGET_S
    new = {"BACK-A": lab.sipp("edge-a", 5074, 1, "BACK-A"),
           "BACK-B": lab.sipp("edge-b", 5076, 1, "BACK-B")}
    for what, p in new.items():
        lab.done(p, what)
    _check_recorded(lab, lab.sessions_of("BACK-A", 1), "edge-a")
    _check_recorded(lab, lab.sessions_of("BACK-B", 1), "edge-b")
    assert _open_anywhere(lab) == 0
    print("takeovers (s): " + ", ".join(f"{t:.2f}" for t in lab.takeovers))
    lab.timings["drill 2"] = time.monotonic() - t0


def _open_anywhere(lab: ScaleLab) -> int:
    """Sessions still open in the pair's store or at an SRS (every call has ended)."""
    at_srs = [r["call_id"] for srs in ("srs1", "srs2") for r in lab.srs_records(srs)
              if r["ended_at"] is None]
    return len(at_srs) + len(lab.api("/sessions?open=1"))


def _holds(ng: NgClient, call_id: str) -> bool:
    try:
        ng.query(call_id)
    except SiprecctlError:
        return False
    return True
