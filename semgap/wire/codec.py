"""Tensor messages on the wire: named tensors plus string metadata, optionally zstd-compressed at a level.

Format (all integers little-endian; no pickle, nothing is evaluated):

    message  := flag:u8 header data          flag: 0 raw, 1 zstd, 2 zlib (data compressed whole)
    header   := "SGM1" tensors:u16 metas:u16 header_bytes:u32 tensor_entry* meta_entry*
    tensor_entry := dtype:u8 ndim:u8 name_bytes:u16 dim:u64 * ndim name(utf-8)
    meta_entry   := key_bytes:u16 value_bytes:u32 key(utf-8) value(utf-8)
    data     := each tensor's bytes (C order) in entry order, each starting at a multiple of
                ALIGN_BYTES from the start of the message, zero bytes in between

`header_bytes` counts the header. Offsets are taken from the start of the *message* (flag
included), so a receiver that puts the message at an aligned address (the tcp transport does) gets
aligned tensors. Compression covers the data only: names, shapes and metadata (handles, timings)
stay as they are, so the size of a message depends on its tensors and the length of its strings,
never on what the strings say. A compressed message is decompressed to exactly the size its header
declares, never beyond `max_bytes` (a bomb is refused after at most that many bytes of output).
`decode` maps tensors onto a writable buffer (bytearray, memoryview
of one) without copying; a read-only `bytes` is copied once, a compressed message decompressed once. Measured against safetensors on the 2-core dev VM (2026-11-28): 25 MB of float32 logits
encode in 4.5 ms here against 50 ms for safetensors' `save` and decode in microseconds against
3.3 ms for `load` (a copy); a one-tensor request with five metadata entries takes about 10 us to
encode and decode here, 24 us with safetensors.
"""
from __future__ import annotations

import struct
import time
import zlib

import torch

from semgap.wire import timing

try:
    import zstandard
except ImportError:  # the lent GPU machine has no zstandard: fall back to the standard library
    zstandard = None
_ZSTD_ERRORS = (zstandard.ZstdError,) if zstandard is not None else ()

# First byte of every message: how the rest is compressed.
RAW, ZSTD, ZLIB = b"\x00", b"\x01", b"\x02"
ZSTD_LEVEL = 3  # fast enough to stay below the network time it saves on a 1 Gbit/s link
ZLIB_LEVEL = 1
MAGIC = b"SGM1"
ALIGN_BYTES = 8  # every dtype below is at most 8 bytes wide
# What a compressed message may decompress to unless the receiver says less (a server passes its frame limit).
DEFAULT_MAX_BYTES = 1 << 34
_BODY_HEADER = struct.Struct("<4sHHI")
_TENSOR_ENTRY = struct.Struct("<BBH")
_META_ENTRY = struct.Struct("<HI")
_DIM = struct.Struct("<Q")
# Wire codes of the dtypes a message may carry; a code never changes meaning.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4,
    torch.int64: 5, torch.int32: 6, torch.int16: 7, torch.int8: 8, torch.uint8: 9, torch.bool: 10,
}
_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


class MalformedMessage(ValueError):
    """Bytes that are not a well-formed semgap message; nothing in them was used."""


def compressor_name() -> str:
    """`zstd` where the zstandard module is installed, else `zlib` (the codec degrades, and says so)."""
    return "zstd" if zstandard is not None else "zlib"


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None, compress: bool = False,
           level: int = ZSTD_LEVEL, stamp: tuple[str, float] | None = None) -> bytes:
    """Serialise CPU copies of `tensors` and the strings of `meta` into one message (format above).

    `compress` zstd-compresses the tensor data at `level` (zlib at ZLIB_LEVEL without zstandard).
    `stamp` = (key, start): metadata `key` holds the milliseconds from `start` (a perf_counter reading)
    to the end of this encoding, written into the finished message (fixed width, see `milliseconds_text`).
    A server's encoding adds to its request's clock (semgap.wire.timing).
    """
    with timing.part("encode_ms"):
        if stamp is None:
            return _encode(tensors, meta, compress, level)
        key, start = stamp
        placeholder = milliseconds_text(0.0)
        message = bytearray(_encode(tensors, {**(meta or {}), key: placeholder}, compress, level))
        fill(message, key, placeholder, milliseconds_text((time.perf_counter() - start) * 1e3))
        return bytes(message)


def fill(message: bytearray, key: str, placeholder: str, value: str) -> None:
    """Write `value` over metadata `key`'s `placeholder` in an encoded message, in place: a figure known only
    once the message is encoded. The header, which compression leaves alone, keeps its size: same width."""
    if len(value.encode()) != len(placeholder.encode()):
        raise ValueError(f"{key}: {value!r} is not as wide as its placeholder {placeholder!r}")
    entry = key.encode() + placeholder.encode()
    position = message.index(entry) + len(key.encode())
    message[position:position + len(entry) - len(key.encode())] = value.encode()


def milliseconds_text(milliseconds: float) -> str:
    """A duration for metadata, fixed width so a message's size never depends on it."""
    return f"{milliseconds:015.6f}"


def _encode(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None, compress: bool, level: int) -> bytes:
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    meta = meta or {}
    entries = [_tensor_entry(name, tensor) for name, tensor in cpu.items()]
    entries += [_META_ENTRY.pack(len(key := k.encode()), len(value := v.encode())) + key + value
                for k, v in meta.items()]
    header_bytes = _BODY_HEADER.size + sum(map(len, entries))
    header = [_BODY_HEADER.pack(MAGIC, len(cpu), len(meta), header_bytes), *entries]
    data, offset = [], 1 + header_bytes  # the flag byte comes first
    for tensor in cpu.values():
        padding = -offset % ALIGN_BYTES
        data += [bytes(padding), _bytes_of(tensor)]
        offset += padding + tensor.numel() * tensor.element_size()
    if not compress:
        return b"".join([RAW, *header, *data])  # one copy of the tensors' bytes, none more
    if zstandard is not None:
        return b"".join([ZSTD, *header, zstandard.ZstdCompressor(level=level).compress(b"".join(data))])
    return b"".join([ZLIB, *header, zlib.compress(b"".join(data), ZLIB_LEVEL)])


def decode(message: bytes | bytearray | memoryview,
           max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Inverse of `encode`: (tensors on the CPU, metadata); MalformedMessage for anything else.

    A compressed message whose tensors would take more than `max_bytes` is refused before decompressing.
    A server's decoding adds to its request's clock (semgap.wire.timing).
    """
    with timing.part("decode_ms"):
        return _decode(message, max_bytes)


def _decode(message: bytes | bytearray | memoryview, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    view = memoryview(message).cast("B")
    flag = bytes(view[:1])
    try:
        if flag in (ZSTD, ZLIB):
            view = _decompressed(view, flag, max_bytes)
        elif flag != RAW:
            raise MalformedMessage(f"not a semgap message (first byte {flag!r})")
        elif view.readonly:  # torch maps only writable memory: copy once
            view = memoryview(bytearray(view))
        return _parse(view)
    except (struct.error, UnicodeDecodeError, zlib.error, *_ZSTD_ERRORS) as error:
        raise MalformedMessage(f"truncated or garbled semgap message: {error}") from None


def compression(message: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(tensor data bytes before, after) compression of a zstd message, read from its frame; else None."""
    view = memoryview(message).cast("B")
    if bytes(view[:1]) != ZSTD or zstandard is None:
        return None
    data = view[1 + _BODY_HEADER.unpack_from(view, 1)[3]:]
    return zstandard.frame_content_size(data), len(data)


def _decompressed(view: memoryview, flag: bytes, max_bytes: int) -> memoryview:
    """The raw message a compressed one stands for: its header as it is, its data decompressed.

    The output is exactly what the header's tensors declare (at most `max_bytes`); a frame that would
    decompress to more, or less, is refused (MalformedMessage), having produced at most one byte more.
    """
    layouts, _, data_start = _header(view)
    declared = _data_end(layouts, data_start) - data_start
    if data_start + declared > max_bytes:
        raise MalformedMessage(f"its tensors declare {data_start + declared} bytes, beyond this receiver's limit "
                               f"of {max_bytes}")
    raw = bytearray(data_start + declared)
    raw[1:data_start] = view[1:data_start]  # raw[0] is RAW already
    if flag == ZLIB:
        stream = zlib.decompressobj()
        data = stream.decompress(view[data_start:], declared + 1)
        excess = len(data) > declared or bool(stream.unconsumed_tail)
        complete = stream.eof
    elif zstandard is None:
        raise RuntimeError("received a zstd-compressed message but the zstandard module is not installed")
    else:
        with zstandard.ZstdDecompressor().stream_reader(view[data_start:], read_across_frames=False) as reader:
            data = reader.read(declared + 1) if declared else b""
            excess = len(data) > declared or (declared == 0 and reader.read(1) != b"")
        complete = len(data) == declared
    if excess:
        raise MalformedMessage(f"a decompression bomb: its compressed data decompresses beyond the {declared} bytes "
                               "its header declares")
    if not complete or len(data) != declared:
        raise MalformedMessage(f"truncated or garbled semgap message: its compressed data decompresses to "
                               f"{len(data)} bytes, its header declares {declared}")
    raw[data_start:] = data
    return memoryview(raw)


def _tensor_entry(name: str, tensor: torch.Tensor) -> bytes:
    if tensor.dtype not in DTYPE_CODES:
        raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which semgap messages do not carry")
    encoded = name.encode()
    return (_TENSOR_ENTRY.pack(DTYPE_CODES[tensor.dtype], tensor.dim(), len(encoded))
            + b"".join(_DIM.pack(size) for size in tensor.shape) + encoded)


def _bytes_of(tensor: torch.Tensor):
    """The tensor's bytes without copying them (a numpy view; bfloat16 goes through uint8)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _header(view: memoryview) -> tuple[list, dict[str, str], int]:
    """(each tensor's name, dtype and shape; the metadata; where the data starts) of a message's header."""
    magic, tensor_count, meta_count, header_bytes = _BODY_HEADER.unpack_from(view, 1)
    if magic != MAGIC:
        raise MalformedMessage(f"not a semgap message (magic {bytes(magic)!r})")
    position, layouts = 1 + _BODY_HEADER.size, []
    for _ in range(tensor_count):
        code, ndim, name_bytes = _TENSOR_ENTRY.unpack_from(view, position)
        position += _TENSOR_ENTRY.size
        shape = struct.unpack_from(f"<{ndim}Q", view, position)
        position += 8 * ndim
        name = _text(view, position, name_bytes)
        position += name_bytes
        if code not in _DTYPES:
            raise MalformedMessage(f"tensor {name!r} has unknown dtype code {code}")
        layouts.append((name, _DTYPES[code], shape))
    meta = {}
    for _ in range(meta_count):
        key_bytes, value_bytes = _META_ENTRY.unpack_from(view, position)
        position += _META_ENTRY.size
        key = _text(view, position, key_bytes)
        meta[key] = _text(view, position + key_bytes, value_bytes)
        position += key_bytes + value_bytes
    if position != 1 + header_bytes:
        raise MalformedMessage(f"header says {header_bytes} bytes, its entries take {position - 1}")
    return layouts, meta, position


def _data_end(layouts: list, position: int) -> int:
    """Where the last tensor's data ends, from where the data starts (alignment included)."""
    for _, dtype, shape in layouts:
        position += -position % ALIGN_BYTES + dtype.itemsize * _product(shape)
    return position


def _parse(view: memoryview) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    layouts, meta, position = _header(view)
    everything = torch.frombuffer(view, dtype=torch.uint8) if len(view) > position else None
    tensors = {}
    for name, dtype, shape in layouts:
        position += -position % ALIGN_BYTES
        size = dtype.itemsize * _product(shape)
        if position + size > len(view):
            raise MalformedMessage(f"tensor {name!r} runs past the end of the message ({len(view)} bytes)")
        data = everything[position:position + size] if size else torch.empty(0, dtype=torch.uint8)
        tensors[name] = data.view(dtype).reshape(shape)
        position += size
    if position != len(view):
        raise MalformedMessage(f"{len(view) - position} bytes after the last tensor")
    return tensors, meta


def _text(view: memoryview, start: int, length: int) -> str:
    if start + length > len(view):
        raise MalformedMessage("a name runs past the end of the message")
    return str(view[start:start + length], "utf-8")


def _product(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
