"""``siprecctl serve [SITE]``: the recording controller, until SIGINT/SIGTERM.

Connects to every edge's evapi socket, reconciles its state store with Kamailio's dialogs
and rtpengine, then records calls as the site's policy says (SIPREC to SRS groups) and
serves the HTTP API + ``/metrics`` on ``controller.api``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", nargs="?", help="site file or embedded name (default: the lab)")
    parser.add_argument("--store", metavar="PATH",
                        help="SQLite state store (default: the site's controller.store)")
    parser.add_argument("--api", metavar="ADDR:PORT",
                        help="API listener (default: the site's controller.api)")
    parser.add_argument("--no-reconcile", action="store_true",
                        help="skip reconciliation with the daemons at start")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def _addr(value: str) -> tuple[str, int]:
    import ipaddress

    from ..errors import UsageError
    from .ng import parse_hostport

    host, port = parse_hostport(value, "--api")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--api: {host!r} is not an IP address") from None
    if not (ip.is_loopback or ip.is_private) or ip.is_unspecified:
        # security by default: the API starts and stops recordings
        raise UsageError(f"--api: {host} is not a loopback or private address")
    return host, port


def run(args: argparse.Namespace) -> int:
    from ..controller import ApiServer, Controller, SessionStore
    from ..site import load

    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = load(args.site)
    address, port = (_addr(args.api) if args.api
                     else (site.controller.api.address, site.controller.api.port))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store = SessionStore(args.store or site.controller.store)
    controller = Controller(site, store=store)
    api = ApiServer(controller, address, port)
    api.start()
    try:
        controller.start(reconcile=not args.no_reconcile)
        print(f"siprecctl serve: site {site.name}, API {api.url}, store {store.path}",
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        api.close()
        controller.close()
    return 0
