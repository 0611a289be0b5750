"""Calls through the lab: sipp on the ``caller`` host → the ``edge`` → sipp on ``callee``.

A run places ``calls`` calls at ``rate`` per second, each lasting ``duration`` seconds
after the answer, optionally with RTP (the caller plays G.711 from the sip-tester pcap; the
callee echoes it) and with some calls opted out (``X-Record: no``). Meanwhile it collects
the edge's call events (an evapi observer), sipp's own counters (its statistics file, every
second) and the CPU time and memory of every lab process (from /proc, every second). Then
it waits until the controller has closed the run's recording sessions and the SRSs have
written their session records, and saves ``<lab dir>/runs/<run id>/run.json``, which
:mod:`.report` reads together with the controller's store and the SRS records.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LabError
from . import sipp
from .hosts import Lab, proc_usage

__all__ = ["CallProgress", "UsageSampler", "place_calls", "runs_dir"]


def runs_dir(lab_dir: Path) -> Path:
    return Path(lab_dir) / "runs"


@dataclass
class CallProgress:
    """sipp's counters (summed over the run's sipp processes) and the edge's answers."""

    total: int
    placed: int = 0
    completed: int = 0  # sipp: SuccessfulCall
    failed: int = 0
    current: int = 0
    answered: int = 0  # answered events at the edge

    @property
    def done(self) -> int:
        return self.completed + self.failed


def read_sipp_stat(path: Path) -> dict[str, int]:
    """The last line of a sipp ``-trace_stat`` file: cumulative counters by name."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if r]
    if len(rows) < 2:
        return {}
    out: dict[str, int] = {}
    for key, value in zip(rows[0], rows[-1], strict=False):
        if key in ("OutgoingCall(C)", "SuccessfulCall(C)", "FailedCall(C)", "CurrentCall"):
            try:
                out[key] = int(value)
            except ValueError:
                pass
    return out


class UsageSampler(threading.Thread):
    """CPU seconds and memory (PSS, MB) of every lab process, every ``interval`` s."""

    def __init__(self, lab: Lab, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="lab-usage")
        self.lab = lab
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def sample(self) -> None:
        row: dict[str, Any] = {"t": time.time()}
        for name in self.lab.reg["order"]:
            rec = self.lab.reg["processes"][name]
            usage = proc_usage(int(rec["pid"])) if rec.get("pid") else None
            if usage is not None:
                row[name] = {"pid": rec["pid"], "cpu_s": usage[0], "mem_mb": usage[1]}
        self.samples.append(row)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def finish(self) -> dict[str, dict[str, float]]:
        """Stop sampling; per process: CPU seconds used during the run (a restarted process
        counts both lives) and peak memory."""
        self._halt.set()
        self.join(5)
        self.sample()
        out: dict[str, dict[str, float]] = {}
        for name in self.lab.reg["order"]:
            seen = [(r[name]["pid"], r[name]["cpu_s"], r[name]["mem_mb"])
                    for r in self.samples if name in r]
            if not seen:
                continue
            cpu = 0.0
            for (pid0, c0, _), (pid1, c1, _) in zip(seen, seen[1:], strict=False):
                cpu += c1 - c0 if pid1 == pid0 else c1
            out[name] = {"cpu_s": round(cpu, 3), "mem_mb_peak": round(max(m for *_, m in seen), 1)}
        return out


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def place_calls(lab: Lab, *, calls: int, rate: float, duration: float, rtp: bool = False,
                opt_out: int = 0, run_id: str | None = None, label: str = "",
                progress: Callable[[CallProgress], None] | None = None,
                during: Callable[[float], None] | None = None,
                settle: float = 20.0, edges: list[str] | None = None) -> dict[str, Any]:
    """Place the calls (see the module docstring); returns the run record (also saved).
    ``during(elapsed)`` is called about every 0.2 s while sipp runs (drills act there).
    With several edges (the scale lab) the calls are spread evenly over ``edges`` (default
    every edge), one sipp per edge and kind of call."""
    if calls < 1 or rate <= 0 or duration < 0 or not 0 <= opt_out <= calls:
        raise LabError("calls ≥ 1, rate > 0, duration ≥ 0 and 0 ≤ opt-out ≤ calls expected")
    run_id = run_id or _new_run_id()
    rdir = runs_dir(lab.dir) / run_id
    rdir.mkdir(parents=True, exist_ok=False)
    cwd = sipp.workdir(rdir)
    targets = [t for t in lab.call_targets() if edges is None or t[0] in edges]
    if not targets or (edges is not None and len(targets) != len(set(edges))):
        raise LabError(f"edges {edges}: the lab's edges are "
                       f"{', '.join(n for n, _ in lab.call_targets())}")
    caller = lab.address("caller")
    port = int(lab.reg["caller"]["port"])
    mp = lab.reg["caller"].get("media_port")
    tag = f"LAB-{run_id}"
    recorded = calls - opt_out
    plan = [(edge, target, kind, n, x_record)
            for kind, total, x_record in (("rec", recorded, "yes"), ("optout", opt_out, "no"))
            for (edge, target), n in zip(targets, _spread(total, len(targets)), strict=True)]
    timeout = int(calls / rate + duration + 60)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    sampler = UsageSampler(lab)
    state = CallProgress(total=calls)
    answered: dict[str, dict[str, Any]] = {}
    ended: dict[str, float] = {}
    t0 = time.time()
    with lab.events() as events:
        sampler.start()
        try:
            for i, (edge, target, kind, n, x_record) in enumerate(plan):
                if n == 0:
                    continue
                name = kind if len(targets) == 1 else f"{kind}-{edge}"
                stat = rdir / f"sipp-{name}.csv"
                extra = ["-trace_stat", "-stf", str(stat), "-fd", "1"]
                if mp is not None:
                    extra += ["-mp", str(int(mp) + 10 * i)]
                argv = sipp.uac_argv(cwd, target, local=(caller, port + i), calls=n,
                                     duration_ms=int(duration * 1000), record=x_record,
                                     customer=f"{tag}-{kind}", rate=max(0.1, rate * n / calls),
                                     rtp=rtp, timeout_s=timeout, extra=extra)
                log = open(rdir / f"sipp-{name}.log", "wb")
                try:
                    p = subprocess.Popen(lab.argv_in("caller", argv), cwd=cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                finally:
                    log.close()
                procs.append((name, p, stat))
            deadline = time.monotonic() + timeout + 30
            while True:
                running = [p for _, p, _ in procs if p.poll() is None]
                now = [read_sipp_stat(f) for *_, f in procs]
                state.placed = sum(x.get("OutgoingCall(C)", 0) for x in now)
                state.completed = sum(x.get("SuccessfulCall(C)", 0) for x in now)
                state.failed = sum(x.get("FailedCall(C)", 0) for x in now)
                state.current = sum(x.get("CurrentCall", 0) for x in now)
                state.answered = sum(1 for e in list(events.events)
                                     if e.get("event") == "answered"
                                     and _tag(e).startswith(tag))
                if progress is not None:
                    progress(state)
                if during is not None:
                    during(time.time() - t0)
                if not running:
                    break
                if time.monotonic() > deadline:
                    for _, p, _ in procs:
                        p.kill()
                    raise LabError(f"sipp did not finish within {timeout + 30} s")
                time.sleep(0.2)
            sipp_done = time.time()
            # the last calls' events, then the controller's sessions and the SRS records
            _settle(lab, events, tag, settle)
        finally:
            for _, p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
            usage = sampler.finish()
        for e in list(events.events):
            if not _tag(e).startswith(tag):
                continue
            if e.get("event") == "answered":
                answered[e["call_id"]] = e
            elif e.get("event") in ("ended", "failed"):
                ended[e["call_id"]] = float(e.get("ts", 0))
    stats = {kind: read_sipp_stat(f) for kind, _, f in procs}
    record: dict[str, Any] = {
        "run_id": run_id, "label": label, "mode": lab.mode, "site": lab.reg["site"],
        "started_at": t0, "sipp_done_at": sipp_done, "finished_at": time.time(),
        "params": {"calls": calls, "rate": rate, "duration": duration, "rtp": rtp,
                   "opt_out": opt_out},
        "sipp": {kind: {"exit": p.returncode, **stats.get(kind, {})} for kind, p, _ in procs},
        "calls": {cid: {"answered_ts": float(e.get("ts", 0)), "ended_ts": ended.get(cid),
                        "rule": e.get("rule"), "record_local": bool(e.get("record_local")),
                        "siprec": e.get("siprec"), "from": e.get("from"), "to": e.get("to"),
                        "rtpengine": e.get("rtpengine"),
                        "opt_out": _tag(e).endswith("-optout")}
                  for cid, e in sorted(answered.items())},
        "usage": usage,
        "samples": sampler.samples,
    }
    (rdir / "run.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return record


def _spread(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal counts (the first ones get the remainder)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _tag(event: dict[str, Any]) -> str:
    headers = event.get("headers") or {}
    return str(headers.get("X-Customer-Id", "")) if isinstance(headers, dict) else ""


def _settle(lab: Lab, events: Any, tag: str, timeout: float) -> None:
    """Wait (bounded) until every answered call of the run ended at the edge, its
    recording sessions are closed in the controller's store, and each SRS wrote the
    records of the sessions that reached it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = [e for e in list(events.events) if _tag(e).startswith(tag)]
        answered = {e["call_id"] for e in evs if e.get("event") == "answered"}
        over = {e["call_id"] for e in evs if e.get("event") in ("ended", "failed")}
        if answered <= over:
            with lab.store() as store:
                if store is None:
                    return
                sessions = [s for cid in answered for s in store.for_call(cid)]
            if all(not s.open for s in sessions):
                # sessions that reached an SRS that still runs (a killed one writes nothing)
                alive = _running_srs_uris(lab)
                # (a failed session's SRS was lost: its record may never come)
                rs_ids = {a.rs_call_id for s in sessions if s.state.value == "closed"
                          for a in s.attempts
                          if a.outcome.endswith("answered") and a.srs_uri in alive}
                if rs_ids <= _srs_call_ids(lab.dir):
                    return
        time.sleep(0.5)


def _running_srs_uris(lab: Lab) -> set[str]:
    from .hosts import proc_alive, srs_uris

    return {uri for i, uri in enumerate(srs_uris(lab.site))
            if proc_alive(lab.reg["processes"].get(f"srs{i + 1}", {}))}


def _srs_call_ids(lab_dir: Path) -> set[str]:
    from .report import srs_records

    return set(srs_records(lab_dir))
