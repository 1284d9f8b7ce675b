"""The server half of op-level remoting: one handle table per client session, aten ops run on real tensors.

A session's storage ids 0 .. N-1 name the server model's own weights (the one upload every resident
mode shares); later ids are the tensors its ops produced. The wire format is in semgap.wire.op_protocol.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from semgap.wire import names
from semgap.wire import codec
from semgap.wire import op_protocol
from semgap.wire.op_protocol import ProtocolError
from semgap.model.runtime import synchronize
from semgap.server.opgraph import NO_GUARD, Request, Sequences

MAX_SESSIONS = 16  # sessions a client never closed are dropped oldest first beyond this


@dataclass
class OpSession:
    handles: dict[int, torch.Tensor] = field(default_factory=dict)  # storage id -> the tensor that owns it
    compute_ms: float = 0.0  # run since the session's last response (posted requests answer nobody)
    error: str = ""  # a failed request: the session's handles are no longer what the client believes
    sequences: Sequences = field(default_factory=Sequences)  # its captured step graphs (semgap.server.opgraph)
    read_only: dict[int, str] = field(default_factory=dict)  # the weights' storage addresses -> their names


class OpLevelServer:
    """Runs op-level requests against `model`'s device; `check_weights` refuses a stale weights handle."""

    def __init__(self, model: torch.nn.Module, check_weights: Callable[[dict[str, str]], None]):
        self.model = model
        self.device = next(model.parameters()).device
        self.check_weights = check_weights
        self.sessions: OrderedDict[str, OpSession] = OrderedDict()
        self.operations = {names.OP_BATCH: self.op_batch, names.OP_STATS: self.op_stats}

    def op_batch(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
        """Run a request's ops in order, then drop the storages it frees; answer the last op's reply.

        A `replay` runs a captured step's recorded requests with the request's tensors as its inputs; a
        replay refused (unknown graph, other inputs, stale position) runs nothing and leaves the session
        as it was.
        """
        document = _document(meta)
        session_id = document.get("session")
        if document.get("close"):
            self.sessions.pop(session_id, None)
            return codec.encode({})
        session = self._session(session_id, document.get("open"))
        if session.error:
            raise ProtocolError(f"op-level session {session_id} failed earlier ({session.error}); open a new one")
        capture, replay = document.get("capture"), document.get("replay")
        if replay is not None:
            requests = session.sequences.replay(replay, tensors)
        else:
            if capture is not None:
                session.sequences.begin(capture, tensors)
            requests = [Request(document.get("ops", []), document.get("free", []), tensors)]
        reply, returned = self._run_requests(session, requests)
        if capture is not None:
            session.sequences.record(capture, requests[0], reply)
        if replay is not None:
            session.sequences.replayed(replay["graph"], replay["position"])
        if document.get("post"):  # nobody reads this response: its time goes with the next one
            return codec.encode({})
        compute_ms, session.compute_ms = session.compute_ms, 0.0
        answer = {names.SERVER_COMPUTE_MS: codec.milliseconds_text(compute_ms)}
        if reply is not None:
            answer[op_protocol.REPLY_KEY] = op_protocol.dumps(reply)
        return codec.encode(returned, answer)

    def _run_requests(self, session: OpSession, requests: list[Request]):
        """Run each request's ops, then drop the storages it frees; return the last op's reply.

        A request with a guard (a replayed step's wait before its end) stops the run where its last op
        answers otherwise than at capture: the step would have gone another way.
        """
        reply, returned = None, {}
        reads = any(isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], dict)
                    for request in requests for entry in request.ops[-1:])
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                for ops, free, uploads, guard in requests:
                    for entry in ops:
                        reply, returned = self._run(session, entry, uploads)
                    if guard is not NO_GUARD and reply != guard:
                        raise ProtocolError(f"replay diverged: {ops[-1][0]} answered {reply!r}, {guard!r} at capture; "
                                            "the step would run other ops now")
                    for storage_id in free:
                        session.handles.pop(storage_id, None)
        except Exception as error:
            session.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            # Kernels run asynchronously, as on a CUDA stream: the device is waited for only when the
            # request reads, and kernels still running then count where they finish.
            if reads:
                synchronize(self.device)
            session.compute_ms += (time.perf_counter() - start) * 1e3
        return reply, returned

    def op_stats(self, tensors, meta) -> bytes:
        """How many sessions and storages the server holds (for tests and diagnostics)."""
        storages = sum(len(session.handles) for session in self.sessions.values())
        return codec.encode({}, {"sessions": str(len(self.sessions)), "storages": str(storages)})

    def _session(self, session_id, opening: dict | None) -> OpSession:
        if session_id in self.sessions:
            self.sessions.move_to_end(session_id)
            return self.sessions[session_id]
        if not isinstance(session_id, str) or opening is None:
            raise ProtocolError(f"unknown op-level session {session_id!r}: it was closed, evicted or the server restarted")
        self.check_weights({names.WEIGHTS_HANDLE: opening.get("weights", "")})
        entries = op_protocol.resident_tensors(self.model)
        if (opening.get("tensors"), opening.get("names_sha256")) != (len(entries), op_protocol.manifest_sha256(entries)):
            raise ProtocolError("the client's model names other weights than the server's: same model and seed needed")
        session = self.sessions[session_id] = OpSession(
            {index: tensor.detach() for index, (_, tensor) in enumerate(entries)},
            read_only={tensor.untyped_storage().data_ptr(): f"storage {index} ({name})"
                       for index, (name, tensor) in enumerate(entries) if tensor.untyped_storage().data_ptr()})
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def _run(self, session: OpSession, entry, uploads: dict[str, torch.Tensor]):
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[2], dict)):
            raise ProtocolError(f"malformed op entry {str(entry)[:200]}")
        name, args, kwargs, outs = entry
        func = op_protocol.resolve_op(name)

        def tensor_of(reference: dict) -> torch.Tensor:
            if "upload" in reference:
                if reference["upload"] not in uploads:
                    raise ProtocolError(f"{name}: no upload named {reference['upload']!r} in this request")
                return uploads[reference["upload"]]
            if reference["h"] not in session.handles:
                raise ProtocolError(f"{name}: unknown storage {reference['h']!r} (freed, or never made)")
            base = session.handles[reference["h"]]
            return base.as_strided(*reference["view"]) if "view" in reference else base

        decode = lambda value: op_protocol.decode_value(value, tensor_of, self.device)  # noqa: E731
        args, kwargs = decode(args), {key: decode(value) for key, value in kwargs.items()}
        _refuse_writes_into_weights(session, name, func, args, kwargs)
        result = op_protocol.ACCELERATOR_STAND_INS.get(name, func)(*args, **kwargs)
        if isinstance(outs, list):
            return self._keep(session, name, result, outs), {}
        if outs.get("read"):
            return _read_back(result)
        if isinstance(outs.get("first"), int):
            return self._keep_with_layouts(session, result, outs["first"]), {}
        raise ProtocolError(f"{name}: malformed outs {outs!r}")

    def _keep(self, session: OpSession, name: str, result, outs: list) -> None:
        leaves, _ = tree_flatten(result)
        if len(leaves) != len(outs):
            raise ProtocolError(f"{name} returned {len(leaves)} values, the client expected {len(outs)}")
        for leaf, spec in zip(leaves, outs):
            if spec is None:
                continue
            storage_id, stride, offset = (spec, None, 0) if isinstance(spec, int) else spec
            session.handles[storage_id] = _in_layout(leaf, stride, offset)

    def _keep_with_layouts(self, session: OpSession, result, first_id: int):
        next_id = first_id

        def keep(leaf):
            nonlocal next_id
            if not isinstance(leaf, torch.Tensor):
                return leaf
            session.handles[next_id] = leaf
            next_id += 1
            return {"h": next_id - 1, "size": list(leaf.shape), "stride": list(leaf.stride()),
                    "offset": leaf.storage_offset(), "dtype": str(leaf.dtype).removeprefix("torch.")}

        return tree_map(keep, result)


def _refuse_writes_into_weights(session: OpSession, name: str, func, args: list, kwargs: dict) -> None:
    """Refuse an op whose schema writes into (in place, `out=`, `copy_`'s destination) a weight's storage.

    The weights are every session's and every other mode's: a session that wrote into them would change
    the tokens of all of them. Views of a weight share its storage, so the check is by storage address.
    """
    for position, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = kwargs.get(argument.name) if argument.name in kwargs else (
            args[position] if position < len(args) and not argument.kwarg_only else None)
        for leaf in tree_flatten(value)[0]:
            weight = session.read_only.get(leaf.untyped_storage().data_ptr()) if isinstance(leaf, torch.Tensor) else None
            if weight is not None:
                raise ProtocolError(f"refused op {name!r}: it writes into {weight}, and the weights are read-only "
                                    "to op-level sessions")


def _document(meta: dict[str, str]) -> dict:
    try:
        document = op_protocol.loads(meta[op_protocol.REQUEST_KEY])
    except (KeyError, ValueError):
        raise ProtocolError(f"an op_batch request carries a JSON document under {op_protocol.REQUEST_KEY!r}") from None
    if not isinstance(document, dict):
        raise ProtocolError("an op_batch document is a JSON object")
    return document


def _read_back(result) -> tuple[object, dict[str, torch.Tensor]]:
    returned: dict[str, torch.Tensor] = {}

    def read(leaf):
        if not isinstance(leaf, torch.Tensor):
            return leaf
        name = f"r{len(returned)}"
        returned[name] = leaf
        return {"data": name}

    return tree_map(read, result), returned


def _in_layout(tensor: torch.Tensor, stride: list[int] | None, offset: int) -> torch.Tensor:
    """`tensor` with the layout the client's meta kernel predicted (None: contiguous), copied into it if needed.

    Later views of the storage are addressed in the client's layout, so the two must agree; strides
    of length-1 dimensions address nothing and may differ.
    """
    if stride is None:
        if tensor.is_contiguous() and tensor.storage_offset() == 0:
            return tensor
        return tensor.clone(memory_format=torch.contiguous_format)
    same = tensor.storage_offset() == offset and all(
        length == 1 or actual == expected for length, actual, expected in zip(tensor.shape, tensor.stride(), stride))
    if same:
        return tensor
    extent = op_protocol.storage_extent(tensor.shape, stride, offset)
    target = torch.empty(extent, dtype=tensor.dtype, device=tensor.device).as_strided(tensor.shape, stride, offset)
    return target.copy_(tensor)
