"""The report's PNG plots, one question each (:data:`PLOTS`, with the caption report.md gives them): latency
against bytes with both thresholds, latency against link rate (two rates or more), each remote round taken
apart, and the trade-off of the semantic runtime's technique sets (ablation runs only).

Plots are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or GUI
backend is touched; matplotlib is imported only when plotting, so a run without it still reports.
Legends sit beside the panel, never over its data, and log axes are labelled with plain numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from semgap.analysis.measurements import mode_rank
from semgap.schema import is_ablation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from semgap.analysis.summaries import CaseSummary
    from semgap.analysis.verdicts import RunVerdicts

MODE_STYLE = {"local": ("tab:gray", "o"), "naive": ("tab:red", "s"), "remote_cache": ("tab:blue", "^"),
              "op_sync": ("tab:orange", "v"), "op_pipelined": ("tab:brown", "<"), "semantic": ("tab:green", "D")}


def format_bps(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def _panels(summaries: Sequence[CaseSummary]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((s.model, s.phase) for s in summaries))


def _style(label: str) -> tuple[str, str]:
    return MODE_STYLE.get(label, ("tab:purple", "x"))


def _labels(rows: Sequence[CaseSummary]) -> list[str]:
    """The modes' labels in report order; ablation variants have a plot of their own (:func:`tradeoff`)."""
    return sorted({s.label for s in rows if not is_ablation(s.label)}, key=mode_rank)


def _legend(label: str, pts: Sequence[CaseSummary], min_agreement: float) -> str:
    """The label, marked LOSSY when its tokens fell short of local's at any point shown."""
    worst = min((s.token_agreement_with_local for s in pts if s.token_agreement_with_local is not None), default=None)
    return label if worst is None or worst >= min_agreement else f"{label} (LOSSY, agreement {worst:.3f})"


def _title(rows: Sequence[CaseSummary], model: str, phase: str, what: str) -> str:
    weights = "/".join(sorted({s.weights for s in rows if s.weights})) or "unknown"
    return f"{model} ({weights} weights) {phase}: {what}"


def _annotate_rates(ax: Any, total: Sequence[float], pts: Sequence[CaseSummary]) -> None:
    """Label points with their link rate, one label per distinct position."""
    labels: dict[tuple[float, float], list[str]] = {}
    for t, s in zip(total, pts):
        if s.link_rate:
            labels.setdefault((t, round(s.median_latency_ms, 3)), []).append(s.link_rate)
    for (t, y), names in labels.items():
        ax.annotate(", ".join(names), (t, y), fontsize=7, xytext=(4, 4), textcoords="offset points")


def _error_bars(pts: Sequence[CaseSummary]) -> list[list[float]]:
    return [[s.median_latency_ms - s.q1_latency_ms for s in pts], [s.q3_latency_ms - s.median_latency_ms for s in pts]]


def plain_number(value: float) -> str:
    """A tick label as a plain number: 20, 0.5, 2k, 1.5M (not 2x10^1)."""
    if value == 0:
        return "0"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plain_log_ticks(axis: Any) -> None:
    """Plain labels on a log axis: every decade; between decades every tick when the axis spans less than a
    decade and a half (a narrow latency axis would otherwise show a single label), 2 and 5 up to three
    decades, none beyond (a bytes axis spans eight)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _pos: Any = None) -> str:
        low, high = sorted(axis.get_view_interval())
        digit = round(value / 10 ** math.floor(math.log10(value)))
        decades = math.log10(high / low) if low > 0 else math.inf
        return plain_number(value) if decades <= 1.5 or (decades <= 3 and digit in (2, 5)) else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _pos=None: plain_number(value)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _finish_panel(ax: Any, xlabel: str, title: str, bars: str = ", IQR bars") -> None:
    ax.set_xlabel(xlabel)
    ax.set_yscale("log")  # modes differ by orders of magnitude: a linear axis hides the fast ones
    ax.set_ylabel(f"ms per round (log): block medians' median{bars}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            _plain_log_ticks(axis)
    if ax.get_legend_handles_labels()[0]:  # beside the panel, never over its points
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _figure(panels: int, columns: int | None = None) -> tuple[Figure, Any]:
    """A figure of ``panels`` axes, in rows of ``columns`` (default: one row); unused axes are hidden."""
    from matplotlib.figure import Figure

    columns = min(columns or panels, panels)
    rows = -(-panels // columns)
    fig = Figure(figsize=(9 * columns, 4.5 * rows))  # 6 for the panel, 3 for its legend
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legends outside the panels included
    return path


def threshold_marks(rv: RunVerdicts, rows: Sequence[CaseSummary]) -> dict[str, tuple[float, str]]:
    """Where a semantic point must lie to pass each headline's threshold, for a panel of one group:
    {"H1": (bytes per round, label), "H2": (ms per round, label)}, (1 - threshold) x the binding baseline's
    bytes or latency. Empty for a panel of several groups (rates, decode lengths): each has its own."""
    groups = {(s.model, s.phase, s.link_rate, s.decode_steps) for s in rows}
    if len(groups) != 1:
        return {}
    marks = {}
    for h in rv.headlines:
        base = next((s for s in rows if s.label == h.binding_baseline), None)
        if h.group_key not in groups or base is None:
            continue
        if h.hypothesis == "H1":
            marks["H1"] = ((1 - rv.h1) * (base.bytes_sent_per_round + base.bytes_received_per_round),
                           f"H1 threshold: {1 - rv.h1:.2f} x {base.label}'s bytes")
        elif h.hypothesis == "H2":
            marks["H2"] = ((1 - rv.h2) * base.median_latency_ms, f"H2 threshold: {1 - rv.h2:.2f} x {base.label}'s latency")
    return marks


def latency_vs_bytes(rv: RunVerdicts, path: Path) -> Path:
    """Latency (IQR bars) vs bytes per round, one panel per (model, phase), with both headline thresholds."""
    panels = _panels(rv.summaries)
    fig, axes = _figure(len(panels))
    for ax, (model, phase) in zip(axes, panels):
        rows = [s for s in rv.summaries if s.model == model and s.phase == phase]
        for label in _labels(rows):
            color, marker = _style(label)
            pts = [s for s in rows if s.label == label]
            total = [s.bytes_sent_per_round + s.bytes_received_per_round for s in pts]
            if all(t <= 0 for t in total):
                ax.axhline(pts[0].median_latency_ms, color=color, linestyle=":", label=f"{label} (0 bytes)")
                continue
            ax.errorbar(total, [s.median_latency_ms for s in pts], yerr=_error_bars(pts), fmt=marker, color=color,
                        label=_legend(label, pts, rv.min_agreement), capsize=3)
            _annotate_rates(ax, total, pts)
        marks = threshold_marks(rv, rows)
        if "H1" in marks:
            ax.axvline(marks["H1"][0], color="black", linestyle="--", linewidth=1, label=marks["H1"][1])
        if "H2" in marks:
            ax.axhline(marks["H2"][0], color="black", linestyle="-.", linewidth=1, label=marks["H2"][1])
        level = "/".join(sorted({s.byte_level for s in rows if s.role != "local"})) or "payload"
        ax.set_xscale("log")
        ax.margins(x=0.2)
        _finish_panel(ax, f"bytes per round, sent + received ({level} level, log scale)",
                      _title(rows, model, phase, "latency vs bytes"))
    return _save(fig, path)


def _threshold_line(rv: RunVerdicts, rows: Sequence[CaseSummary]) -> tuple[list[float], list[float], set[str]]:
    """(1 - h2) x the latency of each rate's binding H2 baseline (the one its headline verdict names)."""
    latency = {(s.link_rate_bps, s.label): s.median_latency_ms for s in rows}
    xs, ys, names = [], [], set()
    for v in rv.headlines:
        key = (v.link_rate_bps, v.binding_baseline)
        if v.hypothesis == "H2" and key in latency and (v.model, v.phase) == (rows[0].model, rows[0].phase):
            xs.append(v.link_rate_bps)
            ys.append((1 - rv.h2) * latency[key])
            names.add(v.binding_baseline)
    return xs, ys, names


def latency_vs_rate(rv: RunVerdicts, path: Path) -> Path | None:
    """Latency vs link rate per case with the H2 threshold line; None with fewer than two rates (one rate is
    a single column of points: latency_vs_bytes shows it)."""
    rated = [s for s in rv.summaries if s.link_rate_bps]
    if len({s.link_rate_bps for s in rated}) < 2:
        return None
    panels = _panels(rated)
    fig, axes = _figure(len(panels))
    for ax, (model, phase) in zip(axes, panels):
        rows = sorted((s for s in rated if s.model == model and s.phase == phase), key=lambda s: s.link_rate_bps)
        for label in _labels(rows):
            color, marker = _style(label)
            pts = [s for s in rows if s.label == label]
            ax.errorbar([s.link_rate_bps for s in pts], [s.median_latency_ms for s in pts], yerr=_error_bars(pts),
                        marker=marker, color=color, label=_legend(label, pts, rv.min_agreement), capsize=3)
        xs, ys, names = _threshold_line(rv, rows)
        if xs:
            ax.plot(xs, ys, linestyle="--", color="black",
                    label=f"H2 threshold ({1 - rv.h2:.2f} x binding: {', '.join(sorted(names))})")
        local = [s for s in rv.summaries if s.model == model and s.phase == phase and s.role == "local"]
        if local and not any(s.role == "local" for s in rows):
            ax.axhline(local[0].median_latency_ms, color=_style("local")[0], linestyle=":", label="local (no network)")
        for c in rv.crossovers:
            if c.model == model and c.phase == phase and c.rate_bps:
                ax.axvline(c.rate_bps, color="gray", linestyle="-.",
                           label=f"H2 crossover vs {c.baseline} {format_bps(c.rate_bps)}")
        ax.set_xscale("log")
        _finish_panel(ax, "link rate (bit/s, log scale)", _title(rows, model, phase, "latency vs link rate"))
    return _save(fig, path)


def _point_label(s: CaseSummary, min_agreement: float) -> str:
    """A point's label; a semantic point carries its token agreement, and LOSSY when it falls short."""
    if s.role != "semantic" or s.token_agreement_with_local is None:
        return s.label
    lossy = " LOSSY" if s.token_agreement_with_local < min_agreement else ""
    return f"{s.label} (agreement {s.token_agreement_with_local:.3f}{lossy})"


def tradeoff(rv: RunVerdicts, path: Path) -> Path | None:
    """Bytes per round (x, log) against median latency (y), one point per label, for every group with a
    technique set of an ablation; semantic points are annotated with their token agreement. None without an
    ablation: latency_vs_bytes already shows the one technique set."""
    keys = list(dict.fromkeys((s.model, s.phase, s.link_rate, s.decode_steps) for s in rv.summaries
                              if s.role == "semantic" and is_ablation(s.label)))
    if not keys:
        return None
    fig, axes = _figure(len(keys), columns=3)
    for ax, (model, phase, rate, steps) in zip(axes, keys):
        rows = [s for s in rv.summaries if (s.model, s.phase, s.link_rate, s.decode_steps) == (model, phase, rate, steps)]
        for s in rows:
            total = s.bytes_sent_per_round + s.bytes_received_per_round
            color, marker = _style(s.label) if not is_ablation(s.label) else ("tab:olive", "o")
            if total <= 0:
                ax.axhline(s.median_latency_ms, color=color, linestyle=":", label=f"{s.label} (0 bytes)")
                continue
            ax.plot([total], [s.median_latency_ms], marker=marker, color=color, linestyle="none")
            ax.annotate(_point_label(s, rv.min_agreement), (total, s.median_latency_ms), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.margins(x=0.3)
        where = " ".join(part for part in (phase, rate or "", f"{steps} steps" if steps else "") if part)
        _finish_panel(ax, f"bytes per round, sent + received ({rows[0].byte_level} level, log scale)",
                      _title(rows, model, where, "trade-off"), bars="")
    return _save(fig, path)


PART_COLORS = ("tab:gray", "tab:olive", "tab:red", "tab:pink", "tab:cyan", "tab:blue", "tab:purple", "tab:brown")


def round_parts(rv: RunVerdicts, path: Path) -> Path | None:
    """One stacked bar per remote mode, a panel per (model, phase, rate): its mean round taken apart."""
    from semgap.analysis.rounds import PARTS

    panels = list(dict.fromkeys((p.model, p.phase, p.link_rate) for p in rv.round_parts))
    if not panels:
        return None
    fig, axes = _figure(len(panels), columns=2)
    for ax, (model, phase, rate) in zip(axes, panels):
        rows = [p for p in rv.round_parts if (p.model, p.phase, p.link_rate) == (model, phase, rate)]
        left = [0.0] * len(rows)
        for (name, what), color in zip(PARTS, PART_COLORS):
            widths = [max(p.parts[name], 0.0) for p in rows]  # in flight below zero (posts overlap): in the table
            ax.barh(range(len(rows)), widths, left=left, color=color, label=f"{name} ({what})")
            left = [x + w for x, w in zip(left, widths)]
        ax.scatter([p.benchmark_ms for p in rows], range(len(rows)), marker="|", s=300, color="black",
                   label="pytest-benchmark's round time", zorder=3)
        ax.set_yticks(range(len(rows)), [p.label for p in rows])
        ax.invert_yaxis()
        ax.set_xlabel("ms per round (mean over measured rounds)")
        ax.set_title(f"{model} {phase}{f' at {rate}' if rate else ''}: a round taken apart", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file, how it is drawn (None: not for this run), what to read from it."""

    file: str
    draw: Callable[[RunVerdicts, Path], Path | None]
    caption: str


PLOTS = (
    Plot("latency_vs_bytes.png", latency_vs_bytes,
         "H1 and H2 at once: each mode's round latency against the bytes it moved in a round. A semantic point "
         "left of the dashed line passes H1's threshold, one below the dash-dotted line H2's (both drawn against "
         "the binding baseline; the verdicts also need the interval, see the verdict table)."),
    Plot("latency_vs_rate.png", latency_vs_rate,
         "How the latency gap moves with the link rate: where the semantic curve lies below the dashed H2 "
         "threshold line, semantic is that much faster; a dash-dotted line marks the crossover rate."),
    Plot("round_parts.png", round_parts,
         "Where a remote round goes: client compute and codec, time in flight, and the server's queueing, decode, "
         "compute, encode and dispatch, stacked per mode; the black tick is pytest-benchmark's own round time, "
         "which the stack must reach within 5 %."),
    Plot("tradeoff.png", tradeoff,
         "What each technique set of the ablation trades: bytes against latency per set, with token agreement "
         "on the semantic points; a LOSSY point bought its savings with other tokens."),
)


def markdown(drawn: Sequence[Path]) -> list[str]:
    """report.md's "Plots" section: each drawn plot with its caption."""
    names = {path.name for path in drawn}
    shown = [plot for plot in PLOTS if plot.file in names]
    lines = ["## Plots", ""] if shown else []
    for plot in shown:
        lines += [f"![{plot.file}]({plot.file})", "", f"*{plot.file}*: {plot.caption}", ""]
    return lines
