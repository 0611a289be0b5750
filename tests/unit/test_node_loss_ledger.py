"""The ledger after a node loss (no daemon): a fork re-created in the same recording session
leaves that session's ``node_lost`` seconds uncovered, so the call shows a gap named after
the loss rather than a clean recording."""

from __future__ import annotations

from orchestrator.audit import Verdict

from .test_audit_join import T0, Case, loss, session


def test_node_lost_inside_a_session_is_a_gap() -> None:
    e = Case(sessions=[session()], losses=[loss("node_lost", 2.3, T0 + 22.3)]).entry()
    assert e.verdict is Verdict.GAPS
    assert [(g.reason, g.seconds, g.start) for g in e.gaps] == [("node_lost", 2.3, T0 + 20.0)]
    assert e.coverage < 1.0
    assert any("node_lost" in r for r in e.reasons)


def test_without_the_loss_the_same_session_is_clean() -> None:
    e = Case(sessions=[session()]).entry()
    assert e.verdict is not Verdict.GAPS and not e.gaps
    assert e.coverage == 1.0
