"""What an audit says: the summary of a ledger, the table of every call that is not clean,
and a self-contained HTML page (inline SVG charts drawn by matplotlib; no server, no
script, no external file). Library code: returns data and strings, never prints."""

from __future__ import annotations

import html
import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .ledger import LedgerEntry, Verdict, reason_key

__all__ = ["Summary", "issue_rows", "render_html", "summarize"]

ROW_COLUMNS = ("answered", "call-id", "edge", "verdict", "policy", "coverage", "media",
               "local", "reason")


@dataclass
class Summary:
    since: float | None
    until: float | None
    generated: float
    min_media: float
    answered: int = 0
    failed_attempts: int = 0
    in_progress: int = 0  # answered, not ended: not judged yet
    required: int = 0
    recorded: int = 0
    with_gaps: int = 0
    missing: int = 0
    not_required: int = 0
    below_threshold: int = 0
    completeness: float | None = None  # recorded ÷ required
    coverage: float | None = None  # SIPREC seconds recorded ÷ seconds wanted
    local: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # calls by gap/missing reason
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The summary for people, one fact per line."""
        pct = _pct
        out = [
            f"answered calls: {self.answered} ({self.in_progress} in progress), "
            f"failed attempts: {self.failed_attempts}",
            f"required: {self.required}   recorded: {self.recorded}   with gaps: "
            f"{self.with_gaps}   missing: {self.missing}   not required: {self.not_required}",
            f"completeness: {pct(self.completeness)} (recorded ÷ required)   SIPREC "
            f"coverage: {pct(self.coverage)} of the seconds the policy wanted",
        ]
        if self.local:
            out.append("local recordings: " + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(self.local.items())))
        if self.below_threshold:
            out.append(f"{self.below_threshold} required call(s) missing or below "
                       f"{self.min_media:.0%} (coverage or media)")
        return out


def summarize(entries: list[LedgerEntry], *, since: float | None, until: float | None,
              generated: float, min_media: float, failed_attempts: int = 0,
              problems: list[str] | None = None) -> Summary:
    s = Summary(since, until, generated, min_media, failed_attempts=failed_attempts,
                problems=list(problems or []))
    want = have = 0.0
    local: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for e in entries:
        s.answered += 1
        if e.ended is None:
            s.in_progress += 1
            continue
        if e.policy.local:
            local[e.local.status] += 1
        if not e.required:
            s.not_required += 1
            continue
        s.required += 1
        s.recorded += e.verdict is Verdict.RECORDED
        s.with_gaps += e.verdict is Verdict.GAPS
        s.missing += e.verdict is Verdict.MISSING
        s.below_threshold += e.below_threshold
        if e.coverage is not None:
            want += e.required_seconds
            have += e.coverage * e.required_seconds
        # causes only: a coverage below the threshold is what the gaps already say
        for r in dict.fromkeys(reason_key(r) for r in e.reasons):
            if r != "coverage":
                reasons[r] += 1
    s.completeness = s.recorded / s.required if s.required else None
    s.coverage = have / want if want > 0 else None
    s.local, s.reasons = dict(local), dict(reasons.most_common())
    return s


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def issue_rows(entries: list[LedgerEntry]) -> list[tuple[str, ...]]:
    """One row per call that is not clean (ROW_COLUMNS): not recorded in full, or with a
    problem in its evidence (e.g. no edge record)."""
    rows: list[tuple[str, ...]] = []
    for e in entries:
        if e.verdict in (Verdict.RECORDED, Verdict.NOT_REQUIRED) and not e.reasons:
            continue
        if e.ended is None and e.verdict is not Verdict.MISSING:
            continue  # still up: judged when it has ended
        pol = e.policy.siprec or ("local" if e.policy.local else "-")
        rows.append((_when(e.answered), e.call_id, e.edge, e.verdict.value,
                     f"{pol} ({e.policy.rule or 'default'})", _pct(e.coverage),
                     _pct(e.media_ratio), e.local.status if e.policy.local else "-",
                     "; ".join(e.reasons) or "-"))
    return rows


# ------------------------------------------------------------------------------ HTML
_STEPS = (60, 300, 900, 3600, 6 * 3600, 86400)
_COLOURS = {"recorded": "#2e7d32", "recorded-with-gaps": "#f9a825", "missing": "#c62828"}


def _bins(entries: list[LedgerEntry]) -> tuple[int, list[tuple[float, Counter[str]]]]:
    judged = [e for e in entries if e.required and e.ended is not None]
    if not judged:
        return 60, []
    lo, hi = judged[0].answered, judged[-1].answered
    step = next((s for s in _STEPS if (hi - lo) / s <= 48), _STEPS[-1])
    start = lo - lo % step
    bins: dict[float, Counter[str]] = {}
    for e in judged:
        b = start + ((e.answered - start) // step) * step
        bins.setdefault(b, Counter())[e.verdict.value] += 1
    return step, sorted(bins.items())


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML declaration or DOCTYPE


def _charts(entries: list[LedgerEntry], summary: Summary) -> tuple[str, str]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "siprecctl",
                                "font.size": 9}):
        step, bins = _bins(entries)
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        ax = fig.subplots()
        if bins:
            xs = list(range(len(bins)))
            bottom = [0] * len(bins)
            for verdict, colour in _COLOURS.items():
                ys = [c[verdict] for _, c in bins]
                ax.bar(xs, ys, bottom=bottom, color=colour, label=verdict, width=0.8)
                bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
            fmt = "%H:%M" if step < 86400 else "%m-%d"
            every = max(1, len(bins) // 12)
            ax.set_xticks(xs[::every], [datetime.fromtimestamp(t).strftime(fmt)
                                        for t, _ in bins][::every])
            ax2 = ax.twinx()
            ax2.plot(xs, [c["recorded"] / max(1, sum(c.values())) * 100 for _, c in bins],
                     color="#1a237e", marker="o", markersize=3, label="completeness %")
            ax2.set_ylim(0, 105)
            ax2.set_ylabel("completeness %")
            handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
            fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8,
                       frameon=False)
        ax.set_ylabel(f"required calls per {step // 60} min" if step < 86400
                      else "required calls per day")
        ax.set_title("Completeness over time")
        timeline = _svg(fig)
        fig = Figure(figsize=(9, max(1.6, 0.35 * len(summary.reasons) + 1)),
                     layout="constrained")
        ax = fig.subplots()
        if summary.reasons:
            names = list(summary.reasons)[::-1]
            ax.barh(names, [summary.reasons[n] for n in names], color="#c62828")
        else:
            ax.text(0.5, 0.5, "no gaps", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_xlabel("calls")
        ax.set_title("Gap and missing reasons")
        return timeline, _svg(fig)


def render_html(entries: list[LedgerEntry], summary: Summary, *, site: str) -> str:
    """A self-contained page: summary, the two charts, the table of calls that are not
    clean, the problems met while reading the sources. Every value is HTML-escaped."""
    esc = html.escape
    timeline, reasons = _charts(entries, summary)
    rows = issue_rows(entries)
    head = "".join(f"<th>{esc(c)}</th>" for c in ROW_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows) or f'<tr><td colspan="{len(ROW_COLUMNS)}">none</td></tr>'
    problems = "".join(f"<li>{esc(p)}</li>" for p in summary.problems) or "<li>none</li>"
    window = f"{_when(summary.since) if summary.since else 'beginning'} – " \
             f"{_when(summary.until) if summary.until else _when(summary.generated)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>siprecctl audit: {esc(site)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
.summary li {{ margin: 0.2em 0; }}
</style></head><body>
<h1>Recording completeness: site {esc(site)}</h1>
<p>Calls answered {esc(window)}; generated {esc(_when(summary.generated))}.</p>
<ul class="summary">{"".join(f"<li>{esc(line)}</li>" for line in summary.lines())}</ul>
<figure>{timeline}</figure>
<figure>{reasons}</figure>
<h2>Calls not recorded in full ({len(rows)})</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Problems reading the evidence</h2>
<ul>{problems}</ul>
</body></html>
"""
