"""The "where the gap is" report section, and its table as stand-alone Markdown (``where_gap.md``) for the README."""
from __future__ import annotations

from semgap.analysis.gap import NO_TEST, GapRow
from semgap.analysis.verdicts import RunVerdicts
from semgap.report.render import Section, Table, pct

TITLE = "Where the gap is"
FILE_NAME = "where_gap.md"
HEADER = ("scenario", "model", "semantic", "bytes vs", "byte level", "byte reduction", "bytes verdict", "latency vs",
          "latency reduction", "latency verdict", "note")


def _verdict(verdict: str, binding: str | None) -> str:
    """A headline verdict with the baseline that binds it; a scenario without a test says so."""
    if verdict == NO_TEST or binding is None:
        return verdict
    return f"{verdict} (vs every blind; binding {binding})"


def explanation(rv: RunVerdicts) -> tuple[str, ...]:
    return (
        "Reduction = 1 - semantic / the strongest blind row that ran the scenario (positive: semantic cheaper): the "
        "blind row with the fewest bytes for the byte column, the one with the lowest latency for the latency column. "
        f"Matrix scenarios carry the headline verdict (H1 >= {rv.h1:.0%}, H2 >= {rv.h2:.0%}), judged against every "
        "blind baseline at once, and name its binding baseline (the smallest reduction). Batching (bytes per token, "
        "latency per decode step) and KV recovery (bytes and ms per recovery) give the reduction of medians over "
        f"rounds: {NO_TEST}. A reduction <= 0 means no gap there, and the note says so.", "")


def table(rows: list[GapRow]) -> Table:
    cells = [(r.scenario, r.model, r.candidate, r.bytes_baseline, r.byte_level, r.byte_reduction,
              _verdict(r.bytes_verdict, r.bytes_binding), r.latency_baseline, r.latency_reduction,
              _verdict(r.latency_verdict, r.latency_binding), r.note or None) for r in rows]
    return Table.from_rows("where_gap", TITLE, HEADER, cells, {"byte reduction": pct, "latency reduction": pct},
                           prose=("bytes verdict", "latency verdict", "note"))


def section(rv: RunVerdicts) -> Section:
    return Section(TITLE, explanation(rv), (table(rv.where_gap),))


def markdown(rv: RunVerdicts, run_id: str | None = None) -> str:
    """``where_gap.md``: the section as stand-alone Markdown, ready to paste into the README."""
    source = [f"Run {run_id}.", ""] if run_id else []
    return "\n".join([f"### {TITLE}", "", *source, *explanation(rv), *table(rv.where_gap).markdown()])
