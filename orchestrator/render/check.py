"""Check rendered configs with the real daemons.

1. ``kamailio -c -f`` on every edge config (syntax, modules, fixups); parse errors are
   mapped back to file and line.
2. ``rtpengine --config-file=F --version`` on every node config (option types only: rtpengine
   has no config-check mode and ignores unknown keys).
3. Smoke start: a loopback variant of the site (every address 127.0.0.1, free ports, private
   run and recording dirs) is rendered and each rtpengine and Kamailio is started, proving the
   sockets bind and the modules load: rtpengine must answer NG ping, Kamailio must answer
   JSON-RPC ``core.version`` over HTTP and see its rtpengine nodes enabled. Then all stop.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..daemons import RTPENGINE_BIN, Kamailio, Rtpengine, free_port, kamailio_check, tcp_open
from ..errors import KamailioError, LabError, SecretError, SipError
from ..kamailio import HttpRpcTransport, KamailioClient
from ..sip import build_message, format_name_addr, new_branch, new_tag, parse_sip_message
from ..site.loader import validate_data
from ..site.model import Site
from . import ensure_secrets, render_site, write

_PARSE_ERR = re.compile(r"parse error in config file (?P<file>\S+?), line (?P<line>\d+), "
                        r"column [\d-]+: (?P<msg>.*)")
_OTHER_ERR = re.compile(r"(?:ERROR|CRITICAL): (?:<[^>]+> )?(?:\[[^\]]+\]: )?(?P<msg>.*)")


@dataclass
class Finding:
    """One result of a check step."""

    step: str  # kamailio-c | rtpengine-config | smoke-rtpengine | smoke-kamailio
    target: str  # edge or node name
    ok: bool
    message: str
    file: str | None = None
    line: int | None = None

    def format(self) -> str:
        loc = f"{self.file}:{self.line}: " if self.file and self.line else (
            f"{self.file}: " if self.file else "")
        return f"[{'ok' if self.ok else 'FAIL'}] {self.step} {self.target}: {loc}{self.message}"


def parse_kamailio_errors(stderr: str) -> list[tuple[str | None, int | None, str]]:
    """Errors from ``kamailio -c`` output as (file, line, message)."""
    out: list[tuple[str | None, int | None, str]] = []
    for ln in stderr.splitlines():
        m = _PARSE_ERR.search(ln)
        if m:
            out.append((m["file"], int(m["line"]), m["msg"].strip()))
            continue
        if "bad config file" in ln:
            continue
        m2 = _OTHER_ERR.search(ln)
        if m2 and ("ERROR" in ln or "CRITICAL" in ln):
            out.append((None, None, m2["msg"].strip()))
    return out


def check_kamailio(cfg: Path, edge: str) -> list[Finding]:
    proc = kamailio_check(cfg)
    if proc.returncode == 0:
        return [Finding("kamailio-c", edge, True, "config file ok", str(cfg))]
    errs = parse_kamailio_errors(proc.stderr) or [(None, None, proc.stderr.strip()[-500:])]
    return [Finding("kamailio-c", edge, False, msg, file or str(cfg), line)
            for file, line, msg in errs]


def check_rtpengine_config(conf: Path, node: str) -> Finding:
    proc = subprocess.run([RTPENGINE_BIN, f"--config-file={conf}", "--version"],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return Finding("rtpengine-config", node, True, "options parse", str(conf))
    # rtpengine dies before logging is set up, so only the exit status is informative
    return Finding("rtpengine-config", node, False,
                   f"rtpengine rejected the config (exit {proc.returncode}): bad option value, "
                   "a ';' comment or a key before [rtpengine]", str(conf))


def loopback_variant(site: Site, workdir: Path) -> Site:
    """The same site with every socket on 127.0.0.1 and free ports, dirs under ``workdir``."""
    data: dict[str, Any] = site.model_dump(mode="json", exclude_none=True)
    used: set[int] = set()

    def port(proto: str = "udp") -> int:
        while True:
            p = free_port(proto)
            if p not in used:
                used.add(p)
                return p

    for e in data["edges"]:
        for ls in e["listen"]:
            ls["address"] = "127.0.0.1"
            ls["port"] = port("tcp")
            ls.pop("advertise", None)
        e["jsonrpc"].update(address="127.0.0.1", port=port("tcp"))
        e["jsonrpc"]["allow"] = ["127.0.0.1/32"]
        e["evapi"].update(address="127.0.0.1", port=port("tcp"))
        e["run_dir"] = str(workdir / "run" / e["name"])
    base = 44000
    for n in data["media"]["nodes"]:
        n["ng"] = {"address": "127.0.0.1", "port": port()}
        if "ng_tcp" in n:
            n["ng_tcp"] = {"port": port("tcp")}
        if "http" in n:
            n["http"] = {"port": port("tcp")}
        for i in n["interfaces"]:
            i["address"] = "127.0.0.1"
            i.pop("advertised", None)
        n["ports"] = {"port_min": base, "port_max": base + 19}
        base += 20
    data["media"]["recording"]["dir"] = str(workdir / "recordings")
    # no Redis is started for a smoke test: no replication, a single controller
    data["media"].pop("redis", None)
    data.pop("redis", None)
    for n in data["media"]["nodes"]:
        n.pop("redis", None)
    data["controller"].pop("instances", None)
    data["controller"]["api"] = {"address": "127.0.0.1", "port": port("tcp")}
    data["security"] = {"secrets_dir": str(workdir / "secrets")}
    return validate_data(data, file="<loopback variant>")


def sip_options_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a UDP SIP listener answers an OPTIONS keepalive with 200."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((host, 0))
        lport = s.getsockname()[1]
        branch = new_branch()
        msg = build_message(f"OPTIONS sip:{host}:{port} SIP/2.0", [
            ("Via", f"SIP/2.0/UDP {host}:{lport};branch={branch}"),
            ("From", format_name_addr(f"sip:check@{host}", params=(("tag", new_tag()),))),
            ("To", format_name_addr(f"sip:{host}")), ("Call-ID", f"{branch}@check"),
            ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70")])
        try:
            s.sendto(msg, (host, port))
            return parse_sip_message(s.recv(65535)).status == 200
        except (OSError, SipError):
            return False


def smoke(site: Site, workdir: Path) -> list[Finding]:
    """Start every daemon of a loopback variant of ``site``, probe it, stop it."""
    lsite = loopback_variant(site, workdir)
    outdir = workdir / "smoke"
    write(outdir, render_site(lsite))
    ensure_secrets(lsite)
    findings: list[Finding] = []
    started: list[Rtpengine | Kamailio] = []
    try:
        for n in lsite.media.nodes:
            conf = outdir / "rtpengine" / n.name / "rtpengine.conf"
            rtp = Rtpengine(conf, workdir / "procs" / n.name, ng=(n.ng.address, n.ng.port))
            Path(lsite.media.recording.dir, n.name).mkdir(parents=True, exist_ok=True)
            started.append(rtp)
            try:
                rtp.start()
                rtp.wait_ready(10)
                findings.append(Finding("smoke-rtpengine", n.name, True,
                                        "started, answers NG ping", str(conf)))
            except LabError as exc:
                findings.append(Finding("smoke-rtpengine", n.name, False, str(exc), str(conf)))
        for e in lsite.edges:
            cfg = outdir / "kamailio" / e.name / "kamailio.cfg"
            kam = Kamailio(cfg, workdir / "procs" / e.name,
                           ready_tcp=(e.jsonrpc.address, e.jsonrpc.port),
                           shm_mb=e.shm_mb, pkg_mb=e.pkg_mb)
            started.append(kam)
            try:
                kam.start()
                kam.wait_ready(15)
                with KamailioClient(HttpRpcTransport.for_edge(lsite, e), timeout=5) as rpc:
                    version = rpc.version()
                    nodes = rpc.rtpengine_show()
                expect = len(lsite.nodes_in_set(e.media_set))
                in_set = [x for x in nodes if not x.disabled and x.set == e.media_set]
                evapi_ok = tcp_open(e.evapi.address, e.evapi.port)
                dead = [f"{ls.proto}:{ls.address}:{ls.port}" for ls in e.listen
                        if not (sip_options_ok(ls.address, ls.port) if ls.proto == "udp"
                                else tcp_open(ls.address, ls.port))]
                ok = len(in_set) == expect and evapi_ok and not dead
                msg = (f"started ({version.strip()}), {len(e.listen) - len(dead)}/"
                       f"{len(e.listen)} SIP listeners answer, JSON-RPC answers, "
                       f"{len(in_set)}/{expect} rtpengine nodes of set {e.media_set} enabled, "
                       f"evapi {'listening' if evapi_ok else 'NOT listening'}")
                if dead:
                    msg += f"; not answering: {', '.join(dead)}"
                findings.append(Finding("smoke-kamailio", e.name, ok, msg, str(cfg)))
            except (LabError, KamailioError, SecretError, OSError, ValueError) as exc:
                msg = str(exc)
                status = None if isinstance(exc, LabError) else kam.exit_status(2.0)
                if status is not None:  # it listened, then died (e.g. TLS set up in a child)
                    msg = f"kamailio exited with status {status}: {kam.log_errors()}"
                findings.append(Finding("smoke-kamailio", e.name, False, msg, str(cfg)))
    finally:
        for p in reversed(started):
            p.stop()
    return findings


def check_site(site: Site, *, smoke_start: bool = True, workdir: Path | None = None
               ) -> list[Finding]:
    """Render ``site`` into a temporary directory and check it; returns all findings."""
    with tempfile.TemporaryDirectory(prefix="siprecctl-check-") as tmp:
        wd = Path(workdir or tmp).resolve()
        # the configs as rendered, including the edges' secrets from a scratch secrets dir
        data = site.model_dump(mode="json", exclude_none=True)
        data["security"] = {"secrets_dir": str(wd / "secrets")}
        checked = validate_data(data, file="<check>")
        files = render_site(checked)
        write(wd / "rendered", files)
        ensure_secrets(checked)
        findings: list[Finding] = []
        for r in files:
            if r.kind == "kamailio":
                findings += check_kamailio(wd / "rendered" / r.path, r.owner)
            elif r.kind == "rtpengine":
                findings.append(check_rtpengine_config(wd / "rendered" / r.path, r.owner))
        if smoke_start and all(f.ok for f in findings):
            findings += smoke(site, wd)
        # the temporary dir is gone when we return: name files as `siprecctl render` writes them
        for f in findings:
            for base in (wd / "rendered", wd / "smoke"):
                if f.file and f.file.startswith(str(base) + "/"):
                    f.file = f.file[len(str(base)) + 1:]
        return findings


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
