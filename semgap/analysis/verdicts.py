"""Turn a pytest-benchmark JSON dict into hypothesis verdicts (pure, no I/O).

H1: the candidate (label ``semantic``) cuts per-round network bytes by at least
``h1`` against semantic-blind runtimes. H2: it cuts latency by at least ``h2``.
Cases are grouped by (model, phase, link_rate, decode_steps); each group is
judged pairwise against every blind baseline present (every row whose role is
``blind``), and its headline verdict is the intersection-union test over those
pairwise verdicts (:mod:`semgap.analysis.headlines`): SUPPORTED only against
every baseline, with no baseline picked from the data. Pairwise H2 p-values are
Holm-adjusted over all the run's pairwise H2 tests; the headlines' over the
run's H2 headlines. A candidate whose tokens agree with ``local`` less than
``min_agreement`` gets LOSSY instead of a verdict. The statistics live in
:mod:`semgap.analysis.stats`; this module only selects data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from semgap.analysis import effects, gap, headlines, looks, rounds, stats, summaries
from semgap.analysis.headlines import INVALID, LOSSY, Headline, Verdict
from semgap.analysis.load import LoadWarning, load_warnings, loaded_blocks
from semgap.analysis.premise import ComputeCheck, compute_checks
from semgap.schema import CANDIDATE_LABEL
from semgap.analysis.measurements import (
    CaseRecord,
    InvalidBenchmarkJSON,
    RunInfo,
    blind_baselines,
    judged_level,
    mode_rank,
    phase_rank,
    read_run,
    semgap_section,
)

__all__ = ["InvalidBenchmarkJSON", "Headline", "LOSSY", "RunVerdicts", "Verdict", "compute", "any_not_supported"]

AS_LOCAL = "as local"  # tokens that agree with local at least --semgap-min-agreement
DEFAULT_THRESHOLDS = {"h1": 0.30, "h2": 0.15, "alpha": 0.05, "min_agreement": 1.0}
PAYLOAD_ONLY_NOTE = "payload only, not kernel-counted"

GroupKey = tuple  # (model, phase, link_rate, decode_steps)
Group = dict[str, CaseRecord]  # label -> case, in report order


@dataclass(frozen=True)
class ByteCrossCheck:
    """H1's judged figure beside what the link counted: link bytes and TCP retransmissions (never judged)."""

    model: str
    phase: str
    link_rate: str | None
    decode_steps: int
    baseline: str
    judged_level: str
    judged_estimate: float | None
    link_estimate: float | None
    candidate_retransmitted_per_round: float | None
    baseline_retransmitted_per_round: float | None


@dataclass
class RunVerdicts:
    """Everything the report needs, computed once from one benchmark JSON."""

    h1: float
    h2: float
    alpha: float
    min_agreement: float
    seed: int
    run: RunInfo | None = None
    headlines: list[Headline] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # pairwise: one per (hypothesis, group, blind baseline)
    cross_checks: list[ByteCrossCheck] = field(default_factory=list)
    load_warnings: list[LoadWarning] = field(default_factory=list)
    compute_checks: list[ComputeCheck] = field(default_factory=list)  # the premise of H2 (analysis/premise.py)
    round_parts: list[rounds.RoundParts] = field(default_factory=list)  # remote rounds taken apart (analysis/rounds.py)
    summaries: list[summaries.CaseSummary] = field(default_factory=list)
    where_gap: list[gap.GapRow] = field(default_factory=list)
    taxes: list[summaries.TaxEntry] = field(default_factory=list)
    crossovers: list[summaries.CrossoverRecord] = field(default_factory=list)
    rtt_projections: list[summaries.RttProjection] = field(default_factory=list)
    conditions: summaries.Conditions | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # the benchmarks the run skipped, each with its reason
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    design: dict[str, Any] | None = None  # the sequential design's looks (analysis/looks.py); None: fixed blocks

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (dataclasses flattened with ``asdict``)."""
        return asdict(self)


# ---------------------------------------------------------------- grouping

def group_cases(cases: Sequence[CaseRecord]) -> dict[GroupKey, Group]:
    """Group by (model, phase, link_rate, decode_steps) -> {label: case}, in report order."""
    groups: dict[GroupKey, Group] = {}
    for case in cases:
        groups.setdefault(case.group_key, {})[case.label] = case

    def order(item: tuple[GroupKey, Group]) -> tuple:
        (model, phase, rate, steps), group = item
        bps = next(iter(group.values())).link_rate_bps
        return (model, phase_rank(phase), phase, steps, bps is not None, bps or 0, str(rate))

    return {key: dict(sorted(group.items(), key=lambda kv: mode_rank(kv[0])))
            for key, group in sorted(groups.items(), key=order)}


def _missing(group: Group) -> str | None:
    absent = [] if CANDIDATE_LABEL in group else [f"candidate {CANDIDATE_LABEL} missing"]
    if not blind_baselines(group):
        absent.append("no blind baseline")
    return "; ".join(absent) or None


# ---------------------------------------------------------------- one verdict

@dataclass(frozen=True)
class _Pair:
    """The data of one (group, baseline) comparison, shared by H1 and H2."""

    key: GroupKey
    group: Group
    baseline: str | None

    @property
    def candidate(self) -> CaseRecord | None:
        return self.group.get(CANDIDATE_LABEL)


def is_lossy(agreement: float | None, min_agreement: float) -> bool:
    """Whether tokens that agree with local's `agreement` of the time fall short of `min_agreement` (unmeasured: no)."""
    return agreement is not None and agreement < min_agreement


def tokens_label(agreement: float | None, min_agreement: float) -> str | None:
    """How a table shows tokens measured against local's: `as local`, LOSSY below `min_agreement`, None unmeasured."""
    return None if agreement is None else (LOSSY if is_lossy(agreement, min_agreement) else AS_LOCAL)


def _lossy(judgement: stats.Judgement, agreement: float | None, min_agreement: float) -> stats.Judgement:
    """LOSSY in place of the verdict when the candidate's tokens agree with local less than required."""
    if not is_lossy(agreement, min_agreement):
        return judgement
    return stats.Judgement(LOSSY, f"token agreement {agreement:.3f} < min agreement {min_agreement:g}; "
                                  f"otherwise {judgement.verdict}: {judgement.reason}")


def _invalid(judgement: stats.Judgement, pair: _Pair) -> stats.Judgement:
    """INVALID in place of the verdict when the candidate or the baseline failed its token check: a lossless
    case that generated other tokens than local ran another computation, so its rounds prove nothing."""
    cases = [pair.candidate, pair.group.get(pair.baseline) if pair.baseline else None]
    reasons = [case.invalid for case in cases if case is not None and case.invalid]
    return stats.Judgement(INVALID, "; ".join(reasons)) if reasons else judgement


def _verdict(hypothesis: str, pair: _Pair, level: str, threshold: float, alpha: float | None,
             judgement: stats.Judgement, min_agreement: float, **values: Any) -> Verdict:
    model, phase, rate, steps = pair.key
    first = next(iter(pair.group.values()))
    agreement = pair.candidate.token_agreement if pair.candidate else None
    saving_verdict, judgement = judgement.verdict, _invalid(_lossy(judgement, agreement, min_agreement), pair)
    fields = dict(estimate=None, ci_low=None, ci_high=None, confidence=None, p_value=None, p_holm=None,
                  p_value_against=None, p_against_holm=None, n_blocks=0, rounds_per_block=None, loaded_blocks=[])
    fields.update(values)
    return Verdict(hypothesis=hypothesis, model=model, phase=phase, link_rate=rate, link_rate_bps=first.link_rate_bps,
                   decode_steps=steps, weights=first.weights, candidate=CANDIDATE_LABEL, baseline=pair.baseline,
                   binding=False, byte_level=level, threshold=threshold, alpha=alpha, verdict=judgement.verdict,
                   saving_verdict=saving_verdict, reason=judgement.reason, token_agreement=agreement, **fields)


def _rounds_per_block(*cases: CaseRecord) -> int | None:
    counts = {len(block.latency_s) for case in cases for block in case.blocks.values()}
    return counts.pop() if len(counts) == 1 else None


def h1_verdict(pair: _Pair, h1: float, min_agreement: float) -> tuple[Verdict, ByteCrossCheck | None]:
    """H1: exact byte reduction against one baseline at the best level both count, with the link cross-check."""
    missing = _missing(pair.group)
    if missing:
        judgement = stats.Judgement(stats.INCONCLUSIVE, missing)
        return _verdict("H1", pair, "payload", h1, None, judgement, min_agreement), None
    cand, base = pair.candidate, pair.group[pair.baseline]
    level = judged_level([cand, base])
    red = effects.byte_reduction(cand.bytes_blocks(level), base.bytes_blocks(level))
    if red.estimate is None:
        judgement = stats.Judgement(stats.INCONCLUSIVE, red.note)
    else:
        judgement = stats.judge(red.low, red.high, h1)
        extra = "; ".join(x for x in (red.note, PAYLOAD_ONLY_NOTE if level == "payload" else "") if x)
        judgement = stats.Judgement(judgement.verdict, f"{judgement.reason}; {extra}")
    verdict = _verdict("H1", pair, level, h1, None, judgement, min_agreement, estimate=red.estimate,
                       ci_low=red.low, ci_high=red.high, n_blocks=len(cand.blocks),
                       rounds_per_block=_rounds_per_block(cand, base))
    link = None
    if "link" in cand.levels and "link" in base.levels:
        link = effects.byte_reduction(cand.bytes_blocks("link"), base.bytes_blocks("link")).estimate
    model, phase, rate, steps = pair.key
    check = ByteCrossCheck(model, phase, rate, steps, pair.baseline, level, red.estimate, link,
                           _retransmitted(cand), _retransmitted(base))
    return verdict, check


def _retransmitted(case: CaseRecord) -> float | None:
    parts = [case.retransmitted_per_round(direction) for direction in ("sent", "received")]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def _paired_blocks(pair: _Pair) -> tuple[list[int], str]:
    cand, base = pair.candidate, pair.group[pair.baseline]
    common = sorted(set(cand.blocks) & set(base.blocks))
    unpaired = len(set(cand.blocks) ^ set(base.blocks))
    return common, (f"{unpaired} unpaired block(s) left out" if unpaired else "")


def h2_test(pair: _Pair, h2: float, alpha: float, seed: int, n_resamples: int) -> stats.ThresholdTest | None:
    """H2's paired-block test against one baseline; None when a side is missing or no block pairs."""
    if _missing(pair.group):
        return None
    blocks, _ = _paired_blocks(pair)
    if not blocks:
        return None
    return stats.threshold_test(pair.candidate.latency_blocks(blocks), pair.group[pair.baseline].latency_blocks(blocks),
                                h2, alpha, n_resamples=n_resamples, seed=seed)


def h2_verdict(pair: _Pair, test: stats.ThresholdTest | None, p_holm: float | None, p_against_holm: float | None,
               h2: float, alpha: float, min_agreement: float, loaded: set[int]) -> Verdict:
    """H2 verdict from its test and the Holm-adjusted p-values of the run's family."""
    missing = _missing(pair.group)
    if missing or test is None:
        judgement = stats.Judgement(stats.INCONCLUSIVE, missing or "candidate and baseline share no block")
        return _verdict("H2", pair, "-", h2, alpha, judgement, min_agreement)
    judgement = stats.judge_threshold_test(test, alpha, p_holm, p_against_holm)
    blocks, unpaired = _paired_blocks(pair)
    cand, base = pair.candidate, pair.group[pair.baseline]
    notes = [judgement.reason, unpaired,
             "" if cand.raw_rounds and base.raw_rounds else "raw rounds absent: each block is its saved median"]
    judgement = stats.Judgement(judgement.verdict, "; ".join(n for n in notes if n))
    return _verdict("H2", pair, "-", h2, alpha, judgement, min_agreement, estimate=test.estimate,
                    ci_low=test.low, ci_high=test.high, confidence=test.confidence, p_value=test.p_value,
                    p_holm=p_holm, p_value_against=test.p_value_against, p_against_holm=p_against_holm,
                    n_blocks=test.n_blocks, rounds_per_block=_rounds_per_block(cand, base),
                    loaded_blocks=sorted(loaded & set(blocks)))


def holm_over(values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values of the run's H2 family, in order; a test without a p-value (None) stays None and is
    not counted in the family."""
    present = [i for i, p in enumerate(values) if p is not None]
    adjusted = stats.holm([values[i] for i in present])
    out: list[float | None] = [None] * len(values)
    for i, p in zip(present, adjusted):
        out[i] = p
    return out


def describe(v: Verdict) -> str:
    """A verdict's short name: ``H2 gpt2-mini decode 1gbit (5 steps) vs remote_cache``."""
    parts = [v.hypothesis, v.model, v.phase, v.link_rate or "", f"({v.decode_steps} steps)" if v.decode_steps else ""]
    return " ".join(p for p in parts if p) + f" vs {v.baseline or '-'}"


# ---------------------------------------------------------------- public API

def _pairs(key: GroupKey, group: Group) -> list[_Pair]:
    """One pair per blind baseline; without a candidate or any baseline, one pair whose verdict says why."""
    baselines = blind_baselines(group)
    if not baselines or CANDIDATE_LABEL not in group:
        return [_Pair(key, group, baselines[0] if baselines else None)]
    return [_Pair(key, group, label) for label in baselines]


def _setting(given: float | None, saved: float | None, name: str) -> float:
    """The argument if given, else what the run saved in its JSON, else the default."""
    if given is not None:
        return given
    return saved if saved is not None else DEFAULT_THRESHOLDS[name]


def compute(output_json: dict, h1: float | None = None, h2: float | None = None, alpha: float | None = None,
            min_agreement: float | None = None, seed: int = 0, n_resamples: int = 10_000,
            rtts_s: Sequence[float] = effects.DEFAULT_RTTS_S) -> RunVerdicts:
    """All verdicts, cross-checks, load warnings and descriptive tables of one run.

    Thresholds not given come from the run's own ``semgap`` section, else the
    defaults (H1 30 %, H2 15 %, alpha 0.05, min agreement 1.0). Raises
    :class:`InvalidBenchmarkJSON` on unreadable structure; a run without semgap
    benchmarks yields empty lists and a note.
    """
    run = read_run(output_json)
    info = run.info
    h1, h2, alpha, min_agreement = (_setting(given, getattr(info, name), name) for given, name in
                                    ((h1, "h1"), (h2, "h2"), (alpha, "alpha"), (min_agreement, "min_agreement")))
    result = RunVerdicts(h1=h1, h2=h2, alpha=alpha, min_agreement=min_agreement, seed=seed, run=info, notes=run.notes)
    meta = semgap_section(output_json)
    result.failures = [f for f in meta.get("failures") or [] if isinstance(f, dict)]
    result.skipped = [s for s in meta.get("skipped") or [] if isinstance(s, dict)]
    result.conditions = summaries.conditions(output_json, run)
    result.notes.extend(f"measurement warning: {w}" for w in meta.get("warnings") or [])
    if not run.cases:
        result.notes.append("no semgap benchmarks (extra_info.mode) found")
        return result
    groups = group_cases(run.cases)
    flagged = loaded_blocks(run.cases, info.cores)
    if info.cores is None and any(b.load_avg_1m is not None for c in run.cases for b in c.blocks.values()):
        result.notes.append("the run does not say how many cores it had: load not checked against them")
    h2_pairs, tests = [], []
    for key, group in groups.items():
        if CANDIDATE_LABEL not in group and not blind_baselines(group):
            result.notes.append(f"no candidate or blind baseline in {'/'.join(map(str, key))}: no verdict there")
            continue
        for pair in _pairs(key, group):
            verdict, check = h1_verdict(pair, h1, min_agreement)
            result.verdicts.append(verdict)
            result.cross_checks += [check] if check else []
        for pair in _pairs(key, group):
            h2_pairs.append(pair)
            tests.append(h2_test(pair, h2, alpha, seed, n_resamples))
    p_for = holm_over([t.p_value if t else None for t in tests])
    p_against = holm_over([t.p_value_against if t else None for t in tests])
    result.verdicts += [h2_verdict(pair, test, p, q, h2, alpha, min_agreement, set(flagged))
                        for pair, test, p, q in zip(h2_pairs, tests, p_for, p_against)]
    result.headlines, result.verdicts = judge_headlines(result.verdicts, min_agreement)
    design = looks.design_of(meta, alpha)
    if design is not None:  # H2 headlines decided by the looks of a sequential run
        outcome = looks.evaluate(groups, design, h2, min_agreement)
        result.headlines, result.design = looks.apply(result.headlines, outcome), outcome.to_dict()
    result.verdicts.sort(key=_verdict_order(list(groups)))
    result.headlines.sort(key=lambda h: (list(groups).index(h.group_key), h.hypothesis))
    result.load_warnings = load_warnings(flagged, info.cores, [(describe(v), v.loaded_blocks) for v in result.verdicts])
    result.compute_checks = compute_checks(run.cases)
    result.round_parts = rounds.taken_apart(output_json)
    _note_holm_reach(result, tests)
    confidence = 1.0 - 2.0 * alpha
    tables = summaries.tables(groups, result.verdicts, h2, confidence, seed, n_resamples, rtts_s)
    result.summaries, result.taxes, result.crossovers, result.rtt_projections = tables
    result.where_gap = gap.where_the_gap_is(groups, result.headlines, result.verdicts, output_json, min_agreement)
    return result


def judge_headlines(pairwise: Sequence[Verdict], min_agreement: float) -> tuple[list[Headline], list[Verdict]]:
    """Each (hypothesis, group)'s intersection-union headline, and the pairwise verdicts with their binding one marked.

    The headlines' H2 p-values (each the largest raw pairwise p of its group) are Holm-adjusted over
    the run's H2 headlines: each headline is a valid level-alpha test on its own, and Holm holds the
    family-wise error over the several groups a run judges.
    """
    families: dict[tuple, list[Verdict]] = {}
    for v in pairwise:
        families.setdefault((v.hypothesis, v.group_key), []).append(v)
    p_holm = dict(zip(families, holm_over([headlines.iut_p(vs) if hypothesis == "H2" else None
                                            for (hypothesis, _), vs in families.items()])))
    judged = [headlines.headline(vs, p_holm[name], min_agreement) for name, vs in families.items()]
    bound = {(h.hypothesis, h.group_key, h.binding_baseline) for h in judged}
    marked = [replace(v, binding=(v.hypothesis, v.group_key, v.baseline) in bound) for v in pairwise]
    return judged, marked


def _verdict_order(keys: list[GroupKey]):
    def order(v: Verdict) -> tuple:
        key = (v.model, v.phase, v.link_rate, v.decode_steps)
        return (keys.index(key), v.hypothesis, not v.binding, mode_rank(v.baseline or ""))
    return order


def _note_holm_reach(result: RunVerdicts, tests: Sequence[stats.ThresholdTest | None]) -> None:
    """A note when, after Holm over the pairwise tests or the headlines, no attainable p can get below alpha."""
    powered = [t for t in tests if t is not None and t.powered]
    heads = [h for h in result.headlines if h.hypothesis == "H2" and h.p_value is not None]
    for count, what in ((len(powered), "pairwise H2 tests"), (len(heads), "H2 headlines")):
        if count > 1 and powered:
            smallest = min(t.min_attainable_p for t in powered)
            if smallest * count >= result.alpha:
                result.notes.append(f"Holm over {count} {what}: the smallest needs p < {result.alpha / count:.3g}, "
                                    f"below what {min(t.n_blocks for t in powered)} blocks can reach "
                                    f"({smallest:.3g}); run more blocks")


def any_not_supported(run_verdicts: RunVerdicts) -> bool:
    """True when any headline is NOT SUPPORTED, LOSSY or INVALID (the saving does not stand against every blind
    baseline, or cannot be judged)."""
    return any(h.verdict in (stats.NOT_SUPPORTED, LOSSY, INVALID) for h in run_verdicts.headlines)
