"""A group's pairwise verdicts (one per blind baseline) and its headline: an intersection-union test over them (pure).

The claim a headline judges is "semantic cuts bytes (H1) or latency (H2) by at least the threshold
against *every* semantic-blind baseline". Its null is the union of the pairwise nulls ("reduction
<= threshold against some baseline"), so it is an intersection-union test (Berger 1982): it rejects
when every pairwise test rejects on its own, at level alpha and unadjusted, and the result has
level alpha with no multiplicity adjustment across its components and no baseline chosen from the
data. The rule, in order:

1. LOSSY when the candidate's tokens agree with local less than required (as for every verdict).
2. NOT SUPPORTED when the verdict against any one baseline is NOT SUPPORTED: the evidence says the
   saving falls short of the threshold against that baseline, so it cannot hold against every one.
   Those pairwise verdicts' p-values are Holm-adjusted over all the run's pairwise tests, which holds
   the family-wise error of "falls short against at least one" (a union-intersection test).
3. SUPPORTED when every component rejects "reduction <= threshold" on its own: H1 (exact bytes) when
   each pairwise verdict is SUPPORTED; H2 when each raw one-sided p is < alpha and each interval's low
   end is at or above the threshold, and the headline's p (the largest raw pairwise p) stays < alpha
   after Holm over the run's H2 headlines (one per group: the claims the run makes).
4. INCONCLUSIVE otherwise; the reason names the baselines that fall short.

The *binding* baseline is the one with the smallest estimated reduction (a missing estimate binds
first): the comparison that decides whether the headline can hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from semgap.analysis import stats

LOSSY = "LOSSY"
#: A comparison whose candidate or baseline failed its token check: its measurements feed no verdict.
INVALID = "INVALID"


@dataclass(frozen=True)
class Judged:
    """What a verdict is about: the hypothesis, the group (model, phase, link rate, decode steps) and the candidate."""

    hypothesis: str
    model: str
    phase: str
    link_rate: str | None
    link_rate_bps: int | None
    decode_steps: int
    weights: str | None
    candidate: str


@dataclass(frozen=True)
class Verdict(Judged):
    """One pairwise hypothesis verdict: a group's candidate against one blind baseline.

    ``binding`` marks the verdict against its headline's binding baseline. ``saving_verdict`` is the
    verdict on the numbers alone, before the token-agreement check (``verdict`` is LOSSY in its place
    when the tokens fall short). ``p_value``/``p_holm`` test "reduction <= threshold" (H2 only), raw
    and Holm-adjusted over all the run's pairwise H2 tests; ``p_value_against``/``p_against_holm``
    the mirror null. ``loaded_blocks`` are the blocks this verdict used that ran under too much load
    or steal (see :class:`semgap.analysis.load.LoadWarning`).
    """

    baseline: str | None
    binding: bool
    byte_level: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float | None
    p_value: float | None
    p_holm: float | None
    p_value_against: float | None
    p_against_holm: float | None
    threshold: float
    alpha: float | None
    verdict: str
    saving_verdict: str
    reason: str
    n_blocks: int
    rounds_per_block: int | None
    token_agreement: float | None
    loaded_blocks: list[int]

    @property
    def group_key(self) -> tuple:
        return (self.model, self.phase, self.link_rate, self.decode_steps)


@dataclass(frozen=True)
class Pairwise:
    """One pairwise verdict as its headline lists it."""

    baseline: str | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    verdict: str


@dataclass(frozen=True)
class Headline(Judged):
    """A group's verdict for one hypothesis against every blind baseline at once (see the module's rule).

    ``estimate``, ``ci_low``, ``ci_high`` and ``byte_level`` are the binding baseline's;
    ``p_value`` is the intersection-union p (the largest raw pairwise p, H2 only) and ``p_holm`` it
    Holm-adjusted over the run's H2 headlines; ``pairwise`` lists every pairwise verdict beneath it.
    """

    binding_baseline: str | None
    byte_level: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    threshold: float
    alpha: float | None
    verdict: str
    reason: str
    n_blocks: int
    rounds_per_block: int | None
    token_agreement: float | None
    pairwise: tuple[Pairwise, ...]

    @property
    def group_key(self) -> tuple:
        return (self.model, self.phase, self.link_rate, self.decode_steps)

    @property
    def short_reason(self) -> str:
        """The reason in a few words, for a terminal line: the binding baseline's when a baseline falls short
        (INCONCLUSIVE), the failed condition for LOSSY, the first mismatch for INVALID."""
        return short_reason(self.reason, self.binding_baseline)

    @property
    def baselines(self) -> list[str]:
        return [p.baseline for p in self.pairwise if p.baseline is not None]


def binding(pairwise: Sequence[Verdict]) -> Verdict:
    """The pairwise verdict with the smallest estimated reduction; a missing one binds first, ties in report order."""
    return min(pairwise, key=lambda v: (v.estimate is not None, v.estimate or 0.0))


def component_rejects(v: Verdict) -> bool:
    """Whether one pairwise comparison, on its own and unadjusted, rejects "reduction <= threshold" at alpha."""
    if v.hypothesis == "H1":
        return v.saving_verdict == stats.SUPPORTED
    return (v.p_value is not None and v.alpha is not None and v.p_value < v.alpha
            and v.ci_low is not None and v.ci_low >= v.threshold)


def iut_p(pairwise: Sequence[Verdict]) -> float | None:
    """The intersection-union p: the largest raw pairwise p (None when a component has none, or for H1)."""
    ps = [v.p_value for v in pairwise]
    return None if not ps or any(p is None for p in ps) else max(ps)


def judge(pairwise: Sequence[Verdict], p_holm: float | None) -> stats.Judgement:
    """The headline verdict on the numbers alone (rules 2-4 of the module), before the agreement check."""
    first = pairwise[0]
    if first.baseline is None:  # no candidate or no blind baseline: the one placeholder verdict says why
        return stats.Judgement(first.saving_verdict, first.reason)
    short = [v for v in pairwise if v.saving_verdict == stats.NOT_SUPPORTED]
    if short:
        return stats.Judgement(stats.NOT_SUPPORTED, "NOT SUPPORTED against " + "; ".join(
            f"{v.baseline} ({v.reason.split('; ')[0]})" for v in short))
    every = f"against each of {len(pairwise)} blind baseline(s)"
    held = [component_rejects(v) for v in pairwise]
    if all(held) and first.hypothesis == "H1":
        return stats.Judgement(stats.SUPPORTED, f"{every}: smallest reduction {binding(pairwise).estimate:.1%} "
                                                f">= threshold {first.threshold:.0%}")
    if all(held) and p_holm is not None and first.alpha is not None and p_holm < first.alpha:
        return stats.Judgement(stats.SUPPORTED, f"{every}: every lower bound >= threshold {first.threshold:.0%}, "
                                                f"largest p={iut_p(pairwise):.2g}, Holm over headlines "
                                                f"{p_holm:.2g} < {first.alpha}")
    if all(held):
        return stats.Judgement(stats.INCONCLUSIVE, f"each baseline's test rejects alone, but the headline p "
                                                   f"{p_holm:.2g} after Holm over the run's H2 headlines is not "
                                                   f"< {first.alpha}")
    pending = [v for v, ok in zip(pairwise, held) if not ok]
    return stats.Judgement(stats.INCONCLUSIVE, "not shown " + every + "; short of it: " + "; ".join(
        f"{v.baseline} ({v.reason.split('; ')[0]})" for v in pending))


def headline(pairwise: Sequence[Verdict], p_holm: float | None, min_agreement: float) -> Headline:
    """The headline of one (hypothesis, group) from all its pairwise verdicts (same candidate, same group)."""
    judgement = judge(pairwise, p_holm)
    top, first = binding(pairwise), pairwise[0]
    agreement = first.token_agreement
    if agreement is not None and agreement < min_agreement:
        judgement = stats.Judgement(LOSSY, f"token agreement {agreement:.3f} < min agreement {min_agreement:g}; "
                                           f"otherwise {judgement.verdict}: {judgement.reason}")
    invalid = next((v for v in pairwise if v.verdict == INVALID), None)
    if invalid is not None:  # a comparison it needs cannot be trusted: neither can the claim over all of them
        judgement = stats.Judgement(INVALID, invalid.reason)
    return Headline(
        hypothesis=first.hypothesis, model=first.model, phase=first.phase, link_rate=first.link_rate,
        link_rate_bps=first.link_rate_bps, decode_steps=first.decode_steps, weights=first.weights,
        candidate=first.candidate, binding_baseline=top.baseline, byte_level=top.byte_level, estimate=top.estimate,
        ci_low=top.ci_low, ci_high=top.ci_high, p_value=iut_p(pairwise) if first.hypothesis == "H2" else None,
        p_holm=p_holm, threshold=first.threshold, alpha=first.alpha, verdict=judgement.verdict,
        reason=judgement.reason, n_blocks=min(v.n_blocks for v in pairwise), rounds_per_block=top.rounds_per_block,
        token_agreement=agreement,
        pairwise=tuple(Pairwise(v.baseline, v.estimate, v.ci_low, v.ci_high, v.p_value, v.p_holm, v.verdict)
                       for v in pairwise))


def short_reason(reason: str, binding_baseline: str | None = None) -> str:
    """`reason` cut to its first clause; "short of it: a (why a); b (why b)" gives the binding baseline's why."""
    marker = "short of it: "
    if marker in reason:
        short = reason.split(marker, 1)[1]
        start = short.find(f"{binding_baseline} (") if binding_baseline else -1
        short = short[start + len(f"{binding_baseline} ("):] if start >= 0 else short.split("(", 1)[-1]
        depth = 0
        for index, char in enumerate(short):  # up to the parenthesis that closes the baseline's why
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                return short[:index]
        return short
    return reason.split("; otherwise", 1)[0].split("; ", 1)[0]
