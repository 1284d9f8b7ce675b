"""Write the semgap report (verdicts.json, report.md, PNG plots) and compare runs.

Command line, regenerating from saved pytest-benchmark JSON without rerunning::

    python -m semgap.report RUN.json [--out results/] [--h1 0.30] [--h2 0.15]
    python -m semgap.report OLD.json NEW.json   # also prints a regression comparison

Plots are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no
pyplot state or GUI backend is touched.

Exit status: 0 on success, 1 when ``--fail-on-regression`` is given and a
regression was flagged, 2 on unreadable or invalid input.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from semgap import stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from semgap.verdicts import (
    BASELINE_MODE,
    MODE_ORDER,
    PAYLOAD_ONLY_NOTE,
    PHASE_ORDER,
    BenchRun,
    InvalidBenchmarkJSON,
    ModeSummary,
    RunVerdicts,
    compute,
    parse_benchmarks,
)

LEVEL_MEANING = {
    "link": "veth interface counters (includes TCP/IP headers and retransmits)",
    "tcp": "kernel TCP socket counters",
    "payload": f"bytes serialised by the mode ({PAYLOAD_ONLY_NOTE})",
}
MODE_STYLE = {"local": ("tab:gray", "o"), "naive": ("tab:red", "s"),
              "remote_cache": ("tab:blue", "^"), "semantic": ("tab:green", "D")}


# ---------------------------------------------------------------- formatting

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _bytes(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _rate(rate: str | None) -> str:
    return rate or "-"


def _bps(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines (empty list when there are no rows)."""
    if not rows:
        return ["_none_", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _interval(lo: float | None, hi: float | None, fmt=_pct) -> str:
    if lo is None or hi is None:
        return "-"
    return "exact" if lo == hi else f"[{fmt(lo)}, {fmt(hi)}]"


# ---------------------------------------------------------------- markdown

def _conditions_md(rv: RunVerdicts, output_json: dict) -> list[str]:
    c = rv.conditions
    if c is None:
        return []
    dirty = "" if c.commit_dirty is None else (" (dirty)" if c.commit_dirty else " (clean)")
    other = ", ".join(f"{k} {v}" for k, v in sorted(c.versions.items()) if k not in ("python", "torch"))
    rows = [("machine (CPU)", c.cpu or "-"), ("device", c.device or "-"),
            ("commit", f"{c.commit_id or '-'}{dirty}"), ("python", c.python_version or "-"),
            ("torch", c.torch_version or "-"), ("other versions", other or "-"),
            ("pytest-benchmark", output_json.get("version") or "-"),
            ("link", c.link or "-"), ("link rates", ", ".join(map(str, c.link_rates)) or "-"),
            ("models", ", ".join(c.models) or "-"), ("date", c.datetime or "-"),
            ("rounds per benchmark", f"{c.rounds_min}-{c.rounds_max}" if c.rounds_min else "-"),
            ("TCP retransmitted (in link bytes)", _retransmitted(output_json)),
            ("thresholds", f"H1 >= {rv.h1:.0%} bytes, H2 >= {rv.h2:.0%} latency, alpha {rv.alpha}, "
                           f"bootstrap seed {rv.seed}")]
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


def _modes_md(rv: RunVerdicts) -> list[str]:
    rows = [(s.model, s.phase, _rate(s.link_rate), s.mode, s.rounds, _num(s.median_latency_ms),
             f"{s.q1_latency_ms:.2f}-{s.q3_latency_ms:.2f}", _bytes(s.bytes_sent_per_round),
             _bytes(s.bytes_received_per_round), s.byte_level, _num(s.round_trips, ".0f"),
             _num(s.server_compute_ms), _num(s.token_agreement_with_local, ".3f"))
            for s in rv.summaries]
    header = ("model", "phase", "rate", "mode", "rounds", "median ms", "IQR ms", "sent B/round",
              "recv B/round", "byte level", "round trips", "server ms", "token agreement")
    return ["## Per mode and phase", ""] + _table(header, rows)


def _verdicts_md(rv: RunVerdicts) -> list[str]:
    rows = [(v.hypothesis, v.model, v.phase, _rate(v.link_rate), v.byte_level if v.hypothesis == "H1" else "-",
             _pct(v.estimate), _interval(v.ci_low, v.ci_high), _num(v.p_value, ".3g"),
             f"{v.threshold:.0%}", f"**{v.verdict}**", v.reason) for v in rv.verdicts]
    header = ("hypothesis", "model", "phase", "rate", "byte level", "reduction", "interval", "p",
              "threshold", "verdict", "reason")
    return (["## Verdicts", "",
             "Reduction = 1 - semantic/remote_cache (positive = semantic cheaper). H1 bytes are exact; "
             "H2 uses medians with a 95 % percentile bootstrap interval and a one-sided Mann-Whitney U p.", ""]
            + _table(header, rows))


def _tax_md(rv: RunVerdicts, ref: str) -> list[str]:
    rows = [(t.model, t.phase, _rate(t.link_rate), t.mode, _num(t.latency_ms), _num(t.reference_latency_ms),
             f"x{t.latency_ratio:.3f}", _interval(t.ratio_ci_low, t.ratio_ci_high, lambda x: f"x{x:.3f}"),
             _bytes(t.bytes_per_round), _bytes(t.reference_bytes_per_round), _num(t.bytes_ratio, ".3f"))
            for t in rv.taxes if t.reference == ref]
    header = ("model", "phase", "rate", "mode", "latency ms", f"{ref} ms", "latency ratio", "95% CI",
              "B/round", f"{ref} B/round", "bytes ratio")
    return [f"## Against {ref}", ""] + _table(header, rows)


def _sweep_md(rv: RunVerdicts) -> list[str]:
    rows = [(c.model, c.phase, ", ".join(_bps(r) for r in c.rates_bps),
             ", ".join(_pct(x) for x in c.reductions), _bps(c.rate_bps),
             "interpolated" if c.interpolated else "measured", c.note) for c in rv.crossovers]
    header = ("model", "phase", "rates", "H2 reduction", "crossover", "how", "note")
    return (["## Link-rate crossover (H2)", "",
             "Log-rate linear interpolation of the latency reduction against the H2 threshold "
             "(point estimates).", ""] + _table(header, rows))


def _rtt_md(rv: RunVerdicts) -> list[str]:
    rows = []
    rtts: list[float] = []
    for p in rv.rtt_projections:
        rtts = p.rtts_us
        for mode, values in p.projected_ms.items():
            rows.append((p.model, p.phase, _rate(p.link_rate), mode, _num(p.round_trips[mode], ".0f"),
                         *(_num(v) for v in values)))
        if p.semantic_reduction is not None:
            rows.append((p.model, p.phase, _rate(p.link_rate), "H2 reduction", "-",
                         *(_pct(x) for x in p.semantic_reduction)))
    header = ("model", "phase", "rate", "mode", "round trips", *(f"ms @ RTT {r:g} us" for r in rtts))
    return (["## RTT projection", "",
             "Delay cannot be emulated here (no netem). Projected latency = measured median + "
             "round trips x RTT: every round trip waits one full RTT, nothing overlaps; TCP slow start "
             "and window limits are ignored.", ""] + _table(header, rows))


def markdown(rv: RunVerdicts, output_json: dict) -> str:
    """The full ``report.md`` text."""
    levels = sorted({s.byte_level for s in rv.summaries})
    level_lines = [f"- **{lv}**: {LEVEL_MEANING.get(lv, lv)}" for lv in levels] or ["- none"]
    failures = [(f.get("name", "-"), (str(f.get("reason", "-")).splitlines() or ["-"])[0][:200])
                for f in rv.failures]
    lines = ["# semgap report", "", "Byte level used for bytes per round and H1:", "", *level_lines, ""]
    lines += _verdicts_md(rv) + _modes_md(rv) + _tax_md(rv, "local") + _tax_md(rv, "naive")
    lines += _sweep_md(rv) + _rtt_md(rv)
    lines += _calibration_md(output_json)
    lines += ["## Failures", ""] + _table(("benchmark", "reason"), failures)
    if rv.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in rv.notes), ""]
    lines += _conditions_md(rv, output_json)
    return "\n".join(lines)


def _calibration_md(output_json: dict) -> list[str]:
    """The run's transport calibration (semgap.calibration): each transport's per-call cost and throughput
    against a raw socket on the same link, and the framing it added per request."""
    section = (output_json.get("semgap") or {}).get("calibration") or {}
    if not section:
        return []

    def number(value, template: str) -> str:
        return "-" if value is None else template.format(value)

    def megabytes(value) -> str:
        return number(value and value / 1e6, "{:,.0f}")

    rows = [(name, entry.get("peer", "-"), number(entry.get("small_call_us"), "{:.1f}"),
             number(entry.get("raw_tcp_alongside_us"), "{:.1f}"), number(entry.get("ratio_to_raw_tcp"), "{:.2f}x"),
             megabytes(entry.get("throughput_bytes_per_s")), megabytes(entry.get("raw_tcp_alongside_bytes_per_s")),
             number(entry.get("fraction_of_raw_throughput"), "{:.0%}"),
             number(entry.get("framing_bytes_sent_per_request"), "{:.0f}"),
             number(entry.get("framing_bytes_received_per_request"), "{:.0f}"))
            for name, entry in section["transports"].items()]
    header = ("transport", "peer", "small call us", "raw TCP alongside us", "per-call cost vs raw",
              "25 MB one way MB/s", "raw alongside MB/s", "throughput vs raw", "framing B/request sent", "received")
    return ["## Transport calibration", "",
            f"Same session, same link ({section['link']}): each transport's 8-byte echo call and 25 MB sink call, "
            "each round alternating with a raw socket's 8-byte ping-pong or 25 MB send (raw alongside); medians.",
            ""] + _table(header, rows)


# ---------------------------------------------------------------- plots

def _panels(summaries: Sequence[ModeSummary]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s.model, s.phase) for s in summaries))


def _style(mode: str) -> tuple[str, str]:
    return MODE_STYLE.get(mode, ("tab:purple", "x"))


def _modes(rows: Sequence[ModeSummary]) -> list[str]:
    present = {s.mode for s in rows}
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def _annotate_rates(ax: Any, total: Sequence[float], pts: Sequence[ModeSummary]) -> None:
    """Label points with their link rate, one label per distinct position."""
    labels: dict[tuple[float, float], list[str]] = {}
    for t, s in zip(total, pts):
        if s.link_rate:
            labels.setdefault((t, round(s.median_latency_ms, 3)), []).append(s.link_rate)
    for (t, y), names in labels.items():
        ax.annotate(", ".join(names), (t, y), fontsize=7, xytext=(4, 4), textcoords="offset points")


def _finish_panel(ax: Any, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_yscale("log")  # modes differ by orders of magnitude: a linear axis hides the fast ones
    ax.set_ylabel("median latency per round (ms, log scale), bars = IQR")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_latency_vs_bytes(rv: RunVerdicts, path: Path) -> Path:
    """Median latency (IQR bars) vs bytes per round, one panel per (model, phase)."""
    panels = _panels(rv.summaries)
    from matplotlib.figure import (
        Figure,  # imported only when plotting: a run without matplotlib still reports
    )

    fig = Figure(figsize=(6 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (model, phase) in zip(axes[0], panels):
        rows = [s for s in rv.summaries if s.model == model and s.phase == phase]
        for mode in _modes(rows):
            color, marker = _style(mode)
            pts = [s for s in rows if s.mode == mode]
            total = [s.bytes_sent_per_round + s.bytes_received_per_round for s in pts]
            if all(t <= 0 for t in total):
                ax.axhline(pts[0].median_latency_ms, color=color, linestyle=":", label=f"{mode} (0 bytes)")
                continue
            y = [s.median_latency_ms for s in pts]
            err = [[s.median_latency_ms - s.q1_latency_ms for s in pts],
                   [s.q3_latency_ms - s.median_latency_ms for s in pts]]
            ax.errorbar(total, y, yerr=err, fmt=marker, color=color, label=mode, capsize=3)
            _annotate_rates(ax, total, pts)
        level = "/".join(sorted({s.byte_level for s in rows if s.mode != "local"})) or "payload"
        ax.set_xscale("log")
        ax.margins(x=0.2)
        _finish_panel(ax, f"bytes per round, sent + received ({level} level, log scale)",
                      f"{model} {phase}: latency vs bytes")
    return _save(fig, path)


def plot_latency_vs_rate(rv: RunVerdicts, path: Path) -> Path | None:
    """Median latency vs link rate per mode with the H2 threshold line; None if no rates."""
    rated = [s for s in rv.summaries if s.link_rate_bps]
    if not rated:
        return None
    panels = _panels(rated)
    from matplotlib.figure import (
        Figure,  # imported only when plotting: a run without matplotlib still reports
    )

    fig = Figure(figsize=(6 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (model, phase) in zip(axes[0], panels):
        rows = sorted((s for s in rated if s.model == model and s.phase == phase),
                      key=lambda s: s.link_rate_bps)
        for mode in _modes(rows):
            color, marker = _style(mode)
            pts = [s for s in rows if s.mode == mode]
            err = [[s.median_latency_ms - s.q1_latency_ms for s in pts],
                   [s.q3_latency_ms - s.median_latency_ms for s in pts]]
            ax.errorbar([s.link_rate_bps for s in pts], [s.median_latency_ms for s in pts], yerr=err,
                        marker=marker, color=color, label=mode, capsize=3)
        base = [s for s in rows if s.mode == BASELINE_MODE]
        if base:
            ax.plot([s.link_rate_bps for s in base], [(1 - rv.h2) * s.median_latency_ms for s in base],
                    linestyle="--", color="black", label=f"H2 threshold ({1 - rv.h2:.2f} x remote_cache)")
        local = [s for s in rv.summaries if s.model == model and s.phase == phase and s.mode == "local"]
        if local and not any(s.mode == "local" for s in rows):
            ax.axhline(local[0].median_latency_ms, color=_style("local")[0], linestyle=":",
                       label="local (no network)")
        for c in rv.crossovers:
            if c.model == model and c.phase == phase and c.rate_bps:
                ax.axvline(c.rate_bps, color="gray", linestyle="-.", label=f"H2 crossover {_bps(c.rate_bps)}")
        ax.set_xscale("log")
        _finish_panel(ax, "link rate (bit/s, log scale)", f"{model} {phase}: latency vs link rate")
    return _save(fig, path)


# ---------------------------------------------------------------- public API

def write(run_verdicts: RunVerdicts, output_json: dict, out_dir: Path) -> list[Path]:
    """Write verdicts.json, report.md and the PNG plots into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "verdicts.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(run_verdicts.to_dict(), indent=2, default=str) + "\n")
    paths[1].write_text(markdown(run_verdicts, output_json))
    if run_verdicts.summaries and importlib.util.find_spec("matplotlib") is None:
        print("semgap report: matplotlib is not installed, so no plots were drawn", file=sys.stderr)
    elif run_verdicts.summaries:
        paths.append(plot_latency_vs_bytes(run_verdicts, out_dir / "latency_vs_bytes.png"))
        rate_plot = plot_latency_vs_rate(run_verdicts, out_dir / "latency_vs_rate.png")
        if rate_plot is not None:
            paths.append(rate_plot)
    return paths


def terminal_lines(run_verdicts: RunVerdicts) -> list[str]:
    """A header, then one compact line per verdict: the reduction of semantic vs remote_cache, as in report.md."""
    if not run_verdicts.verdicts:
        return []
    lines = ["reduction = 1 - semantic/remote_cache (positive: semantic cheaper); H1 bytes, H2 latency"]
    for v in run_verdicts.verdicts:
        what = "bytes  " if v.hypothesis == "H1" else "latency"
        reduction = "-" if v.estimate is None else f"{v.estimate:+.1%}"
        if v.ci_low is None or v.ci_high is None:
            interval = ""
        elif v.ci_low == v.ci_high:
            interval = f"exact {v.byte_level}"
        else:
            interval = f"[{v.ci_low:+.1%}, {v.ci_high:+.1%}]"
        p = f" p={v.p_value:.2g}" if v.p_value is not None else ""
        lines.append(f"{v.hypothesis} {what} {v.phase:<7} {v.model} {_rate(v.link_rate):<7} "
                     f"{reduction:>7} {interval}{p} vs {v.threshold:.0%}  {v.verdict}")
    return lines


@dataclass
class Comparison:
    """Result of comparing run A (before) with run B (after)."""

    lines: list[str] = field(default_factory=list)
    byte_regressions: list[str] = field(default_factory=list)
    latency_regressions: list[str] = field(default_factory=list)

    @property
    def has_regressions(self) -> bool:
        return bool(self.byte_regressions or self.latency_regressions)


def _key(run: BenchRun) -> tuple[str, str, str | None, str]:
    return (run.model, run.phase, run.link_rate, run.mode)


def _order(runs: dict) -> Any:
    """Sort key for comparison lines: model, phase order, link rate, mode order."""
    def key(k: tuple) -> tuple:
        run = runs[k]
        phase = PHASE_ORDER.index(run.phase) if run.phase in PHASE_ORDER else len(PHASE_ORDER)
        mode = MODE_ORDER.index(run.mode) if run.mode in MODE_ORDER else len(MODE_ORDER)
        return (run.model, phase, run.phase, run.link_rate_bps or 0, str(run.link_rate), mode, run.mode)
    return key


def _compare_pair(a: BenchRun, b: BenchRun, alpha: float, seed: int, n_resamples: int,
                  result: Comparison) -> str:
    label = f"{a.phase:<7} {a.model} {_rate(a.link_rate):<7} {a.mode:<12}"
    if a.mode == "local":
        return f"{label} no network; " + _latency_part(a, b, alpha, seed, n_resamples, result, label)
    common = set(a.bytes_sent_rounds) & set(b.bytes_sent_rounds)
    level = stats.choose_byte_level(sorted(common))
    bytes_a, bytes_b = stats.median(a.bytes_rounds(level)), stats.median(b.bytes_rounds(level))
    delta = bytes_b - bytes_a
    rel = f" ({delta / bytes_a:+.1%})" if bytes_a > 0 else ""
    byte_part = f"bytes {bytes_a:,.0f} -> {bytes_b:,.0f} B/round [{level}] {delta:+,.0f}{rel}"
    if delta > 0:
        byte_part += " BYTE REGRESSION"
        result.byte_regressions.append(label.strip())
    return f"{label} {byte_part}; " + _latency_part(a, b, alpha, seed, n_resamples, result, label)


def _latency_part(a: BenchRun, b: BenchRun, alpha: float, seed: int, n_resamples: int,
                  result: Comparison, label: str) -> str:
    """Latency B vs A with bootstrap CI; records a regression only beyond noise."""
    ratio = stats.median_ratio_interval(b.latency_s, a.latency_s, n_resamples=n_resamples, seed=seed)
    lat_part = (f"latency {stats.median(a.latency_s) * 1e3:.3f} -> {stats.median(b.latency_s) * 1e3:.3f} ms "
                f"{ratio.ratio - 1:+.1%} {_interval(_sub1(ratio.low), _sub1(ratio.high))}")
    if not stats.can_reach_alpha(len(b.latency_s), len(a.latency_s), alpha):
        return f"{lat_part} too few rounds to judge"
    p_slower = stats.mann_whitney_greater_p(b.latency_s, a.latency_s)
    p_faster = stats.mann_whitney_less_p(b.latency_s, a.latency_s)
    if ratio.low is not None and ratio.low > 1 and p_slower < alpha:
        result.latency_regressions.append(label.strip())
        return f"{lat_part} p={p_slower:.2g} LATENCY REGRESSION"
    if ratio.high is not None and ratio.high < 1 and p_faster < alpha:
        return f"{lat_part} p={p_faster:.2g} faster"
    return f"{lat_part} within noise"


def _sub1(x: float | None) -> float | None:
    return None if x is None else x - 1


def compare_runs(json_a: dict, json_b: dict, alpha: float = 0.05, seed: int = 0,
                 n_resamples: int = 10_000) -> Comparison:
    """Compare run A (before) with run B (after), benchmark by benchmark.

    Bytes: exact difference of per-round medians at the best level both runs
    have; any increase is a byte regression (bytes are deterministic).
    Latency: ``median(B)/median(A)`` with a percentile bootstrap CI; a latency
    regression needs the whole CI above 1 and a one-sided Mann-Whitney
    p < alpha, i.e. it must be beyond noise.
    """
    runs_a = {_key(r): r for r in parse_benchmarks(json_a)}
    runs_b = {_key(r): r for r in parse_benchmarks(json_b)}
    result = Comparison()
    result.lines.append(f"A: commit {_commit(json_a)}  ->  B: commit {_commit(json_b)}")
    for key in sorted(runs_a.keys() & runs_b.keys(), key=_order(runs_a)):
        result.lines.append(_compare_pair(runs_a[key], runs_b[key], alpha, seed, n_resamples, result))
    for key in sorted(runs_a.keys() - runs_b.keys(), key=_order(runs_a)):
        result.lines.append(f"only in A: {' '.join(map(str, key))}")
    for key in sorted(runs_b.keys() - runs_a.keys(), key=_order(runs_b)):
        result.lines.append(f"only in B: {' '.join(map(str, key))}")
    result.lines.append(f"{len(result.byte_regressions)} byte regression(s), "
                        f"{len(result.latency_regressions)} latency regression(s)")
    return result


def _commit(output_json: dict) -> str:
    info = output_json.get("commit_info") if isinstance(output_json.get("commit_info"), dict) else {}
    commit = str(info.get("id") or "?")[:12]
    return commit + ("+dirty" if info.get("dirty") else "")


def compare(json_a: dict, json_b: dict, alpha: float = 0.05, seed: int = 0,
            n_resamples: int = 10_000) -> list[str]:
    """Comparison lines of :func:`compare_runs` (use that for the regression flags)."""
    return compare_runs(json_a, json_b, alpha, seed, n_resamples).lines


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
        if not parse_benchmarks(data):
            raise InvalidBenchmarkJSON("no semgap benchmarks (extra_info.mode) found")
    except InvalidBenchmarkJSON as exc:
        raise InvalidBenchmarkJSON(f"{path}: {exc}") from exc
    return data


THRESHOLDS = (("h1", 0.30), ("h2", 0.15), ("alpha", 0.05))


def _threshold(args: argparse.Namespace, output_json: dict, name: str, default: float) -> float:
    """The option if given, else what the run itself used (saved in its JSON), else the default."""
    if getattr(args, name) is not None:
        return getattr(args, name)
    saved = (output_json.get("semgap") or {}).get(name)
    return float(saved) if saved is not None else default


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m semgap.report",
                                description="Regenerate the semgap report from saved pytest-benchmark JSON; "
                                            "with two files, compare them (first = before, second = after).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="one or two pytest-benchmark JSON files")
    p.add_argument("--out", default="results", help="output directory (default: results/)")
    p.add_argument("--h1", type=float, default=None, help="H1 byte-reduction threshold (default: the run's, else 0.30)")
    p.add_argument("--h2", type=float, default=None, help="H2 latency-reduction threshold (default: the run's, else 0.15)")
    p.add_argument("--alpha", type=float, default=None, help="significance level (default: the run's, else 0.05)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when a byte or latency regression is flagged")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if len(args.paths) > 2:
        print("error: give one or two JSON files", file=sys.stderr)
        return 2
    try:
        runs = [_load(p) for p in args.paths]
        h1, h2, alpha = (_threshold(args, runs[-1], name, default) for name, default in THRESHOLDS)
        rv = compute(runs[-1], h1=h1, h2=h2, alpha=alpha, seed=args.seed)
        comparison = compare_runs(runs[0], runs[1], alpha, args.seed) if len(runs) == 2 else None
    except InvalidBenchmarkJSON as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in write(rv, runs[-1], Path(args.out)):
        print(f"wrote {path}")
    print("\n".join(terminal_lines(rv)))
    if comparison is not None:
        print("\ncomparison (A = first file, B = second file):")
        print("\n".join(comparison.lines))
        if args.fail_on_regression and comparison.has_regressions:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
