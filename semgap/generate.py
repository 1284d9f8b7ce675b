"""Greedy generation as a few named steps over any mode: prefill, decode_one_token, decode_n_tokens."""
from __future__ import annotations

from semgap.modes.base import Mode
from semgap.runtime import greedy_token


def prefill(mode: Mode, token_ids: list[int]) -> tuple[int, object]:
    """Run the prompt; return the first generated token and the state decoding continues from."""
    logits, state = mode.prefill(token_ids)
    return greedy_token(logits), state


def decode_n_tokens(mode: Mode, token_id: int, state: object, steps: int) -> tuple[list[int], object]:
    """Feed `token_id`, then each token the model picks, `steps` times; return the picked tokens."""
    tokens = []
    for _ in range(steps):
        logits, state = mode.decode_one_token(token_id, state)
        token_id = greedy_token(logits)
        tokens.append(token_id)
    return tokens, state


def generate(mode: Mode, token_ids: list[int], steps: int) -> list[int]:
    """The first token from the prompt and `steps` more, greedily; the mode's state is released."""
    first, state = prefill(mode, token_ids)
    try:
        tokens, state = decode_n_tokens(mode, first, state, steps)
    finally:
        mode.release(state)
    return [first, *tokens]
