"""``siprecctl srs``: run the reference SIPREC recording server until SIGINT/SIGTERM.

Prints one line per recording session as it ends (``--json``: one JSON object per line);
the server's banner goes to stderr so stdout holds only sessions. Exit 0 when stopped by a
signal, 1 if the server cannot start (port taken), 2 on usage errors. The server binds only
the given address; addresses outside loopback and private ranges need ``--allow-public``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LabError, UsageError
from ._output import add_json_flag

if TYPE_CHECKING:
    from ..lab.srs import SrsConfig, SrsSession


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run a SIPREC recording server (RFC 7866) for testing an SRC: it "
                          "checks each recording session, records each stream to a pcap (and a "
                          "WAV for G.711) and writes one JSON record per session into DIR. "
                          "Runs until SIGINT/SIGTERM.")
    parser.add_argument("--listen", default="127.0.0.1:5090", metavar="ADDR[:PORT]",
                        help="IPv4 address and port for SIP (default 127.0.0.1:5090)")
    parser.add_argument("--transport", default="udp,tcp", metavar="LIST",
                        help="udp, tcp or udp,tcp (default)")
    parser.add_argument("--dir", type=Path, default=Path("srs-recordings"), dest="record_dir",
                        metavar="DIR", help="where recordings and session records go "
                                            "(default ./srs-recordings)")
    parser.add_argument("--rtp-ports", default="40000-40999", metavar="LOW-HIGH",
                        help="UDP port range for RTP (default 40000-40999)")
    parser.add_argument("--name", default="srs", help="server name (file names, SDP o=)")
    b = parser.add_argument_group("misbehaviour (for testing an SRC)")
    b.add_argument("--reject", type=int, metavar="CODE", help="answer every INVITE with CODE")
    b.add_argument("--no-answer", action="store_true", help="ignore INVITEs completely")
    b.add_argument("--answer-delay", type=float, default=0.0, metavar="S",
                   help="send 100 + 180, answer after S seconds")
    b.add_argument("--bye-after", type=float, metavar="S", help="send BYE S seconds after ACK")
    b.add_argument("--reinvite-delay", type=float, default=0.0, metavar="S",
                   help="answer the SRC's re-INVITEs S seconds late (after a 100)")
    b.add_argument("--snapshot-after", type=float, metavar="S",
                   help="request a metadata snapshot S seconds after ACK (RFC 7866 §9.2)")
    b.add_argument("--refresh-after", type=float, metavar="S",
                   help="send a session refresh re-INVITE S seconds after ACK")
    b.add_argument("--move-on-refresh", action="store_true",
                   help="that refresh offers new RTP ports (the old ones are closed)")
    parser.add_argument("--allow-public", action="store_true",
                        help="allow a listen address (and SRC Contacts) outside loopback and "
                             "private ranges")
    parser.add_argument("--run-for", type=float, help=argparse.SUPPRESS)  # bounded run (tests)
    add_json_flag(parser)
    parser.set_defaults(func=run)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, "5090"
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UsageError(f"--listen {value!r}: expected an IPv4 address[:port]") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--listen {value!r}: port must be 1-65535")
    return host, int(port_text)


def _range(value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not (sep and low.isdigit() and high.isdigit()) or not 0 < int(low) <= int(high) < 65536:
        raise UsageError(f"--rtp-ports {value!r}: expected LOW-HIGH within 1-65535")
    return int(low), int(high)


def _transports(value: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip().lower() for t in value.split(",") if t.strip()))
    if not items or not set(items) <= {"udp", "tcp"}:
        raise UsageError(f"--transport {value!r}: expected udp, tcp or udp,tcp")
    return items


def _config(args: argparse.Namespace) -> SrsConfig:
    from ..lab.srs import Behaviour, SrsConfig

    host, port = _listen(args.listen)
    ip = ipaddress.IPv4Address(host)
    if not args.allow_public and (ip.is_unspecified or not (ip.is_loopback or ip.is_private)):
        raise UsageError(f"--listen {host}: not a loopback or private address (use a specific "
                     "address, or --allow-public to listen there)")
    low, high = _range(args.rtp_ports)
    try:
        behaviour = Behaviour(reject=args.reject, no_answer=args.no_answer,
                              answer_delay=args.answer_delay, bye_after=args.bye_after,
                              reinvite_delay=args.reinvite_delay,
                              snapshot_after=args.snapshot_after,
                              refresh_after=args.refresh_after,
                              move_on_refresh=args.move_on_refresh)
        return SrsConfig(address=host, port=port, transports=_transports(args.transport),
                         record_dir=args.record_dir, rtp_address=host, rtp_port_min=low,
                         rtp_port_max=high, name=args.name, behaviour=behaviour,
                         allow_public_targets=args.allow_public)
    except LabError as exc:  # a value the options gave
        raise UsageError(str(exc)) from exc


def _line(s: SrsSession) -> str:
    errors = sum(f.severity.value == "error" for f in s.sip_findings + s.metadata_findings)
    warnings = sum(f.severity.value == "warning" for f in s.sip_findings + s.metadata_findings)
    packets = ",".join(f"{k}:{v.packets}" for k, v in s.labels.items()) or "-"
    return (f"{s.session_id} {s.state} status={s.final_status or '-'} "
            f"bye={s.bye_from or '-'} call-id={s.call_id} packets={packets} "
            f"findings={errors}E/{warnings}W json={s.json_path or '-'}")


def _report(ended: queue.Queue[SrsSession], as_json: bool, timeout: float) -> None:
    try:
        s = ended.get(timeout=timeout) if timeout > 0 else ended.get_nowait()
    except queue.Empty:
        return
    while True:
        if as_json:
            print(json.dumps(s.to_dict(), sort_keys=True), flush=True)
        else:
            print(_line(s), flush=True)
        try:
            s = ended.get_nowait()
        except queue.Empty:
            return


def run(args: argparse.Namespace) -> int:
    from ..lab.srs import SrsServer

    cfg = _config(args)
    ended: queue.Queue[SrsSession] = queue.Queue()
    stop = threading.Event()
    server = SrsServer(cfg, on_session_end=ended.put)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        print(f"siprecctl srs: {cfg.name} listening on {server.uri} "
              f"({','.join(cfg.transports)}), RTP {cfg.rtp_port_min}-{cfg.rtp_port_max}, "
              f"recording to {cfg.record_dir}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.run_for if args.run_for is not None else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            _report(ended, args.json, 0.2)
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    _report(ended, args.json, 0)  # sessions closed by the shutdown
    return 0
