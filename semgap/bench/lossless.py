"""The one lossless check: what is declared lossless (a mode, a batching flavour, a KV strategy) must
generate exactly `local`'s tokens in every measured round, or its benchmark fails saying where."""
from __future__ import annotations


def first_mismatch(expected: list[int], rounds: list[list[int]]) -> str | None:
    """Where the first round that differs from `expected` first differs, in words, or None."""
    for index, tokens in enumerate(rounds):
        if tokens == expected:
            continue
        position = next((p for p, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
        got = tokens[position] if position < len(tokens) else "nothing"
        want = expected[position] if position < len(expected) else "nothing"
        return f"measured round {index}, token {position}: {got} where local has {want}"
    return None


def check(case_id: str, what: str, lossless: bool, expected: list[int], rounds: list[list[int]]) -> None:
    """Fail the benchmark `case_id` if `what` (e.g. "mode remote_cache") is lossless and any measured round's
    tokens differ from `expected`. Called after its extra_info is written: a failure never hides the figures."""
    if not lossless:
        return
    mismatch = first_mismatch(expected, rounds)
    assert mismatch is None, f"{case_id}: the lossless {what} generated other tokens than local: {mismatch}"
