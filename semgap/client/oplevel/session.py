"""The client half of op-level remoting: an unmodified model runs on the `remote` device, and what a driver
would see (ops that launch work or move data) is forwarded to the server, synchronously or pipelined.

Each aten call that involves the remote device is resolved in this order:

1. composite ops (CompositeImplicitAutograd: `linear`, `layer_norm`, `reshape`, `dropout`, ...) are
   expanded on the client into the ops they are made of, as the framework would before any kernel
   launch; `scaled_dot_product_attention` travels whole, because which fused kernel runs it is the
   server device's choice;
2. a copy to the host (`.cpu()`, `.tolist()`) is a read: the queue is flushed and the data comes back;
3. the op's plan (semgap.client.oplevel.plan: its meta kernel's answer, once per signature of arguments)
   gives shapes, dtypes and strides without data. An op whose outputs only alias its inputs (a
   view, a transpose, a reshape of contiguous data) is resolved here and never sent. An op a meta
   kernel cannot run (`.item()`, a Python branch on a value, data-dependent shapes such as
   `nonzero`) waits for the server, which sends back values or shapes;
4. anything else is forwarded: `op_sync` waits for each one, `op_pipelined` queues it and posts the
   queue every `batch_ops` ops without waiting, so only reads wait.
"""
from __future__ import annotations

import heapq
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map, tree_unflatten

from semgap.wire import names
from semgap.client.oplevel import plan
from semgap.wire import op_protocol
from semgap.client.oplevel.tensor import Layout, RemoteStorage, RemoteTensor, layout_of, remote_device

aten = torch.ops.aten
PIPELINE_BATCH_OPS = 64  # op_pipelined posts its queue at this length (a read flushes it earlier)
MAX_PLANS = 50_000  # decode steps grow the KV cache, so signatures keep coming: start over past this many

Call = Callable[[str, dict[str, torch.Tensor], dict[str, str]], tuple[dict[str, torch.Tensor], dict[str, str]]]
Post = Callable[[str, dict[str, torch.Tensor], dict[str, str]], None]


@dataclass
class OpCounters:
    """What the session did, cumulative; a mode reports the per-round deltas (Mode.counters)."""

    ops_forwarded: int = 0  # aten ops sent to the server (work, copies, reads)
    ops_on_client: int = 0  # aten ops resolved on the client: views and other metadata-only ops
    ops_decomposed: int = 0  # composite ops expanded on the client into the ops counted above
    flushes: int = 0  # requests the client waited for (round trips)
    posts: int = 0  # requests sent without waiting
    client_tracing_ms: float = 0.0  # time spent intercepting and resolving ops, without sending and waiting

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class RemoteSession:
    """One client's handle table on the server, and the queue of ops on its way there.

    `call` and `post` send one request (semgap.wire.codec tensors and metadata) to the server's `op_batch`
    operation, waiting for the response or not.
    """

    def __init__(self, call: Call, post: Post, weights_handle: str, pipelined: bool,
                 batch_ops: int = PIPELINE_BATCH_OPS):
        if batch_ops < 1:
            raise ValueError(f"batch_ops must be at least 1, got {batch_ops}")
        self.call, self.post = call, post
        self.weights_handle = weights_handle
        self.pipelined, self.batch_ops = pipelined, batch_ops
        self.device = remote_device()
        self.id = uuid.uuid4().hex
        self.counters = OpCounters()
        self.mode = _RemoteDeviceMode(self)
        self.queue: list[list] = []  # ops not sent yet
        self.uploads: dict[str, torch.Tensor] = {}  # host data the queued ops read
        self.freed: list[int] = []  # storage ids no client tensor views any more
        # Ids whose free the server has been sent, smallest first: reused as an allocator reuses
        # addresses, so ids (and the messages naming them) stay the same size from round to round.
        self.reusable: list[int] = []
        self.next_id = 0  # the first id never used
        self.first_id = 0  # the first id after the weights'
        self.live = 0  # storages made by ops whose free the server has not been sent
        self.plans: dict[tuple, plan.Plan | object] = {}  # (op, signature) -> what its meta kernel said
        self.opened = self.closed = False
        self.open_request: dict = {}
        self.capture: dict | None = None  # while a step is captured: its graph, sent with each request (semgap.server.opgraph)
        self.input_names: dict[int, str] = {}  # host tensors uploaded under a name of their own: a captured step's inputs
        self._depth = 0
        self._sending_ms = 0.0

    def remote_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model`'s module tree on the meta device whose weights are the server's resident ones.

        The server holds the weights the session uploaded once; storage ids 0 .. N-1 name them
        (op_protocol.resident_tensors), so no weight byte travels again.
        """
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            shadow = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
        shadow.eval()
        entries = op_protocol.resident_tensors(model)
        remote = {}
        for (name, tensor), (shadow_name, shadow_tensor) in zip(entries, op_protocol.resident_tensors(shadow), strict=True):
            if name != shadow_name:
                raise ValueError(f"cannot mirror {type(model).__name__}: {name} against {shadow_name}")
            storage = RemoteStorage(self._new_id(), layout_of(tensor), tensor.dtype, freed=None)
            remote[id(shadow_tensor)] = RemoteTensor(storage.layout, tensor.dtype, storage, self)
        for module in shadow.modules():  # tied weights are one tensor under several names
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is not None:
                        table[name] = remote[id(tensor)]
        self.open_request = {"weights": self.weights_handle, "tensors": len(entries),
                             "names_sha256": op_protocol.manifest_sha256(entries)}
        self.first_id = self.next_id
        return shadow

    @contextmanager
    def active(self):
        """Route factory calls naming the remote device (`torch.arange(..., device=x.device)`) here too.

        `torch.tensor(data, device=...)` copies its data to the device with dispatch modes switched off,
        unless torch is told to build it on the host first (as FakeTensorMode does): then the copy is
        an op like any other, an upload.
        """
        lift_on_host = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        try:
            with self.mode:
                yield
        finally:
            torch._C._set_only_lift_cpu_tensors(lift_on_host)

    # -- dispatch -------------------------------------------------------------------------------------

    def dispatch(self, func, args: tuple, kwargs: dict):
        outermost = self._depth == 0
        start, sending_before = time.perf_counter(), self._sending_ms
        self._depth += 1
        try:
            return self._resolve(func, args, kwargs)
        finally:
            self._depth -= 1
            if outermost:
                elapsed_ms = (time.perf_counter() - start) * 1e3
                self.counters.client_tracing_ms += elapsed_ms - (self._sending_ms - sending_before)

    def _resolve(self, func, args: tuple, kwargs: dict):
        inputs: list[RemoteTensor] = []
        signature = plan.signature((args, kwargs), inputs, {})
        if not inputs and not _is_remote(kwargs.get("device")):  # factories name their device as a keyword
            return func(*args, **kwargs)  # host work: not the remote device's business
        if plan.decomposes(func):
            with self.active():
                self.counters.ops_decomposed += 1
                return func.decompose(*args, **kwargs)
        if func is aten._to_copy.default and _is_host(kwargs.get("device")):
            return self._read(func, args, kwargs)
        if func is aten.copy_.default and not isinstance(args[0], RemoteTensor):  # into a host tensor
            return args[0].copy_(self._read(aten._to_copy.default, (args[1],), {"device": torch.device("cpu")}))
        key = (func, signature)
        op_plan = self.plans.get(key)
        if op_plan is None:
            op_plan = plan.make_plan(func, args, kwargs, inputs)
            if len(self.plans) >= MAX_PLANS:
                self.plans.clear()
            self.plans[key] = op_plan
        if op_plan is plan.DATA_DEPENDENT:
            return self._run_waiting_for_shapes(func, args, kwargs)
        result, outs = self._apply(op_plan, inputs)
        if not op_plan.forwarded:
            self.counters.ops_on_client += 1  # metadata only: a driver never sees it
            return result
        self._submit([op_protocol.op_name(func), *self._encode(args, kwargs), outs])
        return result

    def _apply(self, op_plan: plan.Plan, inputs: list[RemoteTensor]) -> tuple[object, list]:
        """The op's outputs as the plan says, fresh storages numbered now; and the `outs` that tell the server."""
        leaves, outs = [], []
        for kind, *detail in op_plan.outputs:
            if kind == plan.VALUE:
                leaves.append(detail[0])
                outs.append(None)
            elif kind == plan.SAME:  # an in-place op returns its argument
                leaves.append(inputs[detail[0]])
                outs.append(None)
            elif kind == plan.ALIAS:  # a view of an argument
                index, layout, dtype = detail
                leaves.append(RemoteTensor(layout, dtype, inputs[index].storage, self))
                outs.append(None)
            else:
                layout, dtype, out_spec = detail
                storage = self._new_storage(layout, dtype)
                leaves.append(RemoteTensor(layout, dtype, storage, self))
                outs.append(storage.id if out_spec is None else [storage.id, *out_spec])
        structure = op_plan.structure
        return (leaves[0] if structure.is_leaf() else tree_unflatten(leaves, structure)), outs

    def _read(self, func, args: tuple, kwargs: dict):
        """A device-to-host copy: everything queued goes with it, and the data comes back."""
        reply, tensors = self._submit([op_protocol.op_name(func), *self._encode(args, kwargs), {"read": True}])
        return tree_map(lambda leaf: tensors[leaf["data"]] if isinstance(leaf, dict) else leaf, reply,
                        is_leaf=lambda node: isinstance(node, dict))

    def _run_waiting_for_shapes(self, func, args: tuple, kwargs: dict):
        """An op whose outputs' shapes or values depend on data: the server runs it and says what came out."""
        entry = [op_protocol.op_name(func), *self._encode(args, kwargs), {"first": self.next_id}]
        reply, _ = self._submit(entry)

        def rebuild(leaf):
            if not isinstance(leaf, dict):
                return leaf
            layout: Layout = (tuple(leaf["size"]), tuple(leaf["stride"]), leaf["offset"])
            dtype = getattr(torch, leaf["dtype"])
            self.next_id = max(self.next_id, leaf["h"] + 1)
            self.live += 1
            return RemoteTensor(layout, dtype, RemoteStorage(leaf["h"], layout, dtype, self.freed), self)

        result = tree_map(rebuild, reply, is_leaf=lambda node: isinstance(node, dict))
        return tuple(result) if len(func._schema.returns) > 1 else result

    # -- requests -------------------------------------------------------------------------------------

    def _encode(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        encode = lambda value: op_protocol.encode_value(value, self._tensor_ref)  # noqa: E731
        return encode(args), {name: encode(value) for name, value in kwargs.items()}

    def _tensor_ref(self, tensor: torch.Tensor) -> dict:
        if isinstance(tensor, RemoteTensor):
            if tensor.is_storage_layout:
                return {"h": tensor.storage.id}
            size, stride, offset = tensor.layout_tuple
            return {"h": tensor.storage.id, "view": [list(size), list(stride), offset]}
        name = self.input_names.get(id(tensor)) or f"u{len(self.uploads)}"
        self.uploads[name] = tensor.detach().clone()  # a host-to-device copy takes the data as it is now
        return {"upload": name}

    def _submit(self, entry: list):
        """Queue one op; send the queue when the op needs an answer, when not pipelined, or when it is full."""
        self.queue.append(entry)
        self.counters.ops_forwarded += 1
        if isinstance(entry[3], dict) or not self.pipelined:
            return self.send(wait=True)
        if len(self.queue) >= self.batch_ops:
            self.send(wait=False)
        return None

    def send(self, wait: bool):
        """Send the queued ops and the freed storage ids; with `wait`, return the reply and its tensors."""
        document: dict = {"session": self.id, "free": self.freed[:], "ops": self.queue}
        del self.freed[: len(document["free"])]  # frees that arrive while sending go with the next request
        for storage_id in document["free"]:  # the server drops them after this request's ops
            heapq.heappush(self.reusable, storage_id)
        self.live -= len(document["free"])
        if not self.opened:
            document["open"] = self.open_request
            self.opened = True
        if self.capture is not None:
            document["capture"] = self.capture
        if not wait:
            document["post"] = True  # the server's time for it goes with the next response
        request = (self.uploads, {op_protocol.REQUEST_KEY: op_protocol.dumps(document)})
        self.queue, self.uploads = [], {}
        start = time.perf_counter()
        try:
            if not wait:
                self.counters.posts += 1
                self.post(names.OP_BATCH, *request)
                return None
            self.counters.flushes += 1
            tensors, meta = self.call(names.OP_BATCH, *request)
            return op_protocol.loads(meta.get(op_protocol.REPLY_KEY, "null")), tensors
        finally:
            self._sending_ms += (time.perf_counter() - start) * 1e3

    def flush(self) -> None:
        """Send the queued ops and freed storage ids now, without waiting (nothing if there are none)."""
        if self.queue or self.freed:
            self.send(wait=False)

    def release_freed(self) -> None:
        """Tell the server about storages freed since the last request (a post), so its memory stays bounded.

        When no storage an op made is left, numbering starts again after the weights, so every round
        that runs the same program names the same ids and sends the same bytes.
        """
        if (self.freed or self.queue) and self.opened:
            self.send(wait=False)
        if self.live == 0:
            self.next_id, self.reusable = self.first_id, []

    def close(self) -> None:
        """Drop this session's handle table on the server (a post: nothing to wait for)."""
        if self.opened and not self.closed:
            self.closed = True
            self.post(names.OP_BATCH, {}, {op_protocol.REQUEST_KEY: op_protocol.dumps({"session": self.id, "close": True})})

    def _new_storage(self, layout, dtype: torch.dtype) -> RemoteStorage:
        self.live += 1
        storage_id = heapq.heappop(self.reusable) if self.reusable else self._new_id()
        return RemoteStorage(storage_id, layout, dtype, self.freed)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class _RemoteDeviceMode(TorchDispatchMode):
    """Catches calls without a remote tensor argument that name the remote device (factories)."""

    def __init__(self, session: RemoteSession):
        super().__init__()
        self.session = session

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.session.dispatch(func, args, kwargs or {})


def _is_remote(device) -> bool:
    return isinstance(device, torch.device) and device.type == op_protocol.REMOTE


def _is_host(device) -> bool:
    return device is not None and torch.device(device).type == op_protocol.HOST
