"""``siprecctl ng``: talk NG to rtpengine -- ping, list, query, stats.

Target: ``--ng HOST:PORT`` (one rtpengine, no site file: the fast path), or ``--site SITE``
with ``--node N`` (default: every node of the site); neither: the embedded lab site's first
node. Exit codes: 0 ok, 1 rtpengine said error, 2 usage, 3 unreachable/timeout.

Cold start matters here: nothing heavy (site model, requests, rich) is imported unless the
options ask for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ._output import add_json_flag, print_json

if TYPE_CHECKING:
    from ..ng.client import NgClient
    from ..ng.pool import NodePool

EXIT_OK, EXIT_NG_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_target_args(p: argparse.ArgumentParser) -> None:
    """``--ng/--transport/--encoding/--site/--node/--timeout`` shared by ng, record, calls."""
    g = p.add_argument_group("target rtpengine")
    g.add_argument("--ng", metavar="HOST:PORT", help="talk to this rtpengine directly")
    g.add_argument("--transport", choices=("udp", "tcp", "http"),
                   help="NG transport for --ng (default udp; --site: the node's transport)")
    g.add_argument("--encoding", choices=("json", "bencode"),
                   help="NG body encoding (default json; tcp: bencode)")
    g.add_argument("--site", metavar="SITE", help="site file or embedded name (default: lab)")
    g.add_argument("--node", metavar="N", help="media node name from the site")
    g.add_argument("--timeout", type=float, default=2.0, metavar="S",
                   help="seconds per command, retransmissions included (default 2)")


def parse_hostport(value: str, option: str = "--ng") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{option}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def open_pool(args: argparse.Namespace, *, all_nodes: bool) -> NodePool:
    """The nodes the options select, as a pool; the caller closes it."""
    from ..ng.client import NgClient
    from ..ng.pool import Node, NodePool, NodeState

    if args.ng:
        if args.site or args.node:
            raise UsageError("--ng talks to one rtpengine; do not combine it with "
                             "--site/--node")
        addr = parse_hostport(args.ng)
        kind = args.transport or "udp"
        if args.encoding == "json" and kind == "tcp":
            raise UsageError("TCP-NG carries bencode only")
        client = NgClient(addr, transport=kind, encoding=args.encoding, timeout=args.timeout)
        state = NodeState(args.ng, 0, 1, f"{kind}:{addr[0]}:{addr[1]}")
        return NodePool([Node(args.ng, 0, 1, client, state)])
    from ..site import load

    site = load(args.site)
    specs = list(site.media.nodes)
    if args.node:
        specs = [s for s in specs if s.name == args.node]
        if not specs:
            raise UsageError(f"--node: no media node {args.node!r} in site {site.name} "
                             f"(nodes: {', '.join(n.name for n in site.media.nodes)})")
    elif not (all_nodes and args.site):
        specs = specs[:1]
    opts: dict[str, Any] = {"timeout": args.timeout}
    if args.encoding:
        opts["encoding"] = args.encoding
    return NodePool(NodePool.node_from_spec(spec, **opts) for spec in specs)


def open_targets(args: argparse.Namespace, *, all_nodes: bool) -> list[tuple[str, NgClient]]:
    """(name, client) for each target the options select; the caller closes the clients."""
    return [(n.name, n.client) for n in open_pool(args, all_nodes=all_nodes)]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ng_cmd", metavar="ACTION", required=True)
    p = sub.add_parser("ping", help="NG ping; prints the round trip")
    add_target_args(p)
    add_json_flag(p)
    p.set_defaults(func=run_ping)
    p = sub.add_parser("list", help="call-ids of active calls")
    add_target_args(p)
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    add_json_flag(p)
    p.set_defaults(func=run_list)
    p = sub.add_parser("query", help="one call: participants, labels, packets")
    p.add_argument("call_id", metavar="CALL-ID")
    add_target_args(p)
    add_json_flag(p)
    p.set_defaults(func=run_query)
    p = sub.add_parser("stats", help="rtpengine statistics (NG 'statistics')")
    add_target_args(p)
    add_json_flag(p)
    p.set_defaults(func=run_stats)


def _each(args: argparse.Namespace, all_nodes: bool, op: Any) -> tuple[list[Any], int]:
    """Run ``op(client)`` per target; collect (name, result-or-error) and the exit code."""
    from ..errors import SiprecctlError

    rows: list[Any] = []
    code = EXIT_OK
    for name, client in open_targets(args, all_nodes=all_nodes):
        with client:
            try:
                rows.append((name, op(client), None))
            except SiprecctlError as exc:
                rows.append((name, None, exc))
                code = max(code, exc.exit_code)
    return rows, code


def run_ping(args: argparse.Namespace) -> int:
    def op(c: NgClient) -> float:
        t = time.perf_counter()
        c.ping()
        return (time.perf_counter() - t) * 1000

    rows, code = _each(args, True, op)
    if args.json:
        print_json([{"node": n, "ok": e is None, "rtt_ms": None if r is None else round(r, 3),
                     "error": None if e is None else str(e)} for n, r, e in rows])
    else:
        for n, r, e in rows:
            if e is None:
                print(f"{n}: pong in {r:.2f} ms")
            else:
                print(f"{n}: {e}", file=sys.stderr)
    return code


def run_list(args: argparse.Namespace) -> int:
    rows, code = _each(args, True, lambda c: c.list_calls(args.limit))
    if args.json:
        print_json({n: (r if e is None else {"error": str(e)}) for n, r, e in rows})
    else:
        for n, r, e in rows:
            if e is not None:
                print(f"{n}: {e}", file=sys.stderr)
                continue
            for call_id in r:
                print(call_id if len(rows) == 1 else f"{n}\t{call_id}")
    return code


def run_query(args: argparse.Namespace) -> int:
    with open_pool(args, all_nodes=True) as pool:
        # several nodes: the call lives on one of them
        node = pool.node_of(args.call_id, timeout=args.timeout)
        info = node.client.query(args.call_id)
        if args.json:
            print_json({"node": node.name, **info.reply.to_json()})
        else:
            _print_call(node.name, info)
    return EXIT_OK


def _print_call(node: str, info: Any) -> None:
    from ._output import print_table

    age = info.age(time.time())
    shown = "unknown" if age is None else f"{age:.0f} s"
    print(f"call {info.call_id} on {node}: age {shown}, {len(info.legs)} legs, "
          f"{info.packets} RTP packets, {len(info.subscribers)} subscribers")
    print_table(["tag", "label", "role", "packets", "receives from", "sends to"],
                [(t.tag, t.label or "", "subscriber" if t.is_subscriber else "leg", t.packets,
                  ", ".join(f"{g} ({k})" for g, k in t.subscriptions),
                  ", ".join(f"{g} ({k})" for g, k in t.subscribers))
                 for t in info.tags.values()])


def run_stats(args: argparse.Namespace) -> int:
    rows, code = _each(args, True, lambda c: c.statistics())
    if args.json:
        print_json({n: (r.to_json().get("statistics", r.to_json()) if e is None
                        else {"error": str(e)}) for n, r, e in rows})
        return code
    for n, r, e in rows:
        if e is not None:
            print(f"{n}: {e}", file=sys.stderr)
            continue
        stats = r.to_json().get("statistics", {})
        cur = stats.get("currentstatistics", {})
        tot = stats.get("totalstatistics", {})
        print(f"{n}: sessions own {cur.get('sessionsown')} foreign {cur.get('sessionsforeign')}"
              f" total {cur.get('sessionstotal')}; packet rate {cur.get('packetrate')}/s; "
              f"uptime {tot.get('uptime')} s; managed sessions {tot.get('managedsessions')}")
    return code
