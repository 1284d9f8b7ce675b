"""The session's experiment: the model, the spawned or external server, the connection, the one weight upload,
the byte counters at every level, GPU marks, and the run's conditions; `close` undoes all of it."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import transformers

from semgap.wire import names
from semgap.bench.config import SemgapConfig
from semgap.bench.design import Case
from semgap.bench.testbed import hostload, interrupts
from semgap.bench.testbed.netns import LinkCounters, NetnsLink, cleanup_stale
from semgap.bench.testbed.placement import Placement
from semgap.bench.testbed.monitor import GpuMonitor, GpuSummary, unavailable_summary
from semgap.bench.testbed.serverproc import ServerProcess
from semgap.bench.testbed.tcpcounters import TcpBytes, TcpCounter, delta, tcp_counters_available
from semgap.client import generate
from semgap.client.modes import MODES, ModeContext, make_mode
from semgap.client.modes.local import LocalMode
from semgap.model import cpus, presets, runtime, shapes
from semgap.schema import RoundRecord
from semgap.techniques import TechniqueSet
from semgap.wire import codec, timing, transport
from semgap.wire.transport import auth


@dataclass
class Snapshot:
    payload: transport.PayloadCounter
    tcp: TcpBytes | None
    link: LinkCounters | None
    server_tcp: TcpBytes | None  # the spawned server's sockets: what it retransmitted



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
        self.lost_by = ""  # set when a connection of the run's own (a batching session's) lost the server
        self.server_address: tuple[str, int] | None = None  # host, port: where more connections can go
        self.setup_bytes = transport.PayloadCounter()
        self.shape_checks: list[shapes.ShapeCheck] = []
        # TCP bytes may exceed payload bytes by the transport's framing per request; outside
        # payload .. payload + this bound a run warns (see transport.FramingBound).
        self.framing = transport.transport_kind(settings.transport).framing
        self.secret: bytes | None = None
        self.warnings: list[str] = []
        self.gpu_monitor = None
        self.modes: dict[str, object] = {}
        self.cores = hostload.cores()  # the run's CPUs, counted before the client pins itself to its share

    def open(self) -> "ExperimentSession":
        settings = self.settings
        try:
            self.progress(f"semgap: building {settings.model} in the client")
            # Training a preset on first use takes minutes: its progress lines go to the terminal too. It runs
            # before the client pins itself to its half of the CPUs (on this VM one core: 5 s a step, not 1).
            self.model = presets.build_model(settings.spec, self.progress)
            self._pin_client()
            self.prompt = presets.prompt_ids(settings.prompt_tokens, self.model.config.vocab_size)
            self.context = ModeContext(
                self.model, semantic=settings.semantic, sampler=settings.sampler, program=settings.program,
                max_cache_len=settings.max_cache_len,
                upload_timeout_s=settings.server_start_timeout_s,
                decode_path=runtime.resolve_decode_path(settings.fast_path, next(self.model.parameters()).device),
            )
            # Compiling and capturing the client's decode step happen here, before any round.
            self.context.local_engine().warm_up()
            self.reference_tokens = generate.generate(self._local(), self.prompt, settings.max_decode_steps)
            if any(MODES[name].needs_server for name in settings.modes):
                self._connect()
                if any(resident(MODES[name]) for name in settings.modes):
                    self.upload_weights()
        except BaseException:
            self.close()
            raise
        return self

    def _pin_client(self) -> None:
        """Run this client on its half of the CPUs, with the server's thread count, until `close`."""
        plan = self.settings.cpu_plan
        if plan is None:
            return
        previous = cpus.Placement.current()
        cpus.Placement(plan.client_cpus, plan.threads).apply()
        self.resources.callback(previous.apply)

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
        self.server_info = codec.decode(self.transport.call(names.HELLO, codec.encode({})))[1]
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
        """The session's one weight upload, before any link shaping; its bytes are the setup bytes of every
        resident mode. Every benchmark that needs the weights on the server calls it; it uploads once."""
        if self.context.weights_handle is None:
            before = self.context.counter.snapshot()
            self.context.resident_weights()
            self.setup_bytes = self.context.counter.since(before)
            self.check_shape(shapes.weights_check(self.shape, self.setup_bytes.bytes_sent))

    @functools.cached_property
    def shape(self) -> shapes.ModelShape:
        """What the client's model's config says its transfers weigh (semgap/model/shapes.py)."""
        return shapes.ModelShape.of(self.settings.model, self.model.config, next(self.model.parameters()).dtype)

    def check_shape(self, check: shapes.ShapeCheck) -> None:
        """Record a shape check; fail loudly where the bytes that crossed the wire are not what the shape says."""
        self.shape_checks.append(check)
        if not check.ok:
            raise AssertionError(f"model shape mismatch, {check.line()}: the shape semgap reports for "
                                 f"{self.settings.model} (semgap/model/shapes.py) is not what the run moved")

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
        variant), set up once, after its last round closed before the connection."""
        if MODES[name].needs_server:
            self.check_server()
        key = (name, techniques)
        if key not in self.modes:
            context = self.context if techniques is None else dataclasses.replace(self.context, semantic=techniques)
            mode = make_mode(name, context)
            mode.setup()
            self.resources.callback(mode.close)  # after its last round, before the connection closes
            mode.prepare(self.prompt)  # before its first round: what it costs is the mode's setup_costs
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
        if self.transport.inner.broken or self.lost_by:
            raise RuntimeError("the connection to the semgap server was lost earlier in this run"
                               + (f" ({self.lost_by})" if self.lost_by else ""))

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
            wait_ms=payload.wait_ms,
        )

    def server_time(self) -> timing.ServerTime | None:
        """The server's own time on this session's connection since the last ask (None: not reported).
        Asked between rounds: its bytes fall outside every round's counters."""
        return self.transport.server_time() if self.transport is not None else None

    def device(self, mode_name: str) -> str:
        """Where `mode_name`'s model runs: the server's device for remote modes, else the client's."""
        client_device = str(next(self.model.parameters()).device)
        return self.server_info.get("device", client_device) if MODES[mode_name].needs_server else client_device

    def gpu_mark(self, mode_name: str) -> str:
        if MODES[mode_name].needs_server:
            return codec.decode(self.transport.call(names.GPU_SUMMARY, codec.encode({}, {names.SINCE: ""})))[1][names.MARK]
        return str(self._client_monitor().mark())

    def gpu_summary(self, mode_name: str, mark: str) -> dict:
        if MODES[mode_name].needs_server:
            meta = codec.decode(self.transport.call(names.GPU_SUMMARY, codec.encode({}, {names.SINCE: mark})))[1]
            if not meta.get(names.SUMMARY):
                return unavailable_summary("the server runs without a GPU monitor").to_extra_info()
            return GpuSummary.from_dict(json.loads(meta[names.SUMMARY])).to_extra_info()
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
            "program": str(settings.program),
            "compressor": self.server_info.get("compressor", ""),
            "blocks": settings.blocks,
            "design": settings.design.to_dict() if settings.design else {"kind": "fixed", "blocks": settings.blocks},
            "rounds_per_block": settings.rounds,
            "warmup_rounds_per_block": settings.warmup_rounds,
            "block_order_seed": settings.block_seed,
            "cores": self.cores,
            "cpu_policy": settings.cpus, "cpus_pinned": settings.cpu_plan is not None,
            "client_cpus": cpus.format_cpus(cpus.Placement.current().cpus),
            "client_threads": torch.get_num_threads(),
            "server_cpus": self.server_info.get(names.CPUS, ""),
            "server_threads": int(self.server_info.get(names.THREADS, 0) or 0) or None,
            "h1": settings.h1, "h2": settings.h2, "alpha": settings.alpha, "min_agreement": settings.min_agreement,
            "prompt_tokens": settings.prompt_tokens,
            "decode_steps": list(settings.decode_steps),
            "reference_tokens": self.reference_tokens,
            "setup_bytes": asdict(self.setup_bytes),
            "model_shape": asdict(self.shape),
            "shape_checks": [{**asdict(check), "ok": check.ok} for check in self.shape_checks],
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
    port = 0 if settings.link == "loopback" else netns_port  # 0: the server binds a free port and names it
    server = ServerProcess.spawn(
        settings.model, place.host, port, settings.run_dir / "logs",
        extra_args=(*settings.server_args(), *place.server_args(settings.transport)),
        command_prefix=place.command_prefix, env={**place.env, auth.SECRET_VARIABLE: secret.decode()},
        ready_timeout_s=settings.server_start_timeout_s, progress=progress,
    )
    resources.callback(server.stop)
    return SpawnedServer(server, place.host, server.port, link)


def resident(mode: type) -> bool:
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
