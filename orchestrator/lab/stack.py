"""The whole recording system as local processes: rtpengine nodes, one Kamailio edge, the
reference SRSs (in this process) and the controller (``siprecctl serve``, a child process,
so it can be killed and restarted like in production)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..controller.client import api_request, api_target
from ..daemons import Daemon, Kamailio, Rtpengine, tcp_open
from ..errors import LabError
from ..render import Rendered, ensure_secrets, render_site, write
from ..site import Site, validate_data
from .srs import SrsConfig, SrsServer

__all__ = ["LabStack"]

_LAB_MARK = "# written by siprecctl lab (the site the lab's controller reads)\n"


class LabStack:
    """Start with :meth:`start` (or as a context manager); stop with :meth:`stop`."""

    def __init__(self, site: Site, workdir: Path, *, srs: Iterable[SrsConfig] = (),
                 controller: bool = True) -> None:
        # the lab's secrets live in its workdir (created at render, like an operator's)
        data = site.model_dump(mode="json", exclude_none=True)
        data["security"] = {"secrets_dir": str(Path(workdir).resolve() / "secrets")}
        # ... and so do the edge's call records (Kamailio's acc writes there; README "Audit")
        data["accounting"] = {"dir": str(Path(workdir).resolve() / "accounting")}
        site = validate_data(data, file="<lab site>")
        self.site = site
        self.edge = site.edges[0]
        self.workdir = Path(workdir)
        self.srs_configs = list(srs)
        self.with_controller = controller
        self.srs: dict[str, SrsServer] = {}
        self.daemons: list[Rtpengine | Kamailio] = []
        self.controller_proc: Daemon | None = None
        self.site_file = self.workdir / "site.yaml"
        self.cfgdir = self.workdir / "configs"
        self.rendered: list[Rendered] | None = None
        self.controller_log = self.workdir / "logs" / "controller.log"
        self.store = self.workdir / "controller.sqlite"  # the lab's own, never the site's
        self.rec_dirs = {n.name: self.workdir / "recordings" / n.name for n in site.media.nodes}

    # ------------------------------------------------------------------ lifecycle
    def render(self) -> list[Rendered]:
        """Write the site's configs to ``configs/`` (and the site file the controller
        reads); :meth:`start` does it when nobody did before."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rendered = render_site(self.site)
        write(self.cfgdir, self.rendered, site=self.site)
        ensure_secrets(self.site)
        text = _LAB_MARK + yaml.safe_dump(self.site.model_dump(mode="json", exclude_none=True))
        if self.site_file.exists() and not self.site_file.read_text(
                errors="replace").startswith(_LAB_MARK):
            raise LabError(f"{self.site_file} exists and was not written by the lab: choose "
                           "another workdir")
        self.site_file.write_text(text)
        return self.rendered

    def start(self) -> LabStack:
        if len(self.site.edges) != 1:  # (rendering serves the scale lab's several edges)
            raise LabError("the lab stack runs sites with exactly one edge")
        if self.rendered is None:
            self.render()
        cfgdir = self.cfgdir
        try:
            for n in self.site.media.nodes:
                self.rec_dirs[n.name].mkdir(parents=True, exist_ok=True)
                self.daemons.append(Rtpengine(
                    cfgdir / "rtpengine" / n.name / "rtpengine.conf",
                    self.workdir / "logs" / n.name, ng=(n.ng.address, n.ng.port),
                    overrides=[f"--recording-dir={self.rec_dirs[n.name]}"]))
            e = self.edge
            # flatstore appends to files in an existing directory; the records are evidence
            Path(self.site.accounting.edge_dir(e.name)).mkdir(mode=0o700, parents=True,
                                                              exist_ok=True)
            self.daemons.append(Kamailio(cfgdir / "kamailio" / e.name / "kamailio.cfg",
                                         self.workdir / "logs" / e.name,
                                         run_dir=self.workdir / "run" / e.name,
                                         ready_tcp=(e.jsonrpc.address, e.jsonrpc.port),
                                         shm_mb=e.shm_mb, pkg_mb=e.pkg_mb))
            for d in self.daemons:
                d.start()
                d.wait_ready(15)
            for cfg in self.srs_configs:
                server = SrsServer(cfg)
                server.start()
                self.srs[cfg.name] = server
            if self.with_controller:
                self.start_controller()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> LabStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_controller()
        for server in self.srs.values():
            server.stop()
        self.srs.clear()
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()

    # ------------------------------------------------------------------ the controller
    @property
    def api_url(self) -> str:
        api = self.site.controller.api
        return f"{'https' if api.tls else 'http'}://{api.address}:{api.port}"

    def start_controller(self, timeout: float = 15.0) -> None:
        """``siprecctl serve`` on the site file; returns once its API answers."""
        self.controller_proc = Daemon(
            [sys.executable, "-m", "orchestrator.cli", "serve", str(self.site_file),
             "--store", str(self.store)],
            self.workdir, name="controller", log_path=self.controller_log,
            ready=self._controller_ready)
        self.controller_proc.start()
        self.controller_proc.wait_ready(timeout)

    def _controller_ready(self) -> bool:
        api = self.site.controller.api
        if not tcp_open(api.address, api.port):
            return False
        health = self.api("GET", "/health")
        return all(health.get("edges", {}).values())

    def stop_controller(self, *, kill: bool = False) -> None:
        if self.controller_proc is not None:
            self.controller_proc.stop(10.0, kill=kill)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0, *, role: str = "operator") -> Any:
        """Call the controller's HTTP API with the site's ``role`` token; returns the JSON
        (errors too, with ``status``)."""
        target = api_target(self.site, role=role, url=self.api_url)
        status, doc = api_request(target, method, path, body, timeout=timeout)
        if status >= 400 and isinstance(doc, dict):
            doc["status"] = status
        return doc

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value}."""
        out: dict[str, float] = {}
        for line in str(self.api("GET", "/metrics")).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    @property
    def sip(self) -> tuple[str, int]:
        listen = self.edge.listen[0]
        return listen.address, listen.port
