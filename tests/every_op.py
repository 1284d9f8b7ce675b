"""A client process that calls every operation its server knows, through the client's own code where it has some.

Run as `python tests/every_op.py TRANSPORT HOST PORT SECRET MODEL` (tests/test_transport.py does, in a process of
its own: PyTorch RPC starts once per process). The list of operations comes from the server (its refusal of an
unknown one names them all), so an operation added to the server without a call here fails the run: it exits 1
naming the operations no call exercised. On success it prints `every op done: ` and the operations, sorted.
"""
from __future__ import annotations

import sys

import torch

from semgap.client import generate
from semgap.client.kvrecovery import STRATEGIES, ResidentSteps, begin_session, continue_after
from semgap.client.modes import MODES, ModeContext, make_mode
from semgap.client.sessions import BatchedSemanticMode
from semgap.model import presets
from semgap.wire import codec, names, transport

REFUSAL = "this server knows "


class Recording:
    """A transport that notes the operation of every call the server answered and every post it took."""

    def __init__(self, inner):
        self.inner, self.exercised = inner, set()

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes:
        response = self.inner.call(op, request, timeout_s)
        self.exercised.add(op)
        return response

    def post(self, op: str, request: bytes) -> None:
        self.inner.post(op, request)
        self.exercised.add(op)

    def close(self) -> None:
        self.inner.close()


def server_operations(connection) -> set[str]:
    """Every operation the server knows, as its refusal of an unknown one lists them."""
    try:
        connection.call("reboot", codec.encode({}))
    except transport.ServerError as refusal:
        return set(str(refusal).split(REFUSAL)[1].strip().split(", "))
    raise AssertionError("the server answered an operation it does not know")


def exercise_everything(connection: Recording, model: torch.nn.Module) -> None:
    context = ModeContext(model, transport.CountingTransport(connection))
    prompt = presets.prompt_ids(8, model.config.vocab_size)
    connection.call(names.HELLO, codec.encode({}))
    connection.call(names.ECHO, b"x")
    connection.call(names.SINK, b"y")
    connection.call(names.GPU_SUMMARY, codec.encode({}, {names.SINCE: ""}))
    for name, mode_class in MODES.items():  # upload_weights, naive_step, prefill, decode, release, op_batch
        if mode_class.needs_server:
            mode = make_mode(name, context)
            mode.setup()
            generate.generate(mode, prompt, 2)
    connection.call(names.OP_STATS, codec.encode({}))
    batched = BatchedSemanticMode(context)  # batch_prefill, batch_decode, batch_release
    batched.setup()
    generate.generate(batched, prompt, 2)
    for strategy_class in STRATEGIES.values():  # kv_export, kv_import, kv_extend
        strategy, source, target = strategy_class(), ResidentSteps(context), ResidentSteps(context)
        source.setup()
        target.setup()
        state = begin_session(source, target, prompt, 2, strategy.syncs_prompt)
        continue_after(target, state, strategy.recover(source, target, state), 1)
    posting = make_mode("remote_cache", context)
    posting.setup()
    handle = generate.prefill(posting, prompt)[1]
    connection.post(names.RELEASE, codec.encode({}, {names.KV_HANDLE: handle}))  # a post: no answer comes back
    connection.call(names.HELLO, codec.encode({}))  # the server carries on after it


def main(argv: list[str]) -> int:
    transport_name, host, port, secret, model_name = argv
    connection = Recording(transport.connect(transport_name, host, int(port), timeout_s=60, secret=secret.encode()))
    try:
        known = server_operations(connection)
        exercise_everything(connection, presets.build_model(presets.ModelSpec(model_name)))
    finally:
        connection.close()
    unexercised = sorted(known - connection.exercised)
    if unexercised:
        print(f"operations the server knows that no call here exercised: {', '.join(unexercised)}", file=sys.stderr)
        return 1
    print(f"every op done: {', '.join(sorted(known))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
