"""``siprecctl serve [SITE]``: the recording controller, until SIGINT/SIGTERM.

Creates the site's missing secrets (API tokens, the edges' evapi/JSON-RPC secrets: first
use), connects to every edge's evapi socket with its secret, reconciles its state store
with Kamailio's dialogs and rtpengine, then records calls as the site's policy says (SIPREC
to SRS groups) and serves the HTTP API + ``/metrics`` on ``controller.api`` (bearer tokens,
optional TLS). One controller per site: when an edge already has another controller, this
one exits 1 saying so.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any


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
    pair = parser.add_argument_group("active/standby pair (state in Redis, README "
                                     "\"Scaling out\")")
    pair.add_argument("--redis", metavar="ADDR:PORT", help="keep the state in this Redis and "
                      "act only while holding the site's lease (default, for a site with "
                      "controller.instances: the site's redis)")
    pair.add_argument("--redis-password-file", metavar="PATH",
                      help="owner-only file with the Redis password (default: the site's)")
    pair.add_argument("--redis-db", type=int, default=None, metavar="N",
                      help="default: the site's redis.controller_db, else 0")
    pair.add_argument("--instance", metavar="NAME", help="this controller's name in the pair "
                      "(default: the host name; one of controller.instances when the site "
                      "lists them)")
    pair.add_argument("--lease-ttl", type=float, default=2.0, metavar="S",
                      help="lease time-to-live: the standby takes over within about this "
                      "long after the leader stops renewing (default 2)")
    parser.set_defaults(func=run)


def _pair(args: argparse.Namespace, site: Any) -> tuple[Any, Any, Any]:
    """(store, leadership, fence) for ``--redis``; the SQLite store and no lease otherwise."""
    import socket

    from ..controller import SessionStore
    from ..errors import UsageError
    from .ng import parse_hostport

    pair_site = site.redis is not None and len(site.controller.instances) > 1
    if not args.redis and not pair_site:
        if args.instance:
            raise UsageError("--instance goes with --redis (a pair shares its state in Redis)")
        return SessionStore(args.store or site.controller.store), None, None
    if args.store:
        raise UsageError("--store and --redis are alternatives (this site's controllers are "
                         "a pair: their state is in Redis)" if pair_site else
                         "--store and --redis are alternatives")
    if not 0.5 <= args.lease_ttl <= 60:
        raise UsageError("--lease-ttl: between 0.5 and 60 seconds")
    import redis

    from ..controller.leader import Leadership
    from ..controller.redis_store import Fence, RedisStore
    from ..site.secrets import load_secret

    if args.redis:
        host, port = parse_hostport(args.redis, "--redis")
    else:
        host, port = site.redis.address, site.redis.port
    db = args.redis_db if args.redis_db is not None else (
        site.redis.controller_db if site.redis is not None else 0)
    pw_file = args.redis_password_file or (site.redis_auth_file if site.redis else None)
    password = load_secret(pw_file) if pw_file else None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # no retries inside the client: a leader cut off from Redis must fail fast (the lease
    # thread notices, the loop is not held up), and the next write or renewal tries anew
    client = redis.Redis(host=host, port=port, db=db, password=password,
                         socket_timeout=1.0, socket_connect_timeout=1.0,
                         retry=Retry(NoBackoff(), 0))
    instance = args.instance or socket.gethostname()
    names = [i.name for i in site.controller.instances]
    if names and instance not in names:
        raise UsageError(f"--instance {instance!r} is not one of the site's controller "
                         f"instances ({', '.join(names)})")
    fence = Fence(instance)
    lead = Leadership(client, f"siprecctl:{site.name}:", instance, ttl=args.lease_ttl)
    return RedisStore(client, site.name, fence), lead, fence


def _instance_api(site: Any, instance: str | None) -> tuple[str, int]:
    """The API listener of this instance of the pair (the site's ``controller.api`` else)."""
    import socket

    name = instance or socket.gethostname()
    for i in site.controller.instances:
        if i.name == name:
            return i.api.address, i.api.port
    return site.controller.api.address, site.controller.api.port


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


def _refused(controller: Any) -> None:
    """Raise the first edge's refusal (another controller of the site is connected)."""
    for link in controller.edges.values():
        if link.evapi.refused is not None:
            raise link.evapi.refused


def run(args: argparse.Namespace) -> int:
    from ..controller import ApiServer, Controller
    from ..controller.api import tls_context
    from ..controller.auth import TokenAuth
    from ..errors import ControllerError
    from ..render import ensure_secrets
    from ..site import load

    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = load(args.site)
    address, port = (_addr(args.api) if args.api else _instance_api(site, args.instance))
    if args.store:
        _outside_recordings(site, args.store)
    for line in ensure_secrets(site):
        logging.getLogger("siprecctl.serve").warning("%s", line)
    auth = TokenAuth.from_site(site)
    tls = site.controller.api.tls
    tls_ctx = tls_context(tls.certificate, tls.private_key) if tls else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store, leadership, fence = _pair(args, site)
    controller = Controller(site, store=store, leadership=leadership, fence=fence)
    try:
        api = ApiServer(controller, address, port, auth=auth, tls=tls_ctx)
    except OSError as exc:
        controller.close()
        raise ControllerError(f"cannot listen on {address}:{port} for the API: "
                              f"{exc.strerror} (is another siprecctl serve running?)") from None
    api.start()
    profile = _profiler()
    try:
        # refused by an edge (another controller of the site)? then exit before touching
        # anything: reconciliation would act on that controller's sessions
        controller.start(reconcile=False)
        _refused(controller)
        if not args.no_reconcile:
            controller.reconcile()
        print(f"siprecctl serve: site {site.name}, API {api.url}, store {store.path}",
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            _refused(controller)
    finally:
        api.close()
        controller.close()
        if profile is not None:
            profile()
    return 0


def _profiler() -> Any:
    """``SIPRECCTL_PROFILE=FILE``: CPU profile of every thread (yappi, a development tool
    not installed by default) written to FILE (pstats format) when serve stops; returns
    the function that writes it."""
    import os

    path = os.environ.get("SIPRECCTL_PROFILE")
    if not path:
        return None
    import yappi  # type: ignore[import-not-found]

    yappi.set_clock_type("cpu")
    yappi.start(builtins=True)

    def dump() -> None:
        yappi.stop()
        yappi.get_func_stats().save(path, type="pstat")
        with open(path + ".threads", "w") as out:
            yappi.get_thread_stats().print_all(out=out)
    return dump


def _outside_recordings(site: Any, store: str) -> None:
    from pathlib import Path

    from ..errors import UsageError

    rec = Path(site.media.recording.dir).resolve()
    if rec == Path(store).resolve() or rec in Path(store).resolve().parents:
        raise UsageError(f"--store {store} is inside the recording directory {rec}: siprecctl "
                         "never writes there")
