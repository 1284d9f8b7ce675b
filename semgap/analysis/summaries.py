"""Descriptive figures of a run: per-case figures, taxes, RTT projections, crossovers and conditions (pure).

These describe; only :mod:`semgap.analysis.verdicts` judges. A case's latency figure is the median over
its blocks of each block's median round; ratios between two cases of one run pair their blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from semgap.analysis import effects, stats
from semgap.schema import CANDIDATE_LABEL
from semgap.analysis.measurements import (
    CaseRecord,
    Run,
    blind_baselines,
    judged_level,
    semgap_section,
)


@dataclass(frozen=True)
class CaseSummary:
    """Row of the per-case table: one label of one (model, phase, rate, decode steps) group."""

    model: str
    phase: str
    link_rate: str | None
    link_rate_bps: int | None
    decode_steps: int
    label: str
    mode: str
    role: str
    weights: str | None
    lossless: bool | None
    blocks: int
    rounds: int
    median_latency_ms: float
    q1_latency_ms: float
    q3_latency_ms: float
    byte_level: str
    bytes_sent_per_round: float
    bytes_received_per_round: float
    link_bytes_per_round: float | None
    round_trips: float | None
    server_compute_ms: float | None
    token_agreement_with_local: float | None
    techniques: str | None = None


@dataclass(frozen=True)
class TaxEntry:
    """A case's latency and bytes relative to a reference (local or a blind baseline), blocks paired."""

    reference: str
    label: str
    model: str
    phase: str
    link_rate: str | None
    decode_steps: int
    latency_ms: float
    reference_latency_ms: float
    latency_ratio: float
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    n_blocks: int
    bytes_per_round: float
    reference_bytes_per_round: float
    bytes_ratio: float | None


@dataclass(frozen=True)
class CrossoverRecord:
    """H2 crossover link rate for one (model, phase, decode steps) sweep against one baseline."""

    model: str
    phase: str
    decode_steps: int
    baseline: str
    threshold: float
    rates_bps: list[float]
    reductions: list[float]
    rate_bps: float | None
    holds_below: bool | None
    interpolated: bool
    crossings_bps: list[float]
    note: str


@dataclass(frozen=True)
class RttProjection:
    """Projected latency (ms) per case at several RTTs for one group, and the candidate's reduction per baseline."""

    model: str
    phase: str
    link_rate: str | None
    decode_steps: int
    rtts_us: list[float]
    round_trips: dict[str, float]
    projected_ms: dict[str, list[float]]
    reductions: dict[str, list[float]]


@dataclass(frozen=True)
class Conditions:
    """Run conditions, for the Conditions section of the report."""

    cpu: str | None
    cores: int | None
    commit_id: str | None
    commit_dirty: bool | None
    python_version: str | None
    torch_version: str | None
    versions: dict[str, Any]
    device: str | None
    dtype: str | None
    link: str | None
    link_rates: list[Any]
    models: list[str]
    weights: list[str]
    datetime: str | None
    run_status: str
    interrupted_by: str | None
    blocks_planned: int | None
    blocks_measured: int
    rounds_per_block: int | None
    warmup_rounds_per_block: int | None
    block_order_seed: int | None
    load_avg_1m_max: float | None
    cpu_steal_pct_max: float | None


def latency_ms(case: CaseRecord) -> float:
    """The case's latency figure: median over blocks of the block medians, in ms."""
    return stats.blocked_median(case.latency_blocks()) * 1e3


def _summary(case: CaseRecord, level: str) -> CaseSummary:
    q1, q3 = stats.iqr(case.latency_s)
    return CaseSummary(
        model=case.model, phase=case.phase, link_rate=case.link_rate, link_rate_bps=case.link_rate_bps,
        decode_steps=case.decode_steps, label=case.label, mode=case.mode, role=case.role, weights=case.weights,
        lossless=case.lossless, blocks=len(case.blocks), rounds=len(case.latency_s),
        median_latency_ms=latency_ms(case), q1_latency_ms=q1 * 1e3, q3_latency_ms=q3 * 1e3, byte_level=level,
        bytes_sent_per_round=case.bytes_per_round(level, "sent"),
        bytes_received_per_round=case.bytes_per_round(level, "received"),
        link_bytes_per_round=case.bytes_per_round("link") if "link" in case.levels else None,
        round_trips=case.round_trips, server_compute_ms=case.server_compute_ms,
        token_agreement_with_local=case.token_agreement, techniques=case.techniques,
    )


def paired_ratio(case: CaseRecord, reference: CaseRecord, confidence: float, seed: int,
                 n_resamples: int) -> stats.RatioInterval | None:
    """Latency ratio case/reference over their common blocks; None when they share none."""
    common = sorted(set(case.blocks) & set(reference.blocks))
    if not common:
        return None
    return stats.paired_ratio_interval(case.latency_blocks(common), reference.latency_blocks(common),
                                       confidence, n_resamples, seed)


def _reference(label: str, key: tuple, groups: dict) -> CaseRecord | None:
    """The reference case of a group; ``local`` may come from the unshaped group of a sweep."""
    if label in groups[key]:
        return groups[key][label]
    if label == "local":
        model, phase, _, steps = key
        for (m, p, _, s), group in groups.items():
            if (m, p, s) == (model, phase, steps) and "local" in group:
                return group["local"]
    return None


def tax_entries(reference_label: str, key: tuple, groups: dict, level: str, confidence: float, seed: int,
                n_resamples: int) -> list[TaxEntry]:
    """Latency ratio (paired-block interval) and bytes of every other case against one reference."""
    reference = _reference(reference_label, key, groups)
    if reference is None:
        return []
    ref_bytes = reference.bytes_per_round(level) if level in reference.levels else 0.0
    out = []
    for label, case in groups[key].items():
        if label == reference_label:
            continue
        ratio = paired_ratio(case, reference, confidence, seed, n_resamples)
        case_bytes = case.bytes_per_round(level)
        out.append(TaxEntry(
            reference=reference_label, label=label, model=key[0], phase=key[1], link_rate=key[2], decode_steps=key[3],
            latency_ms=latency_ms(case), reference_latency_ms=latency_ms(reference),
            latency_ratio=ratio.ratio if ratio else latency_ms(case) / latency_ms(reference),
            ratio_ci_low=ratio.low if ratio else None, ratio_ci_high=ratio.high if ratio else None,
            n_blocks=ratio.n_candidate if ratio else 0,
            bytes_per_round=case_bytes, reference_bytes_per_round=ref_bytes,
            bytes_ratio=case_bytes / ref_bytes if ref_bytes > 0 else None,
        ))
    return out


def rtt_projection(key: tuple, group: dict[str, CaseRecord], rtts_s: Sequence[float]) -> RttProjection:
    """Latency projected to each RTT for every case with a round-trip count, and the candidate's reductions."""
    trips = {label: case.round_trips for label, case in group.items() if case.round_trips is not None}
    projected = {label: effects.project_latency_ms(latency_ms(group[label]), count, rtts_s)
                 for label, count in trips.items()}
    reductions = {}
    if CANDIDATE_LABEL in projected:
        for baseline in blind_baselines(group):
            if baseline in projected:
                reductions[baseline] = [1.0 - c / b for c, b in zip(projected[CANDIDATE_LABEL], projected[baseline])]
    return RttProjection(model=key[0], phase=key[1], link_rate=key[2], decode_steps=key[3],
                         rtts_us=[r * 1e6 for r in rtts_s], round_trips=dict(trips), projected_ms=projected,
                         reductions=reductions)


def crossovers(verdicts: Sequence[Any], h2: float) -> list[CrossoverRecord]:
    """H2 crossover rate per (model, phase, decode steps, baseline) measured at two or more link rates."""
    sweeps: dict[tuple, list] = {}
    for v in verdicts:
        if v.hypothesis == "H2" and v.link_rate_bps and v.estimate is not None:
            sweeps.setdefault((v.model, v.phase, v.decode_steps, v.baseline), []).append(v)
    out = []
    for (model, phase, steps, baseline), vs in sweeps.items():
        if len(vs) < 2:
            continue
        vs = sorted(vs, key=lambda v: v.link_rate_bps)
        rates, reductions = [float(v.link_rate_bps) for v in vs], [float(v.estimate) for v in vs]
        c = effects.crossover_rate(rates, reductions, h2)
        out.append(CrossoverRecord(model=model, phase=phase, decode_steps=steps, baseline=baseline, threshold=h2,
                                   rates_bps=rates, reductions=reductions, rate_bps=c.rate_bps,
                                   holds_below=c.holds_below, interpolated=c.interpolated,
                                   crossings_bps=list(c.all_crossings_bps), note=c.note))
    return out


def tables(groups: dict, verdicts: Sequence[Any], h2: float, confidence: float, seed: int, n_resamples: int,
           rtts_s: Sequence[float]) -> tuple[list, list, list, list]:
    """Per-case summaries, taxes (against local and every blind baseline), crossovers and RTT projections."""
    case_rows, taxes, projections = [], [], []
    for key, group in groups.items():
        level = judged_level(list(group.values()))
        case_rows += [_summary(case, level) for case in group.values()]
        for reference in ("local", *blind_baselines(group)):
            taxes += tax_entries(reference, key, groups, level, confidence, seed, n_resamples)
        projections.append(rtt_projection(key, group, rtts_s))
    return case_rows, taxes, crossovers(verdicts, h2), projections


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def conditions(output_json: dict, run: Run) -> Conditions:
    """Machine, commit, versions, design, load and link conditions of the run."""
    meta, machine, commit = semgap_section(output_json), _dict(output_json.get("machine_info")), \
        _dict(output_json.get("commit_info"))
    versions = _dict(meta.get("versions"))
    by_bps = sorted({(c.link_rate_bps or 0, c.link_rate) for c in run.cases if c.link_rate})
    blocks = [b for c in run.cases for b in c.blocks.values()]
    loads = [b.load_avg_1m for b in blocks if b.load_avg_1m is not None]
    steals = [b.cpu_steal_pct for b in blocks if b.cpu_steal_pct is not None]
    per_block = {len(b.latency_s) for b in blocks}
    info = run.info
    return Conditions(
        cpu=_dict(machine.get("cpu")).get("brand_raw") or machine.get("processor") or None, cores=info.cores,
        commit_id=commit.get("id"), commit_dirty=commit.get("dirty"),
        python_version=machine.get("python_version"),
        torch_version=versions.get("torch"), versions=dict(versions),
        device=meta.get("device"), dtype=meta.get("dtype"), link=meta.get("link") or next((c.link for c in run.cases if c.link), None),
        link_rates=list(dict.fromkeys(rate for _, rate in by_bps)), models=sorted({c.model for c in run.cases}),
        weights=sorted({c.weights for c in run.cases if c.weights}), datetime=output_json.get("datetime"),
        run_status=info.run_status, interrupted_by=info.interrupted_by, blocks_planned=info.blocks,
        blocks_measured=max((len(c.blocks) for c in run.cases), default=0),
        rounds_per_block=info.rounds_per_block or (per_block.pop() if len(per_block) == 1 else None),
        warmup_rounds_per_block=info.warmup_rounds_per_block, block_order_seed=info.block_order_seed,
        load_avg_1m_max=max(loads) if loads else None, cpu_steal_pct_max=max(steals) if steals else None,
    )
