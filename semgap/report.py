"""Write the semgap report (verdicts.json, report.md, PNG plots) and compare runs from the command line.

Regenerating from saved pytest-benchmark JSON without rerunning::

    python -m semgap.report RUN.json [--out DIR] [--force] [--h1 0.30] [--h2 0.15] [--alpha 0.05]
    python -m semgap.report OLD.json NEW.json [--fail-on-regression]   # also compares them, case by case

The report goes to ``--out`` (default: ``RUN.report/`` beside the JSON). It never writes over a
report it did not regenerate from the same run: not over the report a run wrote itself, not over
another run's, unless ``--force`` says so.

Exit status: 0 on success, 1 when ``--fail-on-regression`` is given and a regression was flagged,
2 on unreadable or invalid input, when ``--out`` holds a report it must not replace, or when the
two runs share no case.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from semgap import compare, plots
from semgap.argtypes import fraction, share
from semgap.measurements import InvalidBenchmarkJSON, read_run
from semgap.verdicts import LOSSY, PAYLOAD_ONLY_NOTE, RunVerdicts, Verdict, compute

LEVEL_MEANING = {
    "tcp": "kernel TCP socket counters: each byte once, retransmissions excluded (judged)",
    "payload": f"bytes serialised by the mode ({PAYLOAD_ONLY_NOTE}; judged only where TCP was not counted)",
    "link": "veth interface counters, with TCP/IP headers and retransmissions (cross-check only, never judged)",
}
CLI_WRITER = "semgap.report"


# ---------------------------------------------------------------- formatting

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _bytes(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _rate(rate: str | None) -> str:
    return rate or "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines (``_none_`` when there are no rows)."""
    if not rows:
        return ["_none_", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _interval(lo: float | None, hi: float | None, fmt=_pct) -> str:
    if lo is None or hi is None:
        return "-"
    return "exact" if lo == hi else f"[{fmt(lo)}, {fmt(hi)}]"


def verdict_label(v: Verdict) -> str:
    """The verdict as shown: LOSSY carries the agreement it fell short with."""
    if v.verdict == LOSSY and v.token_agreement is not None:
        return f"LOSSY (agreement {v.token_agreement:.3f})"
    return v.verdict


def _status_line(rv: RunVerdicts) -> str | None:
    if rv.run is None or rv.run.complete:
        return None
    by = f" by {rv.run.interrupted_by}" if rv.run.interrupted_by else ""
    return (f"This run is {rv.run.run_status.upper()}{by}: its verdicts rest only on the blocks that finished "
            f"and must not be quoted as a complete run's.")


# ---------------------------------------------------------------- markdown

def _design_md(rv: RunVerdicts) -> list[str]:
    c = rv.conditions
    tests = sum(1 for v in rv.verdicts if v.hypothesis == "H2" and v.p_value is not None)
    blocks = "-" if c is None else (f"{c.blocks_measured} measured" + (f" of {c.blocks_planned} planned"
                                                                       if c.blocks_planned else ""))
    link = any(c.link_estimate is not None for c in rv.cross_checks)
    levels = sorted({s.byte_level for s in rv.summaries} | ({"link"} if link else set()))
    confidence = 1 - 2 * rv.alpha
    lines = ["## Design and method", "",
             f"- Blocks: {blocks}; {_num(c.rounds_per_block if c else None, 'd')} rounds per block after "
             f"{_num(c.warmup_rounds_per_block if c else None, 'd')} warm-up(s); block order seed "
             f"{_num(c.block_order_seed if c else None, 'd')}. Every case ran a few rounds in every block, "
             "in a shuffled order.",
             f"- H1: bytes per round (median over blocks), exact ratio 1 - semantic/baseline, >= {rv.h1:.0%}.",
             f"- H2: per block, the paired ratio of block medians semantic/baseline; reduction = 1 - the "
             f"Hodges-Lehmann ratio, {confidence:.0%} bootstrap interval over blocks; p = one-sided Wilcoxon "
             f"signed-rank test of 'reduction <= {rv.h2:.0%}', Holm-adjusted over the run's {tests} H2 test(s); "
             f"SUPPORTED needs p Holm < {rv.alpha} and the interval above the threshold.",
             f"- Every blind baseline is judged; the headline verdict is against the strongest (fewest bytes "
             f"for H1, lowest latency for H2). A candidate whose tokens agree with local less than "
             f"{rv.min_agreement} is LOSSY, whatever its saving.",
             "- Byte levels:", *(f"  - **{lv}**: {LEVEL_MEANING.get(lv, lv)}" for lv in levels), ""]
    return lines


def _verdict_rows(verdicts: Sequence[Verdict]) -> list[tuple]:
    return [(v.hypothesis, v.model, v.weights or "-", v.phase, _rate(v.link_rate), v.decode_steps or "-",
             v.baseline or "-", v.byte_level if v.hypothesis == "H1" else "-", _pct(v.estimate),
             _interval(v.ci_low, v.ci_high), _num(v.p_value, ".3g"), _num(v.p_holm, ".3g"),
             f"{v.n_blocks} x {v.rounds_per_block or '?'}", f"{v.threshold:.0%}", f"**{verdict_label(v)}**", v.reason)
            for v in verdicts]


VERDICT_HEADER = ("hypothesis", "model", "weights", "phase", "rate", "steps", "baseline", "byte level", "reduction",
                  "interval", "p", "p Holm", "blocks x rounds", "threshold", "verdict", "reason")


def _verdicts_md(rv: RunVerdicts) -> list[str]:
    others = [v for v in rv.verdicts if not v.headline]
    return (["## Headline verdicts (against the strongest blind baseline)", "",
             "Reduction = 1 - semantic/baseline (positive = semantic cheaper).", ""]
            + _table(VERDICT_HEADER, _verdict_rows(rv.headlines))
            + ["## Verdicts against every other blind baseline", ""] + _table(VERDICT_HEADER, _verdict_rows(others)))


def _cross_check_md(rv: RunVerdicts) -> list[str]:
    rows = [(c.model, c.phase, _rate(c.link_rate), c.decode_steps or "-", c.baseline, c.judged_level,
             _pct(c.judged_estimate), _pct(c.link_estimate), _bytes(c.candidate_retransmitted_per_round),
             _bytes(c.baseline_retransmitted_per_round)) for c in rv.cross_checks]
    header = ("model", "phase", "rate", "steps", "baseline", "judged level", "H1 reduction", "link-level reduction",
              "semantic retransmitted B/round", "baseline retransmitted B/round")
    return ["## H1 cross-check: link bytes and retransmissions (never judged)", ""] + _table(header, rows)


def _load_md(rv: RunVerdicts) -> list[str]:
    c = rv.conditions
    seen = "" if c is None else (f"Highest 1-minute load {_num(c.load_avg_1m_max)} on {_num(c.cores, 'd')} cores, "
                                 f"highest CPU steal {_num(c.cpu_steal_pct_max, '.1f')} %.")
    rows = [(w.block, _num(w.max_load_avg_1m), _num(w.cores, "d"), _num(w.max_cpu_steal_pct, ".1f"), w.reason,
             "; ".join(w.verdicts) or "-") for w in rv.load_warnings]
    header = ("block", "max load 1m", "cores", "max steal %", "why", "H2 verdicts it fed")
    lines = ["## Load", "", seen, ""]
    if rv.load_warnings:
        lines += ["**Warning: these blocks ran on an overloaded machine; the latency verdicts they fed are "
                  "suspect.**", ""]
    return lines + _table(header, rows)


def _cases_md(rv: RunVerdicts) -> list[str]:
    rows = [(s.model, s.weights or "-", s.phase, _rate(s.link_rate), s.decode_steps or "-", s.label, s.role,
             s.blocks, s.rounds, _num(s.median_latency_ms), f"{s.q1_latency_ms:.2f}-{s.q3_latency_ms:.2f}",
             _bytes(s.bytes_sent_per_round), _bytes(s.bytes_received_per_round), s.byte_level,
             _bytes(s.link_bytes_per_round), _num(s.round_trips, ".0f"), _num(s.server_compute_ms),
             _num(s.token_agreement_with_local, ".3f")) for s in rv.summaries]
    header = ("model", "weights", "phase", "rate", "steps", "case", "role", "blocks", "rounds", "median ms",
              "IQR ms", "sent B/round", "recv B/round", "byte level", "link B/round", "round trips", "server ms",
              "token agreement")
    return (["## Per case", "", "Median ms: the median over blocks of each block's median round; IQR over all "
             "rounds.", ""] + _table(header, rows))


def _tax_md(rv: RunVerdicts) -> list[str]:
    lines: list[str] = []
    for ref in dict.fromkeys(t.reference for t in rv.taxes):
        rows = [(t.model, t.phase, _rate(t.link_rate), t.decode_steps or "-", t.label, _num(t.latency_ms),
                 _num(t.reference_latency_ms), f"x{t.latency_ratio:.3f}",
                 _interval(t.ratio_ci_low, t.ratio_ci_high, lambda x: f"x{x:.3f}"), t.n_blocks,
                 _bytes(t.bytes_per_round), _bytes(t.reference_bytes_per_round), _num(t.bytes_ratio, ".3f"))
                for t in rv.taxes if t.reference == ref]
        header = ("model", "phase", "rate", "steps", "case", "latency ms", f"{ref} ms", "latency ratio",
                  f"{1 - 2 * rv.alpha:.0%} interval", "paired blocks", "B/round", f"{ref} B/round", "bytes ratio")
        lines += [f"## Against {ref}", ""] + _table(header, rows)
    return lines


def _sweep_md(rv: RunVerdicts) -> list[str]:
    rows = [(c.model, c.phase, c.decode_steps or "-", c.baseline, ", ".join(plots.format_bps(r) for r in c.rates_bps),
             ", ".join(_pct(x) for x in c.reductions), plots.format_bps(c.rate_bps),
             "interpolated" if c.interpolated else "measured", c.note) for c in rv.crossovers]
    header = ("model", "phase", "steps", "baseline", "rates", "H2 reduction", "crossover", "how", "note")
    return (["## Link-rate crossover (H2)", "",
             "Log-rate linear interpolation of the latency reduction against the H2 threshold "
             "(point estimates).", ""] + _table(header, rows))


def _rtt_md(rv: RunVerdicts) -> list[str]:
    rows = []
    rtts: list[float] = []
    for p in rv.rtt_projections:
        rtts = p.rtts_us
        where = (p.model, p.phase, _rate(p.link_rate), p.decode_steps or "-")
        for label, values in p.projected_ms.items():
            rows.append((*where, label, _num(p.round_trips[label], ".0f"), *(_num(v) for v in values)))
        for baseline, values in p.reductions.items():
            rows.append((*where, f"H2 reduction vs {baseline}", "-", *(_pct(x) for x in values)))
    header = ("model", "phase", "rate", "steps", "case", "round trips", *(f"ms @ RTT {r:g} us" for r in rtts))
    return (["## RTT projection", "",
             "Delay cannot be emulated here (no netem). Projected latency = measured latency + "
             "round trips x RTT: every round trip waits one full RTT, nothing overlaps; TCP slow start "
             "and window limits are ignored.", ""] + _table(header, rows))


def _conditions_md(rv: RunVerdicts, output_json: dict) -> list[str]:
    c = rv.conditions
    if c is None:
        return []
    dirty = "" if c.commit_dirty is None else (" (dirty)" if c.commit_dirty else " (clean)")
    other = ", ".join(f"{k} {v}" for k, v in sorted(c.versions.items()) if k not in ("python", "torch"))
    status = c.run_status + (f" ({c.interrupted_by})" if c.interrupted_by else "")
    rows = [("machine (CPU)", c.cpu or "-"), ("cores", _num(c.cores, "d")), ("device", c.device or "-"),
            ("commit", f"{c.commit_id or '-'}{dirty}"), ("python", c.python_version or "-"),
            ("torch", c.torch_version or "-"), ("other versions", other or "-"),
            ("pytest-benchmark", output_json.get("version") or "-"),
            ("link", c.link or "-"), ("link rates", ", ".join(map(str, c.link_rates)) or "-"),
            ("models", ", ".join(c.models) or "-"), ("weights", ", ".join(c.weights) or "-"),
            ("date", c.datetime or "-"), ("run status", status),
            ("blocks x rounds per block", f"{c.blocks_measured} x {_num(c.rounds_per_block, 'd')}"),
            ("TCP retransmitted (in link bytes)", _retransmitted(output_json)),
            ("thresholds", f"H1 >= {rv.h1:.0%} bytes, H2 >= {rv.h2:.0%} latency, alpha {rv.alpha}, "
                           f"min agreement {rv.min_agreement:g}, bootstrap seed {rv.seed}")]
    return ["## Conditions", ""] + _table(("item", "value"), rows)


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
    sent, received = (_bytes(total) if seen else "unknown" for total, seen in zip(totals, known))
    return f"sent {sent}, received {received}; {rounds} rounds with any"


def markdown(rv: RunVerdicts, output_json: dict) -> str:
    """The full ``report.md`` text."""
    failures = [(f.get("name", "-"), (str(f.get("reason", "-")).splitlines() or ["-"])[0][:200])
                for f in rv.failures]
    status = _status_line(rv)
    lines = ["# semgap report", ""] + ([f"> **{status}**", ""] if status else [])
    lines += _design_md(rv) + _verdicts_md(rv) + _cross_check_md(rv) + _load_md(rv) + _cases_md(rv)
    lines += _tax_md(rv) + _sweep_md(rv) + _rtt_md(rv)
    lines += ["## Failures", ""] + _table(("benchmark", "reason"), failures)
    if rv.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in rv.notes), ""]
    lines += _conditions_md(rv, output_json)
    return "\n".join(lines)


# ---------------------------------------------------------------- writing

class ReportExists(Exception):
    """The output folder holds a report this command must not replace."""


def run_id(output_json: dict) -> str:
    """What names a run: pytest-benchmark's timestamp and commit, else a hash of its JSON."""
    commit = output_json.get("commit_info") if isinstance(output_json.get("commit_info"), dict) else {}
    if output_json.get("datetime"):
        return f"{output_json['datetime']} {commit.get('id') or '?'}"
    canonical = json.dumps(output_json, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:16]


def check_out_dir(out_dir: Path, this_run: str) -> None:
    """Refuse a folder that holds any report but one this CLI regenerated from the same run."""
    if not ((out_dir / "verdicts.json").exists() or (out_dir / "report.md").exists()):
        return
    try:
        source = json.loads((out_dir / "verdicts.json").read_text()).get("source") or {}
    except (OSError, ValueError, AttributeError):
        source = {}
    if source.get("run_id") == this_run and source.get("written_by") == CLI_WRITER:
        return
    if source.get("run_id") == this_run:
        whose = "the report this run wrote itself"
    elif source.get("run_id"):
        whose = f"the report of another run ({source['run_id']})"
    else:
        whose = "a report of unknown origin"
    raise ReportExists(f"{out_dir} holds {whose}; choose another --out, or pass --force to replace it")


def write(run_verdicts: RunVerdicts, output_json: dict, out_dir: Path, written_by: str = "plugin") -> list[Path]:
    """Write verdicts.json, report.md and the PNG plots into ``out_dir``; return their paths.

    verdicts.json is :meth:`RunVerdicts.to_dict` with ``source`` (run id, who wrote it) added.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "verdicts.json", out_dir / "report.md"]
    dump = run_verdicts.to_dict()
    dump["source"] = {"run_id": run_id(output_json), "written_by": written_by}
    paths[0].write_text(json.dumps(dump, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(run_verdicts, output_json))
    if run_verdicts.summaries and importlib.util.find_spec("matplotlib") is None:
        print("semgap report: matplotlib is not installed, so no plots were drawn", file=sys.stderr)
    elif run_verdicts.summaries:
        paths.append(plots.latency_vs_bytes(run_verdicts, out_dir / "latency_vs_bytes.png"))
        rate_plot = plots.latency_vs_rate(run_verdicts, out_dir / "latency_vs_rate.png")
        if rate_plot is not None:
            paths.append(rate_plot)
    return paths


def terminal_lines(run_verdicts: RunVerdicts) -> list[str]:
    """The run's status if not complete, a header, one line per headline verdict, then what else to read."""
    rv = run_verdicts
    status = _status_line(rv)
    lines = [f"semgap: {status}"] if status else []
    if not rv.verdicts:
        return lines
    h2 = [v for v in rv.verdicts if v.hypothesis == "H2" and v.p_value is not None]
    design = f" on {max(v.n_blocks for v in h2)} blocks x {h2[0].rounds_per_block or '?'} rounds" if h2 else ""
    lines += ["reduction = 1 - semantic/baseline (positive: semantic cheaper), against the strongest blind baseline",
              f"thresholds H1 {rv.h1:.0%}, H2 {rv.h2:.0%}; H2{design}, p Holm-adjusted over {len(h2)} test(s)"]
    for v in rv.headlines:
        what = "bytes  " if v.hypothesis == "H1" else "latency"
        if v.ci_low is None or v.ci_high is None:
            interval = ""
        elif v.ci_low == v.ci_high:
            interval = f" exact {v.byte_level}"
        else:
            interval = f" [{v.ci_low:+.1%}, {v.ci_high:+.1%}]"
        p = f" p={v.p_holm:.2g}" if v.p_holm is not None else ""
        lines.append(f"{v.hypothesis} {what} {v.phase:<7} {v.model} {_rate(v.link_rate):<7} {_pct(v.estimate):>7}"
                     f"{interval}{p} vs {v.baseline or '-'}  {verdict_label(v)}")
    others = len(rv.verdicts) - len(rv.headlines)
    if others:
        lines.append(f"{others} further verdict(s) against weaker blind baselines: see report.md")
    lines += [f"load warning: block {w.block}: {w.reason}; fed {len(w.verdicts)} H2 verdict(s)"
              for w in rv.load_warnings]
    return lines


# ---------------------------------------------------------------- command line

def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise InvalidBenchmarkJSON(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidBenchmarkJSON(f"{path} is not valid JSON: {exc}") from exc
    try:
        if not read_run(data).cases:
            raise InvalidBenchmarkJSON("no semgap benchmarks (extra_info.mode) found")
    except InvalidBenchmarkJSON as exc:
        raise InvalidBenchmarkJSON(f"{path}: {exc}") from exc
    return data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m semgap.report",
                                description="Regenerate the semgap report from saved pytest-benchmark JSON; "
                                            "with two files, also compare them (first = before, second = after).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="one or two pytest-benchmark JSON files")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output directory (default: the last JSON's name with .report, beside it)")
    p.add_argument("--force", action="store_true",
                   help="replace a report in --out that this command did not regenerate from the same run "
                        "(default: refuse)")
    p.add_argument("--h1", metavar="F", type=fraction, default=None,
                   help="H1 byte-reduction threshold (default: the run's, else 0.30)")
    p.add_argument("--h2", metavar="F", type=fraction, default=None,
                   help="H2 latency-reduction threshold (default: the run's, else 0.15)")
    p.add_argument("--alpha", metavar="F", type=fraction, default=None,
                   help="significance level (default: the run's, else 0.05)")
    p.add_argument("--min-agreement", metavar="F", type=share, default=None,
                   help="token agreement with local below which a saving is LOSSY (default: the run's, else 1.0)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--latency-noise-band", metavar="F", type=fraction, default=compare.DEFAULT_NOISE_BAND,
                   help="comparing runs: a latency change is a regression only when its interval lies beyond "
                        f"1 + F (default: {compare.DEFAULT_NOISE_BAND})")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="comparing runs: exit 1 when a byte or latency regression is flagged (default: off)")
    return p


def default_out(json_path: str) -> Path:
    """``results/benchmark.json`` -> ``results/benchmark.report``: beside the run, never over its own report."""
    path = Path(json_path)
    return path.with_name(path.stem + ".report")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if len(args.paths) > 2:
        print("error: give one or two JSON files", file=sys.stderr)
        return 2
    out = args.out or default_out(args.paths[-1])
    try:
        runs = [_load(p) for p in args.paths]
        if not args.force:
            check_out_dir(out, run_id(runs[-1]))
        rv = compute(runs[-1], h1=args.h1, h2=args.h2, alpha=args.alpha, min_agreement=args.min_agreement,
                     seed=args.seed)
        comparison = None
        if len(runs) == 2:
            comparison = compare.compare_runs(runs[0], runs[1], rv.alpha, args.seed,
                                              noise_band=args.latency_noise_band)
    except (InvalidBenchmarkJSON, ReportExists) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if comparison is not None and not comparison.shares_a_case:
        print("\n".join(compare.lines(comparison)), file=sys.stderr)
        print(f"error: {args.paths[0]} and {args.paths[1]} share no case: nothing to compare", file=sys.stderr)
        return 2
    try:
        written = write(rv, runs[-1], out, written_by=CLI_WRITER)
    except OSError as exc:
        print(f"error: cannot write the report into {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print("\n".join(terminal_lines(rv)))
    if comparison is not None:
        print("\ncomparison (A = first file, B = second file):")
        print("\n".join(compare.lines(comparison)))
        if args.fail_on_regression and comparison.has_regressions:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
