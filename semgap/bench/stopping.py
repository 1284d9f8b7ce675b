"""The sequential design at run time: the matrix stops at the first look where every H2 headline is decided.

The plugin generates the matrix's block benchmarks up to --semgap-max-blocks. Before the first benchmark
of a block that ends a look (block 8, 14, ...), :meth:`SequentialStop.skips` judges the blocks so far with
the same code the report uses (:func:`semgap.analysis.looks.evaluate`); once every H2 headline is
decided, every later block benchmark is left out: it does not run and is not reported (the calibration,
batching and KV-recovery benchmarks are not blocks and still run). The JSON's `semgap.looks` records each
look and why the run stopped; the report recomputes them from the JSON alone.
"""
from __future__ import annotations

from typing import Callable

import pytest

from semgap.analysis import looks
from semgap.analysis.measurements import read_run
from semgap.analysis.verdicts import group_cases
from semgap.bench.config import SemgapConfig
from semgap.bench.design import BlockItem


def outcome(output_json: dict, blocks_run: int | None = None) -> looks.Outcome | None:
    """The looks of a run's (or a partial run's) JSON, from the design and thresholds of its `semgap` section."""
    meta = output_json.get("semgap") or {}
    design = looks.design_of(meta, meta["alpha"]) if meta.get("alpha") is not None else None
    if design is None:
        return None
    run = read_run(output_json)
    return looks.evaluate(group_cases(run.cases), design, meta["h2"], meta["min_agreement"], blocks_run)


class SequentialStop:
    """Decides, benchmark by benchmark, whether the matrix has stopped; says so once on the terminal."""

    def __init__(self, settings: SemgapConfig, say: Callable[[str], None]):
        self.settings, self.say = settings, say
        self.looked: set[int] = set()
        self.stopped_after: int | None = None
        self.skipped = 0

    def skips(self, item: pytest.Item) -> bool:
        block = getattr(getattr(item, "callspec", None), "params", {}).get("semgap_case")
        design = self.settings.design
        if not isinstance(block, BlockItem) or design is None:
            return False
        if self.stopped_after is None and block.position == 0 and block.block in design.looks:
            self.looked.add(block.block)
            self._look(item.config, block.block)
        skip = self.stopped_after is not None and block.block >= self.stopped_after
        self.skipped += skip
        return skip

    def _look(self, config: pytest.Config, blocks: int) -> None:
        session = config.pluginmanager.get_plugin("pytest-benchmark")
        if session is None:
            return
        partial = {"benchmarks": [bench.as_dict() for bench in session.benchmarks if bench],
                   "semgap": {"h2": self.settings.h2, "alpha": self.settings.alpha,
                              "min_agreement": self.settings.min_agreement, "design": self.settings.design.to_dict()}}
        result = outcome(partial, blocks)
        if result is not None and result.stop_reason == looks.DECIDED and result.stopped_after_blocks == blocks:
            self.stopped_after = blocks
            look = len(result.looks)
            self.say(f"semgap: the sequential design stops after {blocks} blocks (look {look} of "
                     f"{len(self.settings.design.looks)}): every H2 headline is decided; the matrix's later "
                     "blocks are left out")
