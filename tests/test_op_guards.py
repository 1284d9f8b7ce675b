"""The op-level server cannot hurt the model: only allowlisted ops run, and no op writes into the weights."""
import dataclasses

import pytest

from semgap.client import generate
from semgap.client.modes import ModeContext, make_mode
from semgap.model import presets
from semgap.wire import op_protocol, transport
from tests.test_oplevel import RecordingTransport, op_session, send

STEPS = 5  # the suite's default decode steps; the prompt is its default 128 tokens
PROMPT_TOKENS = 128
OP_MODES = ("op_sync", "op_pipelined", "op_replay")


@pytest.fixture(scope="module")
def prompt(preset_model):
    return presets.prompt_ids(PROMPT_TOKENS, preset_model.config.vocab_size)


@pytest.fixture(scope="module")
def context(preset_model, client):
    context = ModeContext(preset_model, client, max_cache_len=PROMPT_TOKENS + STEPS + 8)
    make_mode("remote_cache", context).setup()  # the session's one upload; the op-level modes name it
    return context


def ready(name, context, prompt=None):
    mode = make_mode(name, context)
    mode.setup()
    if prompt is not None and hasattr(mode, "prepare"):
        mode.prepare(prompt)
    return mode


@pytest.fixture
def open_session(context):
    with op_session(context) as opened:
        yield opened


def test_a_default_size_run_of_every_op_level_mode_needs_only_allowlisted_ops(context, prompt):
    recorder = RecordingTransport(context.transport.inner)
    recorded = dataclasses.replace(context, transport=transport.CountingTransport(recorder))
    reference = generate.generate(ready("local", context), prompt, STEPS)
    for name in OP_MODES:
        mode = ready(name, recorded, prompt)
        try:
            assert generate.generate(mode, prompt, STEPS) == reference, name
        finally:
            mode.close()
    assert recorder.ops, "no op_batch request was recorded"
    assert set(recorder.ops) <= op_protocol.ALLOWED_OPS, set(recorder.ops) - op_protocol.ALLOWED_OPS


def test_an_op_outside_the_allowlist_is_refused_naming_it(context, open_session):
    session, _ = open_session
    with pytest.raises(transport.ServerError, match=r"refused op 'aten::_fft_r2c\.default': not in the op-level allowlist"):
        send(context.transport, {"session": session, "ops": [["aten::_fft_r2c.default", [{"h": 0}], {}, [10_000]]]})


def in_place_writes(weight_id: int) -> list[list]:
    """Ops that would write into storage `weight_id`: in place, through a view of it, and as copy_'s destination."""
    return [
        ["aten::add_.Tensor", [{"h": weight_id}, {"h": weight_id}], {}, [None]],
        ["aten::zero_.default", [{"h": weight_id, "view": [[1], [1], 0]}], {}, [None]],
        ["aten::mul_.Tensor", [{"h": weight_id}, 0.0], {}, [None]],
        ["aten::index_copy_.default", [{"h": weight_id}, 0, {"h": weight_id}, {"h": weight_id}], {}, [None]],
    ]


@pytest.mark.parametrize("case", range(4), ids=["add_", "zero_-of-a-view", "mul_", "index_copy_"])
def test_an_in_place_op_on_a_weight_is_refused_and_every_mode_keeps_local_tokens(context, prompt, open_session, case):
    session, weight_names = open_session
    reference = generate.generate(ready("local", context), prompt, STEPS)
    assert generate.generate(ready("remote_cache", context), prompt, STEPS) == reference
    entry = in_place_writes(0)[case]
    with pytest.raises(transport.ServerError,
                       match=rf"refused op '{entry[0]}': it writes into storage 0 \({weight_names[0]}\), "
                             "and the weights are read-only"):
        send(context.transport, {"session": session, "ops": [entry]})
    assert generate.generate(ready("remote_cache", context), prompt, STEPS) == reference
    op_sync = ready("op_sync", context)
    try:
        assert generate.generate(op_sync, prompt, STEPS) == reference
    finally:
        op_sync.close()


def test_a_session_may_still_write_into_its_own_tensors(context, open_session):
    session, weight_names = open_session
    fresh = len(weight_names) + 5
    send(context.transport, {"session": session, "ops": [
        ["aten::clone.default", [{"h": 0}], {}, [fresh]],
        ["aten::zero_.default", [{"h": fresh}], {}, [None]],
    ]})
