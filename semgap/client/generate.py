"""Generation as a few named steps over any mode: prefill, decode_one_token, decode_n_tokens.

Tokens are chosen with the mode's sampler (semgap.model.sampling) at their position in the sequence; a
mode whose server chose the token already (token-only) returns the id, which is taken as it is.
"""
from __future__ import annotations

import torch

from semgap.client.modes.base import Mode


def choose(mode: Mode, output: torch.Tensor | int, position: int | None) -> int:
    """The token a step's output stands for: the server's choice, or the sampler's from the logits."""
    if isinstance(output, int):
        return output
    sampler = mode.context.sampler
    if position is None and sampler.kind != "greedy":
        raise ValueError(f"the {sampler.kind} sampler needs the position of the token it picks")
    return sampler(output, position or 0)


def prefill(mode: Mode, token_ids: list[int]) -> tuple[int, object]:
    """Run the prompt; return the first generated token and the state decoding continues from."""
    output, state = mode.prefill(token_ids)
    return choose(mode, output, len(token_ids)), state


def decode_n_tokens(mode: Mode, token_id: int, state: object, steps: int,
                    position: int | None = None) -> tuple[list[int], object]:
    """Feed `token_id` (at sequence index `position`), then each token picked, `steps` times; return the picks.

    `position` is the index of `token_id` in the sequence, the prompt's length after a prefill; a
    greedy sampler does without it.
    """
    tokens = []
    for step in range(steps):
        output, state = mode.decode_one_token(token_id, state)
        token_id = choose(mode, output, None if position is None else position + 1 + step)
        tokens.append(token_id)
    return tokens, state


def generate(mode: Mode, token_ids: list[int], steps: int) -> list[int]:
    """The first token from the prompt and `steps` more; the mode's state is released."""
    first, state = prefill(mode, token_ids)
    try:
        tokens, state = decode_n_tokens(mode, first, state, steps, position=len(token_ids))
    finally:
        mode.release(state)
    return [first, *tokens]
