"""The KV-recovery benchmarks' moving parts: a second server for migration, and one case's measured rounds.

A round is one recovery: its setup (untimed) prefills the prompt on the run's server and decodes
the run's decode steps but the last half (rounded down, at least one); the measured part moves the
cache as the strategy does; its teardown (untimed) decodes that last half on the target, whose
tokens are checked against `local`'s.
Bytes come from the same snapshots as the main benchmark's, added up over both servers' connections.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

from semgap.bench.testbed import hostload, interrupts

from semgap.model import presets, shapes

from semgap.wire import transport
from semgap import schema
from semgap.bench import lossless
from semgap.bench.design import measured, model_prefix
from semgap.bench.session import ExperimentSession, Snapshot, spawn_server
from semgap.schema import RoundRecord
from semgap.client.kvrecovery import SCENARIOS, ResidentSteps, begin_session, continue_after, make_strategy
from semgap.bench.testbed.rates import format_rate
from semgap.client.modes import ModeContext
from semgap.bench.testbed.tcpcounters import TcpCounter

# The recoveries are not interleaved in blocks; they take this many measured rounds per block of the run
# (20 by default): enough for a stable median, and within ~30 s for the six cases on a 2-core CPU.
ROUNDS_PER_BLOCK = 2
SECOND_SERVER_NETNS_PORT = 29501  # its own namespace; another port than the first keeps their log names apart
GPU_MODE = "remote_cache"  # a resident server mode: session.gpu_mark/gpu_summary read the server's monitor for it


@dataclass(frozen=True)
class RecoveryCase:
    """One KV-recovery benchmark: a scenario, a strategy that applies to it, and in rate sweeps a link rate."""

    scenario: str
    strategy: str
    link_rate_bps: int | None = None
    model: str = ""  # as the matrix's Case.model

    @property
    def id(self) -> str:
        rate = f"-{format_rate(self.link_rate_bps)}" if self.link_rate_bps else ""
        return model_prefix(self.model) + f"{self.scenario}-{self.strategy}{rate}"


def recovery_cases(link_rates_bps: tuple[int, ...] = (), models: tuple[str, ...] = ("",)) -> list[RecoveryCase]:
    """Every scenario x strategy, for each model (design.run_models), at each of `--semgap-link-rate`'s rates
    (unshaped without any)."""
    return [RecoveryCase(scenario, strategy, rate, model) for rate in link_rates_bps or (None,) for model in models
            for scenario, strategies in SCENARIOS.items() for strategy in strategies]


@dataclass
class Host:
    """One server as the recovery sees it: its decode steps, and the counters of its connection."""

    steps: ResidentSteps
    tcp_counter: TcpCounter | None = None  # None where the session's own counter already counts its sockets
    link: object | None = None  # its NetnsLink, for interface counters

    def snapshot(self) -> Snapshot:
        return Snapshot(self.steps.context.counter.snapshot(), self.tcp_counter.snapshot() if self.tcp_counter else None,
                        self.link.counters() if self.link else None, None)


class RecoveryHosts:
    """The run's server and, once migration asks for it, a second one like it; `close` stops what it started."""

    def __init__(self, session: ExperimentSession):
        self.session = session
        self.resources = ExitStack()
        self.first = Host(self._steps(session.context), session.tcp_counter, session.link) if session.transport else None
        self.second: Host | None = None
        self.second_lost = ""  # why the migration's second server is gone: later migrations skip, naming it

    def unavailable(self, scenario: str) -> str:
        """Why `scenario` cannot run in this session, or ""."""
        settings = self.session.settings
        if self.session.transport is None:
            return "no semgap server in this session (only local modes were asked for)"
        if scenario != "migration":
            return ""
        if self.second_lost:
            return self.second_lost
        if settings.server is not None:
            return (f"--semgap-server names {settings.external_server}: the suite starts no second server "
                    "beside it")
        if settings.transport == "rpc":
            return "PyTorch RPC allows one RPC group per process, so a second server cannot be reached over rpc"
        return ""

    def target(self, scenario: str) -> Host:
        if scenario == "eviction":
            return self.first
        if self.second is None:
            self.second = self._open_second()
        return self.second

    def _open_second(self) -> Host:
        session, settings = self.session, self.session.settings
        spawned = spawn_server(settings, session.secret, self.resources, session.progress,
                               netns_port=SECOND_SERVER_NETNS_PORT)
        connection = transport.CountingTransport(transport.connect(
            settings.transport, spawned.host, spawned.port, timeout_s=settings.rpc_timeout_s, secret=session.secret))
        self.resources.callback(connection.close)
        context = ModeContext(session.model, transport=connection, upload_timeout_s=settings.server_start_timeout_s)
        # On loopback the session's counter counts every socket to 127.0.0.1, this one's included.
        counter = TcpCounter(spawned.host) if session.tcp_counter is not None and spawned.link is not None else None
        return Host(self._steps(context), counter, spawned.link)

    @staticmethod
    def _steps(context: ModeContext) -> ResidentSteps:
        steps = ResidentSteps(context)
        steps.setup()  # the session's one upload where it was made; a second server gets its own, before any round
        return steps

    def close(self) -> None:
        with interrupts.held():
            self.resources.close()


@dataclass
class RecoveryRunner:
    """Runs one recovery case as `benchmark.pedantic` rounds and turns them into extra_info."""

    hosts: RecoveryHosts
    case: RecoveryCase
    rounds: list[RoundRecord] = field(default_factory=list)
    recovery_ms: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)

    def run(self, benchmark) -> None:
        settings = self.hosts.session.settings
        self.strategy = make_strategy(self.case.strategy)
        self.source, self.target = self.hosts.first, self.hosts.target(self.case.scenario)
        for host in self._hosts():  # every veth the recovery crosses runs at the case's rate
            if host.link is not None and host.link.rate_bps != self.case.link_rate_bps:
                host.link.set_rate(self.case.link_rate_bps)
        self.after_steps = max(1, settings.max_decode_steps // 2)
        self.before_steps = settings.max_decode_steps - self.after_steps
        rate = format_rate(self.case.link_rate_bps) if self.case.link_rate_bps else None
        benchmark.group = f"kv recovery: {self.case.scenario}" + (f" at {rate}" if rate else "")
        rounds = ROUNDS_PER_BLOCK * settings.fixed_blocks
        # The GPU monitor of the run's server, as the matrix records it (a migration's second server has none).
        gpu_mark = self.hosts.session.gpu_mark(GPU_MODE)
        cpu_before = hostload.CpuTimes.read()
        try:
            benchmark.pedantic(self._recover, setup=self._setup, teardown=self._teardown,
                               rounds=rounds, warmup_rounds=settings.warmup_rounds)
        except ConnectionError as error:
            if self.target is self.hosts.second and self.target.steps.context.transport.inner.broken:
                self.hosts.second_lost = (f"not run: the migration's second server was lost in {self.case.id} "
                                          f"({str(error).splitlines()[0]})")
            raise
        cpu_after = hostload.CpuTimes.read()
        window = lambda samples: measured(samples, settings.warmup_rounds, rounds)
        tokens = window(self.tokens)
        benchmark.extra_info.update(self.extra_info(window(self.rounds), window(self.recovery_ms), tokens))
        benchmark.extra_info.update(self.hosts.session.gpu_summary(GPU_MODE, gpu_mark))
        benchmark.extra_info.update({
            schema.LOAD_AVG: hostload.load_avg_1m(), schema.CPU_STEAL: hostload.steal_pct(cpu_before, cpu_after),
            schema.CPU_BUSY: hostload.busy_pct(cpu_before, cpu_after),
        })
        lossless.check(self.case.id, f"strategy {self.case.strategy}", self.strategy.lossless, self.expected_tokens(),
                       tokens)
        if self.case.strategy == "full_cache" and self.target is self.source:  # an eviction: the whole cache, exported
            info = benchmark.extra_info
            self.hosts.session.check_shape(shapes.kv_check(self.hosts.session.shape, int(info["payload_bytes_received"]),
                                                           info["cached_positions"]))

    def expected_tokens(self) -> list[int]:
        """`local`'s tokens after the recovery point: reference token 0 comes from the prefill."""
        start = 1 + self.before_steps
        return self.hosts.session.reference_tokens[start:start + self.after_steps]

    def _setup(self):
        self.state = begin_session(self.source.steps, self.target.steps, self.hosts.session.prompt,
                                   self.before_steps, self.strategy.syncs_prompt)
        self.before = [host.snapshot() for host in self._hosts()]
        return (), {}

    def _recover(self):
        start = time.perf_counter()
        self.recovered = self.strategy.recover(self.source.steps, self.target.steps, self.state)
        self.round_ms = (time.perf_counter() - start) * 1e3

    def _teardown(self):
        after = [host.snapshot() for host in self._hosts()]
        self.rounds.append(RoundRecord.total([self.hosts.session.record(b, a) for b, a in zip(self.before, after)]))
        self.recovery_ms.append(self.round_ms)
        self.tokens.append(continue_after(self.target.steps, self.state, self.recovered, self.after_steps))

    def _hosts(self) -> list[Host]:
        return [self.source] if self.target is self.source else [self.source, self.target]

    def extra_info(self, measured: list[RoundRecord], recovery_ms: list[float], tokens: list[list[int]]) -> dict:
        settings, expected = self.hosts.session.settings, self.expected_tokens()
        info: dict = {
            schema.KIND_KV_RECOVERY: self.case.scenario, schema.KV_STRATEGY: self.case.strategy, "case": self.case.id,
            "role": self.strategy.role, "lossless": self.strategy.lossless, "model": settings.model,
            "weights": presets.weights_kind(settings.model),
            "link": settings.link, "link_rate": format_rate(self.case.link_rate_bps) if self.case.link_rate_bps else None,
            "link_rate_bps": self.case.link_rate_bps, "prompt_tokens": settings.prompt_tokens,
            "cached_positions": settings.prompt_tokens + self.before_steps,
            "decode_steps_before": self.before_steps, "decode_steps_after": self.after_steps,
        }
        info.update(schema.per_round_fields([{**asdict(record), "recovery_ms": ms}
                                             for record, ms in zip(measured, recovery_ms)]))
        info[schema.WIRE_LEVELS] = ["payload"] + [level for level in ("tcp", "link")
                                                  if info[schema.level_key(level, "sent")] is not None]
        info.update(asdict(schema.TokenRecord.measure(expected, tokens)))
        return info
