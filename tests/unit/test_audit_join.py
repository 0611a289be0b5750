"""The ledger's join, table-driven (no daemon): edge records + controller facts + local
recordings + SRS counts → verdict, reasons, coverage, gaps and media per stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.audit import (
    LEDGER_SCHEMA,
    AuditOptions,
    ControllerCall,
    ControllerFacts,
    ControllerLoss,
    ControllerSession,
    EdgeCall,
    EdgeRecord,
    LedgerEntry,
    LocalRecording,
    MediaRead,
    Verdict,
    build_entry,
    build_ledger,
    paused_intervals,
)

T0 = 1795800000.0
END = T0 + 60.0
SRS_A, SRS_B = "sip:srs@10.0.0.1", "sip:srs@10.0.0.2"
LABELS = {"0": "caller", "1": "callee"}


def edge(cid: str = "c1", *, siprec: str | None = "main", local: bool = True,
         rule: str = "default", ended: float | None = END, sampled: bool = False) -> EdgeCall:
    common: dict[str, Any] = dict(edge="edge1", call_id=cid, code=200, reason="OK",
                                  rule=rule, local=local, siprec=siprec, sampled_out=sampled,
                                  invited=T0 - 1, answered=T0, from_uri="sip:alice@lab",
                                  to_uri="sip:bob@lab", trunk="phones")
    c = EdgeCall(cid, answered=EdgeRecord(kind="answered", at=T0, **common))
    if ended is not None:
        c.ended = EdgeRecord(kind="ended", at=ended, duration=ended - T0, by="caller", **common)
    return c


@dataclass
class Case:
    edge: EdgeCall | None = field(default_factory=edge)
    call: ControllerCall | None = field(default_factory=lambda: ControllerCall(
        "c1", "edge1", "main", 1, "no", "default", True, T0, END, "BYE by caller"))
    sessions: list[ControllerSession] = field(default_factory=list)
    losses: list[ControllerLoss] = field(default_factory=list)
    media: list[MediaRead] = field(default_factory=list)
    local: list[LocalRecording] | None = field(default_factory=lambda: [LocalRecording(
        "c1", "ok", "/rec/m.txt", "/rec/c1.pcap", 6000, ({"port": 1, "packets": 3000},))])
    srs: dict[str, dict[str, int]] | None = None
    now: float = END + 100

    def entry(self, min_media: float = 0.99) -> LedgerEntry:
        facts = ControllerFacts()
        if self.call is not None:
            facts.add_call(self.call)
            facts.sessions["c1"] = self.sessions
            facts.losses["c1"] = self.losses
            facts.media["c1"] = self.media
        return build_entry("c1", self.edge, facts, self.local, self.srs,
                           AuditOptions(now=self.now, min_media=min_media))


def session(sid: str = "s1", *, slot: int = 0, srs: str = SRS_A, est: float | None = T0 + 0.03,
            until: float | None = END, state: str = "closed",
            history: tuple[tuple[float, str, str, str, str], ...] = (),
            rs: tuple[str, ...] = ("rs-1",)) -> ControllerSession:
    return ControllerSession(sid, "c1", slot, srs, state, "BYE answered 200", est, until,
                             until, rs, history, dict(LABELS))


def loss(reason: str, seconds: float, ts: float, sid: str | None = "s1",
         slot: int | None = 0) -> ControllerLoss:
    return ControllerLoss("c1", sid, slot, reason, seconds, f"{reason} detail", ts)


def rx(caller: int = 3000, callee: int = 3000) -> list[MediaRead]:
    return [MediaRead("c1", None, END + 0.1, "call end", "caller", "ft", caller),
            MediaRead("c1", None, END + 0.1, "call end", "callee", "tt", callee)]


PAUSE = ((T0 + 0.03, "inviting", "established", "answered", ""),
         (T0 + 20, "established", "paused", "pause", "paused"),
         (T0 + 30, "paused", "established", "resume", "resumed"))

CASES: dict[str, tuple[Case, Callable[[LedgerEntry], Any]]] = {
    "clean: set-up latency is not a gap": (
        Case(sessions=[session()], media=rx(), srs={"rs-1": {"0": 2998, "1": 2998}}),
        lambda e: (e.verdict, e.coverage, e.gaps, e.reasons, e.below_threshold,
                   e.media_ratio is not None and e.media_ratio > 0.99)
        == (Verdict.RECORDED, 1.0, [], [], False, True)),
    "controller down: from the edge's records alone": (
        Case(call=None),
        lambda e: (e.verdict, e.reasons, [g.reason for g in e.gaps], e.gaps[0].seconds,
                   e.sources, e.local.status)
        == (Verdict.MISSING, ["controller down"], ["controller down"], 60.0,
            {"edge": True, "controller": False}, "ok")),
    "opted out": (
        Case(edge=edge(siprec=None, local=False, rule="opt-out"), local=[],
             call=ControllerCall("c1", "edge1", None, 0, "no", "opt-out", False, T0, END)),
        lambda e: (e.verdict, e.reasons, e.coverage, e.local.status, e.required)
        == (Verdict.NOT_REQUIRED, [], None, "not-wanted", False)),
    "sampled out": (
        Case(edge=edge(siprec=None, local=False, rule="qa", sampled=True), call=None),
        lambda e: (e.verdict, e.policy.sampled_out) == (Verdict.NOT_REQUIRED, True)),
    "SRS lost, failover: the gap and its reason": (
        Case(sessions=[session(until=T0 + 19.0, state="failed"),
                       session("s2", srs=SRS_B, est=T0 + 22.1, rs=("rs-2",))],
             losses=[loss("srs_lost", 3.1, T0 + 22.1)]),
        lambda e: (e.verdict, [(g.reason, g.seconds) for g in e.gaps], e.reasons,
                   e.srs_coverage, [g.reason for g in e.sessions[0].gaps])
        == (Verdict.GAPS, [("srs_lost", 3.1)], ["srs_lost 3.1 s", "coverage 94.8% < 99%"],
            {SRS_A: 0.3162, SRS_B: 0.6317}, ["srs_lost"])),
    "an early loss does not claim the set-up latency": (
        Case(sessions=[session(until=T0 + 0.7, state="failed"),
                       session("s2", srs=SRS_B, est=T0 + 3.8, rs=("rs-2",))],
             losses=[loss("srs_lost", 3.1, T0 + 3.8, sid="s2")]),
        lambda e: [(g.reason, g.seconds) for g in e.gaps] == [("srs_lost", 3.1)]),
    "set-up that failed over first: named from the attempts": (
        Case(sessions=[ControllerSession(
            "s1", "c1", 0, SRS_B, "closed", "", T0 + 2.0, END, END, ("rs-1", "rs-2"), (),
            dict(LABELS), ((SRS_A, "no answer in 2 s"), (SRS_B, "200 answered")))]),
        lambda e: [(g.reason, g.seconds, g.detail) for g in e.gaps]
        == [("setup_failover", 2.0, f"{SRS_A}: no answer in 2 s")]),
    "a slow set-up the controller did not count": (
        Case(sessions=[session(est=T0 + 1.5)]),
        lambda e: [(g.reason, g.detail) for g in e.gaps]
        == [("setup_slow", "the first SRS 2xx came 1.50 s after the answer")]),
    "a gap no loss explains is 'unexplained'": (
        Case(sessions=[session(until=T0 + 30)]),
        lambda e: ([(g.reason, g.seconds) for g in e.gaps], e.verdict)
        == ([("unexplained", 30.0)], Verdict.GAPS)),
    "declared pause: not a loss, not required": (
        Case(sessions=[session(history=PAUSE)], media=rx(),
             srs={"rs-1": {"0": 2500, "1": 2500}}),
        lambda e: (e.verdict, e.paused, e.required_seconds, e.coverage, e.gaps,
                   e.sessions[0].paused, [m.expected for m in e.sessions[0].media])
        == (Verdict.RECORDED, 10.0, 50.0, 1.0, [], 10.0, [2498.5, 2498.5])),
    "simultaneous: one SRS for every second is complete": (
        Case(call=ControllerCall("c1", "edge1", "main", 2, "no", "default", True, T0, END),
             sessions=[session(until=T0 + 30, state="failed"),
                       session("s2", slot=1, srs=SRS_B, rs=("rs-2",))],
             losses=[loss("no_srs", 30.0, END)]),
        lambda e: (e.verdict, e.coverage, e.srs_coverage, e.gaps)
        == (Verdict.RECORDED, 1.0, {SRS_A: 0.4995, SRS_B: 0.9995}, [])),
    "no SRS took it: missing, with the controller's reason": (
        Case(sessions=[session(est=None, until=None, state="failed")],
             losses=[loss("no_srs", 60.0, END)]),
        lambda e: (e.verdict, e.reasons, [g.reason for g in e.gaps], e.below_threshold)
        == (Verdict.MISSING, ["no_srs"], ["no_srs"], True)),
    "controller saw it, nothing set up, no loss": (
        Case(),
        lambda e: (e.verdict, e.reasons) == (Verdict.MISSING, ["no recording session"])),
    "sessions closed unestablished, no loss counted: their fate is the reason": (
        Case(sessions=[ControllerSession("s1", "c1", 0, SRS_A, "closed",
                                         "the call ended while the controller was down",
                                         None, None, END + 5)]),
        lambda e: (e.verdict, e.reasons) == (Verdict.MISSING, [
            "no session established (the call ended while the controller was down)"])),
    "media below the threshold": (
        Case(sessions=[session()], media=rx(), srs={"rs-1": {"0": 2998, "1": 2500}}),
        lambda e: (e.verdict, e.below_threshold, e.media_ratio, e.reasons)
        == (Verdict.GAPS, True, 0.8338,
            [f"media 83.4% at {SRS_A} label 1 (callee) < 99%"])),
    "too few packets expected to judge a stream by them": (
        Case(sessions=[session(est=END - 0.5)], media=rx(), srs={"rs-1": {"0": 0, "1": 0}}),
        lambda e: [(m.expected, m.delivered, m.ratio) for m in e.sessions[0].media]
        == [(25.0, 0, None), (25.0, 0, None)]),
    "local only, recording missing": (
        Case(edge=edge(siprec=None), local=[],
             call=ControllerCall("c1", "edge1", None, 0, "no", "default", True, T0, END)),
        lambda e: (e.verdict, e.reasons) == (Verdict.MISSING, ["local recording missing"])),
    "local wanted, call just ended: pending, not missing": (
        Case(edge=edge(siprec=None), local=[], call=None, now=END + 2),
        lambda e: (e.verdict, e.local.status) == (Verdict.RECORDED, "pending")),
    "local recording with a problem": (
        Case(sessions=[session()], local=[LocalRecording(
            "c1", "problem", "/m", "/p", 10, (), ("pcap truncated: /p",))]),
        lambda e: (e.verdict, e.reasons)
        == (Verdict.GAPS, ["local recording: pcap truncated: /p"])),
    "local recordings not checked here": (
        Case(sessions=[session()], local=None),
        lambda e: (e.verdict, e.local.status) == (Verdict.RECORDED, "unchecked")),
    "controller's facts without an edge record": (
        Case(edge=None, sessions=[session()]),
        lambda e: (e.verdict, e.reasons, e.sources["edge"], e.policy.siprec)
        == (Verdict.RECORDED, ["no edge record"], False, "main")),
    "still up: judged up to now": (
        Case(edge=edge(ended=None), call=ControllerCall("c1", "edge1", "main", 1, "no",
                                                        "default", True, T0),
             sessions=[session(until=None, state="established")], local=[], now=T0 + 10),
        lambda e: (e.ended, e.coverage, e.verdict, e.local.status)
        == (None, 1.0, Verdict.RECORDED, "pending")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_join(name: str) -> None:
    case, check = CASES[name]
    e = case.entry()
    assert check(e), e
    _conforms(e.to_dict(), LEDGER_SCHEMA, "entry")


def test_paused_intervals() -> None:
    assert paused_intervals(PAUSE, END) == [(T0 + 20, T0 + 30)]
    still = PAUSE[:2] + ((END, "paused", "terminating", "call_ended", ""),)
    assert paused_intervals(still, END + 5) == [(T0 + 20, END)]
    assert paused_intervals(PAUSE[:2], END) == [(T0 + 20, END)]
    assert paused_intervals((), END) == []


def test_build_ledger_windows_by_answer_time_and_unions_the_sources() -> None:
    facts = ControllerFacts()
    facts.add_call(ControllerCall("ctl-only", "edge1", None, 0, "no", "default", False,
                                  T0 + 5, T0 + 9))
    calls = {"c1": edge("c1"), "late": edge("late"),
             "failed": EdgeCall("failed", failed=[EdgeRecord("failed", "edge1", "failed",
                                                             T0, 486, "Busy")])}
    calls["late"].answered = EdgeRecord("answered", "edge1", "late", T0 + 100, 200, "OK")
    out = build_ledger(calls, facts, None, None, AuditOptions(now=END + 100),
                       since=T0 - 1, until=T0 + 50)
    assert [e.call_id for e in out] == ["c1", "ctl-only"]


# a small JSON Schema checker for the subset LEDGER_SCHEMA uses (no jsonschema dependency)
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool,
                          "integer": int, "number": (int, float), "null": type(None)}


def _conforms(value: Any, schema: dict[str, Any], at: str) -> None:
    if "const" in schema:
        assert value == schema["const"], at
    if "enum" in schema:
        assert value in schema["enum"], (at, value)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and
                                                         isinstance(value, bool))
                 for t in types)
        assert ok, (at, value, types)
    if isinstance(value, dict):
        for k in schema.get("required", []):
            assert k in value, (at, k)
        props = schema.get("properties", {})
        for k, v in value.items():
            sub = props.get(k, schema.get("additionalProperties"))
            assert sub is not None, f"{at}.{k} is not in the schema"
            _conforms(v, sub, f"{at}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _conforms(v, schema["items"], f"{at}[{i}]")
