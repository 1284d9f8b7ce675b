"""Pure statistics of effects across cases: byte reductions, the judged byte level, the link rate where a
reduction crosses a threshold, and latency projected to other round-trip times (no I/O, no globals).

The conventions (reduction, ratio, block) are those of :mod:`semgap.analysis.stats`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from semgap.analysis.stats import Blocks, blocked_median

#: Byte levels a hypothesis may be judged on, best first. TCP counts each byte once (the kernel's
#: acknowledged bytes); the payload is what the mode serialised. Link (veth) bytes also count
#: headers and retransmissions, so they are a cross-check, never the judged figure.
JUDGED_BYTE_LEVELS = ("tcp", "payload")

#: Round-trip times used by :func:`project_latency_ms` (seconds): 10 us, 100 us, 1 ms.
DEFAULT_RTTS_S = (10e-6, 100e-6, 1e-3)

@dataclass(frozen=True)
class ByteReduction:
    """Exact byte reduction of a candidate against a baseline (per round).

    ``estimate`` is ``1 - candidate/baseline`` of the blocked medians (see
    :func:`blocked_median`); ``low``/``high`` equal it when every round sent the
    same bytes, otherwise they are the extreme reductions reachable from the
    min/max rounds and ``note`` says medians were used.
    """

    estimate: float | None
    low: float | None
    high: float | None
    candidate_bytes_per_round: float
    baseline_bytes_per_round: float
    exact: bool
    note: str


@dataclass(frozen=True)
class Crossover:
    """Where a reduction-versus-link-rate curve crosses the threshold.

    ``rate_bps`` is the first crossing (lowest rate) or ``None`` when the curve
    never crosses inside the measured range; ``holds_below`` is True when the
    hypothesis holds at rates below the crossing, False when above.
    ``interpolated`` is True when the rate lies between two measured rates.
    ``all_crossings_bps`` lists every crossing, lowest first.
    """

    rate_bps: float | None
    holds_below: bool | None
    interpolated: bool
    all_crossings_bps: tuple[float, ...]
    note: str


# ---------------------------------------------------------------- summaries

def choose_byte_level(available: Sequence[str]) -> str:
    """Pick the judged byte level among ``available``: ``tcp``, else ``payload``.

    A caller that gets ``payload`` must say "payload only" (those bytes are the
    mode's own count, not the kernel's).
    """
    for level in JUDGED_BYTE_LEVELS:
        if level in available:
            return level
    return "payload"


# ---------------------------------------------------------------- bytes (H1)

def byte_reduction(candidate_blocks: Blocks, baseline_blocks: Blocks) -> ByteReduction:
    """Exact byte reduction ``1 - candidate/baseline`` of per-round totals.

    Bytes are deterministic, so no sampling statistics are involved. Each side's
    figure is its :func:`blocked_median`. When every round on both sides carries
    the same byte count the result is exact and the interval collapses to the
    point; otherwise the interval spans the extremes over rounds,
    ``[1 - max(c)/min(b), 1 - min(c)/max(b)]``, and ``note`` says so. A baseline
    of zero bytes gives ``estimate=None`` (nothing to reduce).
    """
    cand = np.concatenate([np.asarray(b, dtype=float) for b in candidate_blocks]) if candidate_blocks else np.array([])
    base = np.concatenate([np.asarray(b, dtype=float) for b in baseline_blocks]) if baseline_blocks else np.array([])
    if cand.size == 0 or base.size == 0:
        raise ValueError("byte reduction needs at least one round on each side")
    cand_med, base_med = blocked_median(candidate_blocks), blocked_median(baseline_blocks)
    constant = bool(np.all(cand == cand[0]) and np.all(base == base[0]))
    if base.min() <= 0:
        return ByteReduction(None, None, None, cand_med, base_med, constant,
                             "baseline sends no bytes; reduction undefined")
    estimate = 1.0 - cand_med / base_med
    if constant:
        return ByteReduction(estimate, estimate, estimate, cand_med, base_med, True,
                             "exact (bytes identical in every round)")
    low = 1.0 - float(cand.max()) / float(base.min())
    high = 1.0 - float(cand.min()) / float(base.max())
    return ByteReduction(estimate, low, high, cand_med, base_med, False,
                         "per-round bytes vary; medians used, interval is min/max over rounds")


def crossover_rate(rates_bps: Sequence[float], reductions: Sequence[float],
                   threshold: float) -> Crossover:
    """Link rate at which a reduction curve crosses ``threshold``.

    Method: sort by rate, then between neighbouring rates where
    ``reduction - threshold`` changes sign, interpolate linearly in
    ``log10(rate)``; "holds" means ``reduction >= threshold`` and a measured
    point exactly on the threshold is itself the crossing (not interpolated).
    When the curve holds above the crossing, ``rate_bps`` is the lowest
    bandwidth at which the hypothesis still holds; when it holds below, the
    highest. Uses point estimates, not verdicts: read it as "where the curve
    crosses", not as a significance statement. With fewer than two rates, or
    no crossing, ``rate_bps`` is None and ``note`` says whether the hypothesis
    held at every measured rate or at none.
    """
    if len(rates_bps) != len(reductions):
        raise ValueError("rates and reductions differ in length")
    pairs = sorted((float(r), float(x)) for r, x in zip(rates_bps, reductions))
    if any(r <= 0 for r, _ in pairs):
        raise ValueError("link rates must be positive")
    if len(pairs) < 2:
        return Crossover(None, None, False, (), "fewer than two link rates")
    crossings: list[tuple[float, bool, bool]] = []  # (rate, holds_below, interpolated)
    for (r0, x0), (r1, x1) in zip(pairs, pairs[1:]):
        holds0, holds1 = x0 >= threshold, x1 >= threshold
        if holds0 == holds1:
            continue
        if x0 == threshold:
            crossings.append((r0, holds0, False))
        elif x1 == threshold:
            crossings.append((r1, holds0, False))
        else:
            frac = (x0 - threshold) / (x0 - x1)
            log_rate = math.log10(r0) + frac * (math.log10(r1) - math.log10(r0))
            crossings.append((10 ** log_rate, holds0, True))
    if not crossings:
        held = all(x >= threshold for _, x in pairs)
        note = "holds at every measured rate" if held else "holds at no measured rate"
        return Crossover(None, None, False, (), note)
    rate, below, interp = crossings[0]
    side = "below" if below else "above"
    note = f"holds {side} {rate:.3g} bit/s" + (" (interpolated)" if interp else "")
    if len(crossings) > 1:
        note += f"; curve crosses {len(crossings)} times"
    return Crossover(rate, below, interp, tuple(c[0] for c in crossings), note)


def project_latency_ms(median_ms: float, round_trips: float,
                       rtts_s: Sequence[float] = DEFAULT_RTTS_S) -> list[float]:
    """Project latency onto links with a given round-trip time.

    Model: ``projected = measured_median + round_trips * RTT``. Delay cannot be
    emulated here (netem is absent), so each RPC round trip is assumed to wait
    one full RTT with nothing overlapping; TCP slow start, window limits and
    queueing are ignored, so the projection is a lower bound on the added
    delay for bulk transfers. Returns one value per RTT, in milliseconds.
    """
    return [median_ms + round_trips * rtt * 1000.0 for rtt in rtts_s]
