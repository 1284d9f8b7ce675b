"""Wire messages: exact round trips, the semantic cast and compression, the zlib fallback, bounded decompression."""
import struct
import time
import tracemalloc
import zlib

import pytest
import torch

from semgap.wire import codec

zstandard = pytest.importorskip("zstandard") if codec.zstandard is None else codec.zstandard


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


def test_compress_takes_a_level_and_reports_sizes_before_and_after():
    data = {"logits": torch.arange(20_000, dtype=torch.float32) % 7}
    fast, small = codec.encode(data, compress=True, level=1), codec.encode(data, compress=True, level=19)
    assert len(small) < len(fast) and torch.equal(codec.decode(small)[0]["logits"], data["logits"])
    before, after = codec.compression(small)
    assert before >= 80_000 and after == len(small) - (len(codec.encode(data)) - before)
    assert codec.compression(codec.encode(data)) is None


def test_a_stamp_writes_the_encoding_time_into_the_finished_message():
    start = time.perf_counter() - 0.5  # half a second before: the stamp reads at least 500 ms
    message = codec.encode({"x": torch.ones(3)}, {"a": "b"}, compress=True, stamp=("server_codec_ms", start))
    tensors, meta = codec.decode(message)
    assert 500 <= float(meta["server_codec_ms"]) < 600 and meta["a"] == "b" and tensors["x"].tolist() == [1, 1, 1]
    assert len(message) == len(codec.encode({"x": torch.ones(3)}, {"a": "b", "server_codec_ms": "0" * 15}, compress=True))


def test_a_message_built_by_hand_from_the_documented_format_decodes():
    # flag, "SGM1", 1 tensor, 1 meta entry, header bytes; an int32 [2] named "ids"; meta k=v; pad to 8; data.
    entries = struct.pack("<BBHQ", codec.DTYPE_CODES[torch.int32], 1, 3, 2) + b"ids" + struct.pack("<HI", 1, 1) + b"kv"
    header = struct.pack("<4sHHI", b"SGM1", 1, 1, 12 + len(entries)) + entries
    padding = bytes(-(1 + len(header)) % 8)
    message = b"\x00" + header + padding + struct.pack("<2i", 7, -1)
    tensors, meta = codec.decode(message)
    assert meta == {"k": "v"} and tensors["ids"].tolist() == [7, -1] and tensors["ids"].dtype == torch.int32
    assert codec.encode({"ids": torch.tensor([7, -1], dtype=torch.int32)}, {"k": "v"}) == message


def test_decode_maps_a_writable_buffer_without_copying_and_aligns_every_tensor():
    message = bytearray(codec.encode({"a": torch.arange(3, dtype=torch.int8), "b": torch.randn(1000), "c": torch.ones(5).half()}))
    tensors, _ = codec.decode(message)
    start = torch.frombuffer(message, dtype=torch.uint8).data_ptr()
    for tensor in tensors.values():
        offset = tensor.data_ptr() - start
        assert 0 < offset < len(message) and offset % codec.ALIGN_BYTES == 0
    message[-1] ^= 0xFF  # the last byte belongs to "c": the decoded tensor sees the change
    assert not torch.equal(tensors["c"], torch.ones(5).half())


def test_a_read_only_message_is_copied_once_and_decodes_without_warnings(recwarn):
    tensors, _ = codec.decode(codec.encode({"x": torch.arange(4)}))
    assert tensors["x"].tolist() == [0, 1, 2, 3] and len(recwarn) == 0


@pytest.mark.parametrize("damage, error", [
    (lambda m: m[:-1], "runs past the end"),
    (lambda m: m + b"\x00", "1 bytes after the last tensor"),
    (lambda m: m[:1] + b"XXXX" + m[5:], "magic b'XXXX'"),
    (lambda m: m[:13] + b"\x63" + m[14:], "unknown dtype code 99"),
    (lambda m: m[:9] + struct.pack("<I", 99) + m[13:], "header says 99 bytes"),
    (lambda m: m[:20], "truncated or garbled"),
], ids=["truncated-data", "trailing-bytes", "bad-magic", "bad-dtype", "bad-header-length", "truncated-header"])
def test_a_malformed_message_is_refused_with_what_is_wrong(damage, error):
    message = codec.encode({"x": torch.arange(4)}, {"k": "v"})
    with pytest.raises(codec.MalformedMessage, match=error):
        codec.decode(damage(message))


def test_an_unsupported_dtype_is_refused_when_encoding():
    with pytest.raises(TypeError, match="complex64, which semgap messages do not carry"):
        codec.encode({"z": torch.zeros(2, dtype=torch.complex64)})


@pytest.mark.parametrize("compressor", ["zstd", "zlib"])
def test_compression_leaves_the_metadata_readable_so_its_contents_never_change_the_size(compressor, monkeypatch):
    if compressor == "zlib":
        monkeypatch.setattr(codec, "zstandard", None)
    tensors = {"logits": torch.randn(1, 1, 500).half()}
    sizes = {len(codec.encode(tensors, {"kv_handle": handle, "ms": f"{ms:015.6f}"}, compress=True))
             for handle, ms in (("0" * 32, 1.0), ("f3a9" * 8, 12.345678), ("9c1e" * 8, 987.654321))}
    assert len(sizes) == 1
    message = codec.encode(tensors, {"kv_handle": "f3a9" * 8}, compress=True)
    assert b"f3a9" * 8 in message  # readable in the header
    assert torch.equal(codec.decode(message)[0]["logits"], tensors["logits"])
    with pytest.raises(codec.MalformedMessage, match="truncated or garbled"):
        codec.decode(message[:-3])


# --- bounded decompression -------------------------------------------------------------------------

def with_data(message: bytes, flag: bytes, data: bytes) -> bytes:
    """`message` with its flag and compressed data replaced: a header that declares one size, data of another."""
    data_start = 1 + codec._BODY_HEADER.unpack_from(message, 1)[3]
    return flag + message[1:data_start] + data


@pytest.mark.parametrize("compressor", ["zstd", "zlib"])
def test_a_decompression_bomb_is_refused_after_at_most_the_declared_size(compressor):
    message = codec.encode({"ids": torch.zeros(1000, dtype=torch.uint8)}, compress=True)
    # 200 MB of zeros, compressed a megabyte at a time: a few hundred kB on the wire
    stream = zstandard.ZstdCompressor().compressobj() if compressor == "zstd" else zlib.compressobj(9)
    data = b"".join(stream.compress(bytes(1 << 20)) for _ in range(200)) + stream.flush()
    bomb = with_data(message, codec.ZSTD if compressor == "zstd" else codec.ZLIB, data)
    assert len(bomb) < 250_000
    tracemalloc.start()
    try:
        with pytest.raises(codec.MalformedMessage, match="a decompression bomb: .* beyond the 10.. bytes its header declares"):
            codec.decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak  # nothing near the 200 MB it stands for was made


def test_a_compressed_message_declaring_more_than_the_limit_is_refused_before_decompressing():
    message = codec.encode({"ids": torch.zeros(10_000_000, dtype=torch.uint8)}, compress=True)
    assert len(message) < 10_000
    with pytest.raises(codec.MalformedMessage, match="its tensors declare 10000.* bytes, beyond this receiver's limit of 1000000"):
        codec.decode(message, max_bytes=1_000_000)
    assert codec.decode(message, max_bytes=20_000_000)[0]["ids"].shape == (10_000_000,)
