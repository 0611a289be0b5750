"""The compose lab (docker-compose.yml) brought up with podman as an operator would
(``scripts/compose prepare``, ``build``, ``up -d``), recorded calls placed with sipp from
the caller container through the edge to the callee, the recordings checked where they
land — the SRSs' session records, the controller's API and store, rtpengine's pcaps — and
the lab torn down, whatever happened. Changed from the shipped files: directories only (the
site's secrets_dir and the compose host paths point into the test's tmp dir), and the
compose project name.

The compose file is also validated against the Compose specification (Debian's
docker-compose 1.29 ``config``: its compose-spec JSON schema plus the references between
services, networks and volumes)."""

from __future__ import annotations

import json
import os
import shutil
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
from orchestrator.controller.store import SessionStore
from orchestrator.errors import SiprecctlError
from orchestrator.lab import sipp
from orchestrator.recordings import check_metafile
from orchestrator.recordings.encoding import decode_text
from orchestrator.site import Site, load, validate_data
from orchestrator.site.secrets import api_token_path
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration

COMPOSE_FILE = ROOT / "docker-compose.yml"
SITE_FILE = ROOT / "examples" / "compose-lab.yaml"
PROJECT = "siprecctl-compose-test"
SRS_SERVICES = ("srs1", "srs2")


def compose_config() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# ---------------------------------------------------------------------------- the spec
def docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "run ./scripts/setup: Debian's docker-compose validates the compose file"
    return subprocess.run([exe, "-f", str(path), "--project-directory", str(ROOT), "config",
                           "-q"], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": PROJECT})


def test_compose_file_follows_the_compose_spec(tmp_path: Path) -> None:
    proc = docker_compose_config(COMPOSE_FILE)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr
    # and the validator does refuse a damaged file: an unknown key, a dangling reference
    text = COMPOSE_FILE.read_text()
    for old, new, expected in (
            ("ipv4_address: 198.18.1.41", "ipv4_adress: 198.18.1.41", "ipv4_adress"),
            ('network_mode: "service:edge"', 'network_mode: "service:egde"', "egde")):
        bad = tmp_path / "docker-compose.yml"
        assert old in text
        bad.write_text(text.replace(old, new, 1))
        proc = docker_compose_config(bad)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- the lab
@dataclass
class ComposeLab:
    """The running compose lab: its site (as the controller reads it), host paths, API."""

    site: Site
    work: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.work / "lab"

    def compose(self, *args: str, timeout: float = 600,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(ROOT / "scripts" / "compose"), *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"scripts/compose {' '.join(args)} exited {proc.returncode}:"
                                 f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def api(self, method: str, path: str, role: str = "operator") -> Any:
        api = self.site.controller.api
        token = api_token_path(self.site, "operator" if role == "operator" else "dashboard")
        target = ApiTarget(f"http://{api.address}:{api.port}", token.read_text().strip())
        code, doc = api_request(target, method, path, timeout=5)
        assert code == 200, (path, code, doc)
        return doc

    def place_calls(self, batches: list[dict[str, Any]], timeout: float = 90) -> None:
        """Run sipp's lab caller in the caller container, one process per batch (local port,
        number of calls, the X-Record and X-Customer-Id values), all at once; each must
        exit 0 (every call answered and ended)."""
        caller = compose_config()["services"]["caller"]["networks"]["lab"]["ipv4_address"]
        sip = self.site.edges[0].listen[0]
        procs = []
        for b in batches:
            argv = sipp.uac_argv(Path("/tmp"), f"{sip.address}:{sip.port}",
                                 local=(caller, b["port"]), calls=b["calls"], rate=b["calls"],
                                 duration_ms=2000, record=b["record"], customer=b["customer"])
            procs.append(subprocess.Popen(
                [str(ROOT / "scripts" / "compose"), "exec", "-T", "-w", "/srv/sipp", "caller",
                 *argv], env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        for b, p in zip(batches, procs, strict=True):
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"sipp ({b['customer']}) exited {p.returncode}:\n" \
                                      f"{out[-2500:]}"

    def sessions_of(self, customer: str, n: int) -> list[dict[str, Any]]:
        """The ``n`` closed recording sessions of the calls carrying X-Customer-Id
        ``customer``, once the controller has them all."""
        def closed() -> list[dict[str, Any]] | None:
            mine = [s for s in self.api("GET", "/sessions?limit=1000", role="readonly")
                    if s["call"]["headers"].get("X-Customer-Id") == customer]
            done = [s for s in mine if s["state"] in ("closed", "failed")]
            return mine if len(done) == len(mine) == n else None
        return wait_for(closed, 20, f"{n} closed SIPREC sessions of {customer}", 0.2)

    def srs_record(self, srs: str, rs_call_id: str) -> dict[str, Any]:
        """The session record (JSON) the SRS container wrote for ``rs_call_id``."""
        def find() -> dict[str, Any] | None:
            for path in sorted((self.data / srs).glob("*.json")):
                rec = json.loads(path.read_text())
                if rec["call_id"] == rs_call_id and rec["ended_at"] is not None:
                    return rec
            return None
        return wait_for(find, 10, f"{srs}'s record of {rs_call_id}", 0.2)


def _subnet_users(subnet: str, env: dict[str, str]) -> list[str]:
    """podman networks (of any project) that already hold ``subnet``."""
    out = subprocess.run(["podman", "network", "ls", "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [n["name"] for n in json.loads(out or "[]")
            if any(s.get("subnet") == subnet for s in n.get("subnets") or [])]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeLab]:
    work = tmp_path_factory.mktemp("compose")
    # the compose site with its secrets in the test's directory (a directory change, as an
    # operator's own secrets_dir); the controller container reads this copy
    data = load(SITE_FILE).model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(work / "secrets")}
    site = validate_data(data)
    site_copy = work / "compose-lab.yaml"
    site_copy.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ,
           "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf"),
           "COMPOSE_PROJECT_NAME": PROJECT,
           "SIPRECCTL_COMPOSE_DIR": str(work / "lab"),
           "SIPRECCTL_COMPOSE_SITE": str(site_copy),
           "SIPRECCTL_SECRETS_DIR": site.security.secrets_dir}
    lab = ComposeLab(site, work, env)
    subnet = compose_config()["networks"]["lab"]["ipam"]["config"][0]["subnet"]
    lab.compose("down", check=False)  # what a crashed run of this test left
    others = _subnet_users(subnet, env)
    assert not others, f"podman network(s) {others} already use {subnet}: another compose " \
                       "lab is up (scripts/compose down)"
    t0 = time.monotonic()
    try:
        for step in ("prepare", "build", "up"):
            lab.compose(*(["up", "-d"] if step == "up" else [step]))
            lab.timings[step] = time.monotonic() - t0 - sum(lab.timings.values())
        # ready: the controller answers, holds its edge's evapi connection and sees both
        # SRSs; Kamailio has the rtpengine node enabled
        health = wait_for(lambda: _health(lab), 60, "the controller's health in the lab", 0.5)
        assert health["srs"] and all(health["srs"].values()), health
        wait_for(lambda: _rtpengine_enabled(lab), 30, "Kamailio's rtpengine node enabled", 0.5)
        lab.timings["ready"] = time.monotonic() - t0 - sum(lab.timings.values())
        yield lab
    finally:
        t1 = time.monotonic()
        logs = lab.compose("logs", check=False, timeout=120)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        lab.compose("down", check=False, timeout=300)
        lab.timings["down"] = time.monotonic() - t1
        print("compose lab timings (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in lab.timings.items()))
    left = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter",
                           f"label=io.podman.compose.project={PROJECT}"], env=env,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert left.strip() == "", f"containers left after down: {left}"
    assert not _subnet_users(subnet, env), "the lab network outlived down"


def _health(lab: ComposeLab) -> dict[str, Any] | None:
    try:
        health = lab.api("GET", "/health", role="readonly")
    except (SiprecctlError, AssertionError):  # not up yet: the API does not answer
        return None
    return health if health.get("edges") and all(health["edges"].values()) else None


def _rtpengine_enabled(lab: ComposeLab) -> bool:
    proc = lab.compose("exec", "-T", "controller", "siprecctl", "edge", "rtpengine", "show",
                       "--site", "/etc/siprecctl/site.yaml", "--json", check=False, timeout=30)
    if proc.returncode != 0:
        return False
    nodes = [n for row in json.loads(proc.stdout) for n in row.get("nodes", [])]
    return bool(nodes) and all(n["enabled"] for n in nodes)


def _check_recorded(lab: ComposeLab, sessions: list[dict[str, Any]], srs: str) -> None:
    """Each session: established at ``srs``, ended by the controller's BYE; the SRS saw
    valid metadata and media on both streams; rtpengine's local pcap holds the call with
    the edge's metadata; the controller's store has it."""
    srs_uri = next(s.uri for g in lab.site.recording.srs_groups for s in g.servers
                   if srs_address(srs) in s.uri)
    store = SessionStore(lab.data / "state" / Path(lab.site.controller.store).name,
                         readonly=True)
    try:
        for s in sessions:
            assert s["state"] == "closed" and s["established_at"] is not None, s
            assert s["srs"] == srs_uri, s
            assert s["reason"] == "BYE answered 200", s
            rec = lab.srs_record(srs, s["rs_call_id"])
            assert rec["bye_from"] == "src", rec["end_reason"]
            errors = [f for f in rec["metadata_findings"] + rec["sip_findings"]
                      if f["severity"] == "error"]
            assert errors == [], errors
            assert sorted(rec["packets"]) == ["0", "1"], rec["packets"]
            assert all(n > 20 for n in rec["packets"].values()), rec["packets"]  # 50/s, 2 s
            # the local recording (rtpengine's pcap method) with the edge's metadata
            prefix = urllib.parse.quote(s["call_id"], safe="")
            metas = sorted((lab.data / "recordings" / "rtp1" / "metadata").glob(
                f"rtpengine-meta-{prefix}-*.txt"))
            assert len(metas) == 1, metas
            chk = check_metafile(metas[0],
                                 required_keys=lab.site.recording.required_metadata)
            assert chk.problems == [] and chk.packets and chk.packets > 50, chk
            meta = {k: decode_text(v) for k, v in chk.metadata.items()}
            assert meta["call-id"] == s["call_id"]
            assert meta["x-customer-id"] == s["call"]["headers"]["X-Customer-Id"]
            # the controller's store (read-only, as an audit would) holds the same session
            stored = store.by_rs_call_id(s["rs_call_id"])
            assert stored is not None and stored.call_id == s["call_id"]
            # the edge's own call record (acc → db_flatstore), the audit's evidence
            acc = lab.data / "accounting" / lab.site.edges[0].name
            assert any(s["call_id"] in f.read_text(errors="replace")
                       for f in acc.glob("calls_*.log")), sorted(acc.iterdir())
    finally:
        store.close()


def srs_address(service: str) -> str:
    return compose_config()["services"][service]["networks"]["lab"]["ipv4_address"]


def test_recorded_and_opted_out_calls(lab: ComposeLab) -> None:
    t0 = time.monotonic()
    lab.place_calls([dict(port=5062, calls=3, record="yes", customer="COMPOSE-REC"),
                     dict(port=5064, calls=1, record="no", customer="COMPOSE-OPTOUT")])
    sessions = lab.sessions_of("COMPOSE-REC", 3)
    _check_recorded(lab, sessions, "srs1")
    # the opted-out call: no SIPREC session, no local recording
    assert not [s for s in lab.api("GET", "/sessions?limit=1000", role="readonly")
                if s["call"]["headers"].get("X-Customer-Id") == "COMPOSE-OPTOUT"]
    for meta in (lab.data / "recordings" / "rtp1" / "metadata").glob("rtpengine-meta-*.txt"):
        assert "COMPOSE-OPTOUT" not in meta.read_text(errors="replace"), meta
    lab.timings["calls"] = time.monotonic() - t0


def test_api_needs_a_token_from_the_host(lab: ComposeLab) -> None:
    api = lab.site.controller.api
    code, _ = api_request(f"http://{api.address}:{api.port}", "GET", "/sessions", timeout=5)
    assert code == 401
    target = ApiTarget(f"http://{api.address}:{api.port}",
                       api_token_path(lab.site, "dashboard").read_text().strip())
    code, doc = api_request(target, "POST", "/calls/x/stop", {}, timeout=5)
    assert code == 403, doc  # the dashboard's token reads, never acts


def test_srs1_stopped_calls_are_recorded_at_srs2(lab: ComposeLab) -> None:
    t0 = time.monotonic()
    srs1 = next(s.uri for s in lab.site.recording.srs_groups[0].servers)
    lab.compose("stop", "srs1")
    try:
        # the controller's probes mark srs1 down; new calls go to the next SRS of the group
        wait_for(lambda: lab.api("GET", "/health", role="readonly")["srs"][srs1] is False,
                 15, "the controller to see srs1 down", 0.2)
        lab.place_calls([dict(port=5066, calls=2, record="yes", customer="COMPOSE-FAILOVER")])
        _check_recorded(lab, lab.sessions_of("COMPOSE-FAILOVER", 2), "srs2")
    finally:
        lab.compose("start", "srs1")
    lab.timings["failover"] = time.monotonic() - t0
