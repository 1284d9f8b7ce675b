"""The client's view of the server's device: tensors that are handles, with shapes known and no data.

The device is PyTorch's PrivateUse1 backend renamed `remote`. It has no kernels: every op on it is
caught by a `__torch_dispatch__` (on `RemoteTensor`, or the session's dispatch mode for factory calls
such as `torch.arange(..., device="remote")`) and handed to the session that owns the tensor.
"""
from __future__ import annotations

from typing import Protocol

import torch

from semgap.wire.op_protocol import REMOTE, storage_extent


class Dispatcher(Protocol):
    """What a remote tensor needs of its session (semgap.client.oplevel.session.RemoteSession)."""

    device: torch.device

    def dispatch(self, func, args: tuple, kwargs: dict): ...


def remote_device() -> torch.device:
    """The `remote` device: PrivateUse1 set up as a Python backend, once per process.

    torch's own helper registers what a device needs besides kernels: the name, a runtime module
    (`.to("remote")` initialises the device through it) and a device guard that does nothing (Tensor
    methods such as `.contiguous()` set one first).
    """
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    name = torch._C._get_privateuse1_backend_name()
    if name == "privateuseone":
        _setup_privateuseone_for_python_backend(rename=REMOTE)
    elif name != REMOTE:
        raise RuntimeError(f"PrivateUse1 is already the {name!r} backend in this process; op-level remoting needs it")
    return torch.device(REMOTE, 0)


Layout = tuple[tuple[int, ...], tuple[int, ...], int]  # size, stride, storage offset (in elements)


def layout_of(tensor: torch.Tensor) -> Layout:
    return tuple(tensor.size()), tuple(tensor.stride()), tensor.storage_offset()


class RemoteStorage:
    """One allocation on the server, named by `id`; its id goes into `freed` once no client tensor views it."""

    __slots__ = ("id", "layout", "dtype", "freed", "_meta")

    def __init__(self, storage_id: int, layout: Layout, dtype: torch.dtype, freed: list[int] | None):
        self.id = storage_id
        self.layout = layout  # of the tensor that created it: an argument with this layout travels as the bare id
        self.dtype = dtype
        self.freed = freed  # None: never freed (the model's weights belong to the server's model)
        self._meta = None

    def meta(self) -> torch.Tensor:
        """A 1-D meta tensor as long as the storage: views of it share one meta storage, as on the server."""
        if self._meta is None:
            self._meta = torch.empty(storage_extent(*self.layout), dtype=self.dtype, device="meta")
        return self._meta

    def __del__(self):
        if self.freed is not None:
            self.freed.append(self.id)  # sent with the session's next request


class RemoteTensor(torch.Tensor):
    """A tensor on the `remote` device: a storage handle plus size, stride and offset.

    `meta` is a meta-device twin of the same layout, made when first needed, so shapes, dtypes and
    views are computed on the client without data, as a driver knows its buffers' sizes.
    """

    storage: RemoteStorage
    session: "Dispatcher"

    @staticmethod
    def __new__(cls, layout: Layout, dtype: torch.dtype, storage: RemoteStorage, session: "Dispatcher"):
        size, stride, offset = layout
        # Created outside inference mode whatever the caller's mode: a view of a normal tensor returned as
        # an inference tensor fails with "Cannot set version_counter for inference tensor".
        with torch._C._InferenceMode(False):
            tensor = torch.Tensor._make_wrapper_subclass(
                cls, size, strides=stride, storage_offset=offset, dtype=dtype, device=session.device,
                requires_grad=False,
            )
        tensor.layout_tuple, tensor.storage, tensor.session, tensor._meta = layout, storage, session, None
        return tensor

    @property
    def meta(self) -> torch.Tensor:
        if self._meta is None:
            if self.dtype == self.storage.dtype:
                self._meta = self.storage.meta().as_strided(*self.layout_tuple)
            else:  # a view as another dtype: its own meta storage (an op on it is then never taken for a view)
                self._meta = torch.empty(storage_extent(*self.layout_tuple), dtype=self.dtype,
                                         device="meta").as_strided(*self.layout_tuple)
        return self._meta

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        session = next(leaf.session for leaf in torch.utils._pytree.tree_leaves((args, kwargs))
                       if isinstance(leaf, RemoteTensor))
        return session.dispatch(func, args, kwargs or {})

    def __repr__(self) -> str:  # the default would read the data back
        size, stride, offset = self.layout_tuple
        return (f"RemoteTensor(storage={self.storage.id}, size={list(size)}, stride={list(stride)}, "
                f"offset={offset}, dtype={self.dtype})")

    @property
    def is_storage_layout(self) -> bool:
        """Whether this tensor has the layout its storage was created with (then it travels as the bare id)."""
        return self.layout_tuple == self.storage.layout
