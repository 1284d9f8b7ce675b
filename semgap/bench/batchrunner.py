"""The batching benchmark: N sessions decode at once against the blind and the semantic runtime, per round."""
from __future__ import annotations

from dataclasses import dataclass, field

from semgap import schema
from semgap.client import generate

from semgap.bench.testbed import hostload

from semgap.model import presets

from semgap.wire import transport
from semgap.bench.config import SemgapConfig
from semgap.bench import lossless
from semgap.bench.design import measured
from semgap.bench.session import ExperimentSession
from semgap.client.modes.local import LocalMode
from semgap.client.sessions import FLAVOURS, ConcurrentRound, ConcurrentSessions, session_prompts
from semgap.bench.testbed.tcpcounters import delta

# The server-side mode whose GPU monitor and decode path a flavour's figures come from.
SERVER_MODE = "remote_cache"


@dataclass(frozen=True)
class BatchCase:
    """One batching benchmark: `sessions` concurrent sessions of one flavour."""

    sessions: int
    flavour: str

    @property
    def id(self) -> str:
        return f"{self.flavour}-{self.sessions}sessions"


def batch_cases(settings: SemgapConfig) -> list[BatchCase]:
    return [BatchCase(sessions, flavour) for sessions in settings.batch_sessions for flavour in FLAVOURS]


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

    def run(self, benchmark) -> None:
        session, settings, case = self.session, self.session.settings, self.case
        session.upload_weights()
        benchmark.group = f"batching, {settings.max_decode_steps} decode steps per session"
        connect = lambda: transport.connect(settings.transport, *session.server_address, timeout_s=settings.rpc_timeout_s,
                                            secret=session.secret)
        sessions = ConcurrentSessions(case.flavour, self.reference.prompts[:case.sessions], session.context, connect)
        try:
            gpu_mark = session.gpu_mark(SERVER_MODE)
            cpu_before = hostload.CpuTimes.read()
            benchmark.pedantic(self._round, args=(sessions,), setup=sessions.prefill, rounds=settings.batch_rounds,
                               warmup_rounds=settings.warmup_rounds)
            cpu_after = hostload.CpuTimes.read()
        finally:
            sessions.close()
        rounds = measured(self.rounds, settings.warmup_rounds, settings.batch_rounds)
        agreement = self.agreement(rounds)
        benchmark.extra_info.update(self.extra_info(sessions, rounds, agreement))
        benchmark.extra_info.update(session.gpu_summary(SERVER_MODE, gpu_mark))
        benchmark.extra_info.update(load_avg_1m=hostload.load_avg_1m(), cpu_busy_pct=hostload.busy_pct(cpu_before, cpu_after))
        for index, expected in enumerate(self.reference.tokens[:case.sessions]):
            lossless.check(case.id, f"flavour {case.flavour} (session {index})", sessions.lossless, expected,
                           [round_.sessions[index].tokens for round_ in rounds])

    def _round(self, sessions: ConcurrentSessions) -> None:
        tcp_before = self.session.tcp_counter.snapshot() if self.session.tcp_counter else None
        result = sessions.decode_round(self.session.settings.max_decode_steps)
        result.tcp = delta(tcp_before, self.session.tcp_counter.snapshot()) if tcp_before else None
        self.rounds.append(result)

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
        return {
            schema.KIND_BATCHING: case.id, "sessions": case.sessions, "flavour": case.flavour, "role": sessions.role,
            "lossless": sessions.lossless, "model": settings.model, "weights": presets.weights_kind(settings.model),
            "device": self.session.device(SERVER_MODE), "fast_path": sessions.fixed_decode_path or self.session.decode_path(SERVER_MODE),
            "prompt_tokens": settings.prompt_tokens, "decode_steps": settings.max_decode_steps, "link": settings.link,
            "semantic": str(settings.semantic) if sessions.role == "semantic" else None,
            "token_agreement_with_local": agreement,
            **schema.per_round_fields(figures),
        }
