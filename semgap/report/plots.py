"""The report's PNG plots: latency against bytes and against link rate, one panel per (model, phase), and
the trade-off of the semantic runtime's technique sets, one panel per group.

Plots are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or GUI
backend is touched; matplotlib is imported only when plotting, so a run without it still reports.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

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


def _finish_panel(ax: Any, xlabel: str, title: str, bars: str = ", IQR bars") -> None:
    ax.set_xlabel(xlabel)
    ax.set_yscale("log")  # modes differ by orders of magnitude: a linear axis hides the fast ones
    ax.set_ylabel(f"ms per round (log): block medians' median{bars}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _figure(panels: int, columns: int | None = None) -> tuple[Figure, Any]:
    """A figure of ``panels`` axes, in rows of ``columns`` (default: one row); unused axes are hidden."""
    from matplotlib.figure import Figure

    columns = min(columns or panels, panels)
    rows = -(-panels // columns)
    fig = Figure(figsize=(6 * columns, 4.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def latency_vs_bytes(rv: RunVerdicts, path: Path) -> Path:
    """Latency (IQR bars) vs bytes per round, one panel per (model, phase)."""
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
    """Latency vs link rate per case with the H2 threshold line; None if no rates."""
    rated = [s for s in rv.summaries if s.link_rate_bps]
    if not rated:
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
    semantic row; semantic points are annotated with their token agreement. None when no group has one."""
    keys = list(dict.fromkeys((s.model, s.phase, s.link_rate, s.decode_steps) for s in rv.summaries
                              if s.role == "semantic"))
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
