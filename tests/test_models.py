"""Presets, local checkpoints and prompts: offline, reproducible, with clear errors."""
import hashlib
import socket
import subprocess
import sys

import pytest
import torch

from semgap.model import presets

from .conftest import REPO, TEST_MODEL


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in presets.weights_of(model).items():
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    return digest.hexdigest()


def test_same_preset_and_seed_give_bit_identical_weights_in_another_process(preset_model):
    code = (
        "from semgap.model import presets; from tests.test_models import weights_digest; "
        f"print(weights_digest(presets.build_model(presets.ModelSpec({TEST_MODEL!r}))))"
    )
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == weights_digest(preset_model)


def test_another_seed_gives_other_weights(preset_model):
    assert weights_digest(presets.build_model(presets.ModelSpec(TEST_MODEL, seed=1))) != weights_digest(preset_model)


def test_tiny_preset_has_the_shape_of_sshleifer_tiny_gpt2():
    config = presets.config_of("tiny-gpt2")
    assert (config.vocab_size, config.n_layer, config.n_head, config.n_embd) == (50257, 2, 2, 2)


def test_default_preset_has_realistic_proportions_of_weights_kv_cache_and_logits():
    """Weights >= 20x the KV cache of the default 128-token prompt, and that cache >= one logits row."""
    config = presets.config_of("gpt2-mini")
    itemsize = torch.bfloat16.itemsize
    weights = presets.weight_bytes_of("gpt2-mini", torch.bfloat16)
    kv_cache = 2 * config.n_layer * 128 * config.n_embd * itemsize  # keys and values of every layer
    logits_row = config.vocab_size * itemsize
    assert weights >= 20 * kv_cache and kv_cache >= logits_row, (weights, kv_cache, logits_row)


def test_every_preset_builds_a_config():
    for name in presets.named():
        assert presets.context_length_of(name) >= 1024


def test_unknown_name_lists_presets_and_says_how_to_use_a_checkpoint(monkeypatch):
    attempts = []

    def no_network(sock, address):
        attempts.append(address)
        raise OSError("this test forbids network connections")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    with pytest.raises(presets.UnknownModelError) as error:
        presets.check_model_name("EleutherAI/not-on-this-machine")
    assert attempts == []  # answered from the disk: not even a connection was tried
    message = str(error.value)
    for name in presets.named():
        assert name in message
    assert "checkpoint directory" in message and "never downloads" in message


def test_local_checkpoint_directory_loads_offline_with_its_weights(preset_model, tmp_path):
    preset_model.save_pretrained(tmp_path / "checkpoint")
    loaded = presets.build_model(presets.ModelSpec(str(tmp_path / "checkpoint")))
    assert weights_digest(loaded) == weights_digest(preset_model)
    assert presets.context_length_of(str(tmp_path / "checkpoint")) == 1024


def test_weights_list_tied_tensors_once(preset_model):
    weights = presets.weights_of(preset_model)
    assert "transformer.wte.weight" in weights and "lm_head.weight" not in weights
    assert all(tensor.device.type == "cpu" for tensor in weights.values())


def test_prompt_ids_are_deterministic_bytes_within_the_vocabulary():
    ids = presets.prompt_ids(300, 50257)
    assert ids == presets.prompt_ids(300, 50257) and len(ids) == 300
    assert ids == list(presets.PROMPT_FILE.read_bytes()[:300])  # real text, one id per UTF-8 byte
    assert presets.decode_ids(ids).startswith("In a disaggregated data centre")
    with pytest.raises(ValueError, match="at least 1 token"):
        presets.prompt_ids(0, 50257)
    with pytest.raises(ValueError, match="at least 256 ids"):
        presets.prompt_ids(10, 7)


def test_dtype_auto_is_the_serving_dtype_bfloat16_on_cpu_and_unknown_dtype_fails():
    assert presets.ModelSpec("tiny-gpt2", device="cpu").resolved_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        presets.ModelSpec("tiny-gpt2", dtype="int3").resolved_dtype()
