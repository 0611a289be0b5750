"""``siprecctl audit`` and the controller's completeness gauges on a fixture (no daemon):
edge record files, a controller store written through its own API, no recordings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.controller.messages import CallRecord, Loss
from orchestrator.controller.metrics import LedgerMonitor, Metrics, ledger_facts
from orchestrator.controller.session import RecordingSession, State
from orchestrator.controller.store import SessionStore
from orchestrator.site import validate_data
from tests.unit.test_audit_records import line

T0 = 1795800000.0
SRS = "sip:srs@127.0.0.1:5090"


def _site(tmp: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "fixture",
        "edges": [{"name": "edge1", "listen": [{"address": "127.0.0.1", "port": 5060}],
                   "trunks": [{"name": "phones", "uri": "sip:127.0.0.1:5080"}]}],
        "media": {"recording": {"dir": str(tmp / "rec")},
                  "nodes": [{"name": "rtp1", "interfaces": [{"name": "lab",
                                                              "address": "127.0.0.1"}],
                             "ports": {"port_min": 30000, "port_max": 30999}}]},
        "recording": {"default": True, "local": False, "siprec": "main",
                      "srs_groups": [{"name": "main", "servers": [{"uri": SRS}]}]},
        "controller": {"store": str(tmp / "state.sqlite")},
        "security": {"secrets_dir": str(tmp / "secrets")},
        "accounting": {"dir": str(tmp / "acc")},
    }


def _answered_and_ended(cid: str, t: float, length: float, **kw: str) -> str:
    kw.setdefault("local", "0")
    return (line(call_id=cid, at=f"{t:.6f}", answered=f"{t:.6f}", **kw) + "\n"
            + line(call_id=cid, kind="ended", at=f"{t + length:.6f}", answered=f"{t:.6f}",
                   duration_ms=str(int(length * 1000)), by="caller", **kw) + "\n")


def _session(cid: str, sid: str, est: float, until: float, state: State,
             reason: str) -> RecordingSession:
    s = RecordingSession(session_id=sid, call_id=cid, edge="edge1", node="rtp1", group="main",
                         slot=0, sub_to_tag=f"srs-{sid}", state=state, reason=reason,
                         srs_uri=SRS, created=est - 0.02, updated=until,
                         established_at=est, media_until=until, ended_at=until)
    s.history = [(est, "inviting", "established", "answered", SRS),
                 (until, "established", state.value, "done", reason)]
    return s


@pytest.fixture
def fixture_site(tmp_path: Path) -> Path:
    """Four calls: clean, failed over (3 s gap), answered while no controller ran, opted out."""
    acc = tmp_path / "acc" / "edge1"
    acc.mkdir(parents=True, mode=0o700)
    (acc / "calls_129.log").write_text(
        _answered_and_ended("clean", T0, 10)
        + _answered_and_ended("gap", T0 + 20, 30)
        + _answered_and_ended("down", T0 + 60, 10)
        + _answered_and_ended("opt", T0 + 80, 5, siprec="", rule="opt-out"))
    (acc / "calls_130.log").write_text(line(call_id="busy", kind="failed", sip_code="486",
                                            answered="", at=f"{T0 + 90:.6f}") + "\n")
    store = SessionStore(tmp_path / "state.sqlite")
    store.write(calls=[
        CallRecord("clean", "edge1", "rtp1", T0, "main", 1, "no", "default", False, T0 + 10),
        CallRecord("gap", "edge1", "rtp1", T0 + 20, "main", 1, "no", "default", False,
                   T0 + 50),
        CallRecord("opt", "edge1", "rtp1", T0 + 80, None, 0, "no", "opt-out", False, T0 + 85),
    ], sessions=[
        _session("clean", "s1", T0 + 0.02, T0 + 10, State.CLOSED, "BYE answered 200"),
        _session("gap", "s2", T0 + 20.02, T0 + 30, State.FAILED, "SRS down"),
        _session("gap", "s3", T0 + 33, T0 + 50, State.CLOSED, "BYE answered 200"),
    ], losses=[Loss("gap", "s2", 0, "srs_lost", 3.0, "SRS down (probes unanswered)",
                    T0 + 33)])
    store.close()
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(_site(tmp_path)))
    return path


def _audit(site: Path, *extra: str) -> list[str]:
    return ["audit", str(site), "--no-recordings", *extra]


def test_audit_table_summary_and_exit_code(fixture_site: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_audit(fixture_site)) == 1  # "down" is missing
    out = capsys.readouterr().out
    assert "calls not recorded in full (2)" in out
    assert "controller down" in out and "srs_lost 3.0 s" in out
    assert "required: 3   recorded: 1   with gaps: 1   missing: 1   not required: 1" in out
    assert "answered calls: 4 (0 in progress), failed attempts: 1" in out
    assert "completeness: 33.3% (recorded ÷ required)" in out


def test_audit_json(fixture_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_audit(fixture_site, "--json")) == 1
    doc = json.loads(capsys.readouterr().out)
    by_id = {e["call_id"]: e for e in doc["entries"]}
    assert {k: e["verdict"] for k, e in by_id.items()} == {
        "clean": "recorded", "gap": "recorded-with-gaps", "down": "missing",
        "opt": "not-required"}
    assert by_id["gap"]["gaps"] == [{"reason": "srs_lost", "seconds": 3.0, "start": T0 + 30,
                                     "slot": None, "srs": None,
                                     "detail": "SRS down (probes unanswered)"}]
    assert doc["summary"]["reasons"] == {"srs_lost": 1, "controller down": 1}
    assert doc["ok"] is False


def test_audit_window_leaves_the_missing_call_out(fixture_site: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    until = (T0 + 55)
    from datetime import datetime
    iso = datetime.fromtimestamp(until).isoformat()
    since = datetime.fromtimestamp(T0 - 1).isoformat()
    # the gap is 3 s of 30: 90 % coverage, below 0.99 but above 0.8
    assert main(_audit(fixture_site, "--since", since, "--until", iso, "--min-media",
                       "0.8")) == 0
    out = capsys.readouterr().out
    assert "required: 2   recorded: 1   with gaps: 1   missing: 0" in out


def test_audit_html_never_overwrites_nor_writes_into_recordings(
        fixture_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "audit.html"
    assert main(_audit(fixture_site, "--html", str(page))) == 1
    text = page.read_text()
    assert text.count("<svg") == 2 and "Completeness over time" in text
    assert "<script" not in text and 'href="http' not in text and "src=" not in text
    assert "controller down" in text
    capsys.readouterr()
    assert main(_audit(fixture_site, "--html", str(page))) == 2
    assert "exists; use --force" in capsys.readouterr().err
    page.write_text("old")
    assert main(_audit(fixture_site, "--html", str(page), "--force")) == 1
    assert page.read_text().startswith("<!DOCTYPE html>")
    inside = tmp_path / "rec" / "rtp1" / "audit.html"
    assert main(_audit(fixture_site, "--html", str(inside))) == 2
    assert "inside the recording directory" in capsys.readouterr().err
    assert not inside.exists()


def test_audit_fails_loudly_without_the_edges_records(
        fixture_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_audit(fixture_site, "--accounting", str(tmp_path / "elsewhere"))) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/elsewhere/edge1: no such directory" in err


def test_html_escapes_what_it_shows(fixture_site: Path, tmp_path: Path) -> None:
    acc = tmp_path / "acc" / "edge1" / "calls_131.log"
    acc.write_text(_answered_and_ended("<b>x</b>&", T0 + 100, 3))
    page = tmp_path / "p.html"
    main(_audit(fixture_site, "--html", str(page)))
    text = page.read_text()
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;&amp;" in text


def test_monitor_counts_and_gauges(fixture_site: Path) -> None:
    site = validate_data(yaml.safe_load(fixture_site.read_text()))
    metrics = Metrics()
    store = SessionStore(site.controller.store, readonly=True)
    mon = LedgerMonitor(site, metrics, store, lookback=10 ** 9)
    judged = mon.run_once(T0 + 500)
    assert sorted(e.call_id for e in judged) == ["clean", "down", "gap", "opt"]
    text = metrics.render().decode()
    assert 'siprecctl_ledger_calls_total{edge="edge1",group="main",site="fixture",' \
           'verdict="missing"} 1.0' in text
    assert 'siprecctl_ledger_missing_calls_total{reason="controller down",site="fixture"} ' \
           '1.0' in text
    assert 'siprecctl_ledger_gapped_calls_total{reason="srs_lost",site="fixture"} 1.0' in text
    assert 'siprecctl_ledger_completeness_ratio{edge="edge1",group="main",site="fixture"} ' \
           f'{1 / 3}' in text
    assert mon.run_once(T0 + 600) == []  # each call once
    store.close()
    mon.stop()


def test_ledger_facts_map_labels_and_attempts(fixture_site: Path) -> None:
    site = validate_data(yaml.safe_load(fixture_site.read_text()))
    store = SessionStore(site.controller.store, readonly=True)
    facts = ledger_facts(store, call_ids=["gap", "nope"])
    store.close()
    assert list(facts.calls) == ["gap"]
    assert [s.session_id for s in facts.sessions["gap"]] == ["s2", "s3"]
    assert [x.reason for x in facts.losses["gap"]] == ["srs_lost"]
    assert os.path.exists(site.controller.store)
