"""Wire messages: exact round trips, the semantic cast and compression, and the zlib fallback."""
import pytest
import torch

from semgap import codec


def sample():
    return {"logits": torch.randn(1, 3, 50), "ids": torch.arange(7), "half": torch.randn(4).half()}


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_is_exact_with_metadata(compress):
    tensors, meta = codec.decode(codec.encode(sample_tensors := sample(), {"kv_handle": "abc"}, compress=compress))
    assert meta == {"kv_handle": "abc"}
    assert set(tensors) == set(sample_tensors)
    assert all(torch.equal(tensors[name], sample_tensors[name]) for name in tensors)


def test_compression_shrinks_redundant_data():
    zeros = {"kv": torch.zeros(1000, 100)}
    assert len(codec.encode(zeros, compress=True)) < len(codec.encode(zeros)) / 50


def test_zlib_stands_in_when_zstandard_is_missing(monkeypatch):
    monkeypatch.setattr(codec, "zstandard", None)
    message = codec.encode(sample(), compress=True)
    assert message[:1] == codec.ZLIB and codec.compressor_name() == "zlib"
    assert torch.equal(codec.decode(message)[0]["ids"], torch.arange(7))


def test_a_foreign_message_is_rejected():
    with pytest.raises(ValueError, match="not a semgap message"):
        codec.decode(b"\x07garbage")


def test_logits_options_prune_and_cast():
    logits = torch.randn(1, 5, 11)  # [batch, seq, vocab]
    pruned = codec.LogitsOptions(last_position_only=True, cast="float16").apply(logits)
    assert pruned.shape == (1, 1, 11) and pruned.dtype == torch.float16
    assert torch.allclose(pruned.float(), logits[:, -1:], atol=1e-2)
    assert codec.LogitsOptions().apply(logits) is logits
    options = codec.LogitsOptions(True, "float16", True)
    assert codec.LogitsOptions.from_meta(options.to_meta()) == options
