"""The op-level wire format both ends share: how an aten call and its arguments travel, and which ops a server runs.

Nothing is pickled. A request is one semgap.wire.codec message: its tensors are host data the client
ships with the request (uploads), and its string metadata holds one JSON document under
`REQUEST_KEY`:

    {"session": "<hex>",            the client's handle table on the server
     "open": {"weights": "<weights handle>", "tensors": N, "names_sha256": "<hex>"},   first request only
     "free": [id, ...],             storages the client no longer holds
     "ops": [[op, args, kwargs, outs], ...],
     "post": true,                  the client does not wait for this request's response
     "capture": {"graph": "<name>", "position": p, "tokens": n, "end": true}
                                    the request belongs to a step being captured (semgap.server.opgraph);
                                    "end" on the step's last request closes the graph
     "replay": {"graph": "<name>", "position": p}}
                                    run a captured step again: the request's tensors are its inputs
                                    (named "in.<name>", as the capture uploaded them), and nothing else

`{"session": "<hex>", "close": true}` drops the session's table. The server runs a request's ops
in order, then drops the storages it frees.

`op` is an aten overload name, e.g. "aten::addmm.default". `args` and `kwargs` hold values encoded by
`encode_value`:

    None, bool, int, float, str    as JSON (floats round-trip exactly; inf and nan as JSON's extensions)
    list or tuple                  a JSON list
    remote tensor                  {"h": id} for its storage's whole layout, else
                                   {"h": id, "view": [size, stride, storage_offset]}
    host tensor in this request    {"upload": "<codec tensor name>"}
    torch.dtype                    {"dtype": "bfloat16"}
    torch.device                   {"device": "remote"} (the server's device) or {"device": "cpu"}
    torch.layout                   {"layout": "strided"}
    torch.memory_format            {"memory_format": "contiguous_format"}

`outs` says what happens to the op's outputs, the pytree leaves of what it returns, in order:

    [entry, ...]       one per leaf: an int id keeps a fresh tensor as storage `id`, contiguous at
                       offset 0; [id, stride, storage_offset] keeps it with that layout (the server
                       copies it into that layout if its kernel chose another); null drops the leaf
                       (it aliases an argument, or is not a tensor)
    {"read": true}     the leaves come back: tensors as data, other values as JSON
    {"first": id}      data-dependent shapes: tensor leaves are kept as storages id, id + 1, ... and
                       their layouts come back, other values come back as JSON

An op with a reply ({"read"} or {"first"}) is the last of its request. The response is a codec
message: returned tensors are named "r0", "r1", ..., and its metadata holds `server_compute_ms` (the
time run since the session's last answered request, posted requests included) and, under
`REPLY_KEY`, the JSON of the op's return value, nested as returned (tuples as lists): a tensor read
back as {"data": "r0"}, a kept tensor's layout as {"h": id, "size", "stride", "offset", "dtype"},
any other value as itself. A reply of None (an op that only ran) is left out of the metadata.
"""
from __future__ import annotations

import hashlib
import json
import re

import torch

REQUEST_KEY = "oplevel"
REPLY_KEY = "r"  # one letter: a greedy step's whole answer (its id) fits in 64 B
INPUT_PREFIX = "in."  # uploads a captured step takes anew at each replay
REMOTE = "remote"  # the client's name for the server's device
HOST = "cpu"

# Only aten ops travel, named like "aten::addmm.default", and of those only the ones this suite's
# programs need (op_sync, op_pipelined and op_replay, prefill and decode, greedy and sampled), plus the
# few its tests of reads, branches and data-dependent shapes use. Anything else is refused by name: an
# op-level session runs the model's arithmetic, nothing that reaches beyond tensors (aten::from_file).
OP_NAME = re.compile(r"aten::([a-z0-9_]+)\.([A-Za-z0-9_]+)")
ALLOWED_OPS = frozenset(f"aten::{op}" for op in (
    # the model's forward: GPT-2-style blocks, embeddings, attention, the KV cache's updates
    "_safe_softmax.default", "_to_copy.default", "add.Tensor", "add_.Tensor", "addmm.default", "arange.default",
    "bmm.default", "cat.default", "clone.default", "detach_.default", "embedding.default", "index_copy_.default",
    "le.Tensor", "mm.default", "mul.Scalar", "mul.Tensor", "native_layer_norm.default", "ones.default",
    "pow.Tensor_Scalar", "scalar_tensor.default", "scaled_dot_product_attention.default", "tanh.default",
    "tril.default", "where.self", "zero_.default", "zeros.default",
    # Llama-shaped blocks: RoPE, RMSNorm, SwiGLU
    "cos.default", "sin.default", "rsqrt.default", "mean.dim", "silu.default",
    # Mixtral-shaped experts: softmax routing, top-k, the tokens sorted by expert, grouped expert matmuls
    "_softmax.default", "topk.default", "sort.default", "histc.default", "cumsum.default", "floor_divide.default",
    "div_.Tensor", "sum.dim_IntList", "index_put_.default", "empty_like.default", "split.Tensor", "_grouped_mm.default",
    # the sampler and the reads the client waits for
    "_local_scalar_dense.default", "argmax.default", "eq.Scalar",
    # tests/test_oplevel.py's reads, branches and data-dependent shapes
    "gt.Scalar", "index.Tensor", "max.default", "mul_.Tensor", "neg.default", "remainder.Scalar", "sum.default",
))


def _histc_of_any_dtype(values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """histc as an accelerator runs it: a CPU has no integer kernel (transformers' MoE routing counts tokens
    per expert on integer ids wherever the device is not a CPU, and to the model the remote device is not)."""
    exact = values if values.is_floating_point() else values.float()
    return torch.ops.aten.histc.default(exact, *args, **kwargs).to(values.dtype)


#: Ops a CPU server runs otherwise than its own kernel would, to behave as the accelerator it stands for.
ACCELERATOR_STAND_INS = {"aten::histc.default": _histc_of_any_dtype}


class ProtocolError(ValueError):
    """A request the server cannot run: an unknown or refused op, a malformed value, an unknown handle."""


def op_name(func: torch._ops.OpOverload) -> str:
    return f"{func._schema.name}.{func._overloadname}"


def resolve_op(name: str) -> torch._ops.OpOverload:
    """The aten overload called `name`, if ALLOWED_OPS has it; anything else is refused, naming it."""
    match = OP_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ProtocolError(f"refused op {name!r}: only aten ops named like 'aten::mm.default' run remotely")
    base_name, overload = match.groups()
    if name not in ALLOWED_OPS:
        raise ProtocolError(f"refused op {name!r}: not in the op-level allowlist (semgap.wire.op_protocol.ALLOWED_OPS)")
    try:
        return getattr(getattr(torch.ops.aten, base_name), overload)
    except AttributeError:
        raise ProtocolError(f"unknown op {name!r}") from None


def encode_value(value, tensor_ref) -> object:
    """`value` as JSON-ready data; `tensor_ref(tensor)` encodes a tensor (a handle or an upload)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [encode_value(item, tensor_ref) for item in value]
    if isinstance(value, torch.Tensor):
        return tensor_ref(value)
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": HOST if value.type == HOST else REMOTE}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise TypeError(f"an op-level argument of type {type(value).__name__} has no wire encoding")


def decode_value(value, tensor_of, device: torch.device) -> object:
    """Inverse of `encode_value` on the server: `tensor_of(dict)` resolves handles and uploads."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_value(item, tensor_of, device) for item in value]
    if not isinstance(value, dict) or len(value) == 0:
        raise ProtocolError(f"malformed op-level value {value!r}")
    if "h" in value or "upload" in value:
        return tensor_of(value)
    (kind, name), = value.items() if len(value) == 1 else ((None, None),)
    if kind == "device":
        if name not in (REMOTE, HOST):
            raise ProtocolError(f"unknown device {name!r}; choose from {REMOTE}, {HOST}")
        return device if name == REMOTE else torch.device(HOST)
    if kind in ("dtype", "layout", "memory_format"):
        member = getattr(torch, name, None) if isinstance(name, str) else None
        expected = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}[kind]
        if not isinstance(member, expected):
            raise ProtocolError(f"unknown {kind} {name!r}")
        return member
    raise ProtocolError(f"malformed op-level value {value!r}")


def resident_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters, then its buffers, each once: storage ids 0 .. N-1 name them, in this order.

    They are the weights the session uploaded once, so a session names them instead of shipping them.
    """
    return [*model.named_parameters(), *model.named_buffers()]


def manifest_sha256(entries: list[tuple[str, torch.Tensor]]) -> str:
    """A digest of names, shapes and dtypes, so both ends check that the ids name the same tensors."""
    text = ";".join(f"{name}:{list(tensor.shape)}:{tensor.dtype}" for name, tensor in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def storage_extent(size, stride, offset: int) -> int:
    """Elements a storage needs so that a tensor of this layout fits in it."""
    if 0 in size:
        return offset
    return offset + sum((length - 1) * step for length, step in zip(size, stride)) + 1


def dumps(document: object) -> str:
    return json.dumps(document, separators=(",", ":"))


def loads(text: str) -> object:
    return json.loads(text)
