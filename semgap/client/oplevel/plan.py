"""What an op does to its outputs, from its meta kernel: worked out once per signature of arguments.

A decode step repeats the same ops on the same shapes, so the client asks the meta kernels (many of
them Python reference implementations, tens of microseconds each) once per signature and reuses the
answer, as a driver's launch path does not re-derive a kernel's configuration on every launch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_map

from semgap.wire import op_protocol
from semgap.client.oplevel.tensor import RemoteTensor, layout_of

# Composite ops forwarded whole: their decomposition asks the device which kernel to run.
FORWARDED_WHOLE = frozenset({torch.ops.aten.scaled_dot_product_attention.default})

# What an op's output leaf is, in a Plan: a plain value, an argument itself, a view of an argument's
# storage, or a fresh storage.
VALUE, SAME, ALIAS, FRESH = "value", "same", "alias", "fresh"
DATA_DEPENDENT = object()  # the plan of an op no meta kernel can run without data


@dataclass(frozen=True)
class Plan:
    """How an op's outputs relate to its arguments, as its meta kernel said, for one signature of arguments."""

    structure: TreeSpec
    outputs: tuple[tuple, ...]  # per output leaf: (VALUE, v), (SAME, i), (ALIAS, i, layout, dtype) or (FRESH, layout, dtype, out_spec)
    forwarded: bool  # False: the op only changes metadata and is resolved on the client


def make_plan(func, args: tuple, kwargs: dict, inputs: list[RemoteTensor]):
    """Run `func` on the arguments' meta twins and record what came out (DATA_DEPENDENT if it cannot)."""
    try:
        meta_result = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
    except (RuntimeError, NotImplementedError):  # data-dependent: .item(), nonzero, no meta kernel
        return DATA_DEPENDENT
    for tensor in inputs:
        if layout_of(tensor.meta) != tensor.layout_tuple:
            raise NotImplementedError(f"{op_protocol.op_name(func)} changes a remote tensor's layout in place")
    same_object = {id(tensor.meta): index for index, tensor in enumerate(inputs)}
    storage_of = {tensor.meta.untyped_storage()._cdata: index for index, tensor in enumerate(inputs)}
    leaves, structure = tree_flatten(meta_result)
    outputs = []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            outputs.append((VALUE, leaf))
        elif id(leaf) in same_object:
            outputs.append((SAME, same_object[id(leaf)]))
        elif leaf.untyped_storage()._cdata in storage_of:
            outputs.append((ALIAS, storage_of[leaf.untyped_storage()._cdata], layout_of(leaf), leaf.dtype))
        else:
            outputs.append((FRESH, layout_of(leaf), leaf.dtype, _out_spec(leaf)))
    forwarded = func._schema.is_mutable or any(output[0] == FRESH for output in outputs)
    return Plan(structure, tuple(outputs), forwarded)


def signature(value, inputs: list[RemoteTensor], storage_index: dict[int, int]):
    """A hashable description of everything a meta kernel's answer depends on; remote tensors are
    appended to `inputs`, and which of them share a storage is part of the description."""
    if isinstance(value, RemoteTensor):
        inputs.append(value)
        shared = storage_index.setdefault(id(value.storage), len(inputs) - 1)
        return ("remote", value.dtype, value.layout_tuple, shared)
    if isinstance(value, torch.Tensor):
        return ("host", value.dtype, layout_of(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(signature(item, inputs, storage_index) for item in value))
    if isinstance(value, dict):
        return tuple((name, signature(item, inputs, storage_index)) for name, item in value.items())
    return (type(value).__name__, value)  # 1, 1.0 and True differ in type promotion


@functools.cache
def decomposes(func) -> bool:
    """Composite ops (CompositeImplicitAutograd) are expanded on the client, except those forwarded whole."""
    if func in FORWARDED_WHOLE:
        return False
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    return key in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key)


def _to_meta(value):
    if isinstance(value, RemoteTensor):
        return value.meta
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, torch.device) and value.type == op_protocol.REMOTE:
        return torch.device("meta")
    return value


def _out_spec(tensor: torch.Tensor):
    """None for a contiguous tensor at offset 0, else [stride, offset]: the layout the server must keep."""
    if tensor.is_contiguous() and tensor.storage_offset() == 0:
        return None
    return [list(tensor.stride()), tensor.storage_offset()]
