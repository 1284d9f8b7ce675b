"""The inference engine both the client (local mode) and the server run: prefill, decode one token."""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch

# The decode paths an Engine can run, by the name benchmarks record in extra_info["fast_path"].
EAGER_DYNAMIC = "eager-dynamic"  # Hugging Face eager code, a DynamicCache growing by one position per step
STATIC = "static"  # eager code on a preallocated StaticCache (isolates what the cache layout alone changes)
STATIC_COMPILE = "static+compile"  # StaticCache and the one-token step compiled to CUDA graphs, as serving stacks do
DECODE_PATHS = (EAGER_DYNAMIC, STATIC, STATIC_COMPILE)
FAST_PATH_SETTINGS = ("auto", "on", "static", "off")

COMPILE_MODE = "reduce-overhead"  # inductor kernels replayed as CUDA graphs: one launch per decode step
STATIC_CACHE_POOL_SIZE = 8  # static caches alive at once; beyond this a prefill falls back to a dynamic cache


def resolve_decode_path(setting: str, device: torch.device | str) -> str:
    """The decode path a `--fast-path` setting means on `device`: auto compiles on CUDA only.

    On the CPU, `on` still compiles (inductor's C++ backend; CUDA graphs do not apply there), so a CPU
    run can exercise the GPU's code path; `auto` stays eager there, as semgap always ran on CPUs.
    """
    if setting not in FAST_PATH_SETTINGS:
        raise ValueError(f"unknown fast-path setting {setting!r}; choose from {', '.join(FAST_PATH_SETTINGS)}")
    if setting == "auto":
        return STATIC_COMPILE if torch.device(device).type == "cuda" else EAGER_DYNAMIC
    return {"on": STATIC_COMPILE, "static": STATIC, "off": EAGER_DYNAMIC}[setting]


@dataclass
class StepOutput:
    logits: torch.Tensor  # [batch, seq, vocab]
    cache: object  # a transformers Cache holding keys and values of every position so far


@cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.24 renamed `past_key_values` to `cache` (argument and output); 5.17 knows only
    # the old name, and the old name warns from 5.24 on. This is the one place that knows.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _model_kwargs(model: torch.nn.Module, input_ids: torch.Tensor, cache: object | None, logits_to_keep: int) -> dict:
    kwargs = {"input_ids": input_ids, "use_cache": True, _cache_argument(type(model)): cache}
    if logits_to_keep:
        if not _keeps_logits(type(model)):
            raise TypeError(f"{type(model).__name__}.forward takes no logits_to_keep: run it with the full-logits program")
        kwargs["logits_to_keep"] = logits_to_keep
    return kwargs


@cache
def _keeps_logits(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache: object | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    logits_to_keep: int = 0,
) -> StepOutput:
    """One forward pass with a KV cache; `weights` replaces the model's own for this call only.

    `logits_to_keep` > 0 computes the logits of the last that many positions only (transformers'
    argument, as its generate() passes 1 for the prompt); 0 computes every position's.
    """
    kwargs = _model_kwargs(model, input_ids, cache, logits_to_keep)
    with _no_grad_for(cache):
        if weights is None:
            output = model(**kwargs)
        else:
            output = torch.func.functional_call(model, weights, args=(), kwargs=kwargs, tie_weights=True, strict=False)
    new_cache = output["cache"] if "cache" in output else output["past_key_values"]
    return StepOutput(logits=output.logits, cache=new_cache)


def _no_grad_for(cache: object | None):
    # A static cache outlives its request and is reset in place when reused; tensors made under
    # inference_mode refuse in-place updates outside it, so static caches live under no_grad (as in
    # Hugging Face's own compiled generate). Dynamic caches keep the cheaper inference_mode.
    from transformers import StaticCache

    return torch.no_grad() if isinstance(cache, StaticCache) else torch.inference_mode()


def cache_to_tensors(cache: object) -> dict[str, torch.Tensor]:
    """Flatten a KV cache into named tensors `k.{layer}` and `v.{layer}`, each [batch, heads, seq, head_dim].

    Only dynamic caches are flattened: a static cache's tensors are max_cache_len long, mostly empty,
    so the modes that ship caches (naive) always run the dynamic path (see Engine).
    """
    from transformers import StaticCache

    if isinstance(cache, StaticCache):
        raise TypeError("cache_to_tensors takes a dynamic cache; a static cache would ship its empty tail too")
    tensors = {}
    for index, layer in enumerate(cache.layers):
        tensors[f"k.{index}"] = layer.keys
        tensors[f"v.{index}"] = layer.values
    return tensors


def tensors_to_cache(tensors: dict[str, torch.Tensor]) -> object:
    """Rebuild a KV cache from `cache_to_tensors` output."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index in range(len(tensors) // 2):
        cache.update(tensors[f"k.{index}"], tensors[f"v.{index}"], index)
    return cache


def greedy_token(logits: torch.Tensor) -> int:
    """The argmax of the last position's logits ([..., vocab])."""
    return int(logits.reshape(-1, logits.shape[-1])[-1].float().argmax())


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so a clock read after it measures the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device | str = "cpu"):
    """Yield a dict whose `ms` is filled with the elapsed wall time, the device synchronised at both ends."""
    timing = {"ms": 0.0}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield timing
    finally:
        synchronize(device)
        timing["ms"] = (time.perf_counter() - start) * 1e3


def context_length(config) -> int:
    """The number of positions a model config can attend to."""
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)


@dataclass
class _StaticSlot:
    cache: object  # a transformers StaticCache
    filled_positions: int = 0  # counted on the host: reading the cache's device counter would synchronise


@dataclass
class EngineStats:
    """What an Engine did besides the steps it was asked for."""

    warmup_s: float = 0.0  # the last warm_up: compilation and CUDA-graph capture on the static+compile path
    static_caches_created: int = 0
    dynamic_fallbacks: int = 0  # requests the static path could not hold (prompt too long, pool exhausted, cache full)
    # torch's process-wide counters, read by `Engine.read_compile_counters`: graphs dynamo compiled
    # (more than one after the warm-up means a recompile) and functions cudagraph trees declined to
    # capture (each one runs as plain kernels: the fast path would be fast in name only).
    compiled_graphs: int = 0
    cudagraph_skips: int = 0


class Engine:
    """Runs one model: `prefill` a prompt, then `decode_one_token` at a time against its cache.

    On the static paths the KV cache of a request lives in a preallocated StaticCache of
    `max_cache_len` positions, taken from a pool in `prefill` and handed back by `release`; reusing
    the same few caches keeps their tensors at fixed addresses, which is what a captured CUDA graph
    needs (a new cache per request would make cudagraph trees capture again). Calls that bring their
    own weights (naive mode) or a dynamic cache always run eager with a dynamic cache: those caches
    cross the network each step, and a static one would ship its empty tail. On `static+compile`,
    the CUDA graphs belong to the thread that captured them (cudagraph trees are thread-local):
    call the engine from one thread only.
    """

    def __init__(self, model: torch.nn.Module, decode_path: str = EAGER_DYNAMIC, max_cache_len: int | None = None,
                 pool_size: int = STATIC_CACHE_POOL_SIZE):
        if decode_path not in DECODE_PATHS:
            raise ValueError(f"unknown decode path {decode_path!r}; choose from {', '.join(DECODE_PATHS)}")
        self.model = model
        self.device = next(model.parameters()).device
        self.decode_path = decode_path
        self.max_cache_len = min(max_cache_len or context_length(model.config), context_length(model.config))
        self.pool_size = pool_size
        self.stats = EngineStats()
        self._free_caches: list = []  # released static caches, the most recently released last (reused first)
        # id -> static cache in use; holding the cache keeps its id from being reused by another object.
        self._in_use: dict[int, _StaticSlot] = {}
        self._step = self._compiled_step() if decode_path == STATIC_COMPILE else self._eager_step

    @property
    def static(self) -> bool:
        return self.decode_path != EAGER_DYNAMIC

    def ids(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        # input_ids: [batch=1, seq]
        return torch.as_tensor(token_ids, dtype=torch.long).reshape(1, -1).to(self.device)

    def prefill(self, token_ids: list[int] | torch.Tensor, weights: dict | None = None, logits_to_keep: int = 0) -> StepOutput:
        """The prompt's forward; `logits_to_keep` as in `forward` (the program's: semgap.model.program)."""
        input_ids = self.ids(token_ids)
        if weights is not None or not self.static:
            return forward(self.model, input_ids, None, weights, logits_to_keep)
        # A prompt that leaves no room for one decoded token cannot use the static path.
        static_cache = self._acquire() if input_ids.shape[1] < self.max_cache_len else None
        if static_cache is None:
            self.stats.dynamic_fallbacks += 1
            return forward(self.model, input_ids, None, logits_to_keep=logits_to_keep)
        slot = self._in_use[id(static_cache)] = _StaticSlot(static_cache)
        try:
            step = forward(self.model, input_ids, static_cache, logits_to_keep=logits_to_keep)
        except BaseException:
            self.release(static_cache)
            raise
        slot.filled_positions = input_ids.shape[1]
        return step

    def decode_one_token(self, token_id: int | torch.Tensor, cache: object, weights: dict | None = None) -> StepOutput:
        input_ids = self.ids(token_id)
        slot = self._in_use.get(id(cache))
        if weights is not None or slot is None:
            return forward(self.model, input_ids, cache, weights)
        if slot.filled_positions + input_ids.shape[1] > self.max_cache_len:
            self.stats.dynamic_fallbacks += 1
            # The static cache is full: go on with a dynamic copy of its filled part (correct, only slower).
            return forward(self.model, input_ids, self.to_dynamic(cache))
        logits = self._step(input_ids, cache)
        slot.filled_positions += input_ids.shape[1]
        return StepOutput(logits=logits, cache=cache)

    def release(self, cache: object) -> None:
        """Hand a static cache back for reuse (any other cache is simply dropped by the caller)."""
        if self._in_use.pop(id(cache), None) is None:
            return
        with torch.no_grad():
            cache.reset()  # zeroes keys, values and the position counter in place: the addresses stay
        self._free_caches.append(cache)

    def warm_up(self, prompt_tokens: int = 8, decode_steps: int = 4) -> float:
        """Prefill a dummy prompt and decode a few tokens; return the seconds it took.

        On `static+compile` this is where compilation (tens of seconds for GPT-J) and CUDA-graph
        capture happen: cudagraph trees run a function eagerly once, capture it on the second call and
        replay from the third, so four steps leave a replaying graph for the first real request.
        """
        prompt_tokens = max(1, min(prompt_tokens, self.max_cache_len - 1))
        decode_steps = max(0, min(decode_steps, self.max_cache_len - prompt_tokens))
        start = time.perf_counter()
        step = self.prefill([0] * prompt_tokens)
        for _ in range(decode_steps):
            step = self.decode_one_token(greedy_token(step.logits), step.cache)
        synchronize(self.device)
        self.release(step.cache)
        self.stats.warmup_s = time.perf_counter() - start
        self.read_compile_counters()
        return self.stats.warmup_s

    def read_compile_counters(self) -> EngineStats:
        """Refresh `stats` from torch's compile counters (process-wide: one engine per process compiles)."""
        from torch._dynamo.utils import counters

        self.stats.compiled_graphs = int(counters["stats"]["unique_graphs"])
        self.stats.cudagraph_skips = int(counters["inductor"]["cudagraph_skips"])
        return self.stats

    def _acquire(self) -> object | None:
        if self._free_caches:
            return self._free_caches.pop()
        if len(self._in_use) >= self.pool_size:
            return None
        from transformers import StaticCache

        self.stats.static_caches_created += 1
        return StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)

    def _eager_step(self, input_ids: torch.Tensor, static_cache: object) -> torch.Tensor:
        return forward(self.model, input_ids, static_cache).logits

    def _compiled_step(self):
        model, cache_argument = self.model, _cache_argument(type(self.model))

        def step_logits(input_ids: torch.Tensor, static_cache: object) -> torch.Tensor:
            return model(input_ids=input_ids, use_cache=True, **{cache_argument: static_cache}).logits

        # dynamic=False: a decode step always has the shapes [1, 1] in and the cache's fixed length;
        # positions come from the cache's on-device counter, so no step recompiles.
        compiled = torch.compile(step_logits, mode=COMPILE_MODE, dynamic=False)

        def step(input_ids: torch.Tensor, static_cache: object) -> torch.Tensor:
            # Each step is a new cudagraph-trees generation: the previous step's outputs are dead. The
            # clone (one row of logits) keeps the result valid after the next replay overwrites the
            # graph's output buffer.
            torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                return compiled(input_ids, static_cache).clone()

        return step

    def cache_tensors(self, cache: object) -> dict[str, torch.Tensor]:
        """A cache's filled positions as `cache_to_tensors` names them: a static cache's empty tail is left out.

        The tensors of a static cache are views of it: copy them before the cache is released or reused.
        """
        slot = self._in_use.get(id(cache))
        if slot is None:
            return cache_to_tensors(cache)
        return {f"{kind}.{index}": getattr(layer, name)[:, :, :slot.filled_positions]
                for index, layer in enumerate(cache.layers) for kind, name in (("k", "keys"), ("v", "values"))}

    def to_dynamic(self, cache: object) -> object:
        """A dynamic cache holding what `cache` holds; a static cache is copied and handed back to the pool."""
        if id(cache) not in self._in_use:
            return cache
        dynamic = tensors_to_cache({name: tensor.clone() for name, tensor in self.cache_tensors(cache).items()})
        self.release(cache)
        return dynamic
