"""The experiment's moving parts for one pytest session: link, server, connection, and per-round records."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import statistics
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import torch
import transformers

from semgap.wire import codec, transport

from semgap.client import generate

from semgap.bench.testbed import hostload, interrupts

from semgap.model import presets, runtime
from semgap.bench.config import SemgapConfig
from semgap.bench.testbed.link import LinkCounters, NetnsLink, Placement, cleanup_stale, format_rate
from semgap.client.modes import MODES, ModeContext, make_mode
from semgap.client.modes.local import LocalMode
from semgap.bench.testbed.monitor import GpuMonitor, GpuSummary, unavailable_summary
from semgap.bench.testbed.serverproc import ServerProcess, free_port
from semgap.techniques import TechniqueSet
from semgap.wire.transport import auth
from semgap.bench.testbed.tcpcounters import TcpBytes, TcpCounter, delta, tcp_counters_available


@dataclass(frozen=True)
class Case:
    """One case of the matrix: a mode, a phase, and in sweeps a decode length and a link rate; for an
    ablation variant of the semantic mode, its technique set (None: the mode as configured)."""

    mode: str
    phase: str
    link_rate_bps: int | None = None
    decode_steps: int = 0  # tokens per decode round; 0 for prefill
    steps_in_id: bool = False  # a decode-length sweep names the length in the id
    techniques: TechniqueSet | None = None

    @property
    def id(self) -> str:
        steps = f"-{self.decode_steps}steps" if self.steps_in_id else ""
        rate = f"-{format_rate(self.link_rate_bps)}" if self.link_rate_bps else ""
        variant = "" if self.techniques is None else "+" + self.techniques.spec.replace(",", "+")
        return f"{self.mode}{variant}-{self.phase}{steps}{rate}"

    @property
    def label(self) -> str:
        """The row the report shows: the mode, or `semantic:<techniques>` for an ablation variant."""
        return self.mode if self.techniques is None else f"{self.mode}:{self.techniques}"


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


def cases(settings: SemgapConfig) -> list[Case]:
    sweep = len(settings.decode_steps) > 1
    lengths = {"prefill": (0,), "decode": settings.decode_steps}
    variants = {"semantic": (None, *settings.ablation_sets)}
    return [Case(mode, phase, rate, steps, sweep and phase == "decode", techniques)
            for rate in settings.link_rates_bps or (None,) for mode in settings.modes
            for techniques in variants.get(mode, (None,)) for phase in settings.phases for steps in lengths[phase]]


def schedule(settings: SemgapConfig) -> list[BlockItem]:
    """Every case once per block, blocks one after another, cases in a seeded shuffled order inside each.

    Modes compared with each other then run minutes apart at most, in every order: drift over the run
    (another process, clock frequency, page cache) lands on every mode of a block alike, and the
    verdicts compare them block by block. Link rates stay the outer loop, so a shaper changes rate once
    per rate, not once per benchmark.
    """
    items = []
    for rate in settings.link_rates_bps or (None,):
        rate_cases = [case for case in cases(settings) if case.link_rate_bps == rate]
        for block in range(settings.blocks):
            order = list(rate_cases)
            random.Random(f"{settings.block_seed}/{rate}/{block}").shuffle(order)
            items.extend(BlockItem(case, block, settings.blocks, position) for position, case in enumerate(order))
    return items


@dataclass
class Snapshot:
    payload: transport.PayloadCounter
    tcp: TcpBytes | None
    link: LinkCounters | None
    server_tcp: TcpBytes | None  # the spawned server's sockets: what it retransmitted


@dataclass
class RoundRecord:
    """What one round moved and spent, per level and direction (client's view)."""

    payload_bytes_sent: int
    payload_bytes_received: int
    wire_tcp_bytes_sent: int | None
    wire_tcp_bytes_received: int | None
    wire_link_bytes_sent: int | None
    wire_link_bytes_received: int | None
    rpc_round_trips: int
    rpc_posts: int  # requests sent without waiting for an answer
    server_compute_ms: float
    encode_ms: float
    decode_ms: float
    tcp_sockets_closed: int = 0
    # Retransmitted TCP bytes, each way: in the link bytes, not in the TCP bytes.  Received is what
    # the server retransmitted, known only for a server this session spawned.
    wire_tcp_bytes_retransmitted_sent: int | None = None
    wire_tcp_bytes_retransmitted_received: int | None = None


def total(records: Sequence[RoundRecord]) -> RoundRecord:
    """One round's records over several connections (one per server) added up; a level none measured stays None."""
    def add(values: list) -> float | int | None:
        present = [value for value in values if value is not None]
        return sum(present) if present else None

    return RoundRecord(**{item.name: add([getattr(record, item.name) for record in records])
                          for item in fields(RoundRecord)})


class ExperimentSession:
    """Owns, for one pytest session, everything a benchmark round needs; `close` undoes all of it."""

    def __init__(self, settings: SemgapConfig, progress: Callable[[str], None] = lambda line: None):
        self.settings = settings
        self.progress = progress  # a line to the terminal during long set-up steps
        self.resources = ExitStack()
        self.link = None
        self.server: ServerProcess | None = None
        self.transport: transport.CountingTransport | None = None
        self.tcp_counter = None
        self.server_tcp_counter = None
        self.server_info: dict[str, str] = {}
        self.server_address: tuple[str, int] | None = None  # host, port: where more connections can go
        self.setup_bytes = transport.PayloadCounter()
        # TCP bytes may exceed payload bytes by the transport's framing per request; outside
        # payload .. payload + this bound a run warns (see transport.FramingBound).
        self.framing = transport.transport_kind(settings.transport).framing
        self.secret: bytes | None = None
        self.warnings: list[str] = []
        self.gpu_monitor = None
        self.modes: dict[str, object] = {}

    def open(self) -> "ExperimentSession":
        settings = self.settings
        try:
            self.progress(f"semgap: building {settings.model} in the client")
            self.model = presets.build_model(settings.spec)
            self.prompt = presets.prompt_ids(settings.prompt_tokens, self.model.config.vocab_size)
            self.context = ModeContext(
                self.model, semantic=settings.semantic, sampler=settings.sampler, max_cache_len=settings.max_cache_len,
                upload_timeout_s=settings.server_start_timeout_s,
                decode_path=runtime.resolve_decode_path(settings.fast_path, next(self.model.parameters()).device),
            )
            # Compiling and capturing the client's decode step happen here, before any round.
            self.context.local_engine().warm_up()
            self.reference_tokens = generate.generate(self._local(), self.prompt, settings.max_decode_steps)
            if any(MODES[name].needs_server for name in settings.modes):
                self._connect()
                self.upload_weights()
        except BaseException:
            self.close()
            raise
        return self

    def _local(self) -> LocalMode:
        mode = LocalMode(self.context)
        mode.setup()
        return mode

    def _connect(self) -> None:
        settings = self.settings
        self.secret = auth.load_secret(settings.secret_file)
        if settings.server is not None:
            host, port = settings.server
        else:
            self.secret = self.secret or auth.new_secret().encode()  # this session is the server's only client
            host, port = self._spawn_server()
        self.server_address = (host, port)
        self.transport = transport.CountingTransport(transport.connect(
            settings.transport, host, port, timeout_s=settings.rpc_timeout_s, secret=self.secret,
        ))
        self.resources.callback(self.transport.close)
        self.context.transport = self.transport
        self.server_info = codec.decode(self.transport.call("hello", codec.encode({})))[1]
        if self.server_info.get("model") != settings.model or self.server_info.get("seed") != str(settings.seed):
            raise RuntimeError(
                f"the server at {host}:{port} holds {self.server_info.get('model')!r} (seed "
                f"{self.server_info.get('seed')}), not {settings.model!r} (seed {settings.seed}); start it with "
                f"--model {settings.model} --seed {settings.seed}"
            )
        if self.server_info.get("dtype") != self.context.dtype_name:
            raise RuntimeError(
                f"the server at {host}:{port} computes in {self.server_info.get('dtype')}, this client in "
                f"{self.context.dtype_name}: the modes would not compute the same function; pass "
                f"--semgap-dtype {self.server_info.get('dtype')} (or start the server with --dtype {self.context.dtype_name})"
            )
        self.tcp_counter, reason = _tcp_counter(host)
        if self.tcp_counter is None:
            self.warnings.append(f"no kernel TCP counters ({reason}): bytes are counted at the payload level only")
        elif self.server is not None:  # the server's end of the same connections: the client's address as peer
            self.server_tcp_counter = TcpCounter(
                self.link.client_address if self.link else host, pid=self.server.process.pid,
                netns=self.link.namespace if self.link else None,
            )
        server_cache_len = int(self.server_info.get("max_cache_len", "0") or 0)
        if self.server_info.get("fast_path", runtime.EAGER_DYNAMIC) != runtime.EAGER_DYNAMIC and (
            server_cache_len < settings.max_cache_len
        ):
            self.warnings.append(
                f"the server's static KV caches hold {server_cache_len} positions, fewer than the "
                f"{settings.max_cache_len} a round needs: its steps beyond that run eager-dynamic"
            )

    def upload_weights(self) -> None:
        """Ship the weights once, before any link shaping, if a mode keeps them on the server."""
        if any(_resident(MODES[name]) for name in self.settings.modes):
            self.mode("remote_cache")

    def decode_path(self, mode_name: str) -> str:
        """Which decode path ran `mode_name`'s steps (extra_info `fast_path`)."""
        mode = MODES[mode_name]
        if mode.fixed_decode_path is not None:
            return mode.fixed_decode_path
        if mode.needs_server:  # a server from before the fast path reports none: it ran eager-dynamic
            return self.server_info.get("fast_path", runtime.EAGER_DYNAMIC)
        return self.context.decode_path

    def _spawn_server(self) -> tuple[str, int]:
        spawned = spawn_server(self.settings, self.secret, self.resources, self.progress)
        self.link, self.server = spawned.link, spawned.server
        if self.link is not None:
            self._set_client_interface(self.link.client_ifname)
        return spawned.host, spawned.port

    def _set_client_interface(self, ifname: str) -> None:
        # TensorPipe and Gloo choose the interface they announce from these variables; restored at close.
        for name in ("TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            previous = os.environ.get(name)
            os.environ[name] = ifname
            self.resources.callback(_restore_env, name, previous)

    def mode(self, name: str, techniques: TechniqueSet | None = None):
        """The session's ready mode `name` (with `techniques` instead of the headline set, for an ablation
        variant), set up once; the first resident mode uploads the weights, counted as setup bytes."""
        if MODES[name].needs_server:
            self.check_server()
        key = (name, techniques)
        if key not in self.modes:
            before = self.context.counter.snapshot()
            context = self.context if techniques is None else dataclasses.replace(self.context, semantic=techniques)
            mode = make_mode(name, context)
            mode.setup()
            self.resources.callback(mode.close)  # after its last round, before the connection closes
            uploaded = self.context.counter.since(before)
            if uploaded.bytes_sent:
                self.setup_bytes = uploaded
            self.modes[key] = mode
        return self.modes[key]

    def check_server(self) -> None:
        if self.transport is None:
            raise RuntimeError("no semgap server connection: this session was started without remote modes")
        if self.server is not None and not self.server.alive:
            raise RuntimeError(
                f"the semgap server exited (code {self.server.process.returncode}); log {self.server.log_path}:\n"
                f"{self.server.log_tail(10)}"
            )
        if self.transport.inner.broken:
            raise RuntimeError("the connection to the semgap server was lost earlier in this run")

    def set_link_rate(self, rate_bps: int | None) -> None:
        if self.link is not None and self.link.rate_bps != rate_bps:
            self.link.set_rate(rate_bps)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.context.counter.snapshot(),
            self.tcp_counter.snapshot() if self.tcp_counter else None,
            self.link.counters() if self.link else None,
            self.server_tcp_counter.snapshot() if self.server_tcp_counter else None,
        )

    def record(self, before: Snapshot, after: Snapshot) -> RoundRecord:
        payload = after.payload.since(before.payload)
        tcp = _tcp_delta(before.tcp, after.tcp)
        server_tcp = _tcp_delta(before.server_tcp, after.server_tcp)
        link = after.link
        return RoundRecord(
            payload.bytes_sent, payload.bytes_received,
            tcp.bytes_sent if tcp else None, tcp.bytes_received if tcp else None,
            link.bytes_sent - before.link.bytes_sent if link else None,
            link.bytes_received - before.link.bytes_received if link else None,
            payload.round_trips, payload.posts, payload.server_compute_ms, payload.encode_ms, payload.decode_ms,
            tcp.sockets_closed if tcp else 0,
            wire_tcp_bytes_retransmitted_sent=tcp.bytes_retransmitted if tcp else None,
            wire_tcp_bytes_retransmitted_received=server_tcp.bytes_retransmitted if server_tcp else None,
        )

    def device(self, mode_name: str) -> str:
        """Where `mode_name`'s model runs: the server's device for remote modes, else the client's."""
        client_device = str(next(self.model.parameters()).device)
        return self.server_info.get("device", client_device) if MODES[mode_name].needs_server else client_device

    def gpu_mark(self, mode_name: str) -> str:
        if MODES[mode_name].needs_server:
            return codec.decode(self.transport.call("gpu_summary", codec.encode({}, {"since": ""})))[1]["mark"]
        return str(self._client_monitor().mark())

    def gpu_summary(self, mode_name: str, mark: str) -> dict:
        if MODES[mode_name].needs_server:
            meta = codec.decode(self.transport.call("gpu_summary", codec.encode({}, {"since": mark})))[1]
            if not meta.get("summary"):
                return unavailable_summary("the server runs without a GPU monitor").to_extra_info()
            return GpuSummary.from_dict(json.loads(meta["summary"])).to_extra_info()
        return self._client_monitor().summary(int(mark)).to_extra_info()

    def _client_monitor(self):
        if self.gpu_monitor is None:
            self.gpu_monitor = GpuMonitor().start()
            self.resources.callback(self.gpu_monitor.stop)
        return self.gpu_monitor

    def check_framing(self, case: Case, rounds: list[RoundRecord]) -> str | None:
        """The first round whose kernel TCP bytes stray from its payload beyond framing, as a warning (or None)."""
        for record in rounds:
            for direction in ("sent", "received"):
                payload = getattr(record, f"payload_bytes_{direction}")
                tcp = getattr(record, f"wire_tcp_bytes_{direction}")
                if tcp is None:
                    continue
                bound = getattr(self.framing, direction)(record.rpc_round_trips, record.rpc_posts)
                if not payload <= tcp <= payload + bound:
                    posts = f" and {record.rpc_posts} posts" if record.rpc_posts else ""
                    warning = (f"{case.id}: TCP bytes {direction} {tcp} vs payload {payload} exceed the framing bound "
                               f"({bound} bytes for {record.rpc_round_trips} calls{posts})")
                    self.warnings.append(warning)
                    return warning
        return None

    def close(self) -> None:
        with interrupts.held():  # a signal now waits until the link and server are gone
            self.resources.close()

    def conditions(self) -> dict:
        """What the JSON must say about how this run was made."""
        settings = self.settings
        return {
            "model": settings.model,
            "seed": settings.seed,
            "device": self.device(next((mode for mode in settings.modes if MODES[mode].needs_server), "local")),
            "dtype": self.context.dtype_name,
            "link": settings.link,
            "link_rates_bps": list(settings.link_rates_bps),
            "server": "external" if settings.server else "spawned",
            "transport": settings.transport,
            "framing_bound": asdict(self.framing),
            "semantic": str(settings.semantic),
            "semantic_spec": settings.semantic.spec,
            "ablation": [str(variant) for variant in settings.ablation_sets],
            "sampler": str(settings.sampler),
            "compressor": self.server_info.get("compressor", ""),
            "blocks": settings.blocks,
            "rounds_per_block": settings.rounds,
            "warmup_rounds_per_block": settings.warmup_rounds,
            "block_order_seed": settings.block_seed,
            "cores": hostload.cores(),
            "h1": settings.h1, "h2": settings.h2, "alpha": settings.alpha, "min_agreement": settings.min_agreement,
            "prompt_tokens": settings.prompt_tokens,
            "decode_steps": list(settings.decode_steps),
            "reference_tokens": self.reference_tokens,
            "setup_bytes": asdict(self.setup_bytes),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "server_torch": self.server_info.get("torch", ""),
                         "server_transformers": self.server_info.get("transformers", "")},
            "gpu_name": self.server_info.get("gpu_name", ""),
            "fast_path": settings.fast_path,
            "decode_path_local": self.context.decode_path,
            "decode_path_server": self.server_info.get("fast_path", ""),
            "engine_stats_local": asdict(self.context.engine.read_compile_counters()) if self.context.engine else {},
            "engine_stats_server_at_start": json.loads(self.server_info.get("engine_stats", "{}") or "{}"),
            "warnings": self.warnings,
        }


@dataclass
class SpawnedServer:
    """A server process this session started, and the netns link it sits behind (None on loopback)."""

    server: ServerProcess
    host: str
    port: int
    link: NetnsLink | None


def spawn_server(settings: SemgapConfig, secret: bytes, resources: ExitStack,
                 progress: Callable[[str], None] = lambda line: None, netns_port: int = 29500) -> SpawnedServer:
    """Start a server of the run's model on the run's link; `resources` stops it (and removes its link) at close.

    With `--semgap-link netns` every call builds its own namespace and veth: each server is its own host.
    """
    link, place = None, Placement(settings.host)
    if settings.link == "netns":
        cleanup_stale()
        link = resources.enter_context(NetnsLink(rate_bps=None))
        place = link.placement()
    port = free_port(place.host) if settings.link == "loopback" else netns_port
    server = ServerProcess.spawn(
        settings.model, place.host, port, settings.run_dir / "logs",
        extra_args=(*settings.server_args(), *place.server_args(settings.transport)),
        command_prefix=place.command_prefix, env={**place.env, auth.SECRET_VARIABLE: secret.decode()},
        ready_timeout_s=settings.server_start_timeout_s, progress=progress,
    )
    resources.callback(server.stop)
    return SpawnedServer(server, place.host, port, link)


def _resident(mode: type) -> bool:
    """Whether the mode keeps weights and KV cache on the server (and so shares the one upload)."""
    return mode.needs_server and not mode.ships_cache


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _tcp_counter(host: str) -> tuple[TcpCounter | None, str]:
    """Kernel TCP counters towards the server, or None and the reason they cannot be had."""
    available, reason = tcp_counters_available()
    if not available:
        return None, reason
    try:
        return TcpCounter(host), ""
    except ValueError as error:  # a host name: resolving it could query DNS, so it is not done
        return None, str(error)


def _tcp_delta(before, after):
    if before is None or after is None:
        return None
    return delta(before, after)


def per_round_fields(rounds: list[dict[str, float | None]]) -> dict:
    """`name` (the median over rounds) and `name_rounds` (every round) for each field of the rounds."""
    fields: dict = {}
    for name in dict.fromkeys(name for record in rounds for name in record):
        values = [record.get(name) for record in rounds]
        fields[name], fields[f"{name}_rounds"] = median(values), values
    return fields


def median(values: list[float | int | None]) -> float | int | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


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
        # --benchmark-cprofile runs setup and teardown once more after the measured rounds: not a round.
        window = slice(settings.warmup_rounds, settings.warmup_rounds + settings.rounds)
        measured = self.rounds[window]
        framing_warning = self.session.check_framing(case, measured)
        benchmark.extra_info.update(self.extra_info(measured, self.tokens[window]))
        benchmark.extra_info.update(per_round_fields(self.counter_rounds[window]))
        benchmark.extra_info.update(self.session.gpu_summary(case.mode, gpu_mark))
        benchmark.extra_info.update(
            load_avg_1m=hostload.load_avg_1m(), cpu_steal_pct=hostload.steal_pct(cpu_before, cpu_after),
            cpu_busy_pct=hostload.busy_pct(cpu_before, cpu_after),
        )
        # The measurements are in the JSON by now; what follows fails the benchmark, it does not hide it.
        if self.mode.lossless:
            mismatch = first_mismatch(self._expected_tokens(), self.tokens[window])
            assert mismatch is None, f"{case.id}: the lossless mode {case.mode} generated other tokens than local: {mismatch}"
        assert framing_warning is None, framing_warning

    def _setup(self):
        state = None
        if self.case.phase == "decode":  # the prompt is processed outside the measured round
            state = generate.prefill(self.mode, self.session.prompt)
        self.before = self.session.snapshot()
        self.counters_before = self.mode.counters()
        return (state,), {}

    def _prefill_round(self, _):
        token, state = generate.prefill(self.mode, self.session.prompt)
        self.round_tokens = [token]
        self.mode.release(state)

    def _decode_round(self, prefilled):
        first_token, state = prefilled
        self.round_tokens, state = generate.decode_n_tokens(self.mode, first_token, state, self.case.decode_steps,
                                                            position=len(self.session.prompt))
        self.mode.release(state)

    def _teardown(self, _):
        self.rounds.append(self.session.record(self.before, self.session.snapshot()))
        counters = self.mode.counters()
        self.counter_rounds.append(self.mode.round_figures(self.counters_before, counters))
        self.tokens.append(self.round_tokens)

    def _expected_tokens(self) -> list[int]:
        reference = self.session.reference_tokens
        return reference[:1] if self.case.phase == "prefill" else reference[1:1 + self.case.decode_steps]

    def extra_info(self, measured: list[RoundRecord], tokens: list[list[int]]) -> dict:
        settings, session, case, item = self.session.settings, self.session, self.case, self.item
        info: dict = {
            "case": case.id, "block": item.block, "blocks": item.blocks, "position_in_block": item.position,
            "mode": case.mode, "phase": case.phase, "model": settings.model,
            "role": self.mode.role, "lossless": self.mode.lossless, "weights": presets.weights_kind(settings.model),
            "device": session.device(case.mode),
            "prompt_tokens": settings.prompt_tokens, "decode_steps": case.decode_steps,
            "link": settings.link, "link_rate": format_rate(case.link_rate_bps) if case.link_rate_bps else None,
            "link_rate_bps": case.link_rate_bps, "label": case.label, "sampler": str(settings.sampler),
        }
        if self.mode.role == "semantic":
            info.update(techniques=str(self.mode.context.semantic), technique_spec=self.mode.context.semantic.spec,
                        zstd_level=self.mode.zstd_level)
        info.update(per_round_fields([asdict(record) for record in measured]))
        info["wire_levels"] = ["payload"] + [
            level for level in ("tcp", "link") if info[f"wire_{level}_bytes_sent"] is not None
        ]
        resident = _resident(MODES[case.mode])
        info["fast_path"] = session.decode_path(case.mode)
        info["setup_bytes_sent"] = session.setup_bytes.bytes_sent if resident else 0
        info["setup_bytes_received"] = session.setup_bytes.bytes_received if resident else 0
        info.update(token_info(self._expected_tokens(), tokens))
        return info



def token_info(expected: list[int], rounds: list[list[int]]) -> dict:
    """The last measured round's tokens, and their agreement with local's (`expected`), position by position."""
    tokens = rounds[-1]
    agreement = sum(a == b for a, b in zip(tokens, expected)) / len(expected)
    return {
        "token_ids": tokens,
        "tokens_sha256": hashlib.sha256(json.dumps(tokens).encode()).hexdigest(),
        "tokens_same_every_round": all(round_tokens == tokens for round_tokens in rounds),
        "token_agreement_with_local": agreement,
    }


def first_mismatch(expected: list[int], rounds: list[list[int]]) -> str | None:
    """Where the first round that differs from `expected` first differs, in words, or None."""
    for index, tokens in enumerate(rounds):
        if tokens == expected:
            continue
        position = next((p for p, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
        got = tokens[position] if position < len(tokens) else "nothing"
        want = expected[position] if position < len(expected) else "nothing"
        return f"measured round {index}, token {position}: {got} where local has {want}"
    return None
