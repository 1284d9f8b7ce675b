"""Model presets built offline from configs with seeded weights, or loaded from a local checkpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import torch

from semgap.model import training
from semgap.model.runtime import context_length

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PRESETS_FILE = FIXTURES / "presets.json"
DEFAULT_MODEL = "gpt2-mini"  # the experiment's model, when --semgap-model is not given
PROMPT_FILE = FIXTURES / "prompt.txt"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class UnknownModelError(ValueError):
    """The model name is neither a preset, a local checkpoint, nor in the local Hugging Face cache."""


@cache
def named() -> dict[str, dict]:
    """The named presets of fixtures/presets.json: adding a model is one entry there."""
    return json.loads(PRESETS_FILE.read_text())


@dataclass(frozen=True)
class ModelSpec:
    """Everything a process needs to build the same model as another process, bit for bit."""

    name: str
    seed: int = 0
    dtype: str = "auto"  # the serving dtype: float16 on CUDA, bfloat16 on the CPU (see resolved_dtype)
    device: str = "auto"  # cuda when available, else cpu

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_dtype(self) -> torch.dtype:
        """The dtype a server would serve in: float16 on CUDA, bfloat16 on the CPU.

        On the CPU, bfloat16 and not float16: on the 2-core dev VM (AMD EPYC with avx512_bf16,
        torch 2.13, gpt2-mini, 2026-11-28) a 128-token prefill took 18.6 ms in bfloat16, 66.5 ms in
        float32 and 607 ms in float16, whose CPU matmuls have no fast kernel there.
        """
        if self.dtype == "auto":
            return torch.float16 if self.resolved_device().startswith("cuda") else torch.bfloat16
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from auto, {', '.join(DTYPES)}")
        return DTYPES[self.dtype]


def describe_choices() -> str:
    return (
        f"presets: {', '.join(named())}. semgap never downloads a model: to use real weights, "
        "copy a checkpoint directory (config.json and weights) onto this machine and pass its path, "
        "e.g. --semgap-model /models/gpt2, or name a model already in the local Hugging Face cache"
    )


def check_model_name(name: str) -> str:
    """Validate a model name without building it (for option parsing)."""
    if name in named() or Path(name).is_dir() or _in_local_hf_cache(name):
        return name
    if Path(name).exists():
        raise UnknownModelError(f"checkpoint path {name!r} is a file; pass the directory holding config.json and weights")
    if "/" in name or name.startswith((".", "~")):  # meant as a path (or a hub id, which also holds a '/')
        raise UnknownModelError(
            f"checkpoint directory {name!r} does not exist ({Path(name).absolute()}), and no model of that name "
            f"is in the local Hugging Face cache; {describe_choices()}"
        )
    raise UnknownModelError(f"unknown model {name!r}; {describe_choices()}")


def _in_local_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed repo id is simply "not in the cache"
        return False


def build_model(spec: ModelSpec, progress: Callable[[str], None] = training.print_progress) -> torch.nn.Module:
    """Build the model of `spec` in eval mode on its device.

    A trained preset loads from the cache outside the repository, trained first when absent (minutes;
    `progress` gets a line about every 10 s): the same weights on any device, from its seed.

    Presets are initialised on their device itself after seeding torch's generators, so every
    process that builds the same spec on the same kind of device gets bit-identical weights. The CPU
    and CUDA generators differ, so a preset's weights are a function of (name, seed, device type);
    on CUDA also of the GPU model, whose SM count shapes how random numbers map to elements. Building
    on the GPU takes seconds where initialising GPT-J-6B on the CPU and copying 12 GB takes minutes.
    """
    from transformers import AutoModelForCausalLM

    dtype = spec.resolved_dtype()
    device = spec.resolved_device()
    if spec.name in trained_presets():
        model = training.load_trained(trained_preset(spec.name, spec.seed), dtype, progress)
    elif spec.name in named():
        preset = named()[spec.name]
        config = config_of(spec.name)
        extra = {"attn_implementation": preset["attn_implementation"]} if preset.get("attn_implementation") else {}
        torch.manual_seed(spec.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    else:
        check_model_name(spec.name)
        model = AutoModelForCausalLM.from_pretrained(spec.name, dtype=dtype, local_files_only=True)
    return model.eval().to(device)


def weights_kind(name: str) -> str:
    """Where model `name`'s weights come from, as reports must say: `random`, `trained` or `checkpoint`."""
    if name in named():
        return "trained" if name in trained_presets() else "random"
    return "checkpoint"


def trained_presets() -> list[str]:
    """The presets trained here (semgap/training.py) rather than initialised at random."""
    return [name for name, preset in named().items() if "training" in preset]


def trained_preset(name: str, seed: int = 0) -> training.TrainedPreset:
    return training.TrainedPreset.from_preset(name, named()[name], seed)


def trained_quality(name: str, seed: int = 0) -> dict | None:
    """The quality stored with trained preset `name`'s weights (held-out bits per byte, unigram baseline,
    steps, training seconds, corpus digest, cache key); None for other models or before it is trained."""
    return training.stored_quality(trained_preset(name, seed)) if name in trained_presets() else None


def config_of(name: str):
    """The transformers config of a preset or local checkpoint, without building the model."""
    from transformers import AutoConfig

    if name in named():
        preset = named()[name]
        return AutoConfig.for_model(preset["model_type"], **preset["config"])
    check_model_name(name)
    return AutoConfig.from_pretrained(name, local_files_only=True)


def weight_bytes_of(name: str, dtype: torch.dtype) -> int:
    """Bytes of model `name`'s parameters in `dtype`, tied tensors once: what one decode step streams.

    Built on the meta device, so it allocates nothing and needs no weights.
    """
    from transformers import AutoModelForCausalLM

    config = config_of(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    unique = {id(parameter): parameter for parameter in model.parameters()}
    return sum(parameter.numel() for parameter in unique.values()) * dtype.itemsize


def context_length_of(name: str) -> int:
    """The number of positions model `name` can attend to, read from its config without building it."""
    return context_length(config_of(name))


def encode_text(text: str) -> list[int]:
    """semgap's byte-level tokenizer: one token id per UTF-8 byte (ids 0-255).

    Client and server need no tokenizer files to agree on ids, and the trained preset is trained on
    exactly these ids. A GPT-2 vocabulary holds 256 byte tokens too, so the ids are valid for every
    preset; a real GPT-2 checkpoint would read them as other characters, which changes no byte count.
    """
    return list(text.encode("utf-8"))


def decode_ids(token_ids: list[int]) -> str:
    """Inverse of `encode_text` for ids below 256; other ids show as U+FFFD."""
    return bytes(i if i < 256 else 0x3F for i in token_ids).decode("utf-8", errors="replace")


def prompt_ids(n_tokens: int, vocab_size: int) -> list[int]:
    """The first `n_tokens` ids of fixtures/prompt.txt through `encode_text`, the text repeated if short."""
    if n_tokens < 1:
        raise ValueError(f"a prompt needs at least 1 token, got {n_tokens}")
    if vocab_size < 256:
        raise ValueError(f"the byte-level prompt needs a vocabulary of at least 256 ids, the model has {vocab_size}")
    ids = encode_text(PROMPT_FILE.read_text(encoding="utf-8"))
    return [ids[i % len(ids)] for i in range(n_tokens)]


def unique_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tied tensors listed once, under their first name, where they are."""
    seen: set[int] = set()
    weights = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        weights[name] = tensor
    return weights


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`unique_weights` copied to the CPU (what a weight upload ships)."""
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in unique_weights(model).items()}
