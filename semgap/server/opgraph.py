"""Captured steps of an op-level session: a step's requests recorded once on the server, replayed with new inputs.

A blind remoting layer that replays (CUDA graphs, command-buffer remoting) records what one step
launched and launches it again with new arguments, without the framework's Python. Here the requests
of one step, sent while the client's document says `capture`, are kept as a graph: their ops, the
frees of storages the step itself made, and their uploads, except the step's inputs (uploads named
`in.<name>`), whose shapes and dtypes are recorded instead. A `replay` request then carries only the
inputs, and the server runs the recorded requests with them; the answer is what the captured step's
one read answered.

A graph is valid only where the step's Python could not have gone another way. Its last wait is the
program's read, whose answer is the replay's; a wait before it (transformers asks whether a static
cache is empty before a prefill) becomes a guard: a replay checks that the op answers as it did at
capture, and stops with an error where it does not. A graph keeps no storage it made (the step's
state lives in storages made before it, updated in place: a static KV cache). Positions are the sequence's:
a step declares where it starts writing, a graph captured at 0 starts a sequence (and replays only
at 0), any other continues the session's sequence exactly where it stands.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from semgap.wire.op_protocol import INPUT_PREFIX, ProtocolError

MAX_GRAPHS = 64  # graphs one session may hold (one per prompt length, plus decode)
NO_GUARD = object()  # a request whose answer nothing checks


class Request(NamedTuple):
    """One request to run: its ops, the storages freed after them, its uploads, and the answer its last op must give."""

    ops: list
    free: list[int]
    uploads: dict[str, torch.Tensor]
    guard: object = NO_GUARD


@dataclass
class RecordedRequest:
    ops: list
    free: list[int]  # storages the step made and freed here
    constants: dict[str, torch.Tensor]  # the request's uploads other than inputs, as captured
    answer: object = NO_GUARD  # what its last op answered at capture, if it waited for one


@dataclass
class Graph:
    position: int  # where the captured step started writing: 0 starts a sequence
    tokens: int  # positions one run of it writes
    inputs: dict[str, tuple[list[int], str]] = field(default_factory=dict)  # name -> (shape, dtype) at capture
    requests: list[RecordedRequest] = field(default_factory=list)
    made: set[int] = field(default_factory=set)  # storages its ops made and have not freed yet


@dataclass
class Sequences:
    """One session's graphs and the position of its sequence."""

    graphs: dict[str, Graph] = field(default_factory=dict)
    capturing: tuple[str, Graph] | None = None
    position: int | None = None  # positions the session's sequence holds (None: none started)

    def begin(self, capture: dict, uploads: dict[str, torch.Tensor]) -> None:
        """Check a capture request before its ops run; its first request starts the graph."""
        name, position, tokens = _field(capture, "graph", str), _field(capture, "position", int), _field(capture, "tokens", int)
        if self.capturing is not None and self.capturing[0] == name:
            return
        if name not in self.graphs and len(self.graphs) >= MAX_GRAPHS:
            raise ProtocolError(f"cannot capture step graph {name!r}: this session holds {MAX_GRAPHS} already")
        self.check_position(name, position, starts=position == 0)
        self.capturing = (name, Graph(position, tokens))

    def record(self, capture: dict, request: Request, answer: object) -> None:
        """Keep a capture request that ran; its `end` closes the graph (ProtocolError if it cannot replay)."""
        name, graph = self.capturing
        ops, free, uploads, _ = request
        for entry in ops:
            graph.made.update(_made(entry))
        own_frees = [storage_id for storage_id in free if storage_id in graph.made]
        graph.made.difference_update(own_frees)
        constants = {}
        for upload, tensor in uploads.items():
            if upload.startswith(INPUT_PREFIX):
                graph.inputs[upload] = (list(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            else:
                constants[upload] = tensor.clone()
        graph.requests.append(RecordedRequest(ops, own_frees, constants, answer if ops and _answered(ops[-1]) else NO_GUARD))
        if capture.get("end"):
            self.capturing = None
            _check_replayable(name, graph)
            self.graphs[name] = graph
            self.position = graph.position + graph.tokens

    def replay(self, replay: dict, inputs: dict[str, torch.Tensor]) -> list[Request]:
        """The requests to run for a replay, after checking graph, inputs and position; nothing has run yet."""
        name, position = _field(replay, "graph", str), _field(replay, "position", int)
        if self.capturing is not None:
            raise ProtocolError(f"cannot replay {name!r} while step graph {self.capturing[0]!r} is being captured")
        graph = self.graphs.get(name)
        if graph is None:
            raise ProtocolError(f"unknown step graph {name!r}: capture it first (this session holds {sorted(self.graphs)})")
        if sorted(inputs) != sorted(graph.inputs):
            raise ProtocolError(f"replay of {name!r} takes inputs {sorted(graph.inputs)}, got {sorted(inputs)}")
        for input_name, tensor in inputs.items():
            got = (list(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            if got != graph.inputs[input_name]:
                raise ProtocolError(f"replay of {name!r}: input {input_name} is {got[0]} {got[1]}, the graph was "
                                    f"captured with {graph.inputs[input_name][0]} {graph.inputs[input_name][1]}")
        self.check_position(name, position, starts=graph.position == 0)
        last = _last_with_ops(graph)
        return [Request(request.ops, request.free, {**request.constants, **inputs},
                        NO_GUARD if index == last else request.answer) for index, request in enumerate(graph.requests)]

    def replayed(self, name: str, position: int) -> None:
        self.position = position + self.graphs[name].tokens

    def check_position(self, name: str, position: int, starts: bool) -> None:
        if starts:
            if position != 0:
                raise ProtocolError(f"step graph {name!r} starts a sequence: it runs at position 0, not {position}")
            return
        if self.position is None:
            raise ProtocolError(f"step graph {name!r} continues a sequence, and this session has none: start one at position 0")
        if position != self.position:
            raise ProtocolError(f"stale position {position} for step graph {name!r}: the sequence holds {self.position} "
                                f"positions, so its next step writes position {self.position}")


def _holds_tensors(answer) -> bool:
    if isinstance(answer, dict):
        return True
    return isinstance(answer, list) and any(_holds_tensors(item) for item in answer)


def _field(document: dict, name: str, kind: type):
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise ProtocolError(f"a capture or replay names its {name} ({kind.__name__}), got {value!r}")
    return value


def _made(entry) -> list[int]:
    """The storages an op entry makes: its outs' ids."""
    if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], list)):
        return []
    return [spec if isinstance(spec, int) else spec[0] for spec in entry[3] if spec is not None]


def _answered(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], dict)


def _last_with_ops(graph: Graph) -> int:
    return max((index for index, request in enumerate(graph.requests) if request.ops), default=-1)


def _check_replayable(name: str, graph: Graph) -> None:
    last = _last_with_ops(graph)
    if last < 0 or not _answered(graph.requests[last].ops[-1]):
        raise ProtocolError(f"cannot keep step graph {name!r}: a replayable step ends with the program's read")
    for request in graph.requests[:last]:
        if request.answer is not NO_GUARD and (not isinstance(request.ops[-1][3].get("first"), int)
                                               or _holds_tensors(request.answer)):
            raise ProtocolError(f"cannot keep step graph {name!r}: it read {request.ops[-1][0]} before its end; "
                                "only values (not tensors) can guard a replay")
    if graph.made:
        raise ProtocolError(f"cannot keep step graph {name!r}: the step left storages {sorted(graph.made)[:8]} alive, "
                            "and a replay would not know who holds them")
