"""The GPU-side server: holds the model and a KV-cache store behind opaque handles.

Run it with `python -m semgap.server --model gpt2-mini --host 127.0.0.1 --port 29501`.
"""
from __future__ import annotations

import argparse
import contextvars
import hashlib
import json
import signal
import sys
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from semgap.wire import names
from semgap.wire import codec, timing, transport

from semgap.model import cpus, presets, runtime
from semgap.server.batching import DecodeBatcher
from semgap.server.kvrecovery import KvRecoveryServer
from semgap.server.oplevel import OpLevelServer
from semgap.model.runtime import Engine, cache_to_tensors, stopwatch, tensors_to_cache
from semgap.server.semantic import SemanticSessions
from semgap.wire.transport import auth
from semgap.bench.testbed.serverproc import ready_line

MAX_CACHES = 64  # caches a crashed client never released are evicted oldest first beyond this
# A request may be this much larger than the largest the model needs (a stateless step's weights
# plus a full KV cache), plus a fixed room for ids, metadata and small models' calibration echoes.
FRAME_MARGIN = 1.5
FRAME_ROOM_BYTES = 64 << 20

EXPOSURE_WARNING = (
    "WARNING: semgap server serving rpc on {host}, which is not a loopback address. PyTorch RPC unpickles "
    "whatever it receives, so anyone who can reach port {port} can run arbitrary code on this host "
    "as this user. Serve there only on a network no one else can reach."
)


class ModelServer:
    """Answers the operations the client modes call; one request at a time against one model."""

    def __init__(self, spec: presets.ModelSpec, monitor=None, fast_path: str = "off", max_cache_len: int | None = None):
        self.spec = spec
        decode_path = runtime.resolve_decode_path(fast_path, spec.resolved_device())
        self.engine = Engine(presets.build_model(spec), decode_path, max_cache_len)
        # CUDA graphs captured by cudagraph trees belong to the capturing thread, and RPC requests
        # arrive on a pool of threads: on the compiled path one engine thread runs every operation.
        self.engine_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="semgap-engine")
            if self.engine.decode_path == runtime.STATIC_COMPILE else None
        )
        self.monitor = monitor
        self.weights_handle = "server-built"  # the preset's own weights until a client uploads
        self.max_frame_bytes = frame_limit_bytes(self.engine.model, self.engine.max_cache_len)
        self.caches: OrderedDict[str, object] = OrderedDict()
        self.semantic = SemanticSessions()  # the caches whose prefill named techniques, and what it named
        self.lock = threading.Lock()
        self.oplevel = OpLevelServer(self.engine.model, self.check_weights)
        self.batcher = DecodeBatcher(self.engine.model, self._exclusive, self.check_weights, self.semantic,
                                     self._logits_response)
        self.operations = {
            names.HELLO: self.hello,
            names.ECHO: self.echo,
            names.SINK: self.sink,
            names.UPLOAD_WEIGHTS: self.upload_weights,
            names.NAIVE_STEP: self.naive_step,
            names.PREFILL: self.prefill,
            names.DECODE: self.decode,
            names.RELEASE: self.release,
            names.GPU_SUMMARY: self.gpu_summary,
            **self.oplevel.operations,
            **self.batcher.operations,
            **KvRecoveryServer(self).operations,
        }

    def handle(self, op: str, request: bytes) -> bytes:
        if op not in self.operations:
            raise ValueError(f"unknown operation {op!r}; this server knows {', '.join(self.operations)}")
        if op == names.ECHO:  # byte-exact: no decoding, so wire tests see exactly what they sent
            return request
        if op == names.SINK:  # one way: the request is received whole and dropped
            return b""
        tensors, meta = codec.decode(request, max_bytes=self.max_frame_bytes)
        if op in self.batcher.operations:  # they wait for other sessions' steps, taking the lock only to compute
            return self.batcher.operations[op](tensors, meta)
        return self._exclusive(self.operations[op], tensors, meta)

    def warm_up(self) -> float:
        """Compile and capture the decode step now (seconds), so no client's round pays for it."""
        return self._on_engine_thread(self.engine.warm_up)

    def close(self) -> None:
        if self.engine_thread is not None:
            self.engine_thread.shutdown(wait=True)

    def _exclusive(self, function, *args):
        """Run `function` with the model to itself: one request at a time, on the engine thread if there is one.
        The wait for the model is the request's queueing time (semgap.wire.timing)."""
        start = time.perf_counter()
        with self.lock:
            timing.add("queue_ms", (time.perf_counter() - start) * 1e3)
            return self._on_engine_thread(function, *args)

    def _on_engine_thread(self, function, *args):
        if self.engine_thread is None:
            return function(*args)
        # The request's context goes along, so what the engine thread spends lands on the request's clock.
        return self.engine_thread.submit(contextvars.copy_context().run, function, *args).result()

    def hello(self, tensors, meta) -> bytes:
        import transformers

        info = {
            "model": self.spec.name,
            "seed": str(self.spec.seed),
            "device": str(self.engine.device),
            "dtype": str(next(self.engine.model.parameters()).dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "compressor": codec.compressor_name(),
            "gpu_name": torch.cuda.get_device_name() if self.engine.device.type == "cuda" else "",
            "fast_path": self.engine.decode_path,
            names.CPUS: cpus.format_cpus(cpus.Placement.current().cpus),
            names.THREADS: str(torch.get_num_threads()),
            "max_cache_len": str(self.engine.max_cache_len),
            "warmup_s": f"{self.engine.stats.warmup_s:.3f}",
            "engine_stats": json.dumps(asdict(self.engine.read_compile_counters())),
        }
        return codec.encode({}, info)

    def echo(self, tensors, meta) -> bytes:  # never called: handle() answers echo without decoding
        raise AssertionError("unreachable")

    def sink(self, tensors, meta) -> bytes:  # never called: handle() answers sink without decoding
        raise AssertionError("unreachable")

    def upload_weights(self, tensors, meta) -> bytes:
        """Load the client's weights into the model once; later calls name them by the handle, a hash of what was loaded.

        Every weight the model has (tied ones once), each of the model's shape and dtype, or nothing is loaded.
        """
        expected = presets.unique_weights(self.engine.model)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        misfit = [f"{name} {tuple(tensors[name].shape)} {tensors[name].dtype} (the model's {tuple(tensor.shape)} "
                  f"{tensor.dtype})" for name, tensor in expected.items()
                  if name in tensors and (tensors[name].shape != tensor.shape or tensors[name].dtype != tensor.dtype)]
        if missing or unexpected or misfit:
            raise ValueError(
                f"uploaded weights do not fit model {self.spec.name!r}, nothing was loaded: {len(missing)} of its "
                f"{len(expected)} weights missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
                f"{len(misfit)} of another shape or dtype: {'; '.join(misfit[:3]) or 'none'}"
            )
        digest = hashlib.sha256()
        with torch.no_grad():
            for name, tensor in expected.items():
                uploaded = tensors[name].contiguous()
                digest.update(name.encode() + b"\0")
                digest.update(uploaded.reshape(-1).view(torch.uint8).numpy())
                tensor.copy_(uploaded)
        self.weights_handle = digest.hexdigest()[:32]  # 128 bits, as long as the random handle it replaces
        return codec.encode({}, {names.WEIGHTS_HANDLE: self.weights_handle})

    def naive_step(self, tensors, meta) -> bytes:
        """Stateless: weights, input ids and the whole KV cache arrive; logits and the whole cache leave."""
        device = self.engine.device
        weights = {name[2:]: t.to(device) for name, t in tensors.items() if name.startswith("w.")}
        self._check_complete(weights)
        kv = {name[3:]: t.to(device) for name, t in tensors.items() if name.startswith("kv.")}
        with stopwatch(device) as watch:
            cache = tensors_to_cache(kv) if kv else None
            step = self.engine.decode_one_token(tensors[names.INPUT_IDS], cache, weights) if kv else (
                self.engine.prefill(tensors[names.INPUT_IDS], weights, logits_to_keep(meta))
            )
        response = {names.LOGITS: step.logits}
        response.update({f"kv.{name}": t for name, t in cache_to_tensors(step.cache).items()})
        return codec.encode(response, {names.SERVER_COMPUTE_MS: codec.milliseconds_text(watch["ms"])})

    def prefill(self, tensors, meta) -> bytes:
        self.check_weights(meta)
        # 64 random bits: a semantic decode request carries the handle, and its whole request fits in 64 B.
        handle = secrets.token_hex(8)
        # a bad `techniques` field fails before any compute
        keep = logits_to_keep(meta)
        with self.semantic.opening(handle, meta, tensors[names.INPUT_IDS]), stopwatch(self.engine.device) as watch:
            step = self.engine.prefill(tensors[names.INPUT_IDS], logits_to_keep=keep)
        self.keep(step.cache, handle)
        if handle in self.semantic:
            return self.semantic.respond(handle, step.logits, watch["ms"], prefill=True)
        return self._logits_response(step.logits, watch["ms"], kv_handle=handle)

    def decode(self, tensors, meta) -> bytes:
        handle = meta.get(names.KV_HANDLE, "")
        cache = self.cache(handle)
        tensors = self.semantic.decode_request(handle, tensors, meta)
        with stopwatch(self.engine.device) as watch:
            step = self.engine.decode_one_token(tensors[names.INPUT_IDS], cache)
        self.caches[handle] = step.cache
        if handle in self.semantic:
            return self.semantic.respond(handle, step.logits, watch["ms"], prefill=False)
        return self._logits_response(step.logits, watch["ms"])

    def release(self, tensors, meta) -> bytes:
        handle = meta.get(names.KV_HANDLE, "")
        summary = self.semantic.close(handle)  # the decode steps' figures, before take() forgets the session
        self.engine.release(self.take(handle))
        return codec.encode({}, summary)

    def gpu_summary(self, tensors, meta) -> bytes:
        """The GPU monitor's figures since a mark the client set earlier (`mark` in meta), as JSON."""
        if self.monitor is None:
            return codec.encode({}, {names.SUMMARY: "", names.MARK: ""})
        if meta.get(names.SINCE, "") == "":
            return codec.encode({}, {names.SUMMARY: "", names.MARK: str(self.monitor.mark())})
        summary = self.monitor.summary(int(meta[names.SINCE]))
        return codec.encode({}, {names.SUMMARY: json.dumps(summary.to_dict()), names.MARK: str(self.monitor.mark())})

    def check_weights(self, meta: dict[str, str]) -> None:
        if meta.get(names.WEIGHTS_HANDLE) != self.weights_handle:
            raise KeyError(
                f"weights handle {meta.get('weights_handle')!r} is not the server's current one; "
                "upload the weights again (another client may have replaced them)"
            )

    def _check_complete(self, weights: dict[str, torch.Tensor]) -> None:
        """A stateless step runs on the weights it ships, every one of them: none falls back to the resident copy."""
        required = set(presets.unique_weights(self.engine.model))
        missing, unexpected = sorted(required - set(weights)), sorted(set(weights) - required)
        if missing or unexpected:
            raise ValueError(
                f"naive_step must ship exactly the model's {len(required)} weights: "
                f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
            )

    def cache(self, handle: str) -> object:
        """The cache of `handle`; a KeyError says why there is none."""
        if handle not in self.caches:
            raise KeyError(f"unknown KV handle {handle!r}: it was released, evicted or the server restarted")
        return self.caches[handle]

    def take(self, handle: str) -> object:
        """The cache of `handle`, out of the store (its semantic session too): the caller releases it or keeps it anew."""
        self.cache(handle)
        self.semantic.forget(handle)
        return self.caches.pop(handle)

    def keep(self, cache: object, handle: str | None = None) -> str:
        """Store a cache under `handle` (a new one by default); caches beyond MAX_CACHES are released oldest first."""
        handle = handle or secrets.token_hex(8)
        self.caches[handle] = cache
        while len(self.caches) > MAX_CACHES:
            evicted, oldest = self.caches.popitem(last=False)
            self.engine.release(oldest)
            self.semantic.forget(evicted)
        return handle

    def _logits_response(self, logits: torch.Tensor, compute_ms: float, **extra: str) -> bytes:
        """A blind session's answer: every logit the model produced, as it produced them."""
        return codec.encode({names.LOGITS: logits}, {names.SERVER_COMPUTE_MS: codec.milliseconds_text(compute_ms), **extra})


def frame_limit_bytes(model: torch.nn.Module, max_cache_len: int) -> int:
    """The largest request this server takes: FRAME_MARGIN times a stateless step's (every weight and a
    KV cache of `max_cache_len` positions; a weight upload is the weights alone), plus FRAME_ROOM_BYTES."""
    weights = presets.unique_weights(model).values()
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in weights)
    config, element_bytes = model.config, next(iter(weights)).element_size()
    # keys and values: [layers, 2, positions, hidden] at most (grouped-query attention keeps fewer)
    kv_bytes = config.num_hidden_layers * 2 * max_cache_len * config.hidden_size * element_bytes
    return int(FRAME_MARGIN * (weight_bytes + kv_bytes)) + FRAME_ROOM_BYTES


def _byte_count(text: str) -> int:
    """A positive size in bytes, with an optional K, M or G suffix (powers of 1024)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 65536, 64M or 8G, got {text!r}")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def logits_to_keep(meta: dict[str, str]) -> int:
    """The prefill request's `logits_to_keep` (the client's program): N last positions' logits, 0 or absent for all."""
    text = meta.get(names.LOGITS_TO_KEEP, "0")
    if not text.isdigit():
        raise ValueError(f"{names.LOGITS_TO_KEEP} must be a whole number >= 0 (0: every position), got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m semgap.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=presets.DEFAULT_MODEL,
                        help=f"preset or local checkpoint directory (default: {presets.DEFAULT_MODEL})")
    parser.add_argument("--seed", type=int, default=0, help="seed of a preset's weights (default: 0)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=29501,
                        help="port to listen on; rpc's rendezvous store; 0: one the kernel picks, named on the ready line (default: 29501)")
    parser.add_argument("--transport", choices=list(transport.TRANSPORTS), default=transport.DEFAULT_TRANSPORT,
                        help="tcp: semgap's own, authenticated, no pickle; rpc: PyTorch RPC, loopback only "
                             f"(default: {transport.DEFAULT_TRANSPORT})")
    parser.add_argument("--secret-file", type=Path, default=None,
                        help="file holding the shared secret clients must prove (tcp); required beyond loopback "
                             f"(default: ${auth.SECRET_VARIABLE}, else none)")
    parser.add_argument("--allow-unauthenticated-rpc", action="store_true",
                        help="serve rpc beyond loopback although anyone reaching it can run code here; only on a "
                             "network no one else can reach (the suite passes it for its own netns veth)")
    parser.add_argument("--max-frame-bytes", type=_byte_count, default=None,
                        help="largest request taken, refused at once beyond (tcp; default: the model's weights and a full "
                             f"KV cache, times {FRAME_MARGIN:g}, plus {FRAME_ROOM_BYTES >> 20} MiB)")
    parser.add_argument("--max-connections", type=_positive, default=transport.ServerLimits.max_connections,
                        help="connections served at once, any beyond refused with a clear error (tcp; default: "
                             f"{transport.ServerLimits.max_connections})")
    parser.add_argument("--no-gpu-monitor", action="store_true", help="do not sample the GPU with NVML")
    parser.add_argument("--fast-path", choices=runtime.FAST_PATH_SETTINGS, default="auto",
                        help="decode path of resident caches: on = static KV cache + torch.compile (CUDA graphs), "
                             "static = static cache without compiling, off = eager with a dynamic cache, "
                             "auto = on for CUDA, off for CPU (default: auto)")
    parser.add_argument("--cpus", type=cpus.parse_cpus, default=None, metavar="LIST",
                        help="run on these CPUs only, e.g. 1 or 2-3 (default: every CPU this process may use)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's own choice, one per core)")
    parser.add_argument("--max-cache-len", type=int, default=None,
                        help="positions of each static KV cache: prompt plus generated tokens (default: the model's context)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret = auth.load_secret(args.secret_file)
        transport.check_bind(transport.transport_kind(args.transport), args.host, secret is not None,
                             args.allow_unauthenticated_rpc)
        if args.transport == "rpc" and not transport.is_loopback(args.host):
            print(EXPOSURE_WARNING.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
        presets.check_model_name(args.model)
    except ValueError as error:  # UnknownModelError is one
        print(f"semgap server: {error}", file=sys.stderr)
        return 2
    if args.cpus is not None or args.threads is not None:  # before the model exists, so every thread it starts inherits
        current = cpus.Placement.current()
        cpus.Placement(args.cpus or current.cpus, args.threads or current.threads).apply()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    monitor = None if args.no_gpu_monitor else _start_monitor()
    spec = presets.ModelSpec(args.model, seed=args.seed, dtype=args.dtype, device=args.device)
    server = ModelServer(spec, monitor, fast_path=args.fast_path, max_cache_len=args.max_cache_len)
    print(f"semgap server built model={spec.name} on device={server.engine.device}", flush=True)
    # Before the ready line: a spawning client waits for it, so compiling is never charged to a round.
    warmup_s = server.warm_up()
    print(f"semgap server warmed up path={server.engine.decode_path} max_cache_len={server.engine.max_cache_len} "
          f"in {warmup_s:.1f} s", flush=True)
    server.max_frame_bytes = args.max_frame_bytes or server.max_frame_bytes
    limits = transport.ServerLimits(max_frame_bytes=server.max_frame_bytes, max_connections=args.max_connections)
    print(f"semgap server limits: {limits}", flush=True)
    try:
        transport.serve(
            args.transport, args.host, args.port, server.handle, stop, secret=secret, limits=limits,
            allow_unauthenticated=args.allow_unauthenticated_rpc,
            on_ready=lambda port: print(ready_line(args.host, port, args.transport), flush=True),
        )
    finally:
        # After the rounds: a recompile, a cudagraph skip or a fallback during them shows here.
        print(f"semgap server engine stats: {json.dumps(asdict(server.engine.read_compile_counters()))}", flush=True)
        server.close()
        if monitor is not None:
            monitor.stop()
    print("semgap server stopped", flush=True)
    return 0


def _start_monitor():
    from semgap.bench.testbed.monitor import GpuMonitor

    monitor = GpuMonitor()
    monitor.start()
    return monitor


if __name__ == "__main__":
    sys.exit(main())
