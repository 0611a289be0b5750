"""Render Kamailio, rtpengine and kamcli configuration from a site model.

Output is deterministic: the same site gives byte-identical files (no timestamps; the
header names a digest of the validated model, not of the YAML text). Layout under the
output directory::

    kamailio/<edge>/kamailio.cfg
    kamailio/<edge>/kamcli.ini
    rtpengine/<node>/rtpengine.conf
    redis/redis.conf          (with a top-level ``redis`` section: the server's siprecctl part)
    systemd/siprecctl-{kamailio-<edge>,rtpengine-<node>,controller}.service  (:mod:`.systemd`)
    render-manifest.json

Secrets are not rendered output: each kamailio.cfg includes
``<secrets_dir>/kamailio-<edge>.secrets.cfg``, which :func:`ensure_secrets` writes (with the
API tokens and the edges' secrets) into the site's owner-only secrets directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import RenderError
from ..site import secrets as site_secrets
from ..site.model import Rule, Site
from .systemd import render_units

MANIFEST = "render-manifest.json"
# Keyspace notifications rtpengine 10.5 mirrors peers' calls from (redis.c
# on_redis_notification: "set" and "del" on __keyspace@<db>__): K the keyspace channel,
# $ string commands (SET), g generic ones (DEL, EXPIRE). rtpengine never enables them.
NOTIFY_KEYSPACE_EVENTS = "Kg$"
_HOSTPORT_RE = re.compile(r"^sips?:(?:[^@]*@)?(?P<host>\[[^\]]+\]|[^:;?]+)(?::(?P<port>[0-9]+))?")

__all__ = ["MANIFEST", "NOTIFY_KEYSPACE_EVENTS", "Rendered", "ensure_secrets", "render_site", "stale_diff",
           "templates_dir", "write"]


@dataclass(frozen=True)
class Rendered:
    """One rendered file: path relative to the output dir, content, and what it is for."""

    path: str
    content: str
    kind: str  # kamailio | kamcli | rtpengine | redis | systemd | manifest
    owner: str  # edge or node name, "controller" ("" for the manifest)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


def templates_dir() -> Path:
    """The installed templates (wheel) or the source checkout's ``templates/``."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "templates", pkg.parent / "templates"):
        if (cand / "kamailio" / "kamailio.cfg.j2").is_file():
            return cand
    raise RenderError(f"templates not found next to {pkg}")


def _kstr(value: object) -> str:
    """Escape a value for a double-quoted Kamailio cfg string."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _rule_condition(rule: Rule) -> str:
    m = rule.match
    conds = []
    if m.caller is not None:
        conds.append(f'$fu =~ "{_kstr(m.caller)}"')
    if m.callee is not None:
        conds.append(f'$tu =~ "{_kstr(m.callee)}"')
    if m.ruri is not None:
        conds.append(f'$ru =~ "{_kstr(m.ruri)}"')
    if m.header is not None:
        h = m.header.name
        conds.append(f'(is_present_hf("{h}") && $hdr({h}) =~ "{_kstr(m.header.pattern)}")')
    if m.trunk is not None:
        conds.append(f'$avp(trunk) == "{m.trunk}"')
    return " && ".join(conds) if conds else "1 == 1"


def _env():  # type: ignore[no-untyped-def]
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["kstr"] = _kstr
    env.filters["rule_condition"] = _rule_condition
    return env


def srs_hostports(site: Site) -> list[str]:
    """``host:port`` of every SRS of the site (lower case; port 5060 when the URI has none):
    the destinations the edge lets the controller send recording-session requests to."""
    out: list[str] = []
    for g in site.recording.srs_groups:
        for srv in g.servers:
            m = _HOSTPORT_RE.match(srv.uri)
            assert m is not None  # the model validated the URI
            hp = f"{m.group('host').lower()}:{m.group('port') or 5060}"
            if hp not in out:
                out.append(hp)
    return out


def site_digest(site: Site) -> str:
    """Digest of the validated model (stable across YAML formatting changes)."""
    # the lab section places the lab's hosts and never reaches a rendered file
    canon = json.dumps(site.model_dump(mode="json", exclude={"lab"}), sort_keys=True,
                       separators=(",", ":"))
    return "site sha256:" + hashlib.sha256(canon.encode()).hexdigest()[:16]


def render_site(site: Site) -> list[Rendered]:
    """Render every file of the site, manifest last."""
    import jinja2

    env = _env()
    digest = site_digest(site)
    out: list[Rendered] = []
    try:
        kam = env.get_template("kamailio/kamailio.cfg.j2")
        kamcli = env.get_template("kamcli/kamcli.ini.j2")
        rtp = env.get_template("rtpengine/rtpengine.conf.j2")
        for edge in site.edges:
            sets = sorted({n.set for n in site.media.nodes})
            rtpengine_sets = [(s, site.nodes_in_set(s)) for s in sets]
            direction = ""
            if edge.rtp_direction:
                direction = (f" direction={edge.rtp_direction.caller}"
                             f" direction={edge.rtp_direction.callee}")
            ctx = dict(site=site, edge=edge, source_digest=digest, rtpengine_sets=rtpengine_sets,
                       direction_flags=direction, media_recording=True,
                       secrets_include=str(site_secrets.kamailio_include_path(site, edge.name)),
                       srs_hostports=srs_hostports(site),
                       # an active/standby pair: both are connected, only the leader acts
                       controllers=max(1, len(getattr(site.controller, "instances", None)
                                              or ())))
            out.append(Rendered(f"kamailio/{edge.name}/kamailio.cfg", kam.render(ctx),
                                "kamailio", edge.name))
            out.append(Rendered(f"kamailio/{edge.name}/kamcli.ini", kamcli.render(ctx),
                                "kamcli", edge.name))
        redis_env = str(site_secrets.rtpengine_redis_env_path(site))
        for node in site.media.nodes:
            peer_dbs = [site.node(p).redis.db for p in node.redis.peers  # type: ignore[union-attr]
                        ] if node.redis else []
            out.append(Rendered(f"rtpengine/{node.name}/rtpengine.conf",
                                rtp.render(site=site, node=node, source_digest=digest,
                                           peer_dbs=peer_dbs, redis_env=redis_env),
                                "rtpengine", node.name))
        if site.redis is not None:
            out.append(Rendered("redis/redis.conf", env.get_template("redis/redis.conf.j2").render(
                site=site, source_digest=digest, notify_keyspace_events=NOTIFY_KEYSPACE_EVENTS,
                acl_include=str(site_secrets.redis_acl_path(site))), "redis", "redis"))
        for unit in render_units(site, digest):
            out.append(Rendered(f"systemd/{unit.name}",
                                env.get_template(unit.template).render(unit.context),
                                "systemd", unit.owner))
    except jinja2.TemplateError as exc:
        raise RenderError(f"template error: {exc}") from exc
    manifest = {
        "site": site.name,
        "source": digest,
        "files": [{"path": r.path, "kind": r.kind, "owner": r.owner, "sha256": r.sha256}
                  for r in out],
    }
    out.append(Rendered(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                        "manifest", ""))
    return out


def _previous_render(outdir: Path) -> dict[str, str]:
    """{path: sha256} of the files the last render wrote into ``outdir`` (its manifest)."""
    try:
        doc = json.loads((outdir / MANIFEST).read_text(encoding="utf-8"))
        return {str(f["path"]): str(f["sha256"]) for f in doc["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _unsafe_overwrites(outdir: Path, files: list[Rendered]) -> list[str]:
    """Existing files that a previous render did not write exactly as they are now."""
    prev = _previous_render(outdir)
    out = []
    for r in files:
        path = outdir / r.path
        if not path.exists() and not path.is_symlink():
            continue
        if r.path == MANIFEST and prev:
            continue
        try:
            current = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            current = None
        if current != r.sha256 and prev.get(r.path) != current:
            out.append(r.path)
    return out


def write(outdir: Path, files: list[Rendered], *, force: bool = False,
          site: Site | None = None) -> list[Path]:
    """Write files under ``outdir`` (atomically, one by one); returns the paths written.

    An existing file is replaced only when a previous render wrote it (it is in the
    manifest there, unchanged since) or with ``force``; nothing is ever written into the
    ``site``'s recording directory."""
    outdir = Path(outdir)
    if site is not None:
        rec = Path(site.media.recording.dir).resolve()
        out = outdir.resolve()
        if out == rec or rec in out.parents:
            raise RenderError(f"{outdir} is inside the recording directory {rec}: siprecctl "
                              "never writes there")
    if not force:
        clash = _unsafe_overwrites(outdir, files)
        if clash:
            raise RenderError(f"{outdir}: would overwrite {len(clash)} file(s) that siprecctl "
                              f"did not render or that were edited since: "
                              f"{', '.join(clash[:5])}{' …' if len(clash) > 5 else ''} "
                              "(use --force to replace them)")
    written = []
    for r in files:
        path = outdir / r.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(r.content, encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            raise RenderError(f"cannot write {path}: {exc}") from exc
        written.append(path)
    return written


def stale_diff(outdir: Path, files: list[Rendered]) -> str:
    """Unified diff between ``outdir`` and what would be rendered; empty when up to date."""
    chunks: list[str] = []
    for r in files:
        path = Path(outdir) / r.path
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise RenderError(f"cannot read {path}: {exc}") from exc
        if old == r.content:
            continue
        a = [] if old is None else old.splitlines(keepends=True)
        chunks.extend(difflib.unified_diff(a, r.content.splitlines(keepends=True),
                                           fromfile=f"a/{r.path}" if old is not None else "/dev/null",
                                           tofile=f"b/{r.path}"))
    return "".join(chunks)


def ensure_secrets(site: Site) -> list[str]:
    """Create the site's missing secrets (API tokens, each edge's evapi and JSON-RPC secret)
    and (re)write each edge's Kamailio include; returns what was done, for people (never a
    secret's value). Existing secrets are kept: rotate by replacing a file."""
    done: list[str] = []
    for tok in site.controller.api.tokens:
        path = site_secrets.api_token_path(site, tok.name)
        if site_secrets.ensure_secret(path)[1]:
            done.append(f"created API token '{tok.name}' ({tok.role}): {path}")
    for edge in site.edges:
        for path in (site_secrets.evapi_secret_path(site, edge.name),
                     site_secrets.jsonrpc_secret_path(site, edge.name)):
            if site_secrets.ensure_secret(path)[1]:
                done.append(f"created secret {path}")
        sec = site_secrets.edge_secrets(site, edge.name)
        path, changed = site_secrets.write_kamailio_include(site, edge.name, sec)
        if changed:
            done.append(f"wrote {path} (restart Kamailio of edge {edge.name} to use it)")
    if site.redis is not None:
        path = Path(site.redis_auth_file)
        password, created = site_secrets.ensure_secret(path)
        if created:
            done.append(f"created the Redis password {path}")
        acl = site_secrets.redis_acl_path(site)
        if site_secrets.write_private(acl, site_secrets.redis_acl(password)):
            done.append(f"wrote {acl} (restart redis-server to use it)")
        if any(n.redis for n in site.media.nodes):
            envf = site_secrets.rtpengine_redis_env_path(site)
            if site_secrets.write_private(envf, site_secrets.rtpengine_redis_env(password)):
                done.append(f"wrote {envf} (restart the rtpengine nodes to use it)")
    return done
