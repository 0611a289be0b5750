#!/usr/bin/env python3
"""NG throughput and latency: siprecctl's NgClient against a raw-socket floor.

Runs against one real rtpengine on loopback (started here, userspace, unless ``--ng`` names
a running one). For ``ping`` and ``query`` at concurrency 1, 8 and 64 it measures replies/s
and p50/p99 latency for

* **client** -- N threads sharing one :class:`NgClient` (UDP, JSON by default): cookie
  generation, encoding, reply matching by cookie, decoding and result checks included;
* **socket floor** -- N threads sharing one connected UDP socket, each sending pre-built
  datagrams (unique cookies, so rtpengine does the same work: its reply cache is keyed by
  cookie) and receiving one datagram per send, no parsing, no matching. A thread may take
  another thread's reply: the ceiling of the socket, not of any request/response API;
* **request floor** -- the same, but each thread waits for the reply to its own request:
  every waiting thread reads the socket and drops each reply into its owner's slot by
  cookie. No locks, no parsing, no retransmission: the least a client that returns each
  caller its own reply must do.

All use the same socket pattern (one socket, N threads, N requests in flight, blocking
socket with the receive timeout in the kernel, as the client's), so the ratios are the cost
of the client itself. The same comparison is made pipelined from one thread:
``NgClient.call_many`` with a window of N against a floor keeping N pre-built datagrams in
flight. Plus the CLI cold start: ``siprecctl ng ping`` next to rtpengine-utils' Perl
``rtpengine-ng-client ping``.

The floor's socket used to have a Python timeout (``settimeout``): CPython then polls
before every recv, and with 64 threads polling one socket every datagram woke all of
them, so the threaded floor collapsed at concurrency 64 and flattered the client. It now
blocks in ``recv`` with ``SO_RCVTIMEO`` (the kernel wakes one thread per datagram), like
the client.

    .venv/bin/python bench/ng_throughput.py [--runs 5] [--duration 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.daemons import Rtpengine, free_port  # noqa: E402
from orchestrator.ng import NgClient  # noqa: E402
from orchestrator.ng.codec import Encoding, bencode_encode, json_encode  # noqa: E402

CALL_ID = "bench-call"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 8\r\na=sendrecv\r\n")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def _run_threads(n: int, worker: Any, duration: float) -> tuple[int, float, list[float]]:
    """Start ``n`` workers, let them run ``duration`` s; (replies, elapsed, latencies).

    A worker stops counting once ``stop`` is set, and the elapsed time ends there: a
    request still in flight at the stop (or a thread slow to notice it) counts for nobody.
    """
    stop = threading.Event()
    lats: list[list[float]] = [[] for _ in range(n)]
    counts = [0] * n
    barrier = threading.Barrier(n + 1)

    def body(i: int) -> None:
        barrier.wait()
        counts[i] = worker(i, stop, lats[i])

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    return sum(counts), elapsed, [x for lst in lats for x in lst]


ENCODING: Encoding = "json"


def bench_client(addr: tuple[str, int], command: str, n: int, duration: float) -> dict[str, Any]:
    with NgClient(addr, timeout=5.0, encoding=ENCODING) as ng:
        if command == "ping":
            op: Any = ng.ping
        elif command == "query":
            op = lambda: ng.query(CALL_ID)  # noqa: E731
        else:  # "query+tags": and read the participants (converts most of the reply)
            op = lambda: ng.query(CALL_ID).tags  # noqa: E731

        def worker(i: int, stop: threading.Event, lat: list[float]) -> int:
            pc = time.perf_counter
            done = 0
            while not stop.is_set():
                t = pc()
                op()
                if stop.is_set():
                    break
                lat.append(pc() - t)
                done += 1
            return done

        count, elapsed, lats = _run_threads(n, worker, duration)
    return _result(count, elapsed, lats)


def bench_client_pipelined(addr: tuple[str, int], command: str, window: int,
                           duration: float) -> dict[str, Any]:
    """``NgClient.call_many``: one thread, ``window`` requests in flight."""
    params = None if command == "ping" else {"call-id": CALL_ID}
    read = command == "query+tags"  # and look up each reply's "tags"
    batch = [("query" if read else command, params)] * (window * 50)
    done = 0
    with NgClient(addr, timeout=5.0, encoding=ENCODING) as ng:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration:
            out = ng.call_many(batch, window=window)
            for r in out:
                if not isinstance(r, Exception):
                    done += 1
                    if read:
                        r.get("tags")
        elapsed = time.perf_counter() - t0
    return {"rps": done / elapsed, "count": done, "elapsed": elapsed}


def _datagrams(command: str, thread: int, count: int) -> list[bytes]:
    msg = {"command": command} if command == "ping" else {"command": "query", "call-id": CALL_ID}
    # (the floor of "query+tags" is the query floor: a raw socket reads nothing)
    body = json_encode(msg) if ENCODING == "json" else bencode_encode(msg)
    prefix = os.urandom(4).hex().encode()
    return [b"%s_%d_%d %s" % (prefix, thread, i, body) for i in range(count)]


def _raw_socket(addr: tuple[str, int], timeout: float) -> socket.socket:
    """The client's socket pattern: connected UDP, 1 MiB receive buffer, blocking, with the
    receive timeout in the kernel (SO_RCVTIMEO). Not Python's ``settimeout``: that polls
    before every send and recv, and with many threads blocked on one socket every datagram
    wakes all of them (the threaded floor then collapses at concurrency 64)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(addr)
    usec = int(timeout * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("@ll", usec // 1_000_000, usec % 1_000_000))
    return sock


def bench_floor(addr: tuple[str, int], command: str, n: int, duration: float,
                per_thread: int) -> dict[str, Any]:
    sock = _raw_socket(addr, 0.5)
    pre = [_datagrams(command, i, per_thread) for i in range(n)]

    def worker(i: int, stop: threading.Event, lat: list[float]) -> int:
        pc = time.perf_counter
        send, recv = sock.send, sock.recv
        dgrams = pre[i]
        done = 0
        while not stop.is_set() and done < len(dgrams):
            t = pc()
            send(dgrams[done])
            try:
                recv(65535)
            except BlockingIOError:  # lost: no retransmission in the floor, move on
                done += 1
                continue
            if stop.is_set():
                break
            lat.append(pc() - t)
            done += 1
        return len(lat)

    count, elapsed, lats = _run_threads(n, worker, duration)
    sock.close()
    return _result(count, elapsed, lats)


def bench_floor_routed(addr: tuple[str, int], command: str, n: int, duration: float,
                       per_thread: int) -> dict[str, Any]:
    """The request floor: as :func:`bench_floor`, but each thread waits for the reply to its
    own request, which any request/response API must do. Every waiting thread reads the
    shared socket and drops each reply into its owner's slot (a dict keyed by cookie); a
    thread returns when its slot is filled. No locks, no parsing, no retransmission. An
    owner whose reply another thread read sleeps in ``recv`` until some datagram wakes it
    (the kernel wakes readers in turn), so the short receive timeout only matters when the
    run winds down."""
    sock = _raw_socket(addr, 0.02)
    pre = [[(d[:d.index(b" ")], d) for d in _datagrams(command, i, per_thread)]
           for i in range(n)]
    slots: dict[bytes, bytes | None] = {}

    def worker(i: int, stop: threading.Event, lat: list[float]) -> int:
        pc = time.perf_counter
        send, recv = sock.send, sock.recv
        mine = pre[i]
        done = 0
        while not stop.is_set() and done < len(mine):
            cookie, dgram = mine[done]
            done += 1
            slots[cookie] = None
            t = pc()
            send(dgram)
            while slots[cookie] is None and pc() - t < 1.0:  # a lost reply: move on
                try:
                    d = recv(65535)
                except BlockingIOError:
                    continue
                c = d[:d.find(b" ", 0, 128)]
                if c in slots:
                    slots[c] = d
            if slots.pop(cookie) is None or stop.is_set():
                continue
            lat.append(pc() - t)
        return len(lat)

    count, elapsed, lats = _run_threads(n, worker, duration)
    sock.close()
    return _result(count, elapsed, lats)


def bench_pipelined(addr: tuple[str, int], command: str, window: int, duration: float,
                    total: int) -> dict[str, Any]:
    """One thread keeps ``window`` datagrams in flight (the socket's own ceiling)."""
    sock = _raw_socket(addr, 1.0)
    dgrams = _datagrams(command, 0, total)
    sent = got = 0
    t0 = time.perf_counter()
    end = t0 + duration
    for _ in range(window):
        sock.send(dgrams[sent])
        sent += 1
    while got < sent:
        try:
            sock.recv(65535)
        except BlockingIOError:
            break  # a lost datagram ends the run (no retransmission in the floor)
        got += 1
        if sent < total and time.perf_counter() < end:
            sock.send(dgrams[sent])
            sent += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"rps": got / elapsed, "count": got, "elapsed": elapsed}


def _result(count: int, elapsed: float, lats: list[float]) -> dict[str, Any]:
    return {"rps": count / elapsed, "count": count, "elapsed": elapsed, "lats": lats,
            "p50_us": percentile(lats, 50) * 1e6,
            "p99_us": percentile(lats, 99) * 1e6}


def cold_start(addr: tuple[str, int], runs: int) -> dict[str, float]:
    siprecctl = shutil.which("siprecctl", path=str(ROOT / ".venv" / "bin")) or "siprecctl"
    ours = [siprecctl, "ng", "ping", "--ng", f"{addr[0]}:{addr[1]}"]
    perl = ["rtpengine-ng-client", f"--proxy-address={addr[0]}", f"--proxy-port={addr[1]}",
            "ping"]
    out: dict[str, float] = {}
    # as installed: with a bytecode cache (this host sets PYTHONDONTWRITEBYTECODE, which
    # makes every run compile the package from source; that figure is reported too)
    cached = dict(os.environ)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    cached["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="ngbench-pyc-")
    nocache = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for name, argv, env in (("siprecctl_ng_ping_ms", ours, cached),
                            ("siprecctl_ng_ping_no_pyc_ms", ours, nocache),
                            ("perl_ng_client_ping_ms", perl, None)):
        subprocess.run(argv, capture_output=True, check=False, timeout=30, env=env)  # warm
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            p = subprocess.run(argv, capture_output=True, check=False, timeout=30, env=env)
            times.append((time.perf_counter() - t) * 1000)
            if p.returncode != 0:
                raise SystemExit(f"{argv[0]} failed: {p.stdout!r} {p.stderr!r}")
        out[name] = statistics.median(times)
    return out


def setup_call(addr: tuple[str, int]) -> None:
    with NgClient(addr) as ng:
        ng.offer(CALL_ID, "bench-a", SDP.format(port=7000), label="a")
        ng.answer(CALL_ID, "bench-a", "bench-b", SDP.format(port=7002), label="b")


def _merge(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Slices of one measurement → replies/s over all of them, latency percentiles over all
    samples."""
    count = sum(p["count"] for p in parts)
    out = {"rps": count / sum(p["elapsed"] for p in parts)}
    if "lats" in parts[0]:
        lats = [x for p in parts for x in p["lats"]]
        out["p50_us"] = percentile(lats, 50) * 1e6
        out["p99_us"] = percentile(lats, 99) * 1e6
    return out


def one_run(addr: tuple[str, int], duration: float, concurrency: list[int],
            slices: int) -> dict[str, Any]:
    """Client and floor alternate in ``slices`` slices of ``duration / slices`` each, so
    both see the same background load (this machine is shared) and their ratio is taken
    side by side."""
    res: dict[str, Any] = {}
    d = duration / slices
    for command in ("ping", "query", "query+tags"):
        for n in concurrency if command != "query+tags" else concurrency[:1]:
            parts: dict[str, list[dict[str, Any]]] = {
                "client": [], "floor": [], "routed": [], "pipelined": [],
                "client_pipelined": []}
            for _ in range(slices):
                c = bench_client(addr, command, n, d)
                parts["client"].append(c)
                # enough pre-built datagrams for 3x the client's rate
                per_thread = int(max(c["rps"], 1000) * d * 3 / n) + 100
                f = bench_floor(addr, command, n, d, per_thread)
                parts["floor"].append(f)
                parts["routed"].append(bench_floor_routed(addr, command, n, d, per_thread))
                parts["pipelined"].append(
                    bench_pipelined(addr, command, n, d, int(f["rps"] * d * 3) + 100))
                parts["client_pipelined"].append(bench_client_pipelined(addr, command, n, d))
            m = {k: _merge(v) for k, v in parts.items()}
            m["ratio"] = m["client"]["rps"] / m["floor"]["rps"]  # type: ignore[assignment]
            m["ratio_routed"] = (m["client"]["rps"]  # type: ignore[assignment]
                                 / m["routed"]["rps"])
            m["ratio_pipelined"] = (m["client_pipelined"]["rps"]  # type: ignore[assignment]
                                    / m["pipelined"]["rps"])
            res[f"{command}/{n}"] = m
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ng", help="HOST:PORT of a running rtpengine (default: start one)")
    ap.add_argument("--runs", type=int, default=5, help="repeat everything, report medians")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--slices", type=int, default=3,
                    help="client and floor alternate in this many slices per measurement")
    ap.add_argument("--cold-runs", type=int, default=20)
    ap.add_argument("--encoding", choices=("json", "bencode"), default="json",
                    help="NG encoding of the client and the floor's datagrams (default json)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global ENCODING
    ENCODING = "json" if args.encoding == "json" else "bencode"
    conc = [int(x) for x in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="ngbench-") as tmp:
        if args.ng:
            host, port = args.ng.rsplit(":", 1)
            addr = (host, int(port))
            rtp = None
        else:
            addr = ("127.0.0.1", free_port())
            lo = 45000
            # the lab's rendered config as shipped; only addresses, ports and dirs differ
            rtp = Rtpengine(ROOT / "rtpengine/rtp1/rtpengine.conf", Path(tmp), ng=addr,
                            overrides=[f"--listen-ng={addr[0]}:{addr[1]}",
                                       f"--listen-tcp-ng=127.0.0.1:{free_port('tcp')}",
                                       f"--listen-http=127.0.0.1:{free_port('tcp')}",
                                       f"--port-min={lo}", f"--port-max={lo + 99}",
                                       f"--recording-dir={tmp}"])
            rtp.start()
            rtp.wait_ready()
        try:
            runs = []
            for _ in range(args.runs):
                setup_call(addr)  # anew per run: the config's media timeout ends idle calls
                runs.append(one_run(addr, args.duration, conc, args.slices))
            cold = cold_start(addr, args.cold_runs)
        finally:
            if rtp is not None:
                rtp.stop()

    summary: dict[str, Any] = {}
    for key in runs[0]:
        def med(path: tuple[str, str], key: str = key) -> float:
            return statistics.median(r[key][path[0]][path[1]] for r in runs)
        summary[key] = {
            "client_rps": med(("client", "rps")), "client_p50_us": med(("client", "p50_us")),
            "client_p99_us": med(("client", "p99_us")), "floor_rps": med(("floor", "rps")),
            "floor_p50_us": med(("floor", "p50_us")), "floor_p99_us": med(("floor", "p99_us")),
            "routed_rps": med(("routed", "rps")), "routed_p50_us": med(("routed", "p50_us")),
            "routed_p99_us": med(("routed", "p99_us")),
            "ratio_routed": statistics.median(r[key]["ratio_routed"] for r in runs),
            "pipelined_rps": med(("pipelined", "rps")),
            "client_pipelined_rps": med(("client_pipelined", "rps")),
            "ratio": statistics.median(r[key]["ratio"] for r in runs),
            "ratio_pipelined": statistics.median(r[key]["ratio_pipelined"] for r in runs),
        }
    report = {"encoding": args.encoding, "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": sys.version.split()[0],
                          "platform": platform.platform()},
              "runs": args.runs, "duration_s": args.duration, "slices": args.slices,
              "results": summary,
              "cold_start": cold}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"# {report['machine']['cpu']}, {os.cpu_count()} cores, Python "
          f"{report['machine']['python']}; {args.encoding}; medians of {args.runs} runs x "
          f"{args.duration:g} s (client and floor alternating in {args.slices} slices)")
    print("| command | N | client rep/s | p50 µs | p99 µs | socket floor rep/s | p50 µs "
          "| p99 µs | client/socket floor | request floor rep/s | p50 µs | p99 µs "
          "| client/request floor | call_many rep/s | pipelined floor rep/s "
          "| call_many/floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, s in summary.items():
        cmd, n = key.split("/")
        print(f"| {cmd} | {n} | {s['client_rps']:,.0f} | {s['client_p50_us']:.0f} | "
              f"{s['client_p99_us']:.0f} | {s['floor_rps']:,.0f} | {s['floor_p50_us']:.0f} | "
              f"{s['floor_p99_us']:.0f} | {s['ratio']:.2f} | {s['routed_rps']:,.0f} | "
              f"{s['routed_p50_us']:.0f} | {s['routed_p99_us']:.0f} | {s['ratio_routed']:.2f} | "
              f"{s['client_pipelined_rps']:,.0f} | "
              f"{s['pipelined_rps']:,.0f} | {s['ratio_pipelined']:.2f} |")
    print(f"\nCLI cold start (median of {args.cold_runs}): siprecctl ng ping "
          f"{cold['siprecctl_ng_ping_ms']:.1f} ms (without bytecode cache "
          f"{cold['siprecctl_ng_ping_no_pyc_ms']:.1f} ms); rtpengine-ng-client ping "
          f"{cold['perl_ng_client_ping_ms']:.1f} ms")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
