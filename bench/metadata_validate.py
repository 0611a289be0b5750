"""Benchmark: RFC 7865 documents validated per second, full validator vs lxml XSD alone.

The floor is what lxml alone costs: parse the bytes with the same safe parser and validate
against the same schema. The full validator adds the semantic pass (references, IDs, labels
against the SDP, times). Document: a realistic 2-participant/4-stream complete snapshot.
Prints the machine, then medians of several runs.

    .venv/bin/python bench/metadata_validate.py [--runs 7] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lxml import etree

from orchestrator.siprec import (
    CallInfo,
    RecordingSessionValidator,
    build_metadata,
    has_errors,
    recording_from_call,
)
from orchestrator.siprec.parse import safe_parser
from orchestrator.siprec.validator import schema

SDP = ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
       + "".join(f"m=audio {40000 + 2 * i} RTP/AVP 0\r\na=label:{96 + i}\r\na=sendonly\r\n"
                 for i in range(4)))


def document() -> bytes:
    labels = {str(96 + i): {"tag": "ft" if i < 2 else "tt", "type": "audio"} for i in range(4)}
    call = CallInfo('"Alice" <sip:alice@atlanta.example.com>;tag=ft',
                    '"Bob" <sip:bob@biloxi.example.com>;tag=tt', "ft", "tt",
                    sip_session_id="ab30317f1a784dc48ff824d0d3715d86;"
                                   "remote=47755a9de7794ba387653f2099600ef2",
                    start_time=datetime(2024, 5, 1, 10, 0, tzinfo=UTC), lang="en")
    return build_metadata(recording_from_call(call, {"media-labels": labels}))


def rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="duration of one run")
    args = ap.parse_args(argv)
    doc = document()
    parser = safe_parser()
    sch = schema()
    validator = RecordingSessionValidator()
    if has_errors(validator.validate(doc, sdp=SDP)):
        print("benchmark document does not validate", file=sys.stderr)
        return 1

    def floor() -> bool:
        return bool(sch.validate(etree.fromstring(doc, parser)))

    def full() -> object:
        return validator.validate(doc, sdp=SDP)

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
          f"lxml {etree.__version__}, libxml2 {'.'.join(map(str, etree.LIBXML_VERSION))}")
    print(f"document: {len(doc)} bytes, 2 participants, 4 streams; {args.runs} runs of "
          f"{args.seconds:g} s, medians")
    floors, fulls, ratios = [], [], []
    gc.disable()  # as timeit does: measure the code, not the collector's schedule
    try:
        for _ in range(args.runs):  # interleaved and paired, so load drift hits both alike
            f, v = rate(floor, args.seconds), rate(full, args.seconds)
            floors.append(f)
            fulls.append(v)
            ratios.append(v / f)
    finally:
        gc.enable()
    f_med, v_med, r_med = (statistics.median(x) for x in (floors, fulls, ratios))
    print(f"lxml XSD only (floor): {f_med:10,.0f} docs/s")
    print(f"full validator:        {v_med:10,.0f} docs/s")
    print(f"ratio full/floor:      {r_med:10.2f}  (median of paired runs; target >= 0.5, "
          "and >= 5,000 docs/s)")
    return 0 if v_med >= 5000 and r_med >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
