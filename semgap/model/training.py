"""Trained presets: a byte-level GPT-2 trained here from a seed on the standard library, cached once.

Build one ahead of time with `python -m semgap.model.train gpt2-mini-trained`; `presets.build_model`
otherwise trains it on first use. The model learns over the 256 byte ids only (the full 50257-id head
learns nothing usable in minutes on a CPU) and is then widened to the preset's vocabulary, keeping
GPT-2's logits row, in a way that keeps every greedy token a byte (`byte_margin_nats`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from semgap.model import corpus, weights_cache

from semgap.bench.testbed import hostload

BYTE_VOCABULARY = 256
RESERVED_CONSTANT = 1.0  # the final layer norm's output in the reserved (last) hidden dimension
MINIMUM_BYTE_MARGIN_NATS = 1.0  # far above rounding: bfloat16 logits near 20 are 0.125 apart
PROGRESS_EVERY_S = 5.0  # plus at most one step: a line at least every 10 s while a step takes under 5 s
QUALITY_FILE = "quality.json"
EVALUATION_BATCH = 4  # windows per forward pass when measuring quality: logits of [4, length, 50257] floats
# The source of the code that trains, as imported (edits made while a process runs do not change its key).
CODE_DIGEST = hashlib.sha256(Path(__file__).read_bytes() + Path(corpus.__file__).read_bytes()).hexdigest()


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainingRecipe:
    """How a trained preset is trained: a fixed number of steps, so the weights do not depend on speed."""

    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float
    warmup_steps: int
    final_learning_rate_fraction: float  # cosine decay from learning_rate to this fraction of it
    weight_decay: float
    threads: int  # CPU threads while training: CPU results can depend on how reductions are split
    held_out_bytes: int  # bytes of held-out text the quality is measured on
    tail_noise_std: float  # noise added to each extra vocabulary row (see widen_vocabulary)
    tail_gap_nats: float  # how far each extra id's logit sits below that of the byte its row copies

    @classmethod
    def from_preset(cls, name: str, entry: dict) -> "TrainingRecipe":
        fields = {field.name for field in dataclasses.fields(cls)}
        if set(entry) != fields:
            raise ValueError(f"preset {name!r}: its training entry needs exactly the keys {', '.join(sorted(fields))}; "
                             f"missing {sorted(fields - set(entry))}, unknown {sorted(set(entry) - fields)}")
        recipe = cls(**entry)
        if min(recipe.steps, recipe.batch_size, recipe.sequence_length, recipe.threads, recipe.held_out_bytes) < 1:
            raise ValueError(f"preset {name!r}: steps, batch_size, sequence_length, threads and held_out_bytes must be positive")
        return recipe

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up over warmup_steps, then a cosine down to final_learning_rate_fraction."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        floor = self.final_learning_rate_fraction
        return self.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class TrainedPreset:
    """A trained preset's name, config (its final shape), recipe and seed: all its weights depend on."""

    name: str
    model_type: str
    config: dict
    recipe: TrainingRecipe
    seed: int

    @classmethod
    def from_preset(cls, name: str, preset: dict, seed: int) -> "TrainedPreset":
        if "training" not in preset:
            raise ValueError(f"preset {name!r} has no training entry; it is not a trained preset")
        return cls(name, preset["model_type"], preset["config"], TrainingRecipe.from_preset(name, preset["training"]), seed)

    def final_config(self):
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **self.config)

    def byte_config(self):
        """The config trained: the byte vocabulary, no dropout (a few minutes of training cannot spare it)."""
        from transformers import AutoConfig

        overrides = {"vocab_size": BYTE_VOCABULARY, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0,
                     "bos_token_id": None, "eos_token_id": None}
        return AutoConfig.for_model(self.model_type, **{**self.config, **overrides})

    def cache_key(self, corpus_digest: str) -> str:
        """A digest of everything that determines the weights: config, recipe, seed, corpus, versions, code."""
        import transformers

        described = {"model_type": self.model_type, "config": self.config, "recipe": dataclasses.asdict(self.recipe),
                     "seed": self.seed, "corpus": corpus_digest, "torch": torch.__version__,
                     "transformers": transformers.__version__, "code": CODE_DIGEST}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def cache_entry(self, corpus_digest: str) -> str:
        return f"{self.name}-seed{self.seed}-{self.cache_key(corpus_digest)[:20]}"


def load_trained(preset: TrainedPreset, dtype: torch.dtype, progress: Callable[[str], None] = print_progress):
    """`preset`'s model in `dtype` on the CPU, loaded from the cache, trained first if absent."""
    from transformers import AutoModelForCausalLM

    checkpoint = trained_checkpoint(preset, progress)
    with _quiet_transformers_progress_bars():
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, local_files_only=True)


def trained_checkpoint(preset: TrainedPreset, progress: Callable[[str], None] = print_progress) -> Path:
    """The checkpoint directory of `preset` in the cache (config.json, weights, quality.json), trained if absent."""
    text = corpus.stdlib_corpus()
    return weights_cache.cached_directory(
        preset.cache_entry(text.digest), lambda directory: train_into(preset, text, directory, progress), progress
    )


def stored_quality(preset: TrainedPreset) -> dict | None:
    """The quality record stored with `preset`'s weights, or None while they are not trained yet."""
    path = weights_cache.cache_root() / preset.cache_entry(corpus.stdlib_corpus().digest) / QUALITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class TrainingRun:
    model: torch.nn.Module  # over the 256 byte ids, in eval mode
    final_loss_bits: float  # the last step's training loss, bits per byte
    training_s: float  # the training steps' wall-clock time


def train_into(preset: TrainedPreset, text: corpus.Corpus, directory: Path, progress: Callable[[str], None]) -> None:
    """Train, widen and evaluate `preset`; write its checkpoint and quality record into `directory`."""
    recipe = preset.recipe
    load_at_start, build_start = hostload.load_avg_1m(), time.monotonic()
    with torch_threads(recipe.threads):
        run = train_byte_model(preset, text.train_bytes, progress)
        model = widen_vocabulary(run.model, preset)
        bits_per_byte, extra_mass = held_out_bits_per_byte(model, text.held_out_bytes, recipe)
    with _quiet_transformers_progress_bars():
        model.save_pretrained(directory)
    quality = {
        "preset": preset.name, "seed": preset.seed, "steps": recipe.steps, "recipe": dataclasses.asdict(recipe),
        "training_s": round(run.training_s, 1), "build_s": round(time.monotonic() - build_start, 1), "final_training_loss_bits_per_byte": round(run.final_loss_bits, 4),
        "held_out_bits_per_byte": round(bits_per_byte, 4),
        "unigram_bits_per_byte": round(_unigram_baseline(text.train_bytes, text.held_out_bytes, recipe), 4),
        "held_out_bytes_evaluated": held_out_windows(text.held_out_bytes, recipe)[:, 1:].numel(),
        "extra_ids_probability_mass": float(f"{extra_mass:.3g}"), "byte_margin_nats": round(byte_margin_nats(model), 3),
        "corpus": {"source": text.source, "files": text.file_count, "train_bytes": len(text.train_bytes),
                   "held_out_bytes": len(text.held_out_bytes), "digest": text.digest},
        "cache_key": preset.cache_key(text.digest), "torch": torch.__version__, "python": platform.python_version(),
        "machine": f"{platform.machine()} {_cpu_model()}", "load_average": {"start": load_at_start, "end": hostload.load_avg_1m()},
        "date": time.strftime("%Y-%m-%d"),
    }
    (directory / QUALITY_FILE).write_text(json.dumps(quality, indent=2) + "\n")
    progress(f"semgap: trained {preset.name} in {run.training_s:.0f} s: {bits_per_byte:.3f} bits per held-out byte "
             f"(unigram baseline {quality['unigram_bits_per_byte']:.3f})")


def train_byte_model(preset: TrainedPreset, train_bytes: bytes, progress: Callable[[str], None]) -> TrainingRun:
    """AdamW on random windows of `train_bytes`, under the global thread count (train_into sets it)."""
    from transformers import AutoModelForCausalLM

    recipe = preset.recipe
    length = recipe.sequence_length
    if len(train_bytes) <= length + 1:
        raise ValueError(f"{len(train_bytes)} training bytes cannot fill a window of {length + 1}")
    torch.manual_seed(preset.seed)  # the initial weights
    batches = torch.Generator().manual_seed(preset.seed)  # the windows, independent of the global generator
    model = AutoModelForCausalLM.from_config(preset.byte_config(), dtype=torch.float32).train()
    reserve_last_dimension(model)
    matrices = [parameter for parameter in model.parameters() if parameter.dim() >= 2]
    others = [parameter for parameter in model.parameters() if parameter.dim() < 2]  # biases, layer norms
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": recipe.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=recipe.learning_rate, betas=(0.9, 0.95))
    data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8)
    offsets = torch.arange(length + 1)
    start = time.monotonic()
    next_progress = start + PROGRESS_EVERY_S
    progress(f"semgap: training {preset.name} (seed {preset.seed}): {recipe.steps} steps of "
             f"{recipe.batch_size} x {length} bytes on {torch.get_num_threads()} CPU thread(s)")
    for step in range(recipe.steps):
        starts = torch.randint(0, len(data) - length - 1, (recipe.batch_size, 1), generator=batches)
        window = data[starts + offsets].long()  # [batch, length + 1]
        logits = model(input_ids=window[:, :-1], use_cache=False).logits  # [batch, length, 256]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, BYTE_VOCABULARY), window[:, 1:].reshape(-1))
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        reserve_last_dimension(model)
        loss_bits = loss.item() / math.log(2)
        if time.monotonic() >= next_progress or step == recipe.steps - 1:
            elapsed = time.monotonic() - start
            progress(f"semgap: training {preset.name}: step {step + 1}/{recipe.steps}, "
                     f"loss {loss_bits:.3f} bits per byte, {elapsed:.0f} s elapsed, "
                     f"ETA {elapsed / (step + 1) * (recipe.steps - step - 1):.0f} s")
            next_progress = time.monotonic() + PROGRESS_EVERY_S
    return TrainingRun(model.eval(), loss_bits, time.monotonic() - start)


@torch.no_grad()
def reserve_last_dimension(model) -> None:
    """Make the last hidden dimension of the final layer norm's output the constant RESERVED_CONSTANT and
    keep every byte's embedding at 0 there, so the byte logits never use it (widen_vocabulary does)."""
    reserved = model.config.n_embd - 1
    model.transformer.ln_f.weight[reserved] = 0.0
    model.transformer.ln_f.bias[reserved] = RESERVED_CONSTANT
    model.transformer.wte.weight[:, reserved] = 0.0


@torch.no_grad()
def widen_vocabulary(byte_model, preset: TrainedPreset):
    """The trained byte model with the preset's full vocabulary: GPT-2's logits row, greedy tokens still bytes.

    Each extra id's row copies a random byte's row plus small noise, so its logit follows that byte's: a
    tail that moves with the context. In the reserved dimension, where the final hidden state is the
    constant RESERVED_CONSTANT and every byte row is 0, the row gets the component that puts its logit
    tail_gap_nats below its byte's; the gap, not the model, then sets how much probability the tail holds.
    Raises ValueError unless `byte_margin_nats` stays at least MINIMUM_BYTE_MARGIN_NATS: then no extra
    id can be the argmax, whatever the input.
    """
    from transformers import AutoModelForCausalLM

    recipe = preset.recipe
    generator = torch.Generator().manual_seed(preset.seed)
    byte_rows = byte_model.transformer.wte.weight  # [256, width], 0 in the reserved dimension
    extra = preset.final_config().vocab_size - BYTE_VOCABULARY
    parents = torch.randint(0, BYTE_VOCABULARY, (extra,), generator=generator)
    rows = byte_rows[parents] + torch.randn(extra, byte_rows.shape[1], generator=generator) * recipe.tail_noise_std
    rows[:, -1] = -recipe.tail_gap_nats / RESERVED_CONSTANT
    ln_f = byte_model.transformer.ln_f
    margin = _byte_margin_nats(torch.cat([byte_rows, rows]), ln_f.weight, ln_f.bias)
    if margin < MINIMUM_BYTE_MARGIN_NATS:
        raise ValueError(f"preset {preset.name!r}: with tail_noise_std {recipe.tail_noise_std} an extra id can come within "
                         f"{margin:.2f} nats of every byte (at least {MINIMUM_BYTE_MARGIN_NATS} needed); raise "
                         f"tail_gap_nats by {MINIMUM_BYTE_MARGIN_NATS - margin:.2f} or lower tail_noise_std")
    model = AutoModelForCausalLM.from_config(preset.final_config(), dtype=torch.float32)
    weights = byte_model.state_dict()
    widened = torch.cat([byte_rows, rows])
    weights["transformer.wte.weight"] = widened
    weights["lm_head.weight"] = widened
    model.load_state_dict(weights)
    return model.eval()


def byte_margin_nats(model) -> float:
    """How far, at least, every id >= 256 scores below some byte id, for any input: > 0 keeps argmax on bytes.

    A GPT-2 logit is `h @ row` with `h = w * x + b` the final layer norm's output, whose normalised input
    `x` has norm at most sqrt(width) whatever the prompt. So for an extra id j and a byte i,
    `logit_j - logit_i = x @ (w * d) + b @ d <= sqrt(width) * |w * d| + b @ d` with `d = row_j - row_i`.
    The margin is the least, over extra ids, of the best byte's `-(that bound)`: a certificate in exact
    arithmetic over the weights as stored (in their dtype); rounding in the logits is far below it.
    """
    ln_f = model.transformer.ln_f
    return _byte_margin_nats(model.get_output_embeddings().weight, ln_f.weight, ln_f.bias)


@torch.no_grad()
def _byte_margin_nats(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    rows, weight, bias = rows.double(), weight.double(), bias.double()  # [vocab, width], [width], [width]
    byte_rows, extra_rows = rows[:BYTE_VOCABULARY], rows[BYTE_VOCABULARY:]
    # |w * (e - c)|^2 = |w * e|^2 + |w * c|^2 - 2 (w^2 * e) @ c, for every extra row e and byte row c at once
    squared_norms = ((extra_rows * weight) ** 2).sum(-1)[:, None] + ((byte_rows * weight) ** 2).sum(-1)[None, :] \
        - 2 * (extra_rows * weight**2) @ byte_rows.T  # [extra, 256]
    gains = math.sqrt(rows.shape[1]) * squared_norms.clamp(min=0).sqrt() + (extra_rows @ bias)[:, None] - byte_rows @ bias
    return (-gains).max(dim=1).values.min().item()


@torch.no_grad()
def held_out_bits_per_byte(model, held_out: bytes, recipe: TrainingRecipe) -> tuple[float, float]:
    """Bits per byte over windows spread evenly across `held_out`, and the mean probability of ids >= 256.

    The first byte of each window has no context and is not predicted; the unigram baseline is taken over
    the same predicted bytes (`_unigram_baseline`).
    """
    windows = held_out_windows(held_out, recipe)  # [count, length + 1]
    total_bits, extra_mass = 0.0, 0.0
    for batch in windows.split(EVALUATION_BATCH):
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits.float()  # [batch, length, vocab]
        normaliser = logits.logsumexp(dim=-1)  # [batch, length]
        total_bits += (normaliser - logits.gather(-1, batch[:, 1:, None])[..., 0]).sum().item() / math.log(2)
        extra_mass += (logits[..., BYTE_VOCABULARY:].logsumexp(dim=-1) - normaliser).exp().sum().item()
    predicted = windows[:, 1:].numel()
    return total_bits / predicted, extra_mass / predicted


def held_out_windows(held_out: bytes, recipe: TrainingRecipe) -> torch.Tensor:
    """About recipe.held_out_bytes of `held_out` as windows of sequence_length + 1 spread over all of it."""
    length = recipe.sequence_length + 1
    count = max(1, recipe.held_out_bytes // length)
    if len(held_out) < count * length:
        raise ValueError(f"{len(held_out)} held-out bytes cannot fill {count} windows of {length}")
    data = torch.frombuffer(bytearray(held_out), dtype=torch.uint8)
    starts = torch.linspace(0, len(held_out) - length, count).long()
    return data[starts[:, None] + torch.arange(length)].long()


def _unigram_baseline(train: bytes, held_out: bytes, recipe: TrainingRecipe) -> float:
    predicted = held_out_windows(held_out, recipe)[:, 1:].to(torch.uint8).numpy().tobytes()
    return corpus.unigram_bits_per_byte(train, predicted)


@contextmanager
def _quiet_transformers_progress_bars() -> Iterator[None]:
    # Loading and saving draw tqdm bars; semgap's own progress lines say what happens instead.
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
