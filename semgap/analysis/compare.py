"""Compare two runs case by case: bytes gated exactly, latency only beyond a noise band (pure, no I/O).

Cases are matched by (model, case id, decode steps, label), merging each case's blocks; the
benchmark names (one per block) play no part. Bytes are deterministic, so any increase of a
case's bytes per round (the median over its blocks) is a regression. Latency is not: two runs
meet different machine states that none of their blocks can show, so a latency change counts
as a regression only when its whole interval over blocks lies beyond the noise band.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from semgap.analysis import stats
from semgap.analysis.measurements import CaseRecord, judged_level, mode_rank, phase_rank, read_run

#: Latency ratios within [1/(1 + band), 1 + band] are never called a change. 20 %: blocks capture the
#: noise inside a run, not the difference between two runs' machines (frequency, co-tenants, cache
#: placement), which on a shared VM easily reaches several per cent; raise it on noisier machines.
DEFAULT_NOISE_BAND = 0.20
REGRESSION, FASTER, WITHIN_BAND, TOO_FEW_BLOCKS = "LATENCY REGRESSION", "faster", "within noise band", \
    "too few blocks to judge"


@dataclass(frozen=True)
class CaseChange:
    """One case in both runs: bytes and latency before (A) and after (B)."""

    name: str
    byte_level: str | None
    bytes_before: float | None
    bytes_after: float | None
    byte_regression: bool
    latency_before_ms: float
    latency_after_ms: float
    latency_ratio: float
    ratio_low: float | None
    ratio_high: float | None
    blocks_before: int
    blocks_after: int
    latency_verdict: str


@dataclass
class Comparison:
    """Result of comparing run A (before) with run B (after)."""

    commit_a: str
    commit_b: str
    noise_band: float
    confidence: float
    changes: list[CaseChange] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def byte_regressions(self) -> list[str]:
        return [c.name for c in self.changes if c.byte_regression]

    @property
    def latency_regressions(self) -> list[str]:
        return [c.name for c in self.changes if c.latency_verdict == REGRESSION]

    @property
    def has_regressions(self) -> bool:
        return bool(self.byte_regressions or self.latency_regressions)

    @property
    def shares_a_case(self) -> bool:
        return bool(self.changes)


def _name(case: CaseRecord) -> str:
    steps = f" ({case.decode_steps} steps)" if case.decode_steps else ""
    label = f" [{case.label}]" if case.label != case.mode else ""
    return f"{case.model} {case.case}{steps}{label}"


def _order(case: CaseRecord) -> tuple:
    return (case.model, phase_rank(case.phase), case.phase, case.decode_steps, case.link_rate_bps or 0,
            mode_rank(case.label), case.case)


def _block_medians_s(case: CaseRecord) -> list[float]:
    return [float(x) for x in stats.block_medians(case.latency_blocks())]


def latency_verdict(ratio: stats.RatioInterval, noise_band: float) -> str:
    """Regression only when the interval's low end exceeds ``1 + band``; faster when its high end is below the mirror."""
    if ratio.low is None or ratio.high is None:
        return TOO_FEW_BLOCKS
    if ratio.low > 1.0 + noise_band:
        return REGRESSION
    if ratio.high < 1.0 / (1.0 + noise_band):
        return FASTER
    return WITHIN_BAND


def compare_case(a: CaseRecord, b: CaseRecord, noise_band: float, confidence: float, seed: int,
                 n_resamples: int) -> CaseChange:
    """Bytes (exact, at the best level both runs counted) and latency (block medians, unpaired) of one case."""
    level = None if a.role == "local" else judged_level([a, b])
    before, after = (None, None) if level is None else (a.bytes_per_round(level), b.bytes_per_round(level))
    ratio = stats.median_ratio_interval(_block_medians_s(b), _block_medians_s(a), confidence, n_resamples, seed)
    return CaseChange(
        name=_name(a), byte_level=level, bytes_before=before, bytes_after=after,
        byte_regression=before is not None and after > before,
        latency_before_ms=stats.blocked_median(a.latency_blocks()) * 1e3,
        latency_after_ms=stats.blocked_median(b.latency_blocks()) * 1e3,
        latency_ratio=ratio.ratio, ratio_low=ratio.low, ratio_high=ratio.high,
        blocks_before=len(a.blocks), blocks_after=len(b.blocks), latency_verdict=latency_verdict(ratio, noise_band),
    )


def _commit(output_json: dict) -> str:
    info = output_json.get("commit_info") if isinstance(output_json.get("commit_info"), dict) else {}
    return str(info.get("id") or "?")[:12] + ("+dirty" if info.get("dirty") else "")


def compare_runs(json_a: dict, json_b: dict, alpha: float = 0.05, seed: int = 0, n_resamples: int = 10_000,
                 noise_band: float = DEFAULT_NOISE_BAND) -> Comparison:
    """Compare run A (before) with run B (after), case by case.

    Latency: ``median(B block medians) / median(A block medians)`` with a
    percentile bootstrap interval at ``1 - 2 * alpha`` that resamples each
    run's blocks independently (two runs' blocks are not paired); see
    :func:`latency_verdict`. Raises ``InvalidBenchmarkJSON`` on unreadable input.
    """
    cases_a = {c.identity: c for c in read_run(json_a).cases}
    cases_b = {c.identity: c for c in read_run(json_b).cases}
    result = Comparison(_commit(json_a), _commit(json_b), noise_band, 1.0 - 2.0 * alpha)
    for key in sorted(cases_a.keys() & cases_b.keys(), key=lambda k: _order(cases_a[k])):
        result.changes.append(compare_case(cases_a[key], cases_b[key], noise_band, result.confidence, seed,
                                           n_resamples))
    result.only_in_a = [_name(cases_a[k]) for k in sorted(cases_a.keys() - cases_b.keys(), key=lambda k: _order(cases_a[k]))]
    result.only_in_b = [_name(cases_b[k]) for k in sorted(cases_b.keys() - cases_a.keys(), key=lambda k: _order(cases_b[k]))]
    return result


def _signed_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def lines(comparison: Comparison) -> list[str]:
    """The comparison as terminal lines, one per case, then what only one run has and the totals."""
    c = comparison
    out = [f"A: commit {c.commit_a}  ->  B: commit {c.commit_b}; latency: B/A of block medians, "
           f"{c.confidence:.0%} interval, noise band +-{c.noise_band:.0%}"]
    for change in c.changes:
        out.append(_line(change))
    out += [f"only in A: {name}" for name in c.only_in_a] + [f"only in B: {name}" for name in c.only_in_b]
    if not c.shares_a_case:
        out.append("A and B share no case: nothing compared")
    out.append(f"{len(c.byte_regressions)} byte regression(s), {len(c.latency_regressions)} latency regression(s)")
    return out


def _line(change: CaseChange) -> str:
    if change.byte_level is None:
        byte_part = "no network"
    else:
        delta = change.bytes_after - change.bytes_before
        rel = f" ({delta / change.bytes_before:+.1%})" if change.bytes_before > 0 else ""
        byte_part = (f"bytes {change.bytes_before:,.0f} -> {change.bytes_after:,.0f} B/round [{change.byte_level}] "
                     f"{delta:+,.0f}{rel}" + (" BYTE REGRESSION" if change.byte_regression else ""))
    interval = ("" if change.ratio_low is None else
                f" [{_signed_pct(change.ratio_low - 1)}, {_signed_pct(change.ratio_high - 1)}]")
    return (f"{change.name}: {byte_part}; latency {change.latency_before_ms:.3f} -> {change.latency_after_ms:.3f} ms "
            f"{change.latency_ratio - 1:+.1%}{interval} ({change.blocks_before} vs {change.blocks_after} blocks) "
            f"{change.latency_verdict}")
