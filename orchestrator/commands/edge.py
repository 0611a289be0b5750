"""``siprecctl edge``: Kamailio edge status and rtpengine node control over JSON-RPC.

Targets: every edge of ``--site`` (default: the embedded lab), or ``--edge NAME``, or one
Kamailio directly with ``--jsonrpc URL``; ``--kamcli FILE`` uses kamcli (unix socket)
instead of HTTP. Exit codes: 0 ok, 1 Kamailio returned an error, 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ._output import add_json_flag, print_json, print_table


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="edge_cmd", metavar="ACTION", required=True)
    p = sub.add_parser("status", help="per edge: version, uptime, dialogs, rtpengine nodes")
    _target_args(p)
    add_json_flag(p)
    p.set_defaults(func=run_status)
    rp = sub.add_parser("rtpengine", help="show/enable/disable the edge's rtpengine nodes")
    rsub = rp.add_subparsers(dest="rtp_cmd", metavar="ACTION", required=True)
    for action, text in (("show", "the nodes as the edge sees them"),
                         ("enable", "enable a node (NODE, URL or 'all')"),
                         ("disable", "disable a node (NODE, URL or 'all')")):
        q = rsub.add_parser(action, help=text)
        q.add_argument("node", metavar="NODE", nargs="?" if action == "show" else None,
                       default="all", help="media node name, rtpengine URL, or 'all'")
        _target_args(q)
        add_json_flag(q)
        q.set_defaults(func=run_rtpengine, rtp_action=action)


def _target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target Kamailio")
    g.add_argument("--site", metavar="SITE", help="site file or embedded name (default: lab)")
    g.add_argument("--edge", metavar="NAME", help="only this edge of the site")
    g.add_argument("--jsonrpc", metavar="URL", help="JSON-RPC URL, e.g. http://127.0.0.1:5071/RPC")
    g.add_argument("--kamcli", metavar="INI", help="use kamcli with this kamcli.ini instead")
    g.add_argument("--secret-file", metavar="PATH",
                   help="with --jsonrpc: the edge's jsonrpc-<edge>.secret (owner-only file)")
    g.add_argument("--timeout", type=float, default=5.0, metavar="S")


def _clients(args: argparse.Namespace) -> tuple[list[tuple[str, Any]], Any]:
    """(edge name, KamailioClient) per target, and the site (None with --jsonrpc/--kamcli)."""
    from ..kamailio import HttpRpcTransport, KamailioClient, KamcliTransport

    if args.jsonrpc or args.kamcli:
        if args.jsonrpc and args.kamcli:
            raise UsageError("--jsonrpc and --kamcli are alternatives")
        if args.site or args.edge:
            raise UsageError("--jsonrpc/--kamcli talk to one Kamailio; do not combine "
                             "with --site/--edge")
        if args.secret_file and not args.jsonrpc:
            raise UsageError("--secret-file goes with --jsonrpc")
        from ..site.secrets import load_secret

        t: Any = (HttpRpcTransport(args.jsonrpc, secret=load_secret(args.secret_file)
                                   if args.secret_file else None)
                  if args.jsonrpc else KamcliTransport(args.kamcli))
        return [(args.jsonrpc or args.kamcli, KamailioClient(t, timeout=args.timeout))], None
    from ..site import load

    site = load(args.site)
    edges = [e for e in site.edges if not args.edge or e.name == args.edge]
    if not edges:
        raise UsageError(f"--edge: no edge {args.edge!r} in site {site.name}")
    return [(e.name, KamailioClient(HttpRpcTransport.for_edge(site, e), timeout=args.timeout,
                                    name=e.name)) for e in edges], site


def _node_names(site: Any) -> dict[str, str]:
    """rtpengine URL (as in rtpengine_sock) → site node name."""
    if site is None:
        return {}
    return {f"udp:{n.ng.address}:{n.ng.port}": n.name for n in site.media.nodes}


def run_status(args: argparse.Namespace) -> int:
    from ..errors import KamailioError

    clients, site = _clients(args)
    names = _node_names(site)
    out: list[dict[str, Any]] = []
    code = 0
    for edge, kam in clients:
        with kam:
            row: dict[str, Any] = {"edge": edge}
            try:
                row["version"] = kam.version()
                row["uptime_s"] = kam.uptime()
                row["dialogs"] = kam.active_dialogs()
                row["rtpengine"] = [{"node": names.get(n.url), "url": n.url, "set": n.set,
                                     "weight": n.weight, "state": n.state,
                                     "enabled": not n.disabled}
                                    for n in kam.rtpengine_show()]
            except KamailioError as exc:
                row["error"] = str(exc)
                code = max(code, exc.exit_code)
            out.append(row)
    if args.json:
        print_json(out)
        return code
    for row in out:
        if "error" in row:
            print(f"{row['edge']}: {row['error']}", file=sys.stderr)
            continue
        d = row["dialogs"]
        print(f"{row['edge']}: {row['version']}, up {row['uptime_s']} s, dialogs "
              f"{d.get('all', 0)} (ongoing {d.get('ongoing', 0)})")
        print_table(["node", "url", "set", "weight", "state"],
                    [(n["node"] or "", n["url"], n["set"], n["weight"], n["state"])
                     for n in row["rtpengine"]], title=f"{row['edge']}: rtpengine nodes")
    return code


def run_rtpengine(args: argparse.Namespace) -> int:
    from ..errors import KamailioError

    # the node name is checked before any secret is read: a typo is a usage error
    if args.jsonrpc or args.kamcli:
        site = None
    else:
        from ..site import load

        site = load(args.site)
    url = args.node
    if url != "all" and ":" not in url:
        by_name = {v: k for k, v in _node_names(site).items()}
        if url not in by_name:
            raise UsageError(f"unknown media node {url!r}" + (
                f" (nodes: {', '.join(by_name)})" if by_name else
                "; without a site give the rtpengine URL, e.g. udp:127.0.0.1:2223"))
        url = by_name[url]
    clients, site = _clients(args)
    names = _node_names(site)
    out: list[dict[str, Any]] = []
    code = 0
    for edge, kam in clients:
        with kam:
            try:
                status = None
                if args.rtp_action != "show":
                    status = kam.rtpengine_enable(url, args.rtp_action == "enable")
                nodes = kam.rtpengine_show(url)
                out.append({"edge": edge, "status": status, "nodes": [
                    {"node": names.get(n.url), "url": n.url, "state": n.state,
                     "enabled": not n.disabled} for n in nodes]})
            except KamailioError as exc:
                out.append({"edge": edge, "error": str(exc)})
                code = max(code, exc.exit_code)
    if args.json:
        print_json(out)
        return code
    for row in out:
        if "error" in row:
            print(f"{row['edge']}: {row['error']}", file=sys.stderr)
            continue
        for n in row["nodes"]:
            label = f"{n['node']} ({n['url']})" if n["node"] else n["url"]
            print(f"{row['edge']}: {label}: {n['state']}")
    return code
