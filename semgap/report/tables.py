"""The report's sections, each table built once as a DataFrame (see :mod:`semgap.report.render`) from a run's verdicts.

report.md prints every section; report.tex and ``tables/*.csv`` hold the same tables.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from semgap.analysis import ablation, costmodel, frames
from semgap.report import equal_compute, looks, model_shape, round_parts, scenarios, where_gap
from semgap.report.plots import format_bps
from semgap.report.render import Section, Table, count, fixed, general, pct, percent, ratio, share
from semgap.analysis.verdicts import LOSSY, PAYLOAD_ONLY_NOTE, Headline, RunVerdicts, Verdict

LEVEL_MEANING = {
    "tcp": "kernel TCP socket counters: each byte once, retransmissions excluded (judged)",
    "payload": f"bytes serialised by the mode ({PAYLOAD_ONLY_NOTE}; judged only where TCP was not counted)",
    "link": "veth interface counters, with TCP/IP headers and retransmissions (cross-check only, never judged)",
}
WHERE = ("model", "phase", "rate", "steps")


def _steps(steps: int) -> int | None:
    """Decode steps, None for prefill (which has none)."""
    return steps or None


def verdict_label(v: Verdict | Headline) -> str:
    """The verdict as shown: LOSSY carries the agreement it fell short with."""
    if v.verdict == LOSSY and v.token_agreement is not None:
        return f"LOSSY (agreement {v.token_agreement:.3f})"
    return v.verdict


def status_line(rv: RunVerdicts) -> str | None:
    """A sentence saying the run did not complete, or None."""
    if rv.run is None or rv.run.complete:
        return None
    by = f" by {rv.run.interrupted_by}" if rv.run.interrupted_by else ""
    return (f"This run is {rv.run.run_status.upper()}{by}: its verdicts rest only on the blocks that finished "
            f"and must not be quoted as a complete run's.")


def _text(value: Any, template: str) -> str:
    return "-" if value is None else format(value, template)


# ---------------------------------------------------------------- design and verdicts

def design(rv: RunVerdicts) -> Section:
    c = rv.conditions
    tests = sum(1 for v in rv.verdicts if v.hypothesis == "H2" and v.p_value is not None)
    heads = sum(1 for h in rv.headlines if h.hypothesis == "H2" and h.p_value is not None)
    blocks = "-" if c is None else (f"{c.blocks_measured} measured" + (f" of {c.blocks_planned} planned"
                                                                       if c.blocks_planned else ""))
    link = any(check.link_estimate is not None for check in rv.cross_checks)
    levels = sorted({s.byte_level for s in rv.summaries} | ({"link"} if link else set()))
    confidence = 1 - 2 * rv.alpha
    return Section("Design and method", (
        f"- Blocks: {blocks}; {_text(c.rounds_per_block if c else None, 'd')} rounds per block after "
        f"{_text(c.warmup_rounds_per_block if c else None, 'd')} warm-up(s); block order seed "
        f"{_text(c.block_order_seed if c else None, 'd')}. Every case ran a few rounds in every block, "
        "in a shuffled order.",
        f"- H1: bytes per round (median over blocks), exact ratio 1 - semantic/baseline, >= {rv.h1:.0%}.",
        f"- H2: per block, the paired ratio of block medians semantic/baseline; reduction = 1 - the "
        f"Hodges-Lehmann ratio, {confidence:.0%} bootstrap interval over blocks; p = one-sided Wilcoxon "
        f"signed-rank test of 'reduction <= {rv.h2:.0%}', Holm-adjusted over the run's {tests} pairwise H2 "
        f"test(s); a pairwise verdict is SUPPORTED when p Holm < {rv.alpha} and the interval lies above the threshold.",
        "- Headline: an intersection-union test against every blind baseline, none picked from the data. "
        "SUPPORTED only when each baseline's comparison rejects 'reduction <= threshold' on its own (H1: each "
        f"exact reduction >= the threshold; H2: each raw p < {rv.alpha} and each interval above the threshold, "
        f"and the largest p, Holm-adjusted over the run's {heads} H2 headline(s), < {rv.alpha}); NOT SUPPORTED "
        "when any pairwise verdict is NOT SUPPORTED; INCONCLUSIVE otherwise. The binding baseline is the one with "
        f"the smallest estimated reduction. A candidate whose tokens agree with local less than {rv.min_agreement} "
        "is LOSSY, whatever its saving. Only the label `semantic` is judged; ablation variants "
        "(`semantic:<techniques>`) are reported in the ablation table.",
        "- Byte levels:", *(f"  - **{lv}**: {LEVEL_MEANING.get(lv, lv)}" for lv in levels), ""))


VERDICT_FORMATS = {"reduction": pct, "low": pct, "high": pct, "p": general, "p Holm": general, "threshold": share}


def _verdict_table(key: str, title: str, verdicts: Sequence[Verdict]) -> Table:
    rows = [(v.hypothesis, v.model, v.weights, v.phase, v.link_rate, _steps(v.decode_steps), v.baseline,
             "binding" if v.binding else None, v.byte_level if v.hypothesis == "H1" else None, v.estimate, v.ci_low,
             v.ci_high, v.p_value, v.p_holm, v.n_blocks, v.rounds_per_block, v.threshold, verdict_label(v), v.reason)
            for v in verdicts]
    header = ("hypothesis", "model", "weights", "phase", "rate", "steps", "baseline", "binding", "byte level",
              "reduction", "low", "high", "p", "p Holm", "blocks", "rounds/block", "threshold", "verdict", "reason")
    return Table.from_rows(key, title, header, rows, VERDICT_FORMATS, prose=("reason",))


def _headline_table(key: str, title: str, headlines: Sequence[Headline]) -> Table:
    rows = [(h.hypothesis, h.model, h.weights, h.phase, h.link_rate, _steps(h.decode_steps), len(h.baselines) or None,
             h.binding_baseline, h.byte_level if h.hypothesis == "H1" else None, h.estimate, h.ci_low, h.ci_high,
             h.p_value, h.p_holm, h.n_blocks, h.threshold, verdict_label(h),
             "; ".join(f"{p.baseline} {p.verdict}" for p in h.pairwise if p.baseline) or None, h.reason)
            for h in headlines]
    header = ("hypothesis", "model", "weights", "phase", "rate", "steps", "blind baselines", "binding baseline",
              "byte level", "reduction", "low", "high", "p", "p Holm", "blocks", "threshold", "verdict", "pairwise",
              "reason")
    return Table.from_rows(key, title, header, rows, VERDICT_FORMATS, prose=("pairwise", "reason"))


def verdicts(rv: RunVerdicts) -> list[Section]:
    title = "Headline verdicts (against every blind baseline)"
    pairwise = "Pairwise verdicts (each blind baseline)"
    return [Section(title, ("Reduction = 1 - semantic/baseline (positive = semantic cheaper), against the binding "
                            "baseline (the smallest estimated reduction); low and high bound its interval (H2: "
                            f"{1 - 2 * rv.alpha:.0%} bootstrap over blocks; H1: equal when exact). p: the largest raw "
                            "pairwise p (the intersection-union p), p Holm: over the run's H2 headlines.", ""),
                    (_headline_table("headline_verdicts", title, rv.headlines),)),
            Section(pairwise, ("Every comparison the headlines combine; `binding` marks each headline's binding "
                               "baseline. p Holm: over all the run's pairwise H2 tests.", ""),
                    (_verdict_table("pairwise_verdicts", pairwise, rv.verdicts),))]


def cross_check(rv: RunVerdicts) -> Section:
    title = "H1 cross-check: link bytes and retransmissions (never judged)"
    rows = [(c.model, c.phase, c.link_rate, _steps(c.decode_steps), c.baseline, c.judged_level, c.judged_estimate,
             c.link_estimate, c.candidate_retransmitted_per_round, c.baseline_retransmitted_per_round)
            for c in rv.cross_checks]
    header = (*WHERE, "baseline", "judged level", "H1 reduction", "link-level reduction",
              "semantic retransmitted B/round", "baseline retransmitted B/round")
    formats = {"H1 reduction": pct, "link-level reduction": pct, "semantic retransmitted B/round": count,
               "baseline retransmitted B/round": count}
    return Section(title, (), (Table.from_rows("cross_check", title, header, rows, formats),))


def load(rv: RunVerdicts) -> Section:
    c = rv.conditions
    seen = "" if c is None else (f"Highest 1-minute load {_text(c.load_avg_1m_max, '.2f')} on "
                                 f"{_text(c.cores, 'd')} cores, highest CPU steal {_text(c.cpu_steal_pct_max, '.1f')} %.")
    rows = [(w.block, w.max_load_avg_1m, w.cores, w.max_cpu_steal_pct, w.reason, "; ".join(w.verdicts) or None)
            for w in rv.load_warnings]
    header = ("block", "max load 1m", "cores", "max steal %", "why", "H2 verdicts it fed")
    before = [seen, ""]
    if rv.load_warnings:
        before += ["**Warning: these blocks ran on an overloaded machine; the latency verdicts they fed are "
                   "suspect.**", ""]
    table = Table.from_rows("load", "Blocks run under load", header, rows,
                            {"max load 1m": fixed(2), "max steal %": fixed(1)}, prose=("why", "H2 verdicts it fed"))
    return Section("Load", tuple(before), (table,))


# ---------------------------------------------------------------- descriptive tables

def cases(rv: RunVerdicts) -> Section:
    rows = [(s.model, s.weights, s.phase, s.link_rate, _steps(s.decode_steps), s.label, s.role, s.blocks, s.rounds,
             s.median_latency_ms, s.q1_latency_ms, s.q3_latency_ms, s.bytes_sent_per_round,
             s.bytes_received_per_round, s.byte_level, s.link_bytes_per_round, s.round_trips, s.server_compute_ms,
             s.token_agreement_with_local) for s in rv.summaries]
    header = ("model", "weights", "phase", "rate", "steps", "case", "role", "blocks", "rounds", "median ms",
              "Q1 ms", "Q3 ms", "sent B/round", "recv B/round", "byte level", "link B/round", "round trips",
              "server ms", "token agreement")
    formats = {"median ms": fixed(2), "Q1 ms": fixed(2), "Q3 ms": fixed(2), "sent B/round": count,
               "recv B/round": count, "link B/round": count, "round trips": fixed(0), "server ms": fixed(2),
               "token agreement": fixed(3)}
    return Section("Per case", ("Median ms: the median over blocks of each block's median round; Q1 and Q3 over "
                                "all rounds.", ""), (Table.from_rows("cases", "Per case", header, rows, formats),))


def taxes(rv: RunVerdicts) -> list[Section]:
    sections = []
    for ref in dict.fromkeys(t.reference for t in rv.taxes):
        rows = [(t.model, t.phase, t.link_rate, _steps(t.decode_steps), t.label, t.latency_ms, t.reference_latency_ms,
                 t.latency_ratio, t.ratio_ci_low, t.ratio_ci_high, t.n_blocks, t.bytes_per_round,
                 t.reference_bytes_per_round, t.bytes_ratio) for t in rv.taxes if t.reference == ref]
        header = (*WHERE, "case", "latency ms", f"{ref} ms", "latency ratio", "low", "high", "paired blocks",
                  "B/round", f"{ref} B/round", "bytes ratio")
        formats = {"latency ms": fixed(2), f"{ref} ms": fixed(2), "latency ratio": ratio, "low": ratio,
                   "high": ratio, "B/round": count, f"{ref} B/round": count, "bytes ratio": fixed(3)}
        title = f"Against {ref}"
        sections.append(Section(title, (f"Low and high: the latency ratio's {1 - 2 * rv.alpha:.0%} interval over "
                                        "paired blocks.", ""),
                                (Table.from_rows(f"against_{ref}", title, header, rows, formats),)))
    return sections


def crossovers(rv: RunVerdicts) -> Section:
    title = "Link-rate crossover (H2)"
    rows = [(c.model, c.phase, _steps(c.decode_steps), c.baseline, ", ".join(format_bps(r) for r in c.rates_bps),
             ", ".join(pct(x) for x in c.reductions), c.rate_bps, "interpolated" if c.interpolated else "measured",
             c.note) for c in rv.crossovers]
    header = ("model", "phase", "steps", "baseline", "rates", "H2 reduction", "crossover", "how", "note")
    return Section(title, ("Log-rate linear interpolation of the latency reduction against the H2 threshold "
                           "(point estimates).", ""),
                   (Table.from_rows("crossover", title, header, rows, {"crossover": format_bps}, prose=("note",)),))


def rtt_projection(rv: RunVerdicts) -> Section:
    rtts = rv.rtt_projections[0].rtts_us if rv.rtt_projections else []
    at = [f"@ RTT {r:g} us" for r in rtts]
    latency, reduction = [], []
    for p in rv.rtt_projections:
        where = (p.model, p.phase, p.link_rate, _steps(p.decode_steps))
        latency += [(*where, label, p.round_trips[label], *values) for label, values in p.projected_ms.items()]
        reduction += [(*where, baseline, *values) for baseline, values in p.reductions.items()]
    return Section("RTT projection", (
        "Delay cannot be emulated here (no netem). Projected latency = measured latency + round trips x RTT: "
        "every round trip waits one full RTT, nothing overlaps; TCP slow start and window limits are ignored.", ""),
        (Table.from_rows("rtt_projection", "RTT projection: ms per round", (*WHERE, "case", "round trips",
                                                                            *(f"ms {a}" for a in at)),
                         latency, {"round trips": fixed(0), **{f"ms {a}": fixed(2) for a in at}}),
         Table.from_rows("rtt_projection_h2", "RTT projection: H2 reduction of semantic",
                         (*WHERE, "baseline", *(f"reduction {a}" for a in at)), reduction,
                         {f"reduction {a}": pct for a in at})))


def cost_model(rv: RunVerdicts, output_json: dict, rounds: pd.DataFrame) -> Section:
    calibration = costmodel.calibration_of(output_json)
    title = "Cost model: round trips x RTT + bytes / rate + compute"
    if isinstance(calibration, str):
        return Section(title, (f"The model cannot be checked: {calibration}.", ""))
    check = costmodel.check(costmodel.case_costs(rv.summaries, rounds), calibration)
    rows = [(p.case.model, p.case.phase, p.case.link_rate, _steps(p.case.decode_steps), p.case.label,
             p.case.round_trips, p.case.bytes_per_round, p.rate_bytes_per_s * 8, p.round_trip_ms, p.transfer_ms,
             p.compute_ms, p.predicted_ms, p.case.measured_ms, p.error, p.miss) for p in check.predictions]
    header = (*WHERE, "case", "round trips", "B/round", "rate bit/s", "RTT part ms", "bytes part ms",
              "compute ms", "predicted ms", "measured ms", "error", "where it misses")
    formats = {"round trips": fixed(0), "B/round": count, "rate bit/s": format_bps, "RTT part ms": fixed(2),
               "bytes part ms": fixed(2), "compute ms": fixed(2), "predicted ms": fixed(2),
               "measured ms": fixed(2), "error": pct}
    fits = [(f.model, f.phase, _steps(f.decode_steps), f.points, f.r_squared, f.median_abs_error, f.max_abs_error)
            for f in check.fits]
    return Section(title, (
        f"Calibration ({calibration.transport} on {calibration.link}): a small call takes "
        f"{calibration.round_trip_s * 1e6:.1f} us (the RTT), 25 MB one way runs at "
        f"{format_bps(calibration.rate_bytes_per_s * 8)} (the unshaped rate); at a shaped link rate the "
        "slower of the two applies. Compute = server compute + server codec + the client's codec and tracing. "
        f"Error = predicted / measured - 1; a point beyond +-{check.tolerance:.0%} says where the model misses, "
        "as a likely cause, not a measured one.", ""),
        (Table.from_rows("cost_model", "Cost model against measurement", header, rows, formats,
                         prose=("where it misses",)),
         Table.from_rows("cost_model_fit", "Cost model fit per sweep",
                         ("model", "phase", "steps", "points", "R^2", "median abs error", "max abs error"), fits,
                         {"R^2": fixed(3), "median abs error": percent, "max abs error": percent})))


# ---------------------------------------------------------------- run-level

def failures(rv: RunVerdicts) -> list[Section]:
    """The benchmarks that failed, then those skipped, each with its reason's first line."""
    return [Section(title, (), (Table.from_rows(key, title, ("benchmark", "reason"), rows, prose=("reason",)),))
            for key, title, rows in (("failures", "Failures", rv.failures), ("skipped", "Skipped benchmarks", rv.skipped))
            for rows in [[(r.get("name", "-"), (str(r.get("reason", "-")).splitlines() or ["-"])[0][:200]) for r in rows]]]


def notes(rv: RunVerdicts) -> list[Section]:
    return [Section("Notes", tuple(f"- {n}" for n in rv.notes) + ("",))] if rv.notes else []


def _retransmitted(output_json: dict) -> str:
    """Retransmitted TCP bytes over all measured rounds, each way, and how many rounds had any."""
    totals, rounds, known = [0, 0], 0, [False, False]
    for bench in output_json.get("benchmarks", []):
        info = bench.get("extra_info", {})
        per_direction = [info.get(f"wire_tcp_bytes_retransmitted_{d}_rounds") or [] for d in ("sent", "received")]
        for index, values in enumerate(per_direction):
            known[index] |= any(v is not None for v in values)
            totals[index] += sum(v or 0 for v in values)
        rounds += sum(1 for pair in zip(*per_direction) if any(pair))
    if not any(known):
        return "-"
    sent, received = (count(total) if seen else "unknown" for total, seen in zip(totals, known))
    return f"sent {sent}, received {received}; {rounds} rounds with any"


def conditions(rv: RunVerdicts, output_json: dict) -> list[Section]:
    c = rv.conditions
    if c is None:
        return []
    dirty = "" if c.commit_dirty is None else (" (dirty)" if c.commit_dirty else " (clean)")
    other = ", ".join(f"{k} {v}" for k, v in sorted(c.versions.items()) if k not in ("python", "torch"))
    status = c.run_status + (f" ({c.interrupted_by})" if c.interrupted_by else "")
    rows = [("machine (CPU)", c.cpu), ("cores", c.cores), ("device", c.device), ("dtype", c.dtype),
            ("commit", f"{c.commit_id or '-'}{dirty}"), ("python", c.python_version), ("torch", c.torch_version),
            ("other versions", other or None), ("pytest-benchmark", output_json.get("version")),
            ("link", c.link), ("link rates", ", ".join(map(str, c.link_rates)) or None),
            ("models", ", ".join(c.models) or None), ("weights", ", ".join(c.weights) or None),
            ("date", c.datetime), ("run status", status),
            ("blocks x rounds per block", f"{c.blocks_measured} x {_text(c.rounds_per_block, 'd')}"),
            ("TCP retransmitted (in link bytes)", _retransmitted(output_json)),
            ("thresholds", f"H1 >= {rv.h1:.0%} bytes, H2 >= {rv.h2:.0%} latency, alpha {rv.alpha}, "
                           f"min agreement {rv.min_agreement:g}, bootstrap seed {rv.seed}")]
    return [Section("Conditions", (), (Table.from_rows("conditions", "Conditions", ("item", "value"), rows),))]


def sections(rv: RunVerdicts, output_json: dict) -> list[Section]:
    """Every section of report.md, in order; the tables in them are report.tex's and tables/*.csv's."""
    rounds = frames.rounds(output_json) if rv.summaries else pd.DataFrame(columns=frames.IDENTITY)
    return [design(rv), *verdicts(rv), *looks.section(rv), where_gap.section(rv), cross_check(rv), load(rv), *equal_compute.sections(rv, output_json),
            *round_parts.section(rv),
            cases(rv), *taxes(rv),
            *ablation.sections(rv, rounds), crossovers(rv), rtt_projection(rv), cost_model(rv, output_json, rounds),
            *scenarios.calibration(output_json), *scenarios.batching(output_json, rv.min_agreement),
            *scenarios.kv_recovery(output_json, rv.min_agreement), *failures(rv), *notes(rv), *model_shape.section(output_json),
            *conditions(rv, output_json)]


def caption_context(rv: RunVerdicts) -> str:
    """What every LaTeX caption names: model and weights, dtype, link, machine, date, and a run that did not finish."""
    c = rv.conditions
    if c is None:
        return ""
    rates = f" at {', '.join(map(str, c.link_rates))}" if c.link_rates else ""
    machine = (c.cpu or "unknown CPU") + (f", {c.cores} cores" if c.cores else "") + (
        f", {c.device}" if c.device else "")
    unfinished = "" if c.run_status == "complete" else f" {c.run_status.upper()} RUN: only the blocks that finished."
    return (f"Model {', '.join(c.models) or '-'} ({', '.join(c.weights) or 'unknown'} weights), "
            f"{c.dtype or 'unknown dtype'}, {c.link or 'unknown'} link{rates}; {machine}; {c.datetime or 'undated'}."
            + unfinished)
