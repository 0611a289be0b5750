"""The join: edge records + controller facts + recordings → one ledger entry per answered
call (sans-IO, deterministic for a given ``now``).

Time is cut into intervals. The time the policy wanted recorded is the call's media time
(answer to end) minus declared pauses (an operator's pause: RFC 7866 §7.1.1.1; holds are
not subtracted, the session stays up and records what is sent). A SIPREC session records
from its 2xx to when media stopped reaching its SRS, minus its pauses. The call is covered
where at least one session records (``simultaneous`` slots: any SRS counts); what is left
uncovered is a gap, named after the controller's losses that overlap it. An uncovered
stretch shorter than :data:`SETUP_ALLOWANCE` with no loss on it is set-up latency (the
answer → SRS 2xx round trip), not a gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .facts import ControllerFacts, ControllerLoss, ControllerSession, LocalRecording, MediaRead
from .ledger import Gap, LedgerEntry, LocalEntry, Policy, SessionEntry, StreamMedia, Verdict
from .records import EdgeCall

__all__ = ["MIN_EXPECTED", "SETUP_ALLOWANCE", "AuditOptions", "build_entry", "build_ledger", "paused_intervals"]

SETUP_ALLOWANCE = 1.0  # seconds (the controller counts a set-up later than 1 s as a loss)
CONTROLLER_DOWN = "controller down"
MIN_EXPECTED = 50  # packets: below this a stream is judged by its seconds, not its packets

Interval = tuple[float, float]


@dataclass(frozen=True)
class AuditOptions:
    now: float
    min_media: float = 0.99
    allowance: float = SETUP_ALLOWANCE
    local_settle: float = 35.0  # seconds after a call's end before its pcap must be final


# ------------------------------------------------------------------------------ intervals
def _norm(xs: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(x for x in xs if x[1] > x[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersect(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    return _norm((max(a, c), min(b, d)) for a, b in xs for c, d in ys)


def _subtract(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    out = _norm(xs)
    for c, d in _norm(ys):
        nxt: list[Interval] = []
        for a, b in out:
            nxt += [x for x in ((a, min(b, c)), (max(a, d), b)) if x[1] > x[0]]
        out = nxt
    return out


def _length(xs: Iterable[Interval]) -> float:
    return sum(b - a for a, b in xs)


def paused_intervals(history: Iterable[tuple[float, str, str, str, str]],
                     end: float) -> list[Interval]:
    """The spans a session spent paused, from its history (ts, from, to, event, detail)."""
    out: list[Interval] = []
    start: float | None = None
    for ts, frm, to, _event, _detail in history:
        if to == "paused" and frm != "paused":
            start = ts
        elif frm == "paused" and to != "paused" and start is not None:
            out.append((start, ts))
            start = None
    if start is not None:
        out.append((start, end))
    return _norm(out)


# ------------------------------------------------------------------------------ pieces
def _policy(edge: EdgeCall | None, facts: ControllerFacts, call_id: str) -> Policy:
    rec = edge.first if edge is not None and (edge.answered or edge.ended) else None
    if rec is not None:
        return Policy(rule=rec.rule or None, local=rec.local, siprec=rec.siprec,
                      required=rec.required, sampled_out=rec.sampled_out)
    c = facts.calls[call_id]
    return Policy(rule=c.rule, local=c.record_local, siprec=c.group, required=c.required)


def _received(rows: list[MediaRead]) -> dict[str, int]:
    """Packets rtpengine received per leg: the read at the call's end, else the latest."""
    out: dict[str, tuple[int, float, int]] = {}
    for r in rows:
        if r.role not in ("caller", "callee"):
            continue
        rank = (1 if r.why == "call end" else 0, r.ts, r.packets)
        if r.role not in out or rank > out[r.role]:
            out[r.role] = rank
    return {role: v[2] for role, v in out.items()}


def _local(wanted: bool, found: list[LocalRecording] | None, ended: float | None,
           opts: AuditOptions) -> LocalEntry:
    if found:
        problems = [p for r in found for p in r.problems]
        return LocalEntry(
            wanted=wanted, status="problem" if problems else "ok",
            files=[r.pcap_path or r.meta_path for r in found],
            packets=sum(r.packets or 0 for r in found),
            streams=[dict(s) for r in found for s in r.streams], problems=problems)
    if not wanted:
        return LocalEntry(wanted=False, status="not-wanted")
    if found is None:
        return LocalEntry(wanted=True, status="unchecked")
    if ended is None or opts.now - ended < opts.local_settle:
        return LocalEntry(wanted=True, status="pending")
    return LocalEntry(wanted=True, status="missing")


def _gap_reason(g: Interval, losses: list[ControllerLoss]) -> tuple[list[str], str]:
    """The losses that explain the uncovered stretch ``g``: a loss spans [ts - seconds, ts]
    (``ts`` may lag its true end by the controller's processing delay), so it explains
    ``g`` when they overlap by at least half the shorter of the two."""
    reasons: list[str] = []
    details: list[str] = []
    for x in losses:
        if x.seconds <= 0:
            continue
        overlap = min(x.ts, g[1]) - max(x.ts - x.seconds, g[0])
        if overlap >= 0.5 * min(x.seconds, g[1] - g[0]) and x.reason not in reasons:
            reasons.append(x.reason)
            details.append(x.detail)
    return reasons, "; ".join(details)


def _setup_reason(sessions: list[ControllerSession], g: Interval) -> tuple[list[str], str]:
    """A stretch from the answer to the first SRS 2xx that the controller counted as no
    loss (it counts queueing lag only): SRSs that failed first, or a slow answer."""
    failed = [f"{srs}: {outcome or 'no outcome'}" for s in sessions
              for srs, outcome in s.attempts if not outcome.endswith("answered")]
    if failed:
        return ["setup_failover"], "; ".join(failed[:3])
    return ["setup_slow"], f"the first SRS 2xx came {g[1] - g[0]:.2f} s after the answer"


def _session(s: ControllerSession, need: list[Interval], window_end: float,
             media_time: float, rx: dict[str, int], losses: list[ControllerLoss],
             srs_counts: Mapping[str, Mapping[str, int]] | None
             ) -> tuple[SessionEntry, list[Interval]]:
    stop = next((t for t in (s.media_until, s.ended) if t is not None), window_end)
    paused = paused_intervals(s.history, stop)
    mine: list[Interval] = []
    # a loss counted on the session itself is time it did not record (e.g. node_lost: the
    # fork died with its rtpengine node and was re-created in the same session)
    lost = [(x.ts - x.seconds, x.ts) for x in losses
            if x.session_id == s.session_id and x.seconds > 0]
    if s.established is not None:
        mine = _intersect(_subtract([(s.established, stop)], paused + lost), need)
    covered = _length(mine)
    gaps = [Gap(x.reason, x.seconds, x.ts - x.seconds, x.slot, s.srs, x.detail)
            for x in losses if x.session_id == s.session_id]
    counts: dict[str, int] = {}
    if srs_counts is not None:
        for rs in s.rs_call_ids:
            for label, n in (srs_counts.get(rs) or {}).items():
                counts[label] = counts.get(label, 0) + n
    media = []
    for label in sorted(set(s.labels) | set(counts)):
        leg = s.labels.get(label)
        received = rx.get(leg) if leg else None
        expected = (received * covered / media_time
                    if received is not None and media_time > 0 else None)
        delivered = counts.get(label) if srs_counts is not None else None
        # a few packets' expectation is noise (the rate is not even near a call's edges)
        ratio = (delivered / expected if delivered is not None and expected is not None
                 and expected >= MIN_EXPECTED else None)
        media.append(StreamMedia(label, leg, delivered, received,
                                 None if expected is None else round(expected, 1),
                                 None if ratio is None else round(ratio, 4)))
    entry = SessionEntry(session_id=s.session_id, slot=s.slot, srs=s.srs, state=s.state,
                         reason=s.reason, established=s.established,
                         ended=s.media_until if s.media_until is not None else s.ended,
                         covered=round(covered, 3), paused=round(_length(paused), 3),
                         gaps=gaps, media=media)
    return entry, mine


def _siprec(e: LedgerEntry, call_id: str, facts: ControllerFacts, window_end: float,
            srs_counts: Mapping[str, Mapping[str, int]] | None, opts: AuditOptions) -> None:
    """Sessions, coverage, gaps and the SIPREC reasons of ``e`` (SIPREC wanted)."""
    media_time = max(0.0, window_end - e.answered)
    if call_id not in facts.calls:
        e.required_seconds = round(media_time, 3)
        e.coverage = 0.0
        e.gaps = [Gap(CONTROLLER_DOWN, round(media_time, 3), e.answered, detail=(
            "the edge answered the call; the controller has no record of it"))]
        e.reasons.append(CONTROLLER_DOWN)
        return
    sessions = facts.sessions.get(call_id, [])
    losses = facts.losses.get(call_id, [])
    rx = _received(facts.media.get(call_id, []))
    paused = _norm(p for s in sessions for p in paused_intervals(
        s.history, next((t for t in (s.media_until, s.ended) if t is not None), window_end)))
    need = _subtract([(e.answered, window_end)], paused)
    e.paused = round(_length(_intersect(paused, [(e.answered, window_end)])), 3)
    e.required_seconds = round(_length(need), 3)
    covered: list[Interval] = []
    per_srs: dict[str, list[Interval]] = {}
    for s in sorted(sessions, key=lambda s: (s.slot, s.established or 0.0)):
        entry, mine = _session(s, need, window_end, media_time, rx, losses, srs_counts)
        e.sessions.append(entry)
        covered += mine
        if s.srs:
            per_srs.setdefault(s.srs, []).extend(mine)
    covered = _norm(covered)
    excused: list[Interval] = []  # set-up latency: counted as covered
    for g in _subtract(need, covered):
        reasons, detail = _gap_reason(g, losses)
        if covered and not reasons and g[1] - g[0] < opts.allowance:
            excused.append(g)
            continue
        if not reasons and covered and g[0] <= e.answered:
            reasons, detail = _setup_reason(sessions, g)
        e.gaps.append(Gap(", ".join(reasons) or "unexplained", round(g[1] - g[0], 3), g[0],
                          detail=detail))
    total = _length(need)
    e.coverage = round(_length(covered + excused) / total, 4) if total > 0 else 1.0
    e.srs_coverage = {u: round(_length(_norm(xs)) / total, 4) if total > 0 else 1.0
                      for u, xs in sorted(per_srs.items())}
    ratios = [m.ratio for s in e.sessions for m in s.media if m.ratio is not None]
    e.media_ratio = min(ratios) if ratios else None
    if not covered and total > 0:
        why = [x.reason for x in losses if x.seconds > 0 or x.session_id is None]
        if not why:  # the controller counted no loss: say what became of its sessions
            why = [f"no session established ({s.reason})" for s in sessions if s.reason]
        e.reasons.extend(dict.fromkeys(why) or ["no recording session"])
        return
    for gap in e.gaps:
        e.reasons.append(f"{gap.reason} {gap.seconds:.1f} s")
    if e.coverage < opts.min_media:
        e.reasons.append(f"coverage {e.coverage:.1%} < {opts.min_media:.0%}")
    for se in e.sessions:
        for m in se.media:
            if m.ratio is not None and m.ratio < opts.min_media:
                e.reasons.append(f"media {m.ratio:.1%} at {se.srs} label {m.label} "
                                 f"({m.leg or '?'}) < {opts.min_media:.0%}")


def build_entry(call_id: str, edge: EdgeCall | None, facts: ControllerFacts,
                local: list[LocalRecording] | None,
                srs_counts: Mapping[str, Mapping[str, int]] | None,
                opts: AuditOptions) -> LedgerEntry:
    """The ledger entry of one answered call (``edge`` and/or ``facts.calls[call_id]``).
    ``local``: the call's finished local recordings (None: not checked); ``srs_counts``:
    packets per label by RS Call-ID, from the SRSs' own records (None: unknown)."""
    ctl = facts.calls.get(call_id)
    policy = _policy(edge, facts, call_id)
    ans = edge.answered if edge is not None else None
    end = edge.ended if edge is not None else None
    answered = (ans.at if ans is not None else end.answered if end is not None and
                end.answered else ctl.answered if ctl is not None else 0.0)
    ended = end.at if end is not None else (ctl.ended if ctl is not None else None)
    first = edge.first if edge is not None and (ans or end) else None
    e = LedgerEntry(
        call_id=call_id, edge=first.edge if first else ctl.edge if ctl else "?",
        answered=answered, ended=ended, policy=policy,
        local=_local(policy.local, local, ended, opts), verdict=Verdict.NOT_REQUIRED,
        from_uri=first.from_uri if first else "", to_uri=first.to_uri if first else "",
        pai=first.pai if first else "", trunk=first.trunk if first else "",
        sources={"edge": first is not None, "controller": ctl is not None})
    window_end = ended if ended is not None else max(opts.now, answered)
    if policy.siprec:
        _siprec(e, call_id, facts, window_end, srs_counts, opts)
    for x in facts.losses.get(call_id, []):
        if x.reason == "operator_stop_local" and policy.local:
            e.reasons.append(f"local recording stopped: {x.detail}")
    local_bad = {"missing": "local recording missing",
                 "problem": "local recording: " + "; ".join(e.local.problems[:3])}
    if policy.local and e.local.status in local_bad:
        e.reasons.append(local_bad[e.local.status])
    if not policy.siprec and not policy.local:
        e.verdict = Verdict.NOT_REQUIRED
    elif policy.siprec and e.coverage == 0.0:
        e.verdict = Verdict.MISSING
    elif not policy.siprec and e.local.status == "missing":
        e.verdict = Verdict.MISSING
    elif e.reasons:
        e.verdict = Verdict.GAPS
    else:
        e.verdict = Verdict.RECORDED
    e.below_threshold = e.required and (
        e.verdict is Verdict.MISSING
        or (e.coverage is not None and e.coverage < opts.min_media)
        or (e.media_ratio is not None and e.media_ratio < opts.min_media))
    if first is None:
        e.reasons.append("no edge record")
    return e


def build_ledger(edge_calls: Mapping[str, EdgeCall], facts: ControllerFacts,
                 local: Mapping[str, list[LocalRecording]] | None,
                 srs_counts: Mapping[str, Mapping[str, int]] | None,
                 opts: AuditOptions, *, since: float = 0.0,
                 until: float | None = None) -> list[LedgerEntry]:
    """One entry per call answered in [since, until), by answer time."""
    hi = until if until is not None else float("inf")
    ids = {cid for cid, c in edge_calls.items() if c.answered or c.ended}
    ids |= set(facts.calls)
    out = []
    for cid in ids:
        e = build_entry(cid, edge_calls.get(cid), facts,
                        None if local is None else local.get(cid, []), srs_counts, opts)
        if since <= e.answered < hi:
            out.append(e)
    return sorted(out, key=lambda e: (e.answered, e.call_id))
