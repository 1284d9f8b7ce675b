"""One case of one block as `benchmark.pedantic` rounds, and what they moved as extra_info."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

from semgap import schema
from semgap.bench import lossless
from semgap.bench.design import BlockItem, Case, measured
from semgap.bench.session import ExperimentSession, resident
from semgap.bench.testbed import hostload
from semgap.bench.testbed.rates import format_rate
from semgap.client import generate
from semgap.client.modes import MODES
from semgap.model import presets, shapes
from semgap.schema import RoundRecord


@dataclass
class CaseRunner:
    """Runs one case of one block as `benchmark.pedantic` rounds and turns what they moved into extra_info.

    A round is everything its requests cause, the release of its state included: a decode round is
    the decode steps plus the release of the cache its (untimed, uncounted) prefill made.
    """

    session: ExperimentSession
    item: BlockItem
    rounds: list[RoundRecord] = field(default_factory=list)
    counter_rounds: list[dict[str, float]] = field(default_factory=list)  # the mode's own counters, per round
    tokens: list[list[int]] = field(default_factory=list)

    @property
    def case(self) -> Case:
        return self.item.case

    def run(self, benchmark) -> None:
        settings, case = self.session.settings, self.case
        self.session.set_link_rate(case.link_rate_bps)
        benchmark.group = case.phase + (f" at {format_rate(case.link_rate_bps)}" if case.link_rate_bps else "")
        self.mode = self.session.mode(case.mode, case.techniques)
        gpu_mark = self.session.gpu_mark(case.mode)
        cpu_before = hostload.CpuTimes.read()
        target = self._prefill_round if case.phase == "prefill" else self._decode_round
        benchmark.pedantic(
            target, setup=self._setup, teardown=self._teardown,
            rounds=settings.rounds, warmup_rounds=settings.warmup_rounds,
        )
        cpu_after = hostload.CpuTimes.read()
        window = lambda samples: measured(samples, settings.warmup_rounds, settings.rounds)
        rounds, tokens = window(self.rounds), window(self.tokens)
        framing_warning = self.session.check_framing(case, rounds)
        benchmark.extra_info.update(self.extra_info(rounds, tokens))
        benchmark.extra_info.update(schema.per_round_fields(window(self.counter_rounds)))
        benchmark.extra_info.update(self.session.gpu_summary(case.mode, gpu_mark))
        benchmark.extra_info.update({
            schema.LOAD_AVG: hostload.load_avg_1m(), schema.CPU_STEAL: hostload.steal_pct(cpu_before, cpu_after),
            schema.CPU_BUSY: hostload.busy_pct(cpu_before, cpu_after),
        })
        # The measurements are in the JSON by now; what follows fails the benchmark, it does not hide it.
        lossless.check(case.id, f"mode {case.mode}", self.mode.lossless, self._expected_tokens(), tokens)
        if (case.mode, case.phase) == ("remote_cache", "prefill") and self.mode.context.program.logits_to_keep == 1:
            received = int(benchmark.extra_info["payload_bytes_received"])  # the prefill's one row, and its handle
            self.session.check_shape(shapes.logits_row_check(self.session.shape, received))
        assert framing_warning is None, framing_warning

    def _setup(self):
        state = None
        if self.case.phase == "decode":  # the prompt is processed outside the measured round
            state = generate.prefill(self.mode, self.session.prompt)
        if self.mode.needs_server:
            self.session.server_time()  # the server's clock restarts here: the untimed prefill is not the round's
        self.before = self.session.snapshot()
        self.counters_before = self.mode.counters()
        return (state,), {}

    def _prefill_round(self, _):
        start = time.perf_counter()
        token, state = generate.prefill(self.mode, self.session.prompt)
        self.round_tokens = [token]
        self.mode.release(state)
        self.round_ms = (time.perf_counter() - start) * 1e3

    def _decode_round(self, prefilled):
        start = time.perf_counter()
        first_token, state = prefilled
        self.round_tokens, state = generate.decode_n_tokens(self.mode, first_token, state, self.case.decode_steps,
                                                            position=len(self.session.prompt))
        self.mode.release(state)
        self.round_ms = (time.perf_counter() - start) * 1e3

    def _teardown(self, _):
        record = dataclasses.replace(self.session.record(self.before, self.session.snapshot()), round_ms=self.round_ms)
        server = self.session.server_time() if self.mode.needs_server else None  # after the counters: not the round's bytes
        if server is not None:
            record = dataclasses.replace(record, server_queue_ms=server.queue_ms, server_decode_ms=server.decode_ms,
                                         server_encode_ms=server.encode_ms, server_handler_ms=server.handler_ms)
        if not self.mode.needs_server:
            record = dataclasses.replace(record, wait_ms=None)
        self.rounds.append(record)
        counters = self.mode.counters()
        self.counter_rounds.append(self.mode.round_figures(self.counters_before, counters))
        self.tokens.append(self.round_tokens)

    def _expected_tokens(self) -> list[int]:
        reference = self.session.reference_tokens
        return reference[:1] if self.case.phase == "prefill" else reference[1:1 + self.case.decode_steps]

    def extra_info(self, rounds: list[RoundRecord], tokens: list[list[int]]) -> dict:
        settings, session, case, item = self.session.settings, self.session, self.case, self.item
        semantic = self.mode.context.semantic if self.mode.role == "semantic" else None
        setup = session.setup_bytes if resident(MODES[case.mode]) else None
        identity = schema.CaseInfo(
            case=case.id, block=item.block, blocks=item.blocks, position_in_block=item.position,
            mode=case.mode, phase=case.phase, model=settings.model, role=self.mode.role, lossless=self.mode.lossless,
            weights=presets.weights_kind(settings.model), device=session.device(case.mode),
            prompt_tokens=settings.prompt_tokens, decode_steps=case.decode_steps, link=settings.link,
            link_rate=format_rate(case.link_rate_bps) if case.link_rate_bps else None,
            link_rate_bps=case.link_rate_bps, label=case.label, sampler=str(settings.sampler),
            program=str(settings.program),
            fast_path=session.decode_path(case.mode),
            setup_bytes_sent=setup.bytes_sent if setup else 0, setup_bytes_received=setup.bytes_received if setup else 0,
            **asdict(self.mode.setup_costs),
            techniques=str(semantic) if semantic else None, technique_spec=semantic.spec if semantic else None,
            zstd_level=self.mode.zstd_level if semantic else None,
        )
        return schema.matrix_extra_info(identity, rounds, schema.TokenRecord.measure(self._expected_tokens(), tokens))
