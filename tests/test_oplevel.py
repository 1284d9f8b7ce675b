"""Op-level blind remoting against a real server: local's tokens, only what a driver sees, only what is read comes back."""
import dataclasses
import uuid
from contextlib import contextmanager

import pytest
import torch

from semgap.wire import codec, transport

from semgap.client import generate

from semgap.model import presets
from semgap.client.modes import ModeContext, make_mode
from semgap.wire import op_protocol
from semgap.model.sampling import Sampler

STEPS = 5
OP_MODES = ("op_sync", "op_pipelined")
# Ops that only change metadata: a remoting layer below the framework never sees them.
METADATA_OPS = {"view", "_unsafe_view", "_reshape_alias", "transpose", "t", "permute", "expand", "select", "slice",
                "unsqueeze", "squeeze", "split", "split_with_sizes", "unbind", "alias", "detach", "as_strided"}


class RecordingTransport:
    """Passes requests on and keeps the op names of every op_batch request it carried."""

    def __init__(self, inner):
        self.inner, self.ops = inner, []

    def _record(self, op, request):
        if op == "op_batch":
            document = op_protocol.loads(codec.decode(request)[1][op_protocol.REQUEST_KEY])
            self.ops.extend(entry[0] for entry in document.get("ops", []))

    def call(self, op, request, timeout_s=None):
        self._record(op, request)
        return self.inner.call(op, request, timeout_s)

    def post(self, op, request):
        self._record(op, request)
        self.inner.post(op, request)


@pytest.fixture(scope="module")
def context(preset_model, client):
    context = ModeContext(preset_model, client)
    make_mode("remote_cache", context).setup()  # the session's one upload; the op-level modes name it
    return context


@pytest.fixture(scope="module")
def reference(context, prompt):
    return generate.generate(ready("local", context), prompt, STEPS)


@pytest.fixture
def recorded(context):
    """A context whose op_batch requests are recorded, with a counter of its own."""
    recorder = RecordingTransport(context.transport.inner)
    return dataclasses.replace(context, transport=transport.CountingTransport(recorder)), recorder


def ready(name, context):
    mode = make_mode(name, context)
    mode.setup()
    return mode


@pytest.fixture
def opened():
    """Ready op-level modes whose server sessions are closed when the test ends, passed or failed."""
    modes = []

    def open_mode(name, context):
        modes.append(ready(name, context))
        return modes[-1]

    yield open_mode
    for mode in modes:
        mode.close()


def stats(client) -> dict[str, int]:
    return {name: int(value) for name, value in codec.decode(client.call("op_stats", codec.encode({})))[1].items()}


@pytest.mark.parametrize("name", OP_MODES)
def test_op_level_modes_generate_the_tokens_of_local(name, context, prompt, reference, opened):
    mode = opened(name, context)
    assert generate.generate(mode, prompt, STEPS) == reference
    assert mode.role == "blind" and mode.lossless


@pytest.mark.parametrize("name", OP_MODES)
def test_only_ops_that_launch_work_or_move_data_are_forwarded(name, recorded, prompt, opened):
    context, recorder = recorded
    mode = opened(name, context)
    _, state = generate.prefill(mode, prompt)
    recorder.ops.clear()
    before = mode.counters()
    _, state = generate.decode_n_tokens(mode, 7, state, 1)
    counted = {key: value - before[key] for key, value in mode.counters().items()}
    mode.release(state)
    names = {op.split("::")[1].split(".")[0] for op in recorder.ops}
    assert not names & METADATA_OPS, names & METADATA_OPS
    assert {"addmm", "native_layer_norm", "scaled_dot_product_attention", "cat", "_to_copy"} <= names
    assert counted["ops_forwarded"] == len(recorder.ops)
    assert counted["ops_on_client"] >= 10 and counted["ops_decomposed"] >= 1  # views and linear/layer_norm, resolved here
    assert counted["client_tracing_ms"] > 0


def test_sync_waits_for_every_op_and_pipelined_only_for_reads(context, prompt, opened):
    flushes = {}
    for name in OP_MODES:
        mode = opened(name, context)
        mode.session.batch_ops = 8  # several posts per step
        _, state = generate.prefill(mode, prompt)
        before = mode.counters()
        _, state = generate.decode_n_tokens(mode, 7, state, STEPS)
        flushes[name] = {key: value - before[key] for key, value in mode.counters().items()}
        mode.release(state)
    sync, pipelined = flushes["op_sync"], flushes["op_pipelined"]
    assert sync["flushes"] == sync["ops_forwarded"] > 20 * STEPS and sync["posts"] == 0
    assert pipelined["flushes"] == STEPS  # one read per step: the last logits row
    per_step = pipelined["ops_forwarded"] // STEPS
    assert pipelined["posts"] == STEPS * ((per_step - 1) // 8)  # a full queue goes without waiting
    assert pipelined["ops_forwarded"] == sync["ops_forwarded"]


GREEDY_ANSWER_BYTES = 64  # a greedy step's answer: the id and the server's time, framed


@pytest.mark.parametrize("name", OP_MODES)
def test_a_greedy_step_brings_back_only_the_id_the_program_reads(name, context, prompt, opened):
    """local's greedy sampler takes the argmax where the logits are and reads one id: so does the remote program."""
    mode = opened(name, context)
    before = context.counter.snapshot()
    first, state = generate.prefill(mode, prompt)
    prefill = context.counter.since(before)
    before = context.counter.snapshot()
    _, state = generate.decode_n_tokens(mode, first, state, STEPS)
    decode = context.counter.since(before)
    mode.release(state)
    for counted in (prefill, decode):
        # Every answer is at most an id: op_sync's others acknowledge ops, op_pipelined waits for the read only.
        assert counted.bytes_received <= GREEDY_ANSWER_BYTES * counted.round_trips, counted
    if name == "op_pipelined":
        assert decode.round_trips == STEPS and decode.bytes_received <= GREEDY_ANSWER_BYTES * STEPS
    assert prefill.bytes_sent < 0.01 * sum(t.nbytes for t in presets.weights_of(context.model).values())


@pytest.mark.parametrize("name", OP_MODES)
def test_a_sampler_that_needs_the_row_reads_one_float32_row(name, context, prompt, opened):
    sampled = dataclasses.replace(context, sampler=Sampler.parse("top-k=5,seed=3"))
    mode = opened(name, sampled)
    before = context.counter.snapshot()
    tokens = generate.generate(mode, prompt, 2)
    counted = context.counter.since(before)
    assert tokens == generate.generate(ready("local", sampled), prompt, 2)
    row = context.model.config.vocab_size * 4
    assert 3 * row <= counted.bytes_received < 3 * row + GREEDY_ANSWER_BYTES * counted.round_trips + 64 * 3


def test_weights_are_named_not_shipped_again(context, opened):
    before = context.counter.snapshot()
    opened("op_pipelined", context)
    assert context.counter.since(before).bytes_sent == 0  # setup only reuses the session's upload


def test_server_memory_ids_and_bytes_stay_the_same_across_rounds_and_close_frees_the_session(context, prompt, opened):
    mode = opened("op_pipelined", context)
    held, ids, sent = [], [], []
    for _ in range(4):
        before = context.counter.snapshot()
        generate.generate(mode, prompt, 2)
        sent.append(context.counter.since(before).bytes_sent)
        held.append(stats(context.transport)["storages"])
        ids.append(mode.session.next_id)
    assert held[1] == held[2] == held[3], held
    # Freed ids are reused, as an allocator reuses addresses: no new ids, and the same bytes every round.
    assert ids[1] == ids[2] == ids[3] and sent[1] == sent[2] == sent[3], (ids, sent)
    sessions = stats(context.transport)["sessions"]
    mode.close()
    assert stats(context.transport)["sessions"] == sessions - 1


def test_reads_branches_and_data_dependent_shapes_wait_for_the_server(context, opened):
    mode = opened("op_pipelined", context)
    session = mode.session
    with session.active():
        values = torch.arange(6, device=session.device)  # a kernel on the remote device, nothing uploaded
        assert session.counters.flushes == 0
        even = values[values % 2 == 0]  # boolean indexing: its length depends on the data
        assert even.shape == (3,) and session.counters.flushes == 1
        assert even.cpu().tolist() == [0, 2, 4]
        assert values.sum().item() == 15
        before = session.counters.flushes
        branch = "high" if values.max() > 4 else "low"  # a Python branch on a value is a read
        assert branch == "high" and session.counters.flushes == before + 1
        host = torch.zeros(6, dtype=torch.long)
        host.copy_(values * 2)  # a copy into a host tensor is a read too
        assert host.tolist() == [0, 2, 4, 6, 8, 10]
        assert torch.tensor([1.5, 2.5], device=session.device).sum().item() == 4.0  # an upload


def send(client, document, tensors=None):
    meta = {op_protocol.REQUEST_KEY: op_protocol.dumps(document)}
    return codec.decode(client.call("op_batch", codec.encode(tensors or {}, meta)))


@contextmanager
def op_session(context):
    """A raw op-level session on the server: its id, and the weights' names by storage id."""
    entries = op_protocol.resident_tensors(context.model)
    session = uuid.uuid4().hex
    send(context.transport, {"session": session, "ops": [], "open": {
        "weights": context.weights_handle, "tensors": len(entries), "names_sha256": op_protocol.manifest_sha256(entries)}})
    yield session, dict(enumerate(name for name, _ in entries))
    send(context.transport, {"session": session, "close": True})


@pytest.fixture
def open_session(context):
    with op_session(context) as (session, _):
        yield session


@pytest.mark.parametrize("op, message", [
    ("aten::from_file.default", "refused op 'aten::from_file.default': not in the op-level allowlist"),
    ("aten::_fft_r2c.default", "refused op 'aten::_fft_r2c.default': not in the op-level allowlist"),
    ("builtins::eval.default", "refused op 'builtins::eval.default': only aten ops"),
    ("aten::mm", "refused op 'aten::mm': only aten ops"),
    ("aten::no_such_op.default", "refused op 'aten::no_such_op.default': not in the op-level allowlist"),
])
def test_the_server_refuses_ops_outside_aten_and_the_session_then_fails(context, open_session, op, message):
    with pytest.raises(transport.ServerError, match=message):
        send(context.transport, {"session": open_session, "ops": [[op, [], {}, []]]})
    with pytest.raises(transport.ServerError, match="failed earlier"):
        send(context.transport, {"session": open_session, "ops": []})


def test_the_server_refuses_unknown_storages_sessions_and_models(context, open_session):
    with pytest.raises(transport.ServerError, match="unknown storage 9999"):
        send(context.transport, {"session": open_session, "ops": [["aten::neg.default", [{"h": 9999}], {}, [10_000]]]})
    with pytest.raises(transport.ServerError, match="unknown op-level session 'nobody'"):
        send(context.transport, {"session": "nobody", "ops": []})
    with pytest.raises(transport.ServerError, match="names other weights"):
        send(context.transport, {"session": uuid.uuid4().hex, "ops": [], "open": {
            "weights": context.weights_handle, "tensors": 3, "names_sha256": "0"}})
    with pytest.raises(transport.ServerError, match="not the server's current one"):
        send(context.transport, {"session": uuid.uuid4().hex, "ops": [], "open": {"weights": "stale"}})


def test_plans_reused_across_calls_keep_apart_what_changes_the_result(context, opened):
    mode = opened("op_pipelined", context)
    session = mode.session
    with session.active():
        values = torch.arange(4, device=session.device)
        plans = []
        for _ in range(2):  # the second round runs from the plans the first one made
            assert (values + 1).dtype == torch.int64 and (values + 1.0).dtype == torch.float32
            assert (values + True).dtype == torch.int64
            row = values.view(2, 2)[1]  # a view: same storage, resolved here
            assert row.storage is values.storage and row.cpu().tolist() == [2, 3]
            doubled = values.clone()
            assert doubled.mul_(2) is doubled  # in place: the argument itself
            plans.append(len(session.plans))
        assert doubled.cpu().tolist() == [0, 2, 4, 6] and values.cpu().tolist() == [0, 1, 2, 3]
        assert plans[0] >= 5 and plans[1] == plans[0], plans  # the second round made no plan of its own


def test_a_malformed_request_is_refused_with_what_is_wrong(context, open_session):
    with pytest.raises(transport.ServerError, match="malformed op entry"):
        send(context.transport, {"session": open_session, "ops": ["aten::neg.default"]})
    with pytest.raises(transport.ServerError, match="carries a JSON document"):
        codec.decode(context.transport.call("op_batch", codec.encode({}, {op_protocol.REQUEST_KEY: "{not json"})))
