"""Render Kamailio, rtpengine and kamcli configuration from a site model.

Output is deterministic: the same site gives byte-identical files (no timestamps; the
header names a digest of the validated model, not of the YAML text). Layout under the
output directory::

    kamailio/<edge>/kamailio.cfg
    kamailio/<edge>/kamcli.ini
    rtpengine/<node>/rtpengine.conf
    render-manifest.json
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import RenderError
from ..site.model import Rule, Site

MANIFEST = "render-manifest.json"

__all__ = ["MANIFEST", "Rendered", "render_site", "stale_diff", "templates_dir", "write"]


@dataclass(frozen=True)
class Rendered:
    """One rendered file: path relative to the output dir, content, and what it is for."""

    path: str
    content: str
    kind: str  # kamailio | kamcli | rtpengine | manifest
    owner: str  # edge or node name ("" for the manifest)

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


def site_digest(site: Site) -> str:
    """Digest of the validated model (stable across YAML formatting changes)."""
    canon = json.dumps(site.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
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
                       direction_flags=direction, media_recording=True)
            out.append(Rendered(f"kamailio/{edge.name}/kamailio.cfg", kam.render(ctx),
                                "kamailio", edge.name))
            out.append(Rendered(f"kamailio/{edge.name}/kamcli.ini", kamcli.render(ctx),
                                "kamcli", edge.name))
        for node in site.media.nodes:
            out.append(Rendered(f"rtpengine/{node.name}/rtpengine.conf",
                                rtp.render(site=site, node=node, source_digest=digest),
                                "rtpengine", node.name))
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


def write(outdir: Path, files: list[Rendered]) -> list[Path]:
    """Write files under ``outdir`` (atomically, one by one); returns the paths written."""
    written = []
    for r in files:
        path = Path(outdir) / r.path
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
