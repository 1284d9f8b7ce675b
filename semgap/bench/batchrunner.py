"""The batching benchmark: N sessions decode at once against the blind and the semantic runtime, per round."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from semgap import schema
from semgap.client import generate

from semgap.bench.testbed import hostload

from semgap.model import presets

from semgap.wire import codec, names, transport
from semgap.bench.config import SemgapConfig
from semgap.bench.design import measured, model_prefix, run_models
from semgap.bench.session import ExperimentSession
from semgap.client.modes.local import LocalMode
from semgap.client.sessions import FLAVOURS, ConcurrentRound, ConcurrentSessions, session_prompts
from semgap.bench.testbed.rates import format_rate
from semgap.bench.testbed.tcpcounters import delta
from semgap.model.runtime import EAGER_DYNAMIC

# The server-side mode whose GPU monitor and decode path a flavour's figures come from.
SERVER_MODE = "remote_cache"


@dataclass(frozen=True)
class BatchCase:
    """One batching benchmark: `sessions` concurrent sessions of one flavour, on a link shaped to `link_rate_bps`."""

    sessions: int
    flavour: str
    link_rate_bps: int | None = None  # None: the link as it is (loopback, or an unshaped namespace pair)
    model: str = ""  # as the matrix's Case.model

    @property
    def id(self) -> str:
        rate = f"-{format_rate(self.link_rate_bps)}" if self.link_rate_bps else ""
        return model_prefix(self.model) + f"{self.flavour}-{self.sessions}sessions{rate}"


def batch_cases(settings: SemgapConfig) -> list[BatchCase]:
    """Every session count and flavour at every link rate of the run, for each model, as the matrix shapes its cases."""
    return [BatchCase(sessions, flavour, rate, model) for rate in settings.link_rates_bps or (None,)
            for model in run_models(settings) for sessions in settings.batch_sessions for flavour in FLAVOURS]


def engine_fallbacks(connection) -> int:
    """The server Engine's dynamic fallbacks so far (a prefill the static pool could not hold, or a full cache)."""
    info = codec.decode(connection.call(names.HELLO, codec.encode({})))[1]
    return int(json.loads(info["engine_stats"])["dynamic_fallbacks"])


@dataclass(frozen=True)
class BatchReference:
    """The prompts of the most sessions any case runs (a case with N takes the first N) and local's tokens for each."""

    prompts: list[list[int]]
    tokens: list[list[int]]  # the decoded tokens only, the prefill's first token left out

    @classmethod
    def compute(cls, session: ExperimentSession) -> "BatchReference":
        settings = session.settings
        prompts = session_prompts(session.prompt, max(settings.batch_sessions))
        local = LocalMode(session.context)
        local.setup()
        return cls(prompts, [generate.generate(local, prompt, settings.max_decode_steps)[1:] for prompt in prompts])


@dataclass
class BatchRunner:
    """Runs one batching case as `benchmark.pedantic` rounds: the prefills are set-up, the concurrent decode is timed."""

    session: ExperimentSession
    case: BatchCase
    reference: BatchReference
    rounds: list[ConcurrentRound] = field(default_factory=list)
    round_paths: dict[str, int] = field(default_factory=dict)  # the current round's, set by its prefills
    # Per round, how many sessions decoded on each path: the server's static pool holds only so many caches,
    # and a prefill beyond it (or a step past a full cache) runs on a dynamic cache, eager.
    decode_paths: list[dict[str, int]] = field(default_factory=list)

    def run(self, benchmark) -> None:
        session, settings, case = self.session, self.session.settings, self.case
        session.upload_weights()
        session.set_link_rate(case.link_rate_bps)
        benchmark.group = f"batching, {settings.max_decode_steps} decode steps per session" + (
            f" at {format_rate(case.link_rate_bps)}" if case.link_rate_bps else "")
        connect = lambda: transport.connect(settings.transport, *session.server_address, timeout_s=settings.rpc_timeout_s,
                                            secret=session.secret)
        sessions = ConcurrentSessions(case.flavour, self.reference.prompts[:case.sessions], session.context, connect)
        try:
            gpu_mark = session.gpu_mark(SERVER_MODE)
            cpu_before = hostload.CpuTimes.read()
            try:
                benchmark.pedantic(self._round, args=(sessions,), setup=lambda: self._prefill(sessions),
                                   rounds=settings.batch_rounds, warmup_rounds=settings.warmup_rounds)
            except ConnectionError as error:  # a stopped server leaves the run's own connection looking well
                session.lost_by = f"{case.id}: {str(error).splitlines()[0]}"
                raise
            cpu_after = hostload.CpuTimes.read()
        finally:
            sessions.close()
        rounds = measured(self.rounds, settings.warmup_rounds, settings.batch_rounds)
        agreement = self.agreement(rounds)
        benchmark.extra_info.update(self.extra_info(sessions, rounds, agreement))
        benchmark.extra_info.update(session.gpu_summary(SERVER_MODE, gpu_mark))
        benchmark.extra_info.update(load_avg_1m=hostload.load_avg_1m(), cpu_busy_pct=hostload.busy_pct(cpu_before, cpu_after))
        # No lossless check: a batched forward need not reproduce a batch of one bit for bit, so the worst
        # session's agreement with local is measured (token_agreement_with_local) and the report labels it.

    def _prefill(self, sessions: ConcurrentSessions) -> None:
        """The round's set-up: every session's prefill, and which decode path each of them got.

        A flavour with a fixed path (semantic batching: eager, dynamic) runs every session on it. Otherwise
        the server's Engine chooses at prefill: its static pool holds STATIC_CACHE_POOL_SIZE caches and a
        prefill beyond them runs on a dynamic cache, eager; its fallback counter, read before and after the
        prefills, says how many did. (The server's --max-cache-len holds prompt and decode steps, so no
        cache fills up mid-round.)
        """
        count, fixed = len(sessions.modes), sessions.fixed_decode_path
        path = fixed or self.session.decode_path(SERVER_MODE)
        before = None if path == EAGER_DYNAMIC else engine_fallbacks(self.session.transport)
        sessions.prefill()
        dynamic = count if before is None else min(count, engine_fallbacks(self.session.transport) - before)
        self.round_paths = {name: number for name, number in ((path, count - dynamic), (EAGER_DYNAMIC, dynamic)) if number}

    def _round(self, sessions: ConcurrentSessions) -> None:
        tcp_before = self.session.tcp_counter.snapshot() if self.session.tcp_counter else None
        link_before = self.session.link.counters() if self.session.link else None
        result = sessions.decode_round(self.session.settings.max_decode_steps)
        result.tcp = delta(tcp_before, self.session.tcp_counter.snapshot()) if tcp_before else None
        if link_before is not None:
            link_after = self.session.link.counters()
            result.link = (link_after.bytes_sent - link_before.bytes_sent, link_after.bytes_received - link_before.bytes_received)
        self.rounds.append(result)
        self.decode_paths.append(self.round_paths)

    def agreement(self, rounds: list[ConcurrentRound]) -> float:
        """The worst session's share of decoded tokens equal to local's for its prompt, over the rounds."""
        shares = [schema.agreement(expected, result.tokens)
                  for round_ in rounds for result, expected in zip(round_.sessions, self.reference.tokens)]
        return min(shares)

    def extra_info(self, sessions: ConcurrentSessions, rounds: list[ConcurrentRound], agreement: float) -> dict:
        settings, case = self.session.settings, self.case
        figures = [round_.figures() for round_ in rounds]
        for round_, values in zip(rounds, figures):
            tcp = round_.tcp
            values["wire_tcp_bytes_sent"] = tcp.bytes_sent if tcp else None
            values["wire_tcp_bytes_received"] = tcp.bytes_received if tcp else None
            values["wire_tcp_bytes_per_token"] = (tcp.bytes_sent + tcp.bytes_received) / round_.tokens_decoded if tcp else None
            values["wire_link_bytes_sent"], values["wire_link_bytes_received"] = round_.link or (None, None)
        paths = measured(self.decode_paths, settings.warmup_rounds, settings.batch_rounds)
        ran = {name for round_paths in paths for name in round_paths}
        return {
            schema.KIND_BATCHING: case.id, "sessions": case.sessions, "flavour": case.flavour, "role": sessions.role,
            "lossless": sessions.lossless, "model": settings.model, "weights": presets.weights_kind(settings.model),
            "device": self.session.device(SERVER_MODE),
            # The path every session ran, or "mixed" with the count per path in decode_paths.
            "fast_path": ran.pop() if len(ran) == 1 else "mixed",
            "decode_paths": paths[0] if all(round_paths == paths[0] for round_paths in paths) else paths,
            "prompt_tokens": settings.prompt_tokens, "decode_steps": settings.max_decode_steps, "link": settings.link,
            "link_rate": format_rate(case.link_rate_bps) if case.link_rate_bps else None, "link_rate_bps": case.link_rate_bps,
            "semantic": str(settings.semantic) if sessions.role == "semantic" else None,
            "token_agreement_with_local": agreement,
            **schema.per_round_fields(figures),
        }
