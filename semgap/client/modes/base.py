"""The interface every execution mode implements, and the shared client side of remote calls."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from semgap.wire import names
from semgap.wire import codec
from semgap.model.presets import weights_of
from semgap.model.program import Program
from semgap.model.runtime import EAGER_DYNAMIC, Engine
from semgap.model.sampling import GREEDY, Sampler
from semgap.techniques import TechniqueSet
from semgap.wire.transport import CountingTransport, PayloadCounter


@dataclass
class ModeContext:
    """What a mode works with: the client's copy of the model and, for remote modes, a transport."""

    model: torch.nn.Module
    transport: CountingTransport | None = None
    semantic: TechniqueSet = field(default_factory=TechniqueSet)  # what the semantic mode applies
    sampler: Sampler = GREEDY  # how every mode's generation picks tokens (semgap.model.sampling)
    program: Program = field(default_factory=Program)  # what every mode's prefill computes (semgap.model.program)
    decode_path: str = EAGER_DYNAMIC  # how the client's own Engine decodes (semgap.model.runtime.DECODE_PATHS)
    max_cache_len: int | None = None  # positions of its static caches; None: the model's context
    engine: Engine | None = field(default=None, repr=False)
    # The server's handle of the weights this context uploaded: remote_cache and semantic share one
    # upload per session (12 GB for GPT-J-6B: ~20 s on loopback) instead of one per benchmark.
    weights_handle: str | None = None
    upload_timeout_s: float | None = None  # a 12 GB upload outlasts the per-call RPC timeout

    @property
    def dtype_name(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def local_engine(self) -> Engine:
        """The one Engine on the client's model: every local mode of a session shares its compiled step and caches."""
        if self.engine is None:
            self.engine = Engine(self.model, self.decode_path, self.max_cache_len)
        return self.engine

    @property
    def counter(self) -> PayloadCounter:
        return self.transport.counter if self.transport is not None else _NO_TRAFFIC

    def program_meta(self) -> dict[str, str]:
        """The program's part of a prefill request to a model server: the logits it keeps (none: every position's)."""
        keep = self.program.logits_to_keep
        return {names.LOGITS_TO_KEEP: str(keep)} if keep else {}

    def resident_weights(self) -> str:
        """The server's handle of the client's weights: the one place they are uploaded, once per context."""
        if self.weights_handle is None:
            start = time.perf_counter()
            request = codec.encode(weights_of(self.model))
            self.counter.encode_ms += (time.perf_counter() - start) * 1e3
            _, meta = codec.decode(self.transport.call(names.UPLOAD_WEIGHTS, request, self.upload_timeout_s))
            self.weights_handle = meta[names.WEIGHTS_HANDLE]
        return self.weights_handle


_NO_TRAFFIC = PayloadCounter()


@dataclass
class SetupCosts:
    """What a mode spent preparing outside any round, beside the session's one weight upload (op_replay: its captures)."""

    capture_bytes_sent: int = 0
    capture_bytes_received: int = 0
    capture_ms: float = 0.0


class Mode(ABC):
    """One way of running inference: `prefill` a prompt, then `decode_one_token` at a time.

    Both run the context's program (semgap.model.program) and return the step's logits where they are
    ([batch, seq, vocab] on the device that computed them, or as they came over the wire), or what the
    sampler read from them (`Sampler.read`: an id, or the last row on the host), and the state the next
    step needs; the generation loop (semgap.client.generate) lets the sampler read and choose. `release`
    frees that state. `setup` runs once per session, before any round; `prepare` once after it, with
    the session's prompt.
    """

    name: ClassVar[str]
    # What the mode stands for in the verdicts: "local" (no network), "blind" (a semantic-blind
    # baseline) or "semantic" (the candidate).
    role: ClassVar[str]
    needs_server: ClassVar[bool] = True
    ships_cache: ClassVar[bool] = False  # the KV cache crosses the wire each step: the server decodes it eager-dynamic
    # The decode path the mode's steps always run, whatever --semgap-fast-path says (None: the engine's own).
    fixed_decode_path: ClassVar[str | None] = None

    def __init__(self, context: ModeContext):
        self.context = context
        self.setup_costs = SetupCosts()

    def setup(self) -> None:
        """Per-session preparation (a weight upload, say); its bytes count as setup bytes."""

    def prepare(self, token_ids: list[int]) -> None:
        """Per-session preparation that needs the workload's prompt (op_replay captures its steps here);
        what it costs goes into `setup_costs`, never into a round."""

    @abstractmethod
    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, object]: ...

    @abstractmethod
    def decode_one_token(self, token_id: int, state: object) -> tuple[torch.Tensor, object]: ...

    def release(self, state: object) -> None:
        """Free what `prefill` left behind (no-op where the client holds the state)."""

    @property
    def lossless(self) -> bool:
        """Whether the mode must generate exactly `local`'s tokens (a lossy one only records its agreement)."""
        return True

    def round_figures(self, before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
        """One round's figures for extra_info from `counters()` before and after it: by default their deltas."""
        return {name: value - before.get(name, 0) for name, value in after.items()}

    def counters(self) -> dict[str, float]:
        """Cumulative counts of what the mode did beyond payload bytes (ops forwarded, flushes, ...).

        The runner records each one's per-round delta in extra_info as `<name>` (median) and
        `<name>_rounds`; a mode with nothing more to count returns {}.
        """
        return {}

    def close(self) -> None:
        """Free what `setup` left on the server, once the mode's last round is over (no-op for most modes)."""

    def call(self, op: str, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None,
             zstd_level: int | None = None, timeout_s: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Encode (zstd at `zstd_level`, raw for None), send, receive and decode one request, timing both
        codec ends and adding up server time."""
        counter = self.context.counter
        response = self.context.transport.call(op, self._encode(tensors, meta, zstd_level), timeout_s)
        start = time.perf_counter()
        tensors, meta = codec.decode(response)
        counter.decode_ms += (time.perf_counter() - start) * 1e3
        counter.server_compute_ms += float(meta.get(names.SERVER_COMPUTE_MS, 0.0))
        self.received(response, meta)
        return tensors, meta

    def received(self, response: bytes, meta: dict[str, str]) -> None:
        """Hook: a mode that reads more figures from its responses than server compute time."""

    def post(self, op: str, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        """Encode and send one request without waiting; the server's time for it comes with a later response."""
        self.context.transport.post(op, self._encode(tensors, meta))

    def _encode(self, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None, zstd_level: int | None = None) -> bytes:
        start = time.perf_counter()
        request = codec.encode(tensors, meta, compress=zstd_level is not None, level=zstd_level or codec.ZSTD_LEVEL)
        self.context.counter.encode_ms += (time.perf_counter() - start) * 1e3
        return request

