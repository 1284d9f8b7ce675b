"""A cost model of a round's latency, checked against what the run measured (pure, no I/O).

    predicted ms = round trips x RTT + bytes / rate + compute

- **RTT**: the run's transport's small call (8 bytes echoed, median), from the run's transport
  calibration (``semgap.bench.calibration`` in the JSON): one round trip through the transport on the
  run's link, the transport's own per-call cost included.
- **rate**: the transport's unshaped throughput (25 MB sent one way). On a shaped link (a netns
  rate sweep) the slower of that and the link rate.
- **bytes**: a round's bytes sent plus received at the group's judged level (TCP where counted).
- **compute**: the server's compute and codec time plus the client's codec (encode, decode) and
  tracing time, each the case's median from ``extra_info``.

Assumptions: every round trip waits one full RTT and nothing overlaps (not transfer with compute,
not a posted request with the client's work); bytes flow at the full rate from the first byte (no
TCP slow start, no window limit); the client spends no time outside the timers. Where a point's
error exceeds the tolerance, :func:`where_it_misses` names the likely cause, as a hypothesis.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from semgap.analysis import frames
from semgap.analysis.summaries import CaseSummary

#: Compute terms read from extra_info besides the server's compute time.
COMPUTE_COLUMNS = ("server_codec_ms", *frames.CLIENT_CODEC_COLUMNS, "client_tracing_ms")
#: Linux's initial congestion window is 10 segments (RFC 6928): of a 1448-byte MSS on an Ethernet-sized
#: link such as the netns veth, of a 65,483-byte one on loopback (MTU 65,536).
INITIAL_WINDOW_SEGMENTS = 10
MSS_BYTES = {"loopback": 65_483}
DEFAULT_MSS_BYTES = 1448
#: A point whose predicted/measured - 1 lies beyond this is a miss.
DEFAULT_TOLERANCE = 0.25


@dataclass(frozen=True)
class Calibration:
    """What the model takes from the run's transport calibration."""

    transport: str
    link: str
    round_trip_s: float
    rate_bytes_per_s: float


@dataclass(frozen=True)
class CaseCost:
    """The model's inputs for one case, and its measured latency (the median over blocks of block medians)."""

    model: str
    phase: str
    link_rate: str | None
    link_rate_bps: int | None
    decode_steps: int
    label: str
    measured_ms: float
    round_trips: float
    bytes_per_round: float
    compute_ms: float
    posts: float | None = None
    ops_forwarded: float | None = None


@dataclass(frozen=True)
class Prediction:
    """One case's predicted latency, its three parts, and how far it is from the measured one."""

    case: CaseCost
    rate_bytes_per_s: float
    round_trip_ms: float
    transfer_ms: float
    compute_ms: float
    predicted_ms: float
    error: float  # predicted / measured - 1
    miss: str | None  # the likely cause where |error| > tolerance


@dataclass(frozen=True)
class Fit:
    """How well the model fits one sweep: a (model, phase, decode steps) over its cases and link rates."""

    model: str
    phase: str
    decode_steps: int
    points: int
    r_squared: float | None
    median_abs_error: float
    max_abs_error: float


@dataclass(frozen=True)
class Check:
    predictions: list[Prediction]
    fits: list[Fit]
    tolerance: float


def _positive(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def calibration_of(output_json: dict) -> Calibration | str:
    """The run's calibration for its own transport, or why the model cannot be checked."""
    meta = output_json.get("semgap") if isinstance(output_json.get("semgap"), dict) else {}
    section = meta.get("calibration")
    if not isinstance(section, dict) or not section.get("transports"):
        return "the run has no transport calibration (semgap.bench.calibration in its JSON), so no measured RTT or rate"
    transport = str(meta.get("transport") or "rpc")
    entry = section["transports"].get(transport)
    if not isinstance(entry, dict):
        return f"the calibration did not measure the run's transport {transport!r}"
    round_trip_us, rate = _positive(entry.get("small_call_us")), _positive(entry.get("throughput_bytes_per_s"))
    if round_trip_us is None or rate is None:
        return f"the calibration of {transport!r} lacks its small-call time or its throughput"
    return Calibration(transport, str(section.get("link") or meta.get("link") or "?"), round_trip_us * 1e-6, rate)


def case_costs(summaries: Sequence[CaseSummary], rounds: pd.DataFrame) -> list[CaseCost]:
    """The model's inputs for every case that used the network and counted its round trips."""
    extra = frames.per_case(rounds, (*COMPUTE_COLUMNS, "rpc_posts", "ops_forwarded"))
    out = []
    for s in summaries:
        if s.role == "local" or s.round_trips is None:
            continue
        values = extra.get((s.model, s.phase, s.link_rate, s.decode_steps, s.label), {})
        compute = (s.server_compute_ms or 0.0) + sum(values.get(c) or 0.0 for c in COMPUTE_COLUMNS)
        out.append(CaseCost(model=s.model, phase=s.phase, link_rate=s.link_rate, link_rate_bps=s.link_rate_bps,
                            decode_steps=s.decode_steps, label=s.label, measured_ms=s.median_latency_ms,
                            round_trips=s.round_trips, bytes_per_round=s.bytes_sent_per_round + s.bytes_received_per_round,
                            compute_ms=compute, posts=values.get("rpc_posts"), ops_forwarded=values.get("ops_forwarded")))
    return out


def rate_bytes_per_s(case: CaseCost, calibration: Calibration) -> float:
    """The unshaped rate, or the link rate where the link is shaped slower."""
    if case.link_rate_bps:
        return min(calibration.rate_bytes_per_s, case.link_rate_bps / 8)
    return calibration.rate_bytes_per_s


def initial_window_bytes(link: str) -> int:
    """TCP's initial congestion window on ``link``, in bytes."""
    return INITIAL_WINDOW_SEGMENTS * MSS_BYTES.get(link, DEFAULT_MSS_BYTES)


def where_it_misses(case: CaseCost, error: float, link: str) -> str:
    """The likely cause of a miss, from what the case did; a hypothesis the model cannot test itself."""
    causes = []
    window = initial_window_bytes(link)
    if error < 0:  # measured slower than predicted: costs the model leaves out
        if case.ops_forwarded:
            causes.append(f"per-op costs outside the timers ({case.ops_forwarded:.0f} ops per round, each "
                          "dispatched by the server and framed by the client)")
        per_trip = case.bytes_per_round / max(case.round_trips, 1.0)
        if per_trip > window:
            causes.append(f"TCP slow start and window limits ({per_trip / 1e3:,.0f} KB per round trip, above the "
                          f"{window / 1e3:,.1f} KB initial window of {link})")
        causes = causes or ["client time outside the codec and tracing timers (Python between calls, the "
                            "transport's own work), or a loaded machine"]
    else:  # measured faster than predicted: the model adds up what overlaps
        if case.posts:
            causes.append(f"{case.posts:.0f} posted requests per round overlap the client's work")
        causes.append("transfer, compute and round trips overlap, or a small call costs more than this case's calls")
    return "; ".join(causes)


def predict(case: CaseCost, calibration: Calibration, tolerance: float = DEFAULT_TOLERANCE) -> Prediction:
    """round trips x RTT + bytes / rate + compute, and its error against the measured latency."""
    rate = rate_bytes_per_s(case, calibration)
    round_trip_ms = case.round_trips * calibration.round_trip_s * 1e3
    transfer_ms = case.bytes_per_round / rate * 1e3
    predicted = round_trip_ms + transfer_ms + case.compute_ms
    error = predicted / case.measured_ms - 1.0
    miss = where_it_misses(case, error, calibration.link) if abs(error) > tolerance else None
    return Prediction(case, rate, round_trip_ms, transfer_ms, case.compute_ms, predicted, error, miss)


def r_squared(measured: Sequence[float], predicted: Sequence[float]) -> float | None:
    """1 - SS_res / SS_tot of the predictions (no fitted parameter): 1 is perfect, below 0 worse than the mean.

    None with fewer than two points or when the measured values do not vary.
    """
    if len(measured) < 2:
        return None
    mean = statistics.fmean(measured)
    total = sum((m - mean) ** 2 for m in measured)
    if total == 0:
        return None
    return 1.0 - sum((m - p) ** 2 for m, p in zip(measured, predicted)) / total


def check(cases: Sequence[CaseCost], calibration: Calibration, tolerance: float = DEFAULT_TOLERANCE) -> Check:
    """Every case's prediction, and the fit of each (model, phase, decode steps) sweep over its cases and rates."""
    predictions = [predict(case, calibration, tolerance) for case in cases]
    sweeps: dict[tuple, list[Prediction]] = {}
    for p in predictions:
        sweeps.setdefault((p.case.model, p.case.phase, p.case.decode_steps), []).append(p)
    fits = []
    for (model, phase, steps), points in sweeps.items():
        errors = [abs(p.error) for p in points]
        fits.append(Fit(model, phase, steps, len(points),
                        r_squared([p.case.measured_ms for p in points], [p.predicted_ms for p in points]),
                        statistics.median(errors), max(errors)))
    return Check(predictions, fits, tolerance)
