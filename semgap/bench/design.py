"""The run's design: its cases, their interleaved blocks, and which rounds of a benchmark are measured."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

from semgap import schema
from semgap.bench.config import SemgapConfig
from semgap.bench.testbed.rates import format_rate
from semgap.techniques import TechniqueSet

T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """One case of the matrix: a model, a mode, a phase, and in sweeps a decode length and a link rate; for
    an ablation variant of the semantic mode, its technique set (None: the mode as configured)."""

    mode: str
    phase: str
    link_rate_bps: int | None = None
    decode_steps: int = 0  # tokens per decode round; 0 for prefill
    steps_in_id: bool = False  # a decode-length sweep names the length in the id
    techniques: TechniqueSet | None = None
    model: str = ""  # "": the run's one model; a run of several names each case's (see run_models)

    @property
    def id(self) -> str:
        steps = f"-{self.decode_steps}steps" if self.steps_in_id else ""
        rate = f"-{format_rate(self.link_rate_bps)}" if self.link_rate_bps else ""
        variant = "" if self.techniques is None else "+" + self.techniques.spec.replace(",", "+")
        return model_prefix(self.model) + f"{self.mode}{variant}-{self.phase}{steps}{rate}"

    @property
    def label(self) -> str:
        """The row the report shows: the mode, or `semantic:<techniques>` for an ablation variant."""
        return self.mode if self.techniques is None else schema.ablation_label(self.mode, self.techniques)


@dataclass(frozen=True)
class BlockItem:
    """One benchmark of the run: `rounds` rounds of one case inside one block of the interleaved design."""

    case: Case
    block: int  # 0-based
    blocks: int
    position: int  # where in its block the case runs, 0-based

    @property
    def id(self) -> str:
        return f"{self.case.id}-b{self.block:02d}"


def model_prefix(model: str) -> str:
    """How a benchmark id of a run of several models names its model ("" for the run's one model)."""
    return f"{model.rstrip('/').replace('/', '_')}:" if model else ""


def run_models(settings: SemgapConfig) -> tuple[str, ...]:
    """The models benchmark ids name: ("",) for a run of one model (its ids as ever), else every model."""
    return settings.models if len(settings.models) > 1 else ("",)


def cases(settings: SemgapConfig) -> list[Case]:
    sweep = len(settings.decode_steps) > 1
    lengths = {"prefill": (0,), "decode": settings.decode_steps}
    variants = {"semantic": (None, *settings.ablation_sets)}
    return [Case(mode, phase, rate, steps, sweep and phase == "decode", techniques, model)
            for rate in settings.link_rates_bps or (None,) for model in run_models(settings) for mode in settings.modes
            for techniques in variants.get(mode, (None,)) for phase in settings.phases for steps in lengths[phase]]


def schedule(settings: SemgapConfig) -> list[BlockItem]:
    """Every case once per block, blocks one after another, cases in a seeded shuffled order inside each.

    Modes compared with each other then run minutes apart at most, in every order: drift over the run
    (another process, clock frequency, page cache) lands on every mode of a block alike, and the
    verdicts compare them block by block; the models of a run of several share each block too. Link
    rates stay the outer loop, so a shaper changes rate once per rate, not once per benchmark.
    """
    items = []
    for rate in settings.link_rates_bps or (None,):
        rate_cases = [case for case in cases(settings) if case.link_rate_bps == rate]
        for block in range(settings.blocks):
            order = list(rate_cases)
            random.Random(f"{settings.block_seed}/{rate}/{block}").shuffle(order)
            items.extend(BlockItem(case, block, settings.blocks, position) for position, case in enumerate(order))
    return items


def measured(samples: Sequence[T], warmup_rounds: int, rounds: int) -> list[T]:
    """The measured rounds of what a benchmark's `pedantic` rounds recorded, one sample per call.

    pytest-benchmark runs the warm-up rounds first; --benchmark-cprofile runs setup and teardown once
    more after the measured rounds, which is not a round either.
    """
    return list(samples[warmup_rounds:warmup_rounds + rounds])
