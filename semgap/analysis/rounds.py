"""A remote round taken apart: where a round's wall time goes, on both ends, and how much of it is the network.

Each remote round records its wall time (the runner's clock around the round), the client's codec
time (encoding requests, decoding answers), its time inside the transport (sending, waiting, reading
the answers: ``wait_ms``), the server's compute (timed around its forwards) and the server's own
time on the round's requests, asked for between rounds (semgap/wire/timing.py): queueing for the
model, decoding, encoding, and the whole handler call. Clocks are monotonic per process and never
compared across processes; the parts are

- client compute: the round's wall time minus the client's codec and transport time (the client's
  own tensor work and the Python around it);
- client encode/decode;
- in flight: the transport time minus the server's handler time: both kernels and the wire, the
  frames' MACs, and the server's reading and writing of frames. Where a mode posts requests without
  waiting (op_pipelined), the server works while the client does, and in flight can fall below zero;
- server queueing, server decode, server compute, server encode, and server other (the handler's
  dispatch around them).

They add up to the runner's wall time by construction; what checks them is pytest-benchmark's own
time of the same round, which they must match within SUM_TOLERANCE. Figures are means over a case's
measured rounds (means add up; medians do not). The network share of a round is its wall time minus
both sides' compute: what H2's reading as "the wire" rests on. Pure, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from semgap.analysis import frames
from semgap.analysis.measurements import mode_rank
from semgap.schema import CANDIDATE_LABEL

#: How far the parts' sum may stray from pytest-benchmark's round time before the report warns.
SUM_TOLERANCE = 0.05
#: The parts, in the order a round meets them, as (name, what it is).
PARTS = (("client compute", "the client's own work"), ("client codec", "client encode and decode"),
         ("in flight", "kernels and wire, both ways"), ("server queueing", "waiting for the model"),
         ("server decode", "decoding requests"), ("server compute", "forwards"),
         ("server encode", "encoding answers"), ("server other", "dispatch"))
RECORDED = ("round_ms", "wait_ms", "encode_ms", "decode_ms", "server_compute_ms", "server_queue_ms",
            "server_decode_ms", "server_encode_ms", "server_handler_ms")


@dataclass(frozen=True)
class RoundParts:
    """One remote case's mean round, taken apart (milliseconds)."""

    model: str
    phase: str
    link_rate: str | None
    label: str
    rounds: int
    benchmark_ms: float  # pytest-benchmark's own mean round time
    parts: dict[str, float]  # PARTS' names -> mean ms

    @property
    def total_ms(self) -> float:
        return sum(self.parts.values())

    @property
    def sum_error(self) -> float:
        """The parts' sum against pytest-benchmark's round time, relative (0: equal)."""
        return self.total_ms / self.benchmark_ms - 1.0

    @property
    def sums(self) -> bool:
        return abs(self.sum_error) <= SUM_TOLERANCE

    @property
    def network_ms(self) -> float:
        """The round minus both sides' compute: what moving the bytes cost, the codecs and dispatch included."""
        return self.total_ms - self.parts["client compute"] - self.parts["server compute"]


@dataclass(frozen=True)
class NetworkShare:
    """Semantic's reduction against one blind baseline, of the whole round and of its network share."""

    model: str
    phase: str
    link_rate: str | None
    baseline: str
    round_reduction: float
    network_reduction: float
    semantic_network_ms: float
    baseline_network_ms: float


def taken_apart(output_json: dict) -> list[RoundParts]:
    """Every remote case whose rounds recorded the server's own time, in report order."""
    frame = frames.rounds(output_json)
    if "server_handler_ms" not in frame:
        return []
    remote = frame[frame["server_handler_ms"].notna() & frame["round_ms"].notna() & frame["latency_ms"].notna()]
    out = []
    for (model, phase, rate, label), rounds in remote.groupby(["model", "phase", "link_rate", "label"], dropna=False,
                                                              sort=False):
        mean = {name: float(rounds[name].fillna(0.0).mean()) for name in RECORDED}
        out.append(RoundParts(model, phase, None if pd.isna(rate) else rate, label, len(rounds),
                              float(rounds["latency_ms"].mean()), _parts(mean)))
    return sorted(out, key=lambda r: (r.model, r.phase != "prefill", r.link_rate or "", mode_rank(r.label)))


def _parts(mean: dict[str, float]) -> dict[str, float]:
    codec = mean["encode_ms"] + mean["decode_ms"]
    server = {"server queueing": mean["server_queue_ms"], "server decode": mean["server_decode_ms"],
              "server compute": mean["server_compute_ms"], "server encode": mean["server_encode_ms"]}
    return {"client compute": mean["round_ms"] - mean["wait_ms"] - codec, "client codec": codec,
            "in flight": mean["wait_ms"] - mean["server_handler_ms"], **server,
            "server other": mean["server_handler_ms"] - sum(server.values())}


def network_shares(parts: Sequence[RoundParts]) -> list[NetworkShare]:
    """Semantic against each blind baseline of its (model, phase, rate): whole round and network share."""
    by_key: dict[tuple, dict[str, RoundParts]] = {}
    for p in parts:
        by_key.setdefault((p.model, p.phase, p.link_rate), {})[p.label] = p
    shares = []
    for (model, phase, rate), cases in by_key.items():
        semantic = cases.get(CANDIDATE_LABEL)
        if semantic is None:
            continue
        for label, base in cases.items():
            if label == CANDIDATE_LABEL or label.startswith(CANDIDATE_LABEL):
                continue
            shares.append(NetworkShare(model, phase, rate, label, 1 - semantic.total_ms / base.total_ms,
                                       1 - semantic.network_ms / base.network_ms if base.network_ms > 0 else float("nan"),
                                       semantic.network_ms, base.network_ms))
    return shares
