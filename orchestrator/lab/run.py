"""``siprecctl lab run``: the whole system on loopback, proven with real calls.

Renders the site, checks the configs with the daemons, starts rtpengine, Kamailio, the
reference SRS of each SIPREC server the site names on loopback, the controller
(``siprecctl serve``) and a sipp callee, places recorded calls and one opted-out call with
sipp, then verifies from the edge's evapi events, rtpengine's recording files, the
controller's API and the SRS's sessions that exactly the expected calls were recorded:
locally with the edge metadata, and over SIPREC with valid RFC 7865 metadata and media on
every stream. Returns a :class:`LabReport`.
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
from ..render import Rendered
from ..render.check import check_kamailio, check_rtpengine_config
from ..site.model import Site
from . import sipp
from .events import EventReader
from .srs import SrsConfig, SrsServer
from .stack import LabStack


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
    siprec_srs: str | None = None
    siprec_packets: dict[str, int] = field(default_factory=dict)  # label -> packets at the SRS
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


def trunk_addr(uri: str) -> tuple[str, int]:
    hostport = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return host, int(port or 5060)


def run_lab(site: Site, workdir: Path, *, calls: int = 3, duration_ms: int = 2000) -> LabReport:
    """Bring the lab up, place ``calls`` recorded calls plus one opted-out call, verify."""
    t0 = time.monotonic()
    if len(site.edges) != 1 or not site.edges[0].listen:
        raise LabError("the lab runs sites with exactly one edge")
    edge = site.edges[0]
    srs_cfgs = local_srs(site, workdir)
    stack = LabStack(site, workdir, srs=srs_cfgs, controller=bool(srs_cfgs))
    checks = check_rendered(stack.render(), stack.cfgdir)

    cwd = sipp.workdir(workdir / "sipp")
    uas = None
    sipp_exit: dict[str, int] = {}
    try:
        stack.start()
        host, port = trunk_addr(edge.trunk_default.uri)
        uas = sipp.uas(cwd, host, port)
        events = EventReader.for_edge(stack.site, edge)
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
        results = _verify(site, events.events, stack.rec_dirs)
        if srs_cfgs:
            _verify_siprec(stack, results)
        events.close()
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"sipp did not finish: {exc}") from exc
    finally:
        sipp.stop(uas)
        stack.stop()
    return LabReport(site.name, str(workdir), checks, results, sipp_exit,
                     round(time.monotonic() - t0, 1))


def check_rendered(files: list[Rendered], cfgdir: Path) -> list[str]:
    """Check the rendered configs with the daemons themselves (``kamailio -c``,
    rtpengine's option parser); a :class:`LabError` naming every failure, else the
    findings as lines."""
    checks: list[str] = []
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
    return checks


def local_srs(site: Site, workdir: Path) -> list[SrsConfig]:
    """A reference SRS for every SIPREC server of the site on a loopback address."""
    out: list[SrsConfig] = []
    for g in site.recording.srs_groups:
        for i, srv in enumerate(g.servers):
            host, port = trunk_addr(srv.uri)
            if not host.startswith("127."):
                continue
            base = 40000 + 1000 * len(out)
            out.append(SrsConfig(address=host, port=port, name=f"{g.name}-{i + 1}",
                                 record_dir=workdir / "srs" / f"{g.name}-{i + 1}",
                                 rtp_port_min=base, rtp_port_max=base + 999))
    for cfg in out:
        cfg.record_dir.mkdir(parents=True, exist_ok=True)
    return out


def _srs_session(servers: list[SrsServer], rs_call_id: str) -> tuple[str, Any] | None:
    for server in servers:
        for s in server.sessions():
            if s.call_id == rs_call_id:
                return server.config.name, s
    return None


def _verify_siprec(stack: LabStack, results: list[CallResult]) -> None:
    """Each recorded call: one closed SIPREC session whose SRS saw valid metadata, media on
    every stream and the BYE; the opted-out call: none."""
    servers = list(stack.srs.values())
    deadline = time.monotonic() + 5
    for res in results:
        while True:
            sessions = stack.api("GET", "/calls/" + urllib.parse.quote(res.call_id, safe=""))
            if not isinstance(sessions, list):
                res.problems.append(f"controller API: {sessions}")
                break
            if all(s["state"] in ("closed", "failed") for s in sessions) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not isinstance(sessions, list):
            continue
        if not res.expected_recording:
            if sessions:
                res.problems.append("a SIPREC session exists although the policy said no")
            continue
        if len(sessions) != 1:
            res.problems.append(f"{len(sessions)} SIPREC sessions (expected 1)")
            continue
        sess = sessions[0]
        if sess["state"] != "closed" or sess.get("established_at") is None:
            res.problems.append(f"SIPREC session {sess['state']}: {sess.get('reason')}")
            continue
        found = _srs_session(servers, sess["rs_call_id"])
        if found is None:
            res.problems.append("the SRS never saw the SIPREC session")
            continue
        res.siprec_srs, srs = found
        res.siprec_packets = {k: st.packets for k, st in sorted(srs.labels.items())}
        bad = [f"{f.rule} {f.message}" for f in srs.metadata_findings + srs.sip_findings
               if f.severity.value == "error"]
        res.problems += [f"SRS: {b}" for b in bad]
        if len(srs.labels) != 2 or not all(srs.labels[k].packets > 0 for k in srs.labels):
            res.problems.append(f"SRS streams without media: {res.siprec_packets}")
        if srs.bye_from != "src":
            res.problems.append(f"SRS session not ended by the SRC's BYE ({srs.end_reason})")


def _verify(site: Site, events: list[dict[str, Any]],
            rec_dirs: dict[str, Path]) -> list[CallResult]:
    by_call: dict[str, dict[str, dict[str, Any]]] = {}
    for ev in events:
        if ev.get("event") in ("answered", "reinvite", "ended", "failed"):  # not rs_* events
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
