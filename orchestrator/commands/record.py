"""``siprecctl record start|stop|pause|resume CALL-ID``: recording of one call.

When a controller runs (its API, from ``--api`` or the site's ``controller.api``, answers),
the commands go through it: ``start`` opens a SIPREC session to the site's (or ``--group``)
SRS group, ``--local`` adds rtpengine's own recording; ``stop`` ends them; ``pause`` and
``resume`` re-INVITE the SRS with a=inactive / a=sendonly with the media fork removed
meanwhile. Without a controller (or with ``--direct``), ``start``/``stop`` drive rtpengine's
local recording over NG; ``pause``/``resume`` need the controller.
Exit codes: 0 ok, 1 refused (rtpengine/controller said error), 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from ..errors import UsageError
from ._output import add_json_flag, print_json
from .ng import EXIT_OK, add_target_args, open_pool

ACTIONS = {"start": "start recording a call", "stop": "stop recording a call",
           "pause": "pause a call's SIPREC recording (controller)",
           "resume": "resume a paused SIPREC recording (controller)"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="record_cmd", metavar="ACTION", required=True)
    for action, help_text in ACTIONS.items():
        p = sub.add_parser(action, help=help_text)
        p.add_argument("call_id", metavar="CALL-ID")
        g = p.add_argument_group("controller")
        g.add_argument("--api", metavar="URL",
                       help="controller API (default: the site's controller.api)")
        g.add_argument("--token-file", metavar="PATH",
                       help="API bearer token (default: the site's first operator token)")
        g.add_argument("--direct", action="store_true",
                       help="talk to rtpengine directly even if a controller runs")
        if action in ("start", "stop"):
            g.add_argument("--local", action="store_true",
                           help="with a controller: rtpengine's local recording too")
            g.add_argument("--group", metavar="G", help="with a controller: SRS group")
            p.add_argument("--from-tag", metavar="T", help="participant (direct mode)")
            p.add_argument("--metadata", metavar="K:V|...",
                           help="metadata string for the recording's metadata file "
                                "(direct mode; the last one given wins)")
        add_target_args(p)
        add_json_flag(p)
        p.set_defaults(func=run, action=action)


def _api_target(args: argparse.Namespace) -> Any:
    """The controller API and its operator token (read from an owner-only file); None when
    no token file exists and no --api was given (no controller ever ran here: direct mode)."""
    from ..controller.client import ApiTarget, api_target
    from ..errors import SecretError
    from ..site import load
    from ..site.secrets import load_secret

    url = str(args.api).rstrip("/") if args.api else None
    if args.token_file:
        api = None if url else load(args.site).controller.api
        if api is not None:
            url = f"{'https' if api.tls else 'http'}://{api.address}:{api.port}"
        return ApiTarget(str(url), load_secret(args.token_file),
                         api.tls.certificate if api is not None and api.tls else None)
    try:
        return api_target(load(args.site), url=url)
    except SecretError:
        if url:
            raise
        return None


def _controller_up(target: Any) -> bool:
    from ..controller.client import api_request
    from ..errors import ControllerUnreachable

    try:
        api_request(target, "GET", "/health", timeout=1.0)
        return True
    except ControllerUnreachable:
        return False


def run(args: argparse.Namespace) -> int:
    from ..errors import ControllerError, ControllerUnreachable

    if getattr(args, "metadata", None) is not None and not args.metadata:
        raise UsageError("--metadata must not be empty")
    # an explicit rtpengine (--ng/--node) means direct mode
    url = None if (args.direct or args.ng or args.node) else _api_target(args)
    if url is not None and (args.api or _controller_up(url)):
        body: dict[str, Any] = {}
        if args.action in ("start", "stop"):
            body["local"] = bool(args.local)
            if args.action == "start" and args.group:
                body["group"] = args.group
        from ..controller.client import api_request

        path = f"/calls/{urllib.parse.quote(args.call_id, safe='')}/{args.action}"
        status, doc = api_request(url, "POST", path, body, timeout=40)
        if status != 200:
            raise ControllerError(f"controller: {doc.get('error', status)}")
        if args.json:
            print_json(doc)
        else:
            state = (doc.get("session") or doc).get("state", "ok")
            print(f"{args.call_id}: {args.action} done ({state})", file=sys.stderr)
        return EXIT_OK
    if args.action in ("pause", "resume"):
        raise ControllerUnreachable(f"record {args.action} needs a running controller "
                                  f"(no API at {url.url if url else '--api'}; not with "
                                  "--direct)")
    return _direct(args)


def _direct(args: argparse.Namespace) -> int:
    with open_pool(args, all_nodes=True) as pool:
        node = pool.node_of(args.call_id, timeout=args.timeout)  # several nodes: its own
        op = node.client.start_recording if args.action == "start" else \
            node.client.stop_recording
        op(args.call_id, from_tag=args.from_tag, metadata=args.metadata)
    if args.json:
        print_json({"node": node.name, "call_id": args.call_id, "recording": args.action})
    else:
        print(f"{node.name}: recording {'started' if args.action == 'start' else 'stopped'}"
              f" for {args.call_id}", file=sys.stderr)
    return EXIT_OK
