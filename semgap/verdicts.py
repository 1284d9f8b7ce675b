"""Turn a pytest-benchmark JSON dict into hypothesis verdicts (pure, no I/O).

H1: ``semantic`` cuts per-round network bytes by at least ``h1`` versus the
semantic-blind ``remote_cache`` baseline. H2: it cuts median latency by at least
``h2``. Benchmarks are grouped by (model, phase, link_rate); each group gets one
H1 and one H2 verdict plus tax tables against ``local`` and ``naive``. The
statistics live in :mod:`semgap.stats`; this module only selects data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from semgap import stats

BASELINE_MODE = "remote_cache"
CANDIDATE_MODE = "semantic"
MODE_ORDER = ("local", "naive", "remote_cache", "semantic")
PHASE_ORDER = ("prefill", "decode")
#: Field-name prefix in ``extra_info`` for each byte level.
LEVEL_PREFIX = {"payload": "payload_bytes", "tcp": "wire_tcp_bytes", "link": "wire_link_bytes"}
PAYLOAD_ONLY_NOTE = "payload only, not kernel-counted"


class InvalidBenchmarkJSON(ValueError):
    """The input is not a pytest-benchmark JSON dict that semgap can read."""


@dataclass(frozen=True)
class BenchRun:
    """One semgap benchmark (one mode, phase, model and link rate)."""

    name: str
    mode: str
    phase: str
    model: str
    link: str | None
    link_rate: str | None
    link_rate_bps: int | None
    latency_s: tuple[float, ...]
    raw_rounds: bool
    bytes_sent_rounds: dict[str, tuple[float, ...]]
    bytes_received_rounds: dict[str, tuple[float, ...]]
    round_trips: float | None
    server_compute_ms: float | None
    token_agreement_with_local: float | None

    def bytes_rounds(self, level: str) -> tuple[float, ...]:
        """Per-round totals (sent + received) at ``level``."""
        sent, recv = self.bytes_sent_rounds[level], self.bytes_received_rounds[level]
        if len(sent) == len(recv):
            return tuple(s + r for s, r in zip(sent, recv))
        return (stats.median(sent) + stats.median(recv),)


@dataclass(frozen=True)
class ModeSummary:
    """Row of the per mode x phase (x rate) table."""

    model: str
    phase: str
    link_rate: str | None
    link_rate_bps: int | None
    mode: str
    rounds: int
    median_latency_ms: float
    q1_latency_ms: float
    q3_latency_ms: float
    byte_level: str
    bytes_sent_per_round: float
    bytes_received_per_round: float
    round_trips: float | None
    server_compute_ms: float | None
    token_agreement_with_local: float | None


@dataclass(frozen=True)
class Verdict:
    """One hypothesis verdict for one (model, phase, link_rate) group."""

    hypothesis: str
    model: str
    phase: str
    link_rate: str | None
    link_rate_bps: int | None
    byte_level: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    threshold: float
    alpha: float | None
    verdict: str
    reason: str
    n_candidate: int
    n_baseline: int


@dataclass(frozen=True)
class TaxEntry:
    """A mode's latency and bytes relative to a reference mode (local or naive)."""

    reference: str
    mode: str
    model: str
    phase: str
    link_rate: str | None
    latency_ms: float
    reference_latency_ms: float
    latency_ratio: float
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    bytes_per_round: float
    reference_bytes_per_round: float
    bytes_ratio: float | None


@dataclass(frozen=True)
class CrossoverRecord:
    """H2 crossover link rate for one (model, phase) sweep."""

    model: str
    phase: str
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
    """Projected latency (ms) per mode at several RTTs for one group."""

    model: str
    phase: str
    link_rate: str | None
    rtts_us: list[float]
    round_trips: dict[str, float]
    projected_ms: dict[str, list[float]]
    semantic_reduction: list[float] | None


@dataclass(frozen=True)
class Conditions:
    """Run conditions, for the Conditions section of the report."""

    cpu: str | None
    commit_id: str | None
    commit_dirty: bool | None
    python_version: str | None
    torch_version: str | None
    versions: dict[str, Any]
    device: str | None
    link: str | None
    link_rates: list[Any]
    models: list[str]
    datetime: str | None
    rounds_min: int | None
    rounds_max: int | None


@dataclass
class RunVerdicts:
    """Everything the report needs, computed once from one benchmark JSON."""

    h1: float
    h2: float
    alpha: float
    seed: int
    verdicts: list[Verdict] = field(default_factory=list)
    summaries: list[ModeSummary] = field(default_factory=list)
    taxes: list[TaxEntry] = field(default_factory=list)
    crossovers: list[CrossoverRecord] = field(default_factory=list)
    rtt_projections: list[RttProjection] = field(default_factory=list)
    conditions: Conditions | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (dataclasses flattened with ``asdict``)."""
        return asdict(self)


# ---------------------------------------------------------------- parsing

def _level_values(extra: dict, prefix: str, direction: str) -> tuple[float, ...] | None:
    """Per-round values of one byte counter, falling back to the scalar."""
    rounds = extra.get(f"{prefix}_{direction}_rounds")
    if isinstance(rounds, list) and rounds and all(isinstance(v, (int, float)) for v in rounds):
        return tuple(float(v) for v in rounds)
    scalar = extra.get(f"{prefix}_{direction}")
    return (float(scalar),) if isinstance(scalar, (int, float)) else None


def _byte_rounds(extra: dict, mode: str) -> tuple[dict, dict]:
    """Sent/received rounds for every available level (local: zeros everywhere)."""
    listed = extra.get("wire_levels")
    sent: dict[str, tuple[float, ...]] = {}
    recv: dict[str, tuple[float, ...]] = {}
    for level, prefix in LEVEL_PREFIX.items():
        if mode == "local":
            sent[level] = recv[level] = (0.0,)
            continue
        if isinstance(listed, list) and level != "payload" and level not in listed:
            continue
        s, r = _level_values(extra, prefix, "sent"), _level_values(extra, prefix, "received")
        if s is not None and r is not None:
            sent[level], recv[level] = s, r
    return sent, recv


def _latency_rounds(bench: dict, name: str) -> tuple[tuple[float, ...], bool]:
    """Raw round times in seconds, or the median alone when data was not saved."""
    st = bench.get("stats")
    if not isinstance(st, dict):
        raise InvalidBenchmarkJSON(f"benchmark {name!r} has no 'stats' dict")
    data = st.get("data")
    if isinstance(data, list) and data:
        if not all(isinstance(v, (int, float)) and v > 0 for v in data):
            raise InvalidBenchmarkJSON(f"benchmark {name!r}: stats.data must be positive numbers")
        return tuple(float(v) for v in data), True
    if isinstance(st.get("median"), (int, float)) and st["median"] > 0:
        return (float(st["median"]),), False
    raise InvalidBenchmarkJSON(f"benchmark {name!r}: stats has neither 'data' nor a positive 'median'")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_benchmarks(output_json: Any) -> list[BenchRun]:
    """Semgap benchmarks (those with ``extra_info.mode``) of a pytest-benchmark dict.

    Raises :class:`InvalidBenchmarkJSON` when the structure is not readable.
    Benchmarks without ``extra_info.mode`` are ignored (not semgap's).
    """
    if not isinstance(output_json, dict):
        raise InvalidBenchmarkJSON("top level must be a JSON object")
    benches = output_json.get("benchmarks")
    if not isinstance(benches, list):
        raise InvalidBenchmarkJSON("missing 'benchmarks' list (is this a pytest-benchmark JSON?)")
    meta = output_json.get("semgap") if isinstance(output_json.get("semgap"), dict) else {}
    runs = []
    for i, bench in enumerate(benches):
        if not isinstance(bench, dict):
            raise InvalidBenchmarkJSON(f"benchmarks[{i}] is not an object")
        name = str(bench.get("name", f"benchmarks[{i}]"))
        extra = bench.get("extra_info") or {}
        if not isinstance(extra, dict) or "mode" not in extra:
            continue
        if "phase" not in extra:
            raise InvalidBenchmarkJSON(f"benchmark {name!r}: extra_info has 'mode' but no 'phase'")
        latency, raw = _latency_rounds(bench, name)
        mode = str(extra["mode"])
        sent, recv = _byte_rounds(extra, mode)
        if "payload" not in sent:
            raise InvalidBenchmarkJSON(f"benchmark {name!r}: payload_bytes_sent/received missing")
        rate_bps = extra.get("link_rate_bps")
        runs.append(BenchRun(
            name=name, mode=mode, phase=str(extra["phase"]),
            model=str(extra.get("model") or meta.get("model") or "unknown"),
            link=extra.get("link"), link_rate=extra.get("link_rate"),
            link_rate_bps=int(rate_bps) if isinstance(rate_bps, (int, float)) else None,
            latency_s=latency, raw_rounds=raw,
            bytes_sent_rounds=sent, bytes_received_rounds=recv,
            round_trips=_num(extra.get("rpc_round_trips")),
            server_compute_ms=_num(extra.get("server_compute_ms")),
            token_agreement_with_local=_num(extra.get("token_agreement_with_local")),
        ))
    return runs


# ---------------------------------------------------------------- grouping

GroupKey = tuple[str, str, "str | None"]


def _sort_key(key: GroupKey, runs: dict[str, BenchRun]) -> tuple:
    model, phase, _ = key
    bps = next(iter(runs.values())).link_rate_bps
    phase_rank = PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)
    return (model, phase_rank, phase, bps is not None, bps or 0, str(key[2]))


def group_runs(runs: Sequence[BenchRun], notes: list[str]) -> dict[GroupKey, dict[str, BenchRun]]:
    """Group by (model, phase, link_rate) -> {mode: run}; duplicates keep the first."""
    groups: dict[GroupKey, dict[str, BenchRun]] = {}
    for run in runs:
        group = groups.setdefault((run.model, run.phase, run.link_rate), {})
        if run.mode in group:
            notes.append(f"duplicate {run.mode} benchmark {run.name!r} ignored; kept {group[run.mode].name!r}")
            continue
        group[run.mode] = run
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0], kv[1])))


def judged_level(group: dict[str, BenchRun]) -> str:
    """Best byte level that every remote (non-local) run of the group has."""
    remote = [r for m, r in group.items() if m != "local"]
    if not remote:
        return "payload"
    common = set.intersection(*(set(r.bytes_sent_rounds) for r in remote))
    return stats.choose_byte_level(sorted(common))


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


# ---------------------------------------------------------------- per-group results

def _summary(run: BenchRun, level: str) -> ModeSummary:
    q1, q3 = stats.iqr(run.latency_s)
    return ModeSummary(
        model=run.model, phase=run.phase, link_rate=run.link_rate, link_rate_bps=run.link_rate_bps,
        mode=run.mode, rounds=len(run.latency_s), median_latency_ms=stats.median(run.latency_s) * 1e3,
        q1_latency_ms=q1 * 1e3, q3_latency_ms=q3 * 1e3, byte_level=level,
        bytes_sent_per_round=stats.median(run.bytes_sent_rounds[level]),
        bytes_received_per_round=stats.median(run.bytes_received_rounds[level]),
        round_trips=run.round_trips, server_compute_ms=run.server_compute_ms,
        token_agreement_with_local=run.token_agreement_with_local,
    )


def _missing(group: dict[str, BenchRun]) -> str | None:
    absent = [m for m in (BASELINE_MODE, CANDIDATE_MODE) if m not in group]
    if not absent:
        return None
    role = {BASELINE_MODE: "baseline", CANDIDATE_MODE: "candidate"}
    return "; ".join(f"{role[m]} {m} missing" for m in absent)


def _verdict(hyp: str, key: GroupKey, group: dict, level: str, threshold: float,
             alpha: float | None, **values: Any) -> Verdict:
    model, phase, rate = key
    bps = next(iter(group.values())).link_rate_bps
    base = dict(estimate=None, ci_low=None, ci_high=None, p_value=None, n_candidate=0, n_baseline=0)
    base.update(values)
    return Verdict(hypothesis=hyp, model=model, phase=phase, link_rate=rate, link_rate_bps=bps,
                   byte_level=level, threshold=threshold, alpha=alpha, **base)


def h1_verdict(key: GroupKey, group: dict[str, BenchRun], level: str, h1: float) -> Verdict:
    """H1: exact byte reduction of semantic vs remote_cache at the judged level."""
    missing = _missing(group)
    if missing:
        return _verdict("H1", key, group, level, h1, None, verdict=stats.INCONCLUSIVE, reason=missing)
    cand, base = group[CANDIDATE_MODE].bytes_rounds(level), group[BASELINE_MODE].bytes_rounds(level)
    red = stats.byte_reduction(cand, base)
    if red.estimate is None:
        judgement = stats.Judgement(stats.INCONCLUSIVE, red.note)
    else:
        judgement = stats.judge(red.low, red.high, h1)
    reason = "; ".join(x for x in (judgement.reason, red.note if red.estimate is not None else "",
                                   PAYLOAD_ONLY_NOTE if level == "payload" else "") if x)
    return _verdict("H1", key, group, level, h1, None, estimate=red.estimate, ci_low=red.low,
                    ci_high=red.high, verdict=judgement.verdict, reason=reason,
                    n_candidate=len(cand), n_baseline=len(base))


def h2_verdict(key: GroupKey, group: dict[str, BenchRun], level: str, h2: float, alpha: float,
               seed: int, n_resamples: int) -> Verdict:
    """H2: median latency reduction of semantic vs remote_cache with CI and MWU test."""
    missing = _missing(group)
    if missing:
        return _verdict("H2", key, group, level, h2, alpha, verdict=stats.INCONCLUSIVE, reason=missing)
    cand, base = group[CANDIDATE_MODE], group[BASELINE_MODE]
    red = stats.latency_reduction(cand.latency_s, base.latency_s, alpha=alpha,
                                  n_resamples=n_resamples, seed=seed)
    judgement = stats.judge_latency(red, h2, alpha)
    reason = judgement.reason
    if not (cand.raw_rounds and base.raw_rounds):
        reason += "; raw rounds absent (save with --benchmark-save-data)"
    return _verdict("H2", key, group, level, h2, alpha, estimate=red.estimate, ci_low=red.low,
                    ci_high=red.high, p_value=red.p_value, verdict=judgement.verdict,
                    reason=reason, n_candidate=red.n_candidate, n_baseline=red.n_baseline)


def _reference_run(ref: str, key: GroupKey, groups: dict) -> BenchRun | None:
    """The reference run for a group; ``local`` may come from the unshaped group."""
    if ref in groups[key]:
        return groups[key][ref]
    if ref == "local":
        model, phase, _ = key
        for (m, p, _), group in groups.items():
            if m == model and p == phase and "local" in group:
                return group["local"]
    return None


def tax_entries(ref: str, key: GroupKey, groups: dict, level: str, seed: int,
                n_resamples: int) -> list[TaxEntry]:
    """Latency ratio (bootstrap CI) and bytes of every other mode against ``ref``."""
    ref_run = _reference_run(ref, key, groups)
    if ref_run is None:
        return []
    ref_bytes = stats.median(ref_run.bytes_rounds(level)) if level in ref_run.bytes_sent_rounds else 0.0
    out = []
    for mode in sorted(groups[key], key=_mode_rank):
        run = groups[key][mode]
        if mode == ref:
            continue
        ratio = stats.median_ratio_interval(run.latency_s, ref_run.latency_s,
                                            n_resamples=n_resamples, seed=seed)
        run_bytes = stats.median(run.bytes_rounds(level))
        out.append(TaxEntry(
            reference=ref, mode=mode, model=key[0], phase=key[1], link_rate=key[2],
            latency_ms=stats.median(run.latency_s) * 1e3,
            reference_latency_ms=stats.median(ref_run.latency_s) * 1e3,
            latency_ratio=ratio.ratio, ratio_ci_low=ratio.low, ratio_ci_high=ratio.high,
            bytes_per_round=run_bytes, reference_bytes_per_round=ref_bytes,
            bytes_ratio=run_bytes / ref_bytes if ref_bytes > 0 else None,
        ))
    return out


def rtt_projection(key: GroupKey, group: dict[str, BenchRun], rtts_s: Sequence[float]) -> RttProjection:
    """Latency projected to each RTT for every mode with a round-trip count."""
    trips = {m: r.round_trips for m, r in group.items() if r.round_trips is not None}
    projected = {m: stats.project_latency_ms(stats.median(group[m].latency_s) * 1e3, t, rtts_s)
                 for m, t in sorted(trips.items(), key=lambda kv: _mode_rank(kv[0]))}
    reduction = None
    if CANDIDATE_MODE in projected and BASELINE_MODE in projected:
        reduction = [1.0 - c / b for c, b in zip(projected[CANDIDATE_MODE], projected[BASELINE_MODE])]
    return RttProjection(model=key[0], phase=key[1], link_rate=key[2], rtts_us=[r * 1e6 for r in rtts_s],
                         round_trips=dict(trips), projected_ms=projected, semantic_reduction=reduction)


def crossovers(verdicts: Sequence[Verdict], h2: float) -> list[CrossoverRecord]:
    """H2 crossover rate per (model, phase) where at least two link rates were measured."""
    sweeps: dict[tuple[str, str], list[Verdict]] = {}
    for v in verdicts:
        if v.hypothesis == "H2" and v.link_rate_bps and v.estimate is not None:
            sweeps.setdefault((v.model, v.phase), []).append(v)
    out = []
    for (model, phase), vs in sweeps.items():
        if len(vs) < 2:
            continue
        rates = [float(v.link_rate_bps) for v in vs]
        reds = [float(v.estimate) for v in vs]
        c = stats.crossover_rate(rates, reds, h2)
        order = sorted(range(len(rates)), key=rates.__getitem__)
        out.append(CrossoverRecord(model=model, phase=phase, threshold=h2,
                                   rates_bps=[rates[i] for i in order], reductions=[reds[i] for i in order],
                                   rate_bps=c.rate_bps, holds_below=c.holds_below, interpolated=c.interpolated,
                                   crossings_bps=list(c.all_crossings_bps), note=c.note))
    return out


# ---------------------------------------------------------------- conditions

def conditions(output_json: dict, runs: Sequence[BenchRun]) -> Conditions:
    """Machine, commit, versions and link conditions of the run."""
    meta = output_json.get("semgap") if isinstance(output_json.get("semgap"), dict) else {}
    machine = output_json.get("machine_info") if isinstance(output_json.get("machine_info"), dict) else {}
    commit = output_json.get("commit_info") if isinstance(output_json.get("commit_info"), dict) else {}
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    rounds = [len(r.latency_s) for r in runs]
    by_bps = sorted({(r.link_rate_bps or 0, r.link_rate) for r in runs if r.link_rate})
    rates = list(dict.fromkeys(rate for _, rate in by_bps))
    return Conditions(
        cpu=cpu.get("brand_raw") or machine.get("processor") or None,
        commit_id=commit.get("id"), commit_dirty=commit.get("dirty"),
        python_version=machine.get("python_version"),
        torch_version=versions.get("torch"), versions=dict(versions),
        device=meta.get("device"), link=meta.get("link") or next((r.link for r in runs if r.link), None),
        link_rates=list(rates), models=sorted({r.model for r in runs}),
        datetime=output_json.get("datetime"),
        rounds_min=min(rounds) if rounds else None, rounds_max=max(rounds) if rounds else None,
    )


# ---------------------------------------------------------------- public API

def compute(output_json: dict, h1: float = 0.30, h2: float = 0.15, alpha: float = 0.05,
            seed: int = 0, n_resamples: int = 10_000,
            rtts_s: Sequence[float] = stats.DEFAULT_RTTS_S) -> RunVerdicts:
    """All verdicts, summaries, taxes, crossovers and RTT projections of one run.

    Raises :class:`InvalidBenchmarkJSON` on unreadable structure. A run without
    semgap benchmarks yields empty lists and a note.
    """
    runs = parse_benchmarks(output_json)
    result = RunVerdicts(h1=h1, h2=h2, alpha=alpha, seed=seed)
    meta = output_json.get("semgap") if isinstance(output_json.get("semgap"), dict) else {}
    result.failures = [f for f in meta.get("failures") or [] if isinstance(f, dict)]
    result.conditions = conditions(output_json, runs)
    result.notes.extend(f"measurement warning: {w}" for w in meta.get("warnings") or [])
    if not runs:
        result.notes.append("no semgap benchmarks (extra_info.mode) found")
        return result
    groups = group_runs(runs, result.notes)
    for key, group in groups.items():
        level = judged_level(group)
        result.summaries.extend(_summary(group[m], level) for m in sorted(group, key=_mode_rank))
        if BASELINE_MODE in group or CANDIDATE_MODE in group:
            result.verdicts.append(h1_verdict(key, group, level, h1))
            result.verdicts.append(h2_verdict(key, group, level, h2, alpha, seed, n_resamples))
        else:
            result.notes.append(f"no {BASELINE_MODE}/{CANDIDATE_MODE} in {'/'.join(map(str, key))}: "
                                "no hypothesis verdict there")
        for ref in ("local", "naive"):
            result.taxes.extend(tax_entries(ref, key, groups, level, seed, n_resamples))
        result.rtt_projections.append(rtt_projection(key, group, rtts_s))
    result.crossovers = crossovers(result.verdicts, h2)
    return result


def any_not_supported(run_verdicts: RunVerdicts) -> bool:
    """True when any hypothesis verdict is NOT SUPPORTED."""
    return any(v.verdict == stats.NOT_SUPPORTED for v in run_verdicts.verdicts)
