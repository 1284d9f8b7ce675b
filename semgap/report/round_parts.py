"""The report's "A round taken apart" section: where each remote case's round goes (semgap.analysis.rounds),
whether the parts add up to pytest-benchmark's time, and semantic's reduction of the network share."""
from __future__ import annotations

from semgap.analysis import rounds
from semgap.analysis.verdicts import RunVerdicts
from semgap.report.render import Section, Table, fixed, pct


def off_sum(rv: RunVerdicts) -> list[rounds.RoundParts]:
    """The cases whose parts miss pytest-benchmark's round time by more than the tolerance."""
    return [p for p in rv.round_parts if not p.sums]


def section(rv: RunVerdicts) -> list[Section]:
    """One row per remote case (mean ms per round) and one per (semantic, blind baseline); [] without the figures."""
    if not rv.round_parts:
        return []
    names = [name for name, _ in rounds.PARTS]
    rows = [(p.model, p.phase, p.link_rate, p.label, p.rounds, p.benchmark_ms, *(p.parts[n] for n in names),
             p.sum_error, p.network_ms) for p in rv.round_parts]
    header = ("model", "phase", "rate", "mode", "rounds", "round ms", *names, "sum vs round", "network ms")
    ms = fixed(2)
    formats = {"round ms": ms, **{n: ms for n in names}, "sum vs round": pct, "network ms": ms}
    missed = off_sum(rv)
    warning = ((f"**Warning: the parts of {len(missed)} case(s) miss pytest-benchmark's round time by more than "
                f"{rounds.SUM_TOLERANCE:.0%}: {', '.join(f'{p.label} {p.phase} ({p.sum_error:+.1%})' for p in missed)}.**",
                "") if missed else ())
    text = ("Mean milliseconds per measured round. Client compute is the round minus the client's codec and "
            "transport time; in flight is the transport time minus the server's handler time (both kernels, the "
            "wire, the frames' MACs; below zero where the server works while the client does, as op_pipelined's "
            "posts let it); the server's parts are its own clocks, asked for between rounds so no round's bytes "
            "change. Server encode is timed alike for blind and semantic answers. 'sum vs round' compares the "
            f"parts with pytest-benchmark's own time of the same rounds (tolerance ±{rounds.SUM_TOLERANCE:.0%}). "
            "The network share is the round minus both sides' compute (semgap/analysis/rounds.py).")
    tables = [Table.from_rows("round_parts", "A round taken apart (mean ms per round)", header, rows, formats)]
    shares = rounds.network_shares(rv.round_parts)
    if shares:
        share_rows = [(s.model, s.phase, s.link_rate, s.baseline, s.round_reduction, s.semantic_network_ms,
                       s.baseline_network_ms, s.network_reduction) for s in shares]
        tables.append(Table.from_rows(
            "network_share", "Semantic against each blind baseline: the whole round and its network share",
            ("model", "phase", "rate", "baseline", "round reduction", "semantic network ms", "baseline network ms",
             "network-share reduction"), share_rows,
            {"round reduction": pct, "semantic network ms": ms, "baseline network ms": ms,
             "network-share reduction": pct}))
    after = ("", "Beside H2's whole-round reduction, the network-share reduction says how much of a round's wire "
             "cost semantic saves once both sides' compute is set aside (means, no test).", "")
    return [Section("A round taken apart", (*warning, text, ""), tuple(tables), after)]
