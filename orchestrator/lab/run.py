"""``siprecctl lab run``: the whole system on loopback, proven with real calls.

Renders the site, checks the configs with the daemons, starts rtpengine, Kamailio and a sipp
callee, places recorded calls and one opted-out call with sipp, then verifies from the edge's
evapi events and rtpengine's recording files that exactly the expected calls were recorded
with the edge metadata. Returns a :class:`LabReport`.
"""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..recordings import check_metafile
from ..render import render_site, write
from ..render.check import check_kamailio, check_rtpengine_config
from ..site.model import Site
from . import sipp
from .events import EventReader
from .procs import Kamailio, Rtpengine


@dataclass
class CallResult:
    call_id: str
    kind: str  # recorded | opt-out
    rule: str
    answered: bool
    ended: bool
    expected_recording: bool
    pcap_packets: int | None = None
    metadata_keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LabReport:
    site: str
    workdir: str
    checks: list[str]
    calls: list[CallResult]
    sipp_exit: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.calls) and all(v == 0 for v in self.sipp_exit.values())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _trunk_addr(uri: str) -> tuple[str, int]:
    hostport = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return host, int(port or 5060)


def run_lab(site: Site, workdir: Path, *, calls: int = 3, duration_ms: int = 2000) -> LabReport:
    """Bring the lab up, place ``calls`` recorded calls plus one opted-out call, verify."""
    t0 = time.monotonic()
    if len(site.edges) != 1 or not site.edges[0].listen:
        raise LabError("the lab runs sites with exactly one edge")
    edge = site.edges[0]
    workdir.mkdir(parents=True, exist_ok=True)
    cfgdir = workdir / "configs"
    files = render_site(site)
    write(cfgdir, files)
    checks = []
    for r in files:
        if r.kind == "kamailio":
            fs = check_kamailio(cfgdir / r.path, r.owner)
        elif r.kind == "rtpengine":
            fs = [check_rtpengine_config(cfgdir / r.path, r.owner)]
        else:
            continue
        bad = [f for f in fs if not f.ok]
        if bad:
            raise LabError("config check failed:\n" + "\n".join(f.format() for f in bad))
        checks += [f.format() for f in fs]

    rec_dirs = {n.name: workdir / "recordings" / n.name for n in site.media.nodes}
    procs: list[Rtpengine | Kamailio] = []
    for n in site.media.nodes:
        rec_dirs[n.name].mkdir(parents=True, exist_ok=True)
        procs.append(Rtpengine(cfgdir / "rtpengine" / n.name / "rtpengine.conf",
                               workdir / "logs" / n.name, ng=(n.ng.address, n.ng.port),
                               overrides=[f"--recording-dir={rec_dirs[n.name]}",
                                          "--delete-delay=0"]))
    procs.append(Kamailio(cfgdir / "kamailio" / edge.name / "kamailio.cfg",
                          workdir / "logs" / edge.name, run_dir=workdir / "run" / edge.name,
                          ready_tcp=(edge.jsonrpc.address, edge.jsonrpc.port),
                          shm_mb=edge.shm_mb, pkg_mb=edge.pkg_mb))
    cwd = sipp.workdir(workdir / "sipp")
    uas = None
    sipp_exit: dict[str, int] = {}
    try:
        for p in procs:
            p.start()
            p.wait_ready(15)
        host, port = _trunk_addr(edge.trunk_default.uri)
        uas = sipp.uas(cwd, host, port)
        events = EventReader((edge.evapi.address, edge.evapi.port))
        events.start()
        time.sleep(0.3)
        sip = edge.listen[0]
        target = f"{sip.address}:{sip.port}"
        rec = subprocess.Popen(sipp.uac_argv(cwd, target, local=(sip.address, 5170),
                                             calls=calls, duration_ms=duration_ms, rate=5,
                                             record="yes", customer="LAB-REC"),
                               cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opt = subprocess.Popen(sipp.uac_argv(cwd, target, local=(sip.address, 5171), calls=1,
                                             duration_ms=duration_ms, record="no",
                                             customer="LAB-OPTOUT"),
                               cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timeout = 30 + calls * duration_ms / 1000
        sipp_exit["recorded calls (sipp uac)"] = rec.wait(timeout)
        sipp_exit["opt-out call (sipp uac)"] = opt.wait(timeout)
        time.sleep(1.0)  # rtpengine finalises recordings when the call is destroyed
        results = _verify(site, events.events, rec_dirs)
        events.close()
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"sipp did not finish: {exc}") from exc
    finally:
        sipp.stop(uas)
        for p in reversed(procs):
            p.stop()
    return LabReport(site.name, str(workdir), checks, results, sipp_exit,
                     round(time.monotonic() - t0, 1))


def _verify(site: Site, events: list[dict[str, Any]],
            rec_dirs: dict[str, Path]) -> list[CallResult]:
    by_call: dict[str, dict[str, dict[str, Any]]] = {}
    for ev in events:
        by_call.setdefault(ev["call_id"], {})[ev["event"]] = ev
    node_by_ng = {f"udp:{n.ng.address}:{n.ng.port}": n.name for n in site.media.nodes}
    required = site.recording.required_metadata
    out = []
    for call_id, evs in sorted(by_call.items()):
        ans = evs.get("answered", {})
        kind = "opt-out" if ans.get("headers", {}).get("X-Customer-Id") == "LAB-OPTOUT" \
            else "recorded"
        res = CallResult(call_id, kind, ans.get("rule", "?"), "answered" in evs,
                         "ended" in evs, expected_recording=(kind == "recorded"))
        if not res.answered or not res.ended:
            res.problems.append("call did not complete (answered/ended events missing)")
        if ans.get("record_local") is not res.expected_recording:
            res.problems.append(f"edge decided record_local={ans.get('record_local')}")
        node = node_by_ng.get(ans.get("rtpengine", ""), "")
        rdir = rec_dirs.get(node) or next(iter(rec_dirs.values()))
        prefix = urllib.parse.quote(call_id, safe="")
        metas = sorted((rdir / "metadata").glob(f"rtpengine-meta-{prefix}-*.txt"))
        pcaps = sorted((rdir / "pcaps").glob(f"{prefix}-*.pcap"))
        if not res.expected_recording:
            if metas or pcaps:
                res.problems.append("recorded although the policy said no")
            out.append(res)
            continue
        if not metas or not pcaps:
            res.problems.append("no recording files")
            out.append(res)
            continue
        chk = check_metafile(metas[0], required_keys=required)
        res.pcap_packets = chk.packets
        res.metadata_keys = list(chk.metadata)
        res.problems += chk.problems
        out.append(res)
    return out
