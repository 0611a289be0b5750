"""systemd units for production hosts, rendered with the configs (README "Service units").

One unit per Kamailio edge and per rtpengine node, and one for the controller::

    systemd/siprecctl-kamailio-<edge>.service
    systemd/siprecctl-rtpengine-<node>.service
    systemd/siprecctl-controller.service

Each runs its daemon in the foreground on the rendered config, restarts it on failure, and
confines it (read-only system, private /tmp and devices, no new privileges, only the
directories it writes opened). Secrets reach a unit as systemd credentials: systemd reads
the site's files (root, 0600) and shows the unit only its own, at the same paths, in place
of the secrets directory (``LoadCredential=`` + ``BindReadOnlyPaths=%d:…``).

The units assume the layout the README installs: configs rendered into :data:`CONFIG_DIR`
(``siprecctl render SITE -o /etc/siprecctl``), the site file at :data:`SITE_FILE`, siprecctl
in a virtual environment at :data:`SIPRECCTL_BIN`, Kamailio and rtpengine from Debian (their
``kamailio`` and ``rtpengine`` users), and a ``siprecctl`` system user for the controller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..daemons import KAMAILIO_BIN, RTPENGINE_BIN
from ..errors import RenderError
from ..site import secrets as site_secrets
from ..site.model import Site

__all__ = ["CONFIG_DIR", "CONTROLLER_USER", "SIPRECCTL_BIN", "SITE_FILE", "UnitFile",
           "render_units", "unit_name"]

CONFIG_DIR = "/etc/siprecctl"
SITE_FILE = f"{CONFIG_DIR}/site.yaml"
SIPRECCTL_BIN = "/opt/siprecctl/bin/siprecctl"
CONTROLLER_USER = "siprecctl"
INSTALL_BIN = "/usr/bin/install"
# systemd would read '%' as a specifier, '$' as a variable, and split at white space or
# ':' (BindReadOnlyPaths=); paths with other characters are refused rather than escaped
_PLAIN_PATH_RE = re.compile(r"^/[A-Za-z0-9._+@/-]*$")


@dataclass(frozen=True)
class UnitFile:
    """One rendered unit: its file name, the template and the template's context."""

    name: str
    template: str
    owner: str
    context: dict[str, Any]


def unit_name(kind: str, name: str = "") -> str:
    """``siprecctl-controller.service``, ``siprecctl-kamailio-<edge>.service``,
    ``siprecctl-rtpengine-<node>.service``."""
    return "siprecctl-controller.service" if kind == "controller" \
        else f"siprecctl-{kind}-{name}.service"


def _path(value: str, where: str) -> str:
    p = str(PurePosixPath(value))
    if not _PLAIN_PATH_RE.match(p) or "/../" in p + "/":
        raise RenderError(f"{where}: '{value}' cannot go into a systemd unit (an absolute path "
                          "of letters, digits and . _ + @ - / only)")
    return p


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _writable(path: str, user: str, mode: str = "0750") -> list[str]:
    """Unit lines that give the daemon ``path`` to write: systemd's own directory settings
    under /run and /var/lib (created and owned for the unit's user), elsewhere created
    before start (``+``: as root, outside the sandbox) and opened in the read-only system."""
    for top, key in (("/run", "RuntimeDirectory"), ("/var/lib", "StateDirectory")):
        if path.startswith(top + "/"):
            rel = path[len(top) + 1:]
            return [f"{key}={rel}", f"{key}Mode={mode}"]
    return [f"ExecStartPre=+{INSTALL_BIN} -d -o {user} -g {user} -m {mode} {path}",
            f"ReadWritePaths={path}"]


def _credentials(site: Site, files: list[str], hidden: list[tuple[str, str]]) -> list[str]:
    """LoadCredential= for each of ``files`` (in the secrets dir) and the bind that shows
    them, alone, as the secrets dir; ``hidden`` (key path, path) must not lie inside it."""
    secrets_dir = _path(site.security.secrets_dir, "security.secrets_dir")
    for where, path in hidden:
        if _under(path, secrets_dir):
            raise RenderError(f"{where}: '{path}' is inside security.secrets_dir "
                              f"({secrets_dir}), which the systemd units replace by the "
                              "unit's own secrets")
    lines = []
    for f in files:
        name = PurePosixPath(f).name
        lines.append(f"LoadCredential={name}:{_path(f, 'security.secrets_dir')}")
    lines.append(f"BindReadOnlyPaths=%d:{secrets_dir}")
    return lines


def _low_ports(ports: list[int]) -> str:
    """The capability a unit needs for its listeners (none above 1023)."""
    return "CAP_NET_BIND_SERVICE" if any(p < 1024 for p in ports) else ""


def _secret_files_of_edge(site: Site, edge: str) -> list[str]:
    return [str(site_secrets.evapi_secret_path(site, edge)),
            str(site_secrets.jsonrpc_secret_path(site, edge)),
            str(site_secrets.kamailio_include_path(site, edge))]


def _tls_in_secrets(site: Site, tls: Any) -> list[str]:
    """A TLS certificate/key kept in the secrets dir goes in as a credential too."""
    if tls is None:
        return []
    secrets_dir = str(PurePosixPath(site.security.secrets_dir))
    return [p for p in (tls.certificate, tls.private_key)
            if _under(str(PurePosixPath(p)), secrets_dir)]


def render_units(site: Site, source_digest: str) -> list[UnitFile]:
    """The site's units (see the module docstring), in a stable order: edges, nodes,
    controller."""
    units: list[UnitFile] = []
    node_units = {n.name: unit_name("rtpengine", n.name) for n in site.media.nodes}
    common = dict(site=site, source_digest=source_digest)
    for ei, edge in enumerate(site.edges):
        where = f"edges[{ei}]"
        cfg = f"{CONFIG_DIR}/kamailio/{edge.name}/kamailio.cfg"
        run_dir = _path(edge.runtime_dir, f"{where}.run_dir")
        include = str(site_secrets.kamailio_include_path(site, edge.name))
        ports = [ls.port for ls in edge.listen] + [edge.jsonrpc.port, edge.evapi.port]
        argv = [KAMAILIO_BIN, "-DD", "-E", "-f", cfg, "-Y", run_dir,
                "-m", str(edge.shm_mb), "-M", str(edge.pkg_mb)]
        units.append(UnitFile(unit_name("kamailio", edge.name), "systemd/kamailio.service.j2",
                              edge.name, dict(
            common, edge=edge, exec_start=" ".join(argv),
            after=[node_units[n.name] for n in site.nodes_in_set(edge.media_set)],
            writable=_writable(run_dir, "kamailio"),
            credentials=_credentials(
                site, [include] + _tls_in_secrets(site, edge.tls),
                [(f"{where}.run_dir", run_dir), ("kamailio config", cfg)]),
            caps=_low_ports(ports))))
    secrets_dir = _path(site.security.secrets_dir, "security.secrets_dir")
    for node in site.media.nodes:
        cfg = f"{CONFIG_DIR}/rtpengine/{node.name}/rtpengine.conf"
        rec = _path(f"{site.media.recording.dir}/{node.name}", "media.recording.dir")
        if _under(rec, secrets_dir):
            raise RenderError(f"media.recording.dir: '{rec}' is inside security.secrets_dir "
                              f"({secrets_dir}), which the rtpengine units hide")
        ports = [node.ng.port, node.ports.port_min]
        ports += [p.port for p in (node.ng_tcp, node.http) if p is not None]
        argv = [RTPENGINE_BIN, "--foreground", "--log-stderr", "--no-log-timestamps",
                f"--config-file={cfg}"]
        span = node.ports.port_max - node.ports.port_min + 1
        # the Redis password as an environment variable, read by systemd (as root) from
        # the secrets dir the daemon itself cannot see
        redis_env = _path(str(site_secrets.rtpengine_redis_env_path(site)),
                          "security.secrets_dir") if node.redis else ""
        units.append(UnitFile(unit_name("rtpengine", node.name),
                              "systemd/rtpengine.service.j2", node.name, dict(
            common, node=node, exec_start=" ".join(argv), redis_env=redis_env,
            writable=_writable(rec, "rtpengine"), secrets_dir=secrets_dir,
            # a socket per RTP and RTCP port of the range, and room for control connections
            nofile=max(65536, 2 * span + 4096),
            caps=_low_ports(ports))))
    store = _path(site.controller.store, "controller.store")
    secret_files = [str(site_secrets.api_token_path(site, t.name))
                    for t in site.controller.api.tokens]
    for e in site.edges:
        secret_files += _secret_files_of_edge(site, e.name)
    secret_files += _tls_in_secrets(site, site.controller.api.tls)
    if (site.redis is not None and len(site.controller.instances) > 1
            and _under(site.redis_auth_file, _path(site.security.secrets_dir, "secrets_dir"))):
        secret_files.append(site.redis_auth_file)  # the pair's state and lease
    units.append(UnitFile(unit_name("controller"), "systemd/controller.service.j2",
                          "controller", dict(
        common, exec_start=f"{SIPRECCTL_BIN} serve {SITE_FILE}",
        user=CONTROLLER_USER,
        after=[unit_name("kamailio", e.name) for e in site.edges] + list(node_units.values()),
        writable=_writable(str(PurePosixPath(store).parent), CONTROLLER_USER),
        credentials=_credentials(site, secret_files,
                                 [("controller.store", store), ("site file", SITE_FILE)]),
        caps=_low_ports([site.controller.api.port]))))
    return units
