"""The one lossless check: what is declared lossless (a mode, a batching flavour, a KV strategy) must
generate exactly `local`'s tokens in every measured round, or its benchmark fails saying where."""
from __future__ import annotations

from semgap.schema import first_mismatch


def check(case_id: str, what: str, lossless: bool, expected: list[int], rounds: list[list[int]]) -> None:
    """Fail the benchmark `case_id` if `what` (e.g. "mode remote_cache") is lossless and any measured round's
    tokens differ from `expected`. Called after its extra_info is written: a failure never hides the figures."""
    if not lossless:
        return
    mismatch = first_mismatch(expected, rounds)
    assert mismatch is None, f"{case_id}: the lossless {what} generated other tokens than local: {mismatch}"
