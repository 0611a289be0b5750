"""The scale topology of the lab (README "The scale lab, drills and benchmark"): a site
with several edges or a controller pair (``examples/lab-scale.yaml``) gets one network
namespace per host::

    caller, callee          sipp
    <edge> ...              Kamailio, one host per edge of the site
    <node> ...              rtpengine, one host per node (replicating through Redis)
    redis                   redis-server from the rendered redis/redis.conf
    <instance> ...          siprecctl serve --redis ... --instance <instance>
    srs1, srs2              the reference SRS

Host ``i`` in that order gets the lab subnet's address ``i + 2``. The site is placed in the
lab as :func:`.hosts.lab_site` does for the single box: each component gets its host's
address, paths go under the lab directory; ports, weights, sets, databases, the policy
and everything else stay as in the site file. Only network namespaces: there is no
loopback fallback for this topology (several daemons on one port need several hosts).
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..daemons import REDIS_BIN, Kamailio, Rtpengine, redis_main_conf
from ..errors import LabError, SiprecctlError
from ..site import Site, validate_data
from . import netns, sipp
from .hosts import NETNS_SRS_RTP, Lab, _uri_port, _uri_with, proc_alive, srs_uris
from .netns import NetPlan

__all__ = ["ScaleLab", "is_scale", "scale_hosts", "scale_lab_site"]

LEASE_TTL = 2.0  # serve's default, said explicitly: the drills' takeover bound rests on it


def is_scale(site: Site) -> bool:
    """Does ``site`` need the scale topology (several edges, or a controller pair)?"""
    return len(site.edges) > 1 or bool(site.controller.instances)


def scale_hosts(site: Site) -> tuple[str, ...]:
    """The lab's hosts for ``site``, in address order."""
    hosts = ("caller", "callee", *(e.name for e in site.edges),
             *(n.name for n in site.media.nodes), "redis",
             *(i.name for i in site.controller.instances), "srs1", "srs2")
    dup = sorted({h for h in hosts if hosts.count(h) > 1})
    if dup:
        raise LabError(f"the scale lab names a host after each edge, node and controller "
                       f"instance: {', '.join(dup)} named twice")
    for h in hosts:
        if len(h) > 15:  # the switch's port is named after the host (IFNAMSIZ)
            raise LabError(f"host name {h!r}: at most 15 characters in the scale lab")
    return hosts


def scale_lab_site(site: Site, labdir: Path, plan: NetPlan) -> Site:
    """``site`` placed on the hosts of ``plan``, its paths under ``labdir``."""
    if site.redis is None:
        raise LabError("the scale lab needs the site's redis: section (the pair's state "
                       "and rtpengine's replication)")
    if len(site.controller.instances) not in (0, 2):
        raise LabError("the scale lab runs one controller or an active/standby pair")
    labdir = labdir.resolve()
    data: dict[str, Any] = site.model_dump(mode="json", exclude_none=True)
    callee = plan.address("callee")
    for e in data["edges"]:
        addr = plan.address(e["name"])
        for ls in e["listen"]:
            ls["address"] = addr
            ls.pop("advertise", None)
        for t in e["trunks"]:
            t["uri"] = _uri_with(t["uri"], callee)
        # the controllers reach JSON-RPC and evapi across the lab network (authenticated)
        e["jsonrpc"].update(address=addr, allow=[plan.subnet])
        e["evapi"]["address"] = addr
        e["run_dir"] = str(labdir / "run" / e["name"])
    for n in data["media"]["nodes"]:
        addr = plan.address(n["name"])
        n["ng"]["address"] = addr
        for itf in n["interfaces"]:
            itf["address"] = addr
            itf.pop("advertised", None)
    data["redis"]["address"] = plan.address("redis")
    data["redis"].pop("auth_file", None)  # the lab's own secret, in its secrets dir
    for inst in data["controller"]["instances"]:
        inst["api"]["address"] = plan.address(inst["name"])
    uris = srs_uris(site)
    new_uri = {u: _uri_with(u, plan.address(f"srs{i + 1}")) for i, u in enumerate(uris)}
    for g in data["recording"]["srs_groups"]:
        for s in g["servers"]:
            s["uri"] = new_uri[s["uri"]]
    data["media"]["recording"]["dir"] = str(labdir / "recordings")
    data["controller"]["store"] = str(labdir / "controller.sqlite")
    data["security"] = {"secrets_dir": str(labdir / "secrets")}
    return validate_data(data, file="<scale lab site>")


class _Readers:
    """Event readers of several edges seen as one (``events``: all of them)."""

    def __init__(self, readers: list[Any]) -> None:
        self.readers = readers

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.readers for e in list(r.events)]

    @property
    def reconnects(self) -> int:
        return sum(r.reconnects for r in self.readers)

    def close(self) -> None:
        for r in self.readers:
            r.close()


class ScaleLab(Lab):
    """The scale topology (see the module docstring); everything else as :class:`Lab`."""

    @classmethod
    def plan_scale(cls, site: Site, labdir: Path, mode: str = "auto") -> ScaleLab:
        why = netns.unavailable()
        if mode == "loopback" or why:
            raise LabError("the scale topology runs in network namespaces only"
                           + (f", and they cannot be used here: {why}" if why else ""))
        hosts = scale_hosts(site)
        net = ipaddress.IPv4Network(site.lab.subnet)
        if net.num_addresses < len(hosts) + 3:
            raise LabError(f"lab.subnet {site.lab.subnet}: too small for the "
                           f"{len(hosts)} hosts of the scale lab")
        plan = NetPlan(site.lab.netns_prefix, site.lab.bridge, site.lab.subnet, hosts)
        labdir = Path(labdir).resolve()
        lsite = scale_lab_site(site, labdir, plan)
        reg: dict[str, Any] = {
            "version": 1, "state": "planned", "mode": "netns", "topology": "scale",
            "fallback_reason": None, "site": site.name,
            "site_file": str(labdir / "site.yaml"),
            "net": {"prefix": plan.prefix, "bridge": plan.bridge, "subnet": plan.subnet,
                    "hosts": list(hosts)},
            "namespaces": [], "hosts": {h: {"netns": plan.netns(h), "address": plan.address(h)}
                                        for h in hosts},
            "processes": {}, "order": [], "caller": {"port": 5060, "media_port": None},
            "created_at": time.time(),
        }
        lab = cls(labdir, reg)
        lab._site = lsite
        return lab

    @property
    def instances(self) -> list[str]:
        return [i.name for i in self.site.controller.instances] or ["controller"]

    # ------------------------------------------------------------------ processes
    def specs(self) -> dict[str, dict[str, Any]]:
        from ..site.secrets import rtpengine_redis_env_path

        site, d = self.site, self.dir
        cfg = d / "configs"
        out: dict[str, dict[str, Any]] = {}
        redis = site.redis
        assert redis is not None

        def add(name: str, host: str, kind: str, argv: list[str], **extra: Any) -> None:
            out[name] = {"host": host, "kind": kind, "argv": argv,
                         "workdir": str(d / "procs" / name),
                         "log": str(d / "logs" / host / f"{name}.log"), **extra}

        for i, uri in enumerate(srs_uris(site)):
            host = f"srs{i + 1}"
            addr, port = self.address(host), _uri_port(uri)
            low, high = NETNS_SRS_RTP
            add(host, host, "srs", [sys.executable, "-m", "orchestrator.cli", "srs",
                                    "--listen", f"{addr}:{port}", "--transport", "udp,tcp",
                                    "--dir", str(d / "srs" / host), "--rtp-ports",
                                    f"{low}-{high}", "--name", host, "--json"],
                address=addr, port=port)
        callee_port = _uri_port(site.edges[0].trunk_default.uri)
        add("callee", "callee", "callee",
            sipp.uas_argv(d / "sipp", self.address("callee"), callee_port),
            workdir=str(d / "sipp"), address=self.address("callee"), port=callee_port)
        rdir = d / "redis"
        (rdir / "data").mkdir(parents=True, exist_ok=True)
        main = rdir / "redis-main.conf"
        main.write_text(redis_main_conf(rdir / "data", cfg / "redis" / "redis.conf"))
        add("redis", "redis", "redis", [REDIS_BIN, str(main)],
            address=redis.address, port=redis.port)
        for n in site.media.nodes:
            rtp = Rtpengine(cfg / "rtpengine" / n.name / "rtpengine.conf", d / "procs" / n.name,
                            ng=(n.ng.address, n.ng.port))
            add(n.name, n.name, "rtpengine", rtp.argv, ng=[n.ng.address, n.ng.port],
                env_file=str(rtpengine_redis_env_path(site)) if n.redis else None)
        for e in site.edges:
            kam = Kamailio(cfg / "kamailio" / e.name / "kamailio.cfg", d / "procs" / e.name,
                           run_dir=Path(e.runtime_dir), shm_mb=e.shm_mb, pkg_mb=e.pkg_mb)
            add(e.name, e.name, "kamailio", kam.argv, edge=e.name)
        for inst in site.controller.instances:
            add(inst.name, inst.name, "controller", self.serve_argv(inst.name),
                address=inst.api.address, port=inst.api.port)
        return out

    def serve_argv(self, instance: str) -> list[str]:
        """``siprecctl serve`` of one instance of the pair, as README "Scaling out" runs it."""
        site = self.site
        redis = site.redis
        assert redis is not None
        inst = next(i for i in site.controller.instances if i.name == instance)
        return [sys.executable, "-m", "orchestrator.cli", "serve", self.reg["site_file"],
                "--redis", f"{redis.address}:{redis.port}",
                "--redis-password-file", site.redis_auth_file,
                "--redis-db", str(redis.controller_db), "--instance", instance,
                "--api", f"{inst.api.address}:{inst.api.port}",
                "--lease-ttl", f"{LEASE_TTL:g}"]

    def start(self, name: str, spec: dict[str, Any] | None = None,
              timeout: float = 20.0) -> None:
        for e in self.site.edges:  # Kamailio's acc appends to files in an existing dir
            Path(self.site.accounting.edge_dir(e.name)).mkdir(mode=0o700, parents=True,
                                                              exist_ok=True)
        super().start(name, spec, timeout)

    # ------------------------------------------------------------------ health
    def health(self, name: str) -> tuple[bool, str]:
        rec = self.reg["processes"][name]
        if not proc_alive(rec):
            return False, "not running"
        kind = rec["kind"]
        try:
            with self.inside(rec["host"]):
                if kind == "redis":
                    ok = self._redis_ping()
                    return ok, "PING answered (authenticated)" if ok else "no answer to PING"
                if kind == "kamailio":
                    return self._edge_health(rec["edge"])
                if kind == "controller":
                    return self._instance_health(name)
        except (SiprecctlError, OSError) as exc:
            return False, str(exc)
        return super().health(name)

    def _redis_client(self, db: int | None = None) -> Any:
        import redis

        from ..site.secrets import load_secret

        r = self.site.redis
        assert r is not None
        return redis.Redis(host=r.address, port=r.port,
                           db=r.controller_db if db is None else db,
                           password=load_secret(self.site.redis_auth_file),
                           socket_timeout=2, socket_connect_timeout=2)

    def _redis_ping(self) -> bool:
        import redis

        client = self._redis_client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _edge_health(self, edge_name: str) -> tuple[bool, str]:
        from ..kamailio.rpc import HttpRpcTransport, KamailioClient
        from ..render.check import sip_options_ok

        site = self.site
        edge = next(e for e in site.edges if e.name == edge_name)
        with KamailioClient(HttpRpcTransport.for_edge(site, edge), timeout=2) as rpc:
            version = rpc.version().strip()
        udp = next((ls for ls in edge.listen if ls.proto == "udp"), None)
        if udp is not None and not sip_options_ok(udp.address, udp.port, timeout=1.0):
            return False, f"JSON-RPC answers ({version}); no answer to SIP OPTIONS"
        return True, f"JSON-RPC answers ({version}), SIP OPTIONS answered"

    def instance_health(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """``/health`` of controller instance ``name`` (None when it does not answer)."""
        from ..controller.client import api_request, api_target
        from ..errors import ControllerUnreachable

        rec = self.reg["processes"].get(name)
        if rec is None:
            return None
        target = api_target(self.site, url=f"http://{rec['address']}:{rec['port']}")
        try:
            with self.inside(rec["host"]):
                status, doc = api_request(target, "GET", "/health", timeout=timeout)
        except (ControllerUnreachable, OSError):
            return None
        return doc if status == 200 and isinstance(doc, dict) else None

    def _instance_health(self, name: str) -> tuple[bool, str]:
        h = self.instance_health(name)
        if h is None:
            return False, "API does not answer"
        edges = h.get("edges", {})
        ok = bool(edges) and all(edges.values())
        lead = h.get("leader") or {}
        role = (f"LEADS (epoch {lead.get('epoch')})" if lead.get("acting") else "standby")
        down = [e for e, up in edges.items() if not up]
        return ok, (f"API answers, {role}, evapi to {len(edges)} edges "
                    + ("connected" if ok else f"NOT connected: {', '.join(down)}"))

    def pair(self) -> list[dict[str, Any]]:
        """Each controller instance: running, acting (leads), its epoch, edges connected;
        ``lease`` says who holds the lease in Redis and its epoch."""
        out = []
        for name in self.instances:
            rec = self.reg["processes"].get(name, {})
            h = self.instance_health(name) if proc_alive(rec) else None
            lead = (h or {}).get("leader") or {}
            out.append({"instance": name, "host": rec.get("host"), "running": proc_alive(rec),
                        "acting": bool(lead.get("acting")), "epoch": lead.get("epoch"),
                        "edges": (h or {}).get("edges"),
                        "open_sessions": (h or {}).get("open_sessions")})
        return out

    def lease(self) -> dict[str, Any]:
        """Who holds the pair's lease in Redis, and the fencing epoch."""
        prefix = f"siprecctl:{self.site.name}:"
        try:
            with self.inside("redis"):
                client = self._redis_client()
                try:
                    holder, epoch = client.get(prefix + "leader"), client.get(prefix + "epoch")
                finally:
                    client.close()
        except Exception as exc:  # noqa: BLE001 - shown, not raised: status still works
            return {"holder": None, "epoch": None, "error": str(exc)}
        return {"holder": holder.decode() if holder else None,
                "epoch": int(epoch) if epoch else None}

    def nodes(self) -> list[dict[str, Any]]:
        """Each rtpengine node: set, weight, its Redis database and peers, the keys its
        database holds now (its calls, kept until ``redis-expires``; ``None`` when Redis
        does not answer)."""
        out = []
        for n in self.site.media.nodes:
            keys: int | None = None
            if n.redis is not None:
                try:
                    with self.inside("redis"):
                        client = self._redis_client(n.redis.db)
                        try:
                            keys = int(client.dbsize())
                        finally:
                            client.close()
                except Exception:  # noqa: BLE001 - shown as unknown: status still works
                    keys = None
            rec = self.reg["processes"].get(n.name, {})
            out.append({"node": n.name, "set": n.set, "weight": n.weight,
                        "ng": f"{n.ng.address}:{n.ng.port}", "running": proc_alive(rec),
                        "redis_db": n.redis.db if n.redis else None,
                        "peers": list(n.redis.peers) if n.redis else [],
                        "keys_in_db": keys})
        return out

    def leader(self) -> str | None:
        """The instance that acts now (None: nobody)."""
        acting = [p["instance"] for p in self.pair() if p["acting"]]
        if len(acting) > 1:
            raise LabError(f"two controllers act at once: {', '.join(acting)}")
        return acting[0] if acting else None

    # ------------------------------------------------------------------ talking to it
    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
        """The acting controller's API (the first instance's while nobody leads)."""
        from ..controller.client import api_request, api_target

        name = self.leader() or self.instances[0]
        rec = self.reg["processes"][name]
        with self.inside(rec["host"]):
            status, doc = api_request(api_target(self.site, url=f"http://{rec['address']}:"
                                                            f"{rec['port']}"),
                                      method, path, body, timeout=timeout)
        if status >= 400 and isinstance(doc, dict):
            doc["status"] = status
        return doc

    @contextlib.contextmanager
    def events(self) -> Iterator[Any]:
        """Observers of every edge's evapi (from the caller host), closed after."""
        from .events import EventReader

        readers: list[Any] = []
        try:
            with self.inside("caller"):  # reader threads inherit the namespace
                for e in self.site.edges:
                    r = EventReader.for_edge(self.site, e)
                    r.start()
                    readers.append(r)
            yield _Readers(readers)
        finally:
            _Readers(readers).close()

    @contextlib.contextmanager
    def store(self) -> Iterator[Any]:
        """The pair's Redis store, read-only in practice (a reader never holds the lease,
        so the store's fence refuses any write)."""
        from ..controller.redis_store import Fence, RedisStore

        if self.reg.get("state") == "down":
            raise LabError("the scale lab keeps its sessions in its Redis, which runs while "
                           "the lab is up: siprecctl lab report while it is up")
        with self.inside("redis"):
            client = self._redis_client()
            store = RedisStore(client, self.site.name, Fence("lab-reader"))
            try:
                yield store
            finally:
                client.close()
