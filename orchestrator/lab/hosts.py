"""The lab as hosts: ``caller``, ``callee``, ``edge`` (Kamailio, rtpengine, the controller),
``srs1`` and ``srs2``, each in its own network namespace (:mod:`.netns`), or, where
namespaces cannot be made (not root), all on loopback with distinct ports in 6100-6999.

The site is rendered once for the lab: the same site with the hosts' addresses, the lab
directory's paths, and (on loopback) the band's ports; nothing else differs from what an
operator deploys. Every process runs in its host's namespace (``ip netns exec``, which
execs the daemon itself: the pid we record is the daemon's), in its own session, with its
output in ``<lab dir>/logs/<host>/<process>.log``. What the lab created is written to
``<lab dir>/lab.json`` *before* it is created, so ``siprecctl lab down`` removes it even
after the lab command crashed, and tolerates what is already gone.

Control surfaces stay on the edge host's loopback (NG has no authentication; JSON-RPC,
evapi and the API authenticate with the lab's own secrets in ``<lab dir>/secrets``); SIP
and media bind to the hosts' lab addresses, never to 0.0.0.0. Health: rtpengine answers
NG ping, Kamailio JSON-RPC and SIP OPTIONS, the controller's ``/health`` shows its evapi
connection, each SRS answers OPTIONS, the callee has its SIP port bound.

A site with several edges or a controller pair gets the scale topology instead
(:mod:`.scale`: a host per edge, node and controller instance, and one for Redis).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..daemons import Daemon, Kamailio, Rtpengine, ng_ping
from ..errors import LabError, SiprecctlError
from ..site import Site, load, validate_data
from . import netns, sipp
from .netns import HOSTS, NetPlan

__all__ = ["Lab", "ProcStatus", "default_dir", "lab_down"]

REGISTRY = "lab.json"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class _Band:
    """The loopback fallback's ports, all within 6100-6999 (6000-6063 is X11's)."""

    sip: int = 6160
    callee: int = 6180
    caller: int = 6170
    jsonrpc: int = 6171
    evapi: int = 6148
    api: int = 6190
    srs: int = 6191
    ng: int = 6123
    rtp: tuple[int, int] = (6200, 6599)
    srs_rtp: tuple[tuple[int, int], ...] = ((6600, 6799), (6800, 6999))
    callee_mp: int = 6130
    caller_mp: int = 6140


BAND = _Band()
NETNS_SRS_RTP = (40000, 40999)
_URI_HOST = re.compile(r"^(?P<scheme>sips?:(?:[^@]*@)?)(?P<host>[^:;?]+)(?P<rest>.*)$")


def default_dir() -> Path:
    """``$SIPRECCTL_LAB_DIR``, else /var/lib/siprecctl/lab for root, else
    ``$XDG_STATE_HOME`` (~/.local/state)/siprecctl/lab."""
    env = os.environ.get("SIPRECCTL_LAB_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/siprecctl/lab")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "siprecctl" / "lab"


def _uri_with(uri: str, host: str, port: int | None = None) -> str:
    m = _URI_HOST.match(uri)
    if m is None:
        raise LabError(f"cannot place {uri} in the lab")
    rest = m.group("rest")
    if port is not None:
        rest = re.sub(r"^:\d+", "", rest)
        rest = f":{port}{rest}"
    return f"{m.group('scheme')}{host}{rest}"


def _uri_port(uri: str) -> int:
    m = _URI_HOST.match(uri)
    pm = re.match(r"^:(\d+)", m.group("rest")) if m else None
    return int(pm.group(1)) if pm else 5060


def srs_uris(site: Site) -> list[str]:
    """The site's distinct SRS URIs, in order: the first is ``srs1``, the second ``srs2``."""
    out: list[str] = []
    for g in site.recording.srs_groups:
        for s in g.servers:
            if s.uri not in out:
                out.append(s.uri)
    if len(out) > 2:
        raise LabError(f"the lab has two SRS hosts; the site names {len(out)} SRSs")
    return out


def lab_site(site: Site, labdir: Path, plan: NetPlan | None) -> Site:
    """``site`` placed in the lab: hosts' addresses (``plan``) or loopback with the band's
    ports (``plan`` None), paths under ``labdir``. Nothing else changes."""
    if len(site.edges) != 1:
        raise LabError("the lab runs sites with exactly one edge")
    labdir = labdir.resolve()
    data: dict[str, Any] = site.model_dump(mode="json", exclude_none=True)
    e = data["edges"][0]
    edge_ip = plan.address("edge") if plan else LOOPBACK
    callee_ip = plan.address("callee") if plan else LOOPBACK
    sip_ports: dict[int, int] = {}
    for ls in e["listen"]:
        ls["address"] = edge_ip
        ls.pop("advertise", None)
        if plan is None:
            ls["port"] = sip_ports.setdefault(ls["port"], BAND.sip + len(sip_ports))
    for i, t in enumerate(e["trunks"]):
        t["uri"] = _uri_with(t["uri"], callee_ip, None if plan else BAND.callee + i)
    e["run_dir"] = str(labdir / "run" / e["name"])
    if plan is None:
        e["jsonrpc"].update(address=LOOPBACK, port=BAND.jsonrpc)
        e["evapi"].update(address=LOOPBACK, port=BAND.evapi)
        data["controller"]["api"]["address"] = LOOPBACK
        data["controller"]["api"]["port"] = BAND.api
    nodes = data["media"]["nodes"]
    low, high = BAND.rtp
    width = (high - low + 1) // len(nodes)
    for i, n in enumerate(nodes):
        for itf in n["interfaces"]:
            itf["address"] = edge_ip
            itf.pop("advertised", None)
        if plan is None:
            base = BAND.ng + 10 * i
            n["ng"] = {"address": LOOPBACK, "port": base}
            if "ng_tcp" in n:
                n["ng_tcp"] = {"port": base + 1}
            if "http" in n:
                n["http"] = {"port": base + 2}
            n["ports"] = {"port_min": low + i * width, "port_max": low + (i + 1) * width - 1}
    data["media"]["recording"]["dir"] = str(labdir / "recordings")
    data["media"].pop("redis", None)  # the lab starts no Redis
    uris = srs_uris(site)
    new_uri = {u: _uri_with(u, plan.address(f"srs{i + 1}") if plan else LOOPBACK,
                            None if plan else BAND.srs + i) for i, u in enumerate(uris)}
    for g in data["recording"]["srs_groups"]:
        for s in g["servers"]:
            s["uri"] = new_uri[s["uri"]]
    data["controller"]["store"] = str(labdir / "controller.sqlite")
    data["security"] = {"secrets_dir": str(labdir / "secrets")}
    # the edge's own call records (the audit's evidence) in the lab too
    data["accounting"] = {"dir": str(labdir / "accounting")}
    return validate_data(data, file="<lab site>")


# ---------------------------------------------------------------------------- processes
def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live, non-zombie ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def proc_alive(rec: dict[str, Any]) -> bool:
    """The recorded process still runs (same pid *and* start time: never a recycled pid)."""
    pid = rec.get("pid")
    return pid is not None and _proc_start(int(pid)) == rec.get("start")


def _stop_pid(rec: dict[str, Any], timeout: float, kill: bool) -> None:
    """SIGTERM (SIGKILL with ``kill``) the recorded process's group; SIGKILL after
    ``timeout``."""
    if not proc_alive(rec):
        return
    pid = int(rec["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc_alive(rec) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc_alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while proc_alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)


def _udp_bound(pid: int, address: str, port: int) -> bool:
    """``pid``'s network namespace has a UDP socket bound to ``address:port``."""
    want = f"{''.join(f'{int(b):02X}' for b in reversed(address.split('.')))}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/udp") as f:
            return any(line.split()[1] == want for line in f.readlines()[1:])
    except OSError:
        return False


@dataclass
class ProcStatus:
    """One process of the lab as ``lab status`` shows it."""

    name: str
    host: str
    kind: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    cpu_s: float | None = None
    mem_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pss_kb(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, memory MB) of ``pid`` and the rest of its process group (Kamailio
    forks its workers). Memory is the PSS (shared pages split among the processes sharing
    them: Kamailio's shm is not counted once per worker), RSS where PSS is unreadable."""
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu = mem = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) != pgid or fields[0] == "Z":
            continue
        cpu += int(fields[11]) + int(fields[12])  # utime + stime
        pss = _pss_kb(entry)
        mem += pss * 1024 if pss is not None else int(fields[21]) * page
    return cpu / tick, mem / 2**20


# ---------------------------------------------------------------------------- the lab
class Lab:
    """A lab in ``labdir``: :meth:`plan` a new one and :meth:`up` it, or :meth:`open` the
    one that is up there. Library code: returns values, prints nothing."""

    def __init__(self, labdir: Path, reg: dict[str, Any]) -> None:
        self.dir = Path(labdir).resolve()
        self.reg = reg
        self._daemons: dict[str, Daemon] = {}
        self._site: Site | None = None

    # ------------------------------------------------------------------ registry
    @property
    def registry_path(self) -> Path:
        return self.dir / REGISTRY

    def save(self) -> None:
        """Write the registry atomically (temp file + rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.registry_path.with_name(f".{REGISTRY}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.reg, indent=1, sort_keys=True))
        os.replace(tmp, self.registry_path)

    @staticmethod
    def read_registry(labdir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((Path(labdir) / REGISTRY).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{Path(labdir) / REGISTRY}: unreadable lab registry: {exc}") \
                from exc
        if not isinstance(data, dict) or data.get("version") != 1:
            raise LabError(f"{Path(labdir) / REGISTRY}: not a lab registry of this version")
        return data

    @classmethod
    def open(cls, labdir: Path) -> Lab:
        """The lab that is up (or half up) in ``labdir``."""
        reg = cls.read_registry(labdir)
        if reg is None or reg.get("state") == "down":
            raise LabError(f"no lab is up in {labdir} (siprecctl lab up)")
        return cls.of(labdir, reg)

    @staticmethod
    def of(labdir: Path, reg: dict[str, Any]) -> Lab:
        """The lab of registry ``reg``: the single-box lab or the scale topology."""
        if reg.get("topology") == "scale":
            from .scale import ScaleLab

            return ScaleLab(labdir, reg)
        return Lab(labdir, reg)

    @classmethod
    def plan(cls, site: Site, labdir: Path, mode: str = "auto") -> Lab:
        """A new lab for ``site`` in ``labdir`` (nothing started yet). ``mode``: ``netns``,
        ``loopback`` or ``auto`` (namespaces when possible, else loopback, saying why).
        A site with several edges or a controller pair gets the scale topology
        (:mod:`.scale`)."""
        from .scale import is_scale

        if is_scale(site):
            from .scale import ScaleLab

            return ScaleLab.plan_scale(site, labdir, mode)
        why = netns.unavailable()
        if mode == "netns" and why:
            raise LabError(f"network namespaces are not available: {why}")
        use_netns = mode == "netns" or (mode == "auto" and why is None)
        netplan = NetPlan.from_settings(site.lab) if use_netns else None
        labdir = Path(labdir).resolve()
        lsite = lab_site(site, labdir, netplan)
        hosts = {h: {"netns": netplan.netns(h) if netplan else None,
                     "address": netplan.address(h) if netplan else LOOPBACK} for h in HOSTS}
        reg: dict[str, Any] = {
            "version": 1, "state": "planned", "mode": "netns" if netplan else "loopback",
            "fallback_reason": None if netplan else (why or "asked for loopback"),
            "site": site.name, "site_file": str(labdir / "site.yaml"),
            "net": None if netplan is None else {"prefix": netplan.prefix,
                                                 "bridge": netplan.bridge,
                                                 "subnet": netplan.subnet},
            "namespaces": [], "hosts": hosts, "processes": {}, "order": [],
            "caller": {"port": 5060 if netplan else BAND.caller,
                       "media_port": None if netplan else BAND.caller_mp},
            "created_at": time.time(),
        }
        lab = cls(labdir, reg)
        lab._site = lsite
        return lab

    @property
    def mode(self) -> str:
        return str(self.reg["mode"])

    @property
    def netplan(self) -> NetPlan | None:
        net = self.reg.get("net")
        if not net:
            return None
        return NetPlan(net["prefix"], net["bridge"], net["subnet"],
                       tuple(net.get("hosts", HOSTS)))

    @property
    def site(self) -> Site:
        """The lab's site (as rendered: lab addresses, paths, secrets dir)."""
        if self._site is None:
            self._site = load(self.reg["site_file"])
        return self._site

    def host_ns(self, host: str) -> str | None:
        return self.reg["hosts"][host]["netns"]  # type: ignore[no-any-return]

    def address(self, host: str) -> str:
        return str(self.reg["hosts"][host]["address"])

    def inside(self, host: str) -> contextlib.AbstractContextManager[None]:
        """Run a block from ``host``'s point of view (its namespace; nothing on loopback)."""
        return netns.entered(self.host_ns(host))

    # ------------------------------------------------------------------ up
    def up(self, progress: Callable[[str], None] = lambda _: None) -> list[str]:
        """Create the network, render and check the configs, start every process and wait
        until each is healthy. Returns the config check lines. On failure everything is
        torn down again and a :class:`LabError` says what failed."""
        from .run import check_rendered
        from .stack import LabStack

        old = self.read_registry(self.dir)
        if old is not None and old.get("state") != "down":
            raise LabError(f"a lab is up (or was left half-built) in {self.dir}: siprecctl "
                           f"lab down --dir {self.dir} first")
        self.reg["state"] = "starting"
        self.save()
        try:
            plan = self.netplan
            if plan is not None:
                progress(f"network: namespaces {', '.join(plan.namespaces())} on bridge "
                         f"{plan.bridge} ({plan.subnet})")

                def record(name: str) -> None:
                    self.reg["namespaces"].append(name)
                    self.save()

                netns.create(plan, record)
            stack = LabStack(self.site, self.dir, controller=False)
            checks = check_rendered(stack.render(), stack.cfgdir)
            self._site = stack.site
            progress(f"configs rendered and checked in {stack.cfgdir}")
            for name, spec in self.specs().items():
                self.start(name, spec)
                progress(f"{spec['host']}: {name} ({spec['kind']}) healthy")
            self.reg["state"] = "up"
            self.reg["up_at"] = time.time()
            self.save()
            return checks
        except BaseException:
            with contextlib.suppress(SiprecctlError, OSError):
                self.down()
            raise

    def specs(self) -> dict[str, dict[str, Any]]:
        """What runs where, in start order: name → host, kind, argv, workdir, log."""
        site, d = self.site, self.dir
        edge = site.edges[0]
        out: dict[str, dict[str, Any]] = {}

        def add(name: str, host: str, kind: str, argv: list[str], **extra: Any) -> None:
            out[name] = {"host": host, "kind": kind, "argv": argv,
                         "workdir": str(d / "procs" / name),
                         "log": str(d / "logs" / host / f"{name}.log"), **extra}

        for i, uri in enumerate(srs_uris(site)):
            host = f"srs{i + 1}"
            low, high = NETNS_SRS_RTP if self.mode == "netns" else BAND.srs_rtp[i]
            addr, port = self.address(host), _uri_port(uri)
            add(host, host, "srs", [sys.executable, "-m", "orchestrator.cli", "srs",
                                    "--listen", f"{addr}:{port}", "--transport", "udp,tcp",
                                    "--dir", str(d / "srs" / host), "--rtp-ports",
                                    f"{low}-{high}", "--name", host, "--json"],
                address=addr, port=port)
        callee_port = _uri_port(edge.trunk_default.uri)
        cwd = d / "sipp"
        add("callee", "callee", "callee",
            sipp.uas_argv(cwd, self.address("callee"), callee_port,
                          media_port=None if self.mode == "netns" else BAND.callee_mp),
            workdir=str(cwd), address=self.address("callee"), port=callee_port)
        cfg = d / "configs"
        for n in site.media.nodes:
            rtp = Rtpengine(cfg / "rtpengine" / n.name / "rtpengine.conf", d / "procs" / n.name,
                            ng=(n.ng.address, n.ng.port))
            add(n.name, "edge", "rtpengine", rtp.argv, ng=[n.ng.address, n.ng.port])
        kam = Kamailio(cfg / "kamailio" / edge.name / "kamailio.cfg", d / "procs" / edge.name,
                       run_dir=Path(edge.runtime_dir), shm_mb=edge.shm_mb, pkg_mb=edge.pkg_mb)
        add(edge.name, "edge", "kamailio", kam.argv)
        add("controller", "edge", "controller",
            [sys.executable, "-m", "orchestrator.cli", "serve", self.reg["site_file"]])
        return out

    def argv_in(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host`` (as is on loopback)."""
        ns = self.host_ns(host)
        # ip netns exec setns()es and then execs the daemon: the pid is the daemon's (a
        # pyroute2 setns in a pre-exec hook would do the same, but preexec_fn is unsafe in
        # a process with threads, and `ip netns exec` is what an operator types)
        return (["ip", "netns", "exec", ns] if ns else []) + list(argv)

    def start(self, name: str, spec: dict[str, Any] | None = None,
              timeout: float = 20.0) -> None:
        """Start process ``name`` (again) in its host and wait until it is healthy."""
        spec = dict(spec or self.reg["processes"][name])
        Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
        for sub in ("recordings", "srs/srs1", "srs/srs2"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for n in self.site.media.nodes:
            (self.dir / "recordings" / n.name).mkdir(parents=True, exist_ok=True)
        for e in self.site.edges:
            Path(e.runtime_dir).mkdir(parents=True, exist_ok=True)
            # flatstore appends to files in an existing directory
            Path(self.site.accounting.edge_dir(e.name)).mkdir(mode=0o700, parents=True,
                                                              exist_ok=True)
        if name == "callee":
            sipp.workdir(Path(spec["workdir"]))
        env = env_file(Path(spec["env_file"])) if spec.get("env_file") else None
        d = Daemon(self.argv_in(spec["host"], spec["argv"]), Path(spec["workdir"]), name=name,
                   log_path=Path(spec["log"]), env=env)
        d.start()
        assert d.pid is not None
        # recorded before we wait, so a crash now still leaves it to `lab down`
        spec.update(pid=d.pid, start=_proc_start(d.pid), started_at=time.time())
        self.reg["processes"][name] = spec
        if name not in self.reg["order"]:
            self.reg["order"].append(name)
        self.save()
        self._daemons[name] = d
        deadline = time.monotonic() + timeout
        while True:
            if not proc_alive(spec):
                raise LabError(f"{name} on {spec['host']} exited during start-up: "
                               f"{d.log_errors()} (log: {spec['log']})")
            ok, detail = self.health(name)
            if ok:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{name} on {spec['host']} not healthy after {timeout:.0f} s: "
                               f"{detail} (log: {spec['log']})")
            time.sleep(0.1)

    def stop(self, name: str, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop process ``name`` (SIGTERM, or SIGKILL with ``kill``)."""
        rec = self.reg["processes"].get(name)
        if rec is None:
            return
        d = self._daemons.pop(name, None)
        if d is not None and d.pid == rec.get("pid"):
            d.stop(timeout, kill=kill)  # our child: stop and reap it
        else:
            _stop_pid(rec, timeout, kill)

    def restart(self, name: str, *, kill: bool = False) -> None:
        self.stop(name, kill=kill)
        self.start(name)

    # ------------------------------------------------------------------ health
    def health(self, name: str) -> tuple[bool, str]:
        """(healthy, what was checked) for process ``name``."""
        from ..render.check import sip_options_ok

        rec = self.reg["processes"][name]
        if not proc_alive(rec):
            return False, "not running"
        kind, host = rec["kind"], rec["host"]
        try:
            with self.inside(host):
                if kind == "rtpengine":
                    ok = ng_ping(rec["ng"][0], int(rec["ng"][1]), timeout=0.5)
                    return ok, "NG ping answered" if ok else "no answer to NG ping"
                if kind == "kamailio":
                    return self._kamailio_health()
                if kind == "controller":
                    return self._controller_health()
                if kind == "srs":
                    ok = sip_options_ok(rec["address"], rec["port"], timeout=1.0)
                    return ok, (f"SIP OPTIONS answered at {rec['address']}:{rec['port']}" if ok
                                else f"no answer to OPTIONS at {rec['address']}:{rec['port']}")
            if kind == "callee":
                ok = _udp_bound(int(rec["pid"]), rec["address"], rec["port"])
                return ok, f"{'listening' if ok else 'not listening'} on " \
                           f"{rec['address']}:{rec['port']}"
        except (SiprecctlError, OSError) as exc:
            return False, str(exc)
        return True, "running"

    def _kamailio_health(self) -> tuple[bool, str]:
        from ..kamailio.rpc import HttpRpcTransport, KamailioClient
        from ..render.check import sip_options_ok

        site = self.site
        edge = site.edges[0]
        with KamailioClient(HttpRpcTransport.for_edge(site, edge), timeout=2) as rpc:
            version = rpc.version().strip()
        udp = next((ls for ls in edge.listen if ls.proto == "udp"), None)
        if udp is not None and not sip_options_ok(udp.address, udp.port, timeout=1.0):
            return False, f"JSON-RPC answers ({version}); no answer to SIP OPTIONS"
        return True, f"JSON-RPC answers ({version}), SIP OPTIONS answered"

    def _controller_health(self) -> tuple[bool, str]:
        from ..daemons import tcp_open

        api = self.site.controller.api
        if not tcp_open(api.address, api.port):
            return False, f"API not listening on {api.address}:{api.port}"
        h = self.api("GET", "/health", timeout=3)
        edges = h.get("edges", {}) if isinstance(h, dict) else {}
        ok = bool(edges) and all(edges.values())
        srs_up = h.get("srs", {}) if isinstance(h, dict) else {}
        up = ", ".join(f"{k.split('@')[-1]} {'up' if v else 'DOWN'}"
                       for k, v in sorted(srs_up.items())) if isinstance(srs_up, dict) else ""
        return ok, (f"API answers, evapi {'connected' if ok else 'NOT connected'}"
                    + (f"; SRS {up}" if up else ""))

    def status(self) -> list[ProcStatus]:
        out = []
        for name in self.reg["order"]:
            rec = self.reg["processes"][name]
            running = proc_alive(rec)
            ok, detail = self.health(name) if running else (False, "not running")
            usage = proc_usage(int(rec["pid"])) if running else None
            out.append(ProcStatus(name, rec["host"], rec["kind"], rec.get("pid"), running, ok,
                                  detail, round(usage[0], 2) if usage else None,
                                  round(usage[1], 1) if usage else None))
        return out

    def hosts(self) -> list[dict[str, Any]]:
        """Each host: namespace (present?), address, link state, its processes."""
        plan = self.netplan
        out = []
        for h in self.reg["hosts"]:
            ns = self.host_ns(h)
            present = bool(netns.existing([ns])) if ns else None
            link = netns.link_up(plan, h) if plan and present else None
            out.append({"host": h, "netns": ns, "present": present,
                        "address": self.address(h), "link_up": link,
                        "processes": [n for n in self.reg["order"]
                                      if self.reg["processes"][n]["host"] == h]})
        return out

    # ------------------------------------------------------------------ talking to it
    def call_targets(self) -> list[tuple[str, str]]:
        """(edge name, ``address:port`` of its UDP SIP listener) of every edge."""
        out = []
        for e in self.site.edges:
            udp = next((ls for ls in e.listen if ls.proto == "udp"), e.listen[0])
            out.append((e.name, f"{udp.address}:{udp.port}"))
        return out

    @contextlib.contextmanager
    def store(self) -> Iterator[Any]:
        """The controller's state store, read-only (None while it has none yet)."""
        from ..controller.store import SessionStore

        path = Path(self.site.controller.store)
        if not path.exists():
            yield None
            return
        store = SessionStore(path, readonly=True)
        try:
            yield store
        finally:
            store.close()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
        """The controller's API (operator token), from the edge host."""
        from ..controller.client import api_request, api_target

        with self.inside("edge"):
            status, doc = api_request(api_target(self.site), method, path, body,
                                      timeout=timeout)
        if status >= 400 and isinstance(doc, dict):
            doc["status"] = status
        return doc

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value}."""
        out: dict[str, float] = {}
        for line in str(self.api("GET", "/metrics")).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    @contextlib.contextmanager
    def events(self) -> Iterator[Any]:
        """An evapi observer of the edge (:class:`~.events.EventReader`), closed after."""
        from .events import EventReader

        with self.inside("edge"):  # its reader thread inherits the namespace
            reader = EventReader.for_edge(self.site, self.site.edges[0])
            reader.start()
        try:
            yield reader
        finally:
            reader.close()

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Stop every process (controller first, SRSs last, so they write their session
        records), remove the namespaces; what was done, as lines. Idempotent."""
        done: list[str] = []
        for name in reversed(self.reg.get("order", [])):
            rec = self.reg["processes"][name]
            if proc_alive(rec):
                self.stop(name)
                done.append(f"stopped {name} (pid {rec['pid']}) on {rec['host']}")
        names = list(dict.fromkeys(self.reg.get("namespaces", [])))
        plan = self.netplan
        if plan is not None:  # also those created before the registry said so
            names += [n for n in plan.namespaces() if n not in names]
        done += [f"removed network namespace {n}" for n in netns.destroy(names)]
        self.reg["state"] = "down"
        self.reg["down_at"] = time.time()
        self.save()
        return done


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's ``EnvironmentFile=`` reads the rendered ones."""
    out = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"{path}: {exc.strerror}") from exc
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def lab_down(labdir: Path, site: Site | None = None) -> list[str]:
    """``siprecctl lab down``: tear down the lab of ``labdir`` whatever state it is in;
    with no registry there, remove the namespaces ``site``'s lab section names, if any
    (leftovers of a lab whose directory is gone)."""
    reg = Lab.read_registry(labdir)
    if reg is not None:
        return Lab.of(labdir, reg).down()
    if site is None or netns.unavailable():
        return []
    plan = NetPlan.from_settings(site.lab)
    return [f"removed network namespace {n}" for n in netns.destroy(plan.namespaces())]
