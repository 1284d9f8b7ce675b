"""The benchmark record: what a semgap benchmark writes into ``extra_info`` and what the analysis reads back.

Both sides import this module, so a name lives here once. A matrix benchmark's extra_info has:

- its identity, :class:`CaseInfo` (the case, block, mode, phase, link, ...);
- its rounds: every :class:`RoundRecord` field as ``name`` (the median over the measured rounds)
  and ``name_rounds`` (each measured round, in order), written by :func:`per_round_fields`;
- its tokens, :class:`TokenRecord`, and the other figures under the keys named below.

The other benchmark kinds carry a key of their own instead of ``mode``: ``scenario`` (KV recovery,
with its ``strategy``), ``batching`` and ``calibration``.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

ROUNDS_SUFFIX = "_rounds"
DIRECTIONS = ("sent", "received")
#: Field-name prefix of each byte level, per direction: ``<prefix>_sent`` and ``<prefix>_received``.
LEVEL_PREFIX = {"payload": "payload_bytes", "tcp": "wire_tcp_bytes", "link": "wire_link_bytes"}
RETRANSMITTED_PREFIX = "wire_tcp_bytes_retransmitted"

# Scalar keys of a matrix benchmark beyond its identity and rounds.
WIRE_LEVELS = "wire_levels"  # the byte levels this benchmark measured, "payload" first
LOAD_AVG = "load_avg_1m"
CPU_STEAL = "cpu_steal_pct"
CPU_BUSY = "cpu_busy_pct"

# What marks each kind of benchmark: the matrix names a mode; the others carry these keys instead.
KIND_MATRIX = "mode"
KIND_KV_RECOVERY = "scenario"
KIND_BATCHING = "batching"
KIND_CALIBRATION = "calibration"
KV_STRATEGY = "strategy"  # a KV-recovery benchmark's strategy (never under "mode": it is no mode of the matrix)

#: The row judged against the blind baselines; ablation rows are ``semantic:<techniques>``, reported only.
CANDIDATE_LABEL = "semantic"
ABLATION_SEPARATOR = ":"


def rounds_key(name: str) -> str:
    """The key of a field's per-round list."""
    return name + ROUNDS_SUFFIX


def level_key(level: str, direction: str) -> str:
    return f"{LEVEL_PREFIX[level]}_{direction}"


def retransmitted_key(direction: str) -> str:
    return f"{RETRANSMITTED_PREFIX}_{direction}"


def ablation_label(mode: str, techniques: object) -> str:
    """The report row of an ablation variant of `mode` with technique set `techniques`."""
    return f"{mode}{ABLATION_SEPARATOR}{techniques}"


def is_ablation(label: str) -> bool:
    """Whether a label names an ablation variant (reported in the ablation table, never judged)."""
    return label.startswith(CANDIDATE_LABEL + ABLATION_SEPARATOR)


@dataclass
class RoundRecord:
    """What one round moved and spent, per level and direction (client's view)."""

    payload_bytes_sent: int
    payload_bytes_received: int
    wire_tcp_bytes_sent: int | None
    wire_tcp_bytes_received: int | None
    wire_link_bytes_sent: int | None
    wire_link_bytes_received: int | None
    rpc_round_trips: int
    rpc_posts: int  # requests sent without waiting for an answer
    server_compute_ms: float
    encode_ms: float
    decode_ms: float
    tcp_sockets_closed: int = 0
    # Retransmitted TCP bytes, each way: in the link bytes, not in the TCP bytes.  Received is what
    # the server retransmitted, known only for a server this session spawned.
    wire_tcp_bytes_retransmitted_sent: int | None = None
    wire_tcp_bytes_retransmitted_received: int | None = None
    # The round taken apart (semgap/analysis/rounds.py): its wall time, the client's time inside the
    # transport, and the server's own time on the round's requests (semgap/wire/timing.py); None where
    # not measured (local; a transport that cannot say).
    round_ms: float | None = None
    wait_ms: float | None = None
    server_queue_ms: float | None = None
    server_decode_ms: float | None = None
    server_encode_ms: float | None = None
    server_handler_ms: float | None = None

    @classmethod
    def total(cls, records: Sequence["RoundRecord"]) -> "RoundRecord":
        """One round's records over several connections (one per server) added up; a level none measured stays None."""
        def add(values: list) -> float | int | None:
            present = [value for value in values if value is not None]
            return sum(present) if present else None

        return cls(**{item.name: add([getattr(record, item.name) for record in records]) for item in fields(cls)})


_ROUND_FIELDS = {item.name for item in fields(RoundRecord)}
ROUND_TRIPS = "rpc_round_trips"
SERVER_COMPUTE_MS = "server_compute_ms"
# Every key the readers build from a prefix is a field the writers record.
assert {level_key(level, d) for level in LEVEL_PREFIX for d in DIRECTIONS} <= _ROUND_FIELDS
assert {retransmitted_key(d) for d in DIRECTIONS} | {ROUND_TRIPS, SERVER_COMPUTE_MS} <= _ROUND_FIELDS


@dataclass(frozen=True)
class CaseInfo:
    """The identity of one matrix benchmark: one case of the design in one block."""

    case: str
    block: int
    blocks: int
    position_in_block: int | None
    mode: str
    phase: str
    model: str
    role: str  # "local", "blind" or "semantic"
    lossless: bool | None
    weights: str | None
    device: str | None
    prompt_tokens: int | None
    decode_steps: int
    link: str | None
    link_rate: str | None
    link_rate_bps: int | None
    label: str
    sampler: str | None
    fast_path: str | None
    setup_bytes_sent: int = 0
    setup_bytes_received: int = 0
    # What the program computes and reads (semgap.model.program): generate or full-logits.
    program: str | None = None
    # The mode's own preparation beside the weight upload (op_replay's step captures), outside any round.
    capture_bytes_sent: int = 0
    capture_bytes_received: int = 0
    capture_ms: float = 0.0
    # Semantic rows only: the technique set as shown, as spelled on the command line, and its zstd level.
    techniques: str | None = None
    technique_spec: str | None = None
    zstd_level: int | None = None

    def to_extra_info(self) -> dict:
        info = asdict(self)
        if self.role != "semantic":
            for name in ("techniques", "technique_spec", "zstd_level"):
                del info[name]
        return info

    @classmethod
    def from_extra_info(cls, extra: dict, default_model: str | None = None, role: str | None = None) -> "CaseInfo":
        """The identity `extra` records; a key that JSON from before it lacks takes its old meaning."""
        known = {item.name for item in fields(cls)}
        values = {name: value for name, value in extra.items() if name in known}
        rate = extra.get("link_rate")
        lossless = extra.get("lossless")
        values.update(
            case=str(extra.get("case") or f"{extra['mode']}-{extra['phase']}" + (f"-{rate}" if rate else "")),
            block=int(extra.get("block", 0)), blocks=int(extra.get("blocks") or 0),
            mode=str(extra["mode"]), phase=str(extra["phase"]), label=str(extra.get("label", extra["mode"])),
            model=str(extra.get("model") or default_model or "unknown"), role=str(role or extra.get("role")),
            lossless=lossless if isinstance(lossless, bool) else None,
            decode_steps=int(_number(extra.get("decode_steps")) or 0),
            link_rate_bps=None if _number(extra.get("link_rate_bps")) is None else int(extra["link_rate_bps"]),
            # JSON from before ablations named a semantic row's technique set "semantic"
            techniques=None if extra.get("techniques", extra.get("semantic")) is None
            else str(extra.get("techniques", extra.get("semantic"))),
        )
        for name in known - values.keys():
            values[name] = None if name not in ("setup_bytes_sent", "setup_bytes_received") else 0
        values["program"] = values["program"] or "full-logits"  # JSON from before programs ran every position's logits
        return cls(**values)


@dataclass(frozen=True)
class TokenRecord:
    """The tokens a benchmark's measured rounds generated, against `local`'s."""

    token_ids: list[int]  # the last measured round's
    tokens_sha256: str
    tokens_same_every_round: bool
    token_agreement_with_local: float  # the worst measured round's share of positions equal to local's
    first_mismatch: str | None  # where the first round unlike local's first differs, in words; None: all alike

    @classmethod
    def measure(cls, expected: list[int], rounds: list[list[int]]) -> "TokenRecord":
        tokens = rounds[-1]
        return cls(
            token_ids=tokens,
            tokens_sha256=hashlib.sha256(json.dumps(tokens).encode()).hexdigest(),
            tokens_same_every_round=all(round_tokens == tokens for round_tokens in rounds),
            token_agreement_with_local=min(agreement(expected, round_tokens) for round_tokens in rounds),
            first_mismatch=first_mismatch(expected, rounds),
        )


TOKEN_AGREEMENT = "token_agreement_with_local"
FIRST_MISMATCH = "first_mismatch"
assert {TOKEN_AGREEMENT, FIRST_MISMATCH} <= {item.name for item in fields(TokenRecord)}


def matrix_extra_info(identity: CaseInfo, rounds: Sequence[RoundRecord], tokens: TokenRecord) -> dict:
    """A matrix benchmark's extra_info from its identity, its measured rounds and its tokens."""
    info = identity.to_extra_info()
    info.update(per_round_fields([asdict(record) for record in rounds]))
    info[WIRE_LEVELS] = ["payload"] + [level for level in ("tcp", "link") if info[level_key(level, "sent")] is not None]
    info.update(asdict(tokens))
    return info


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


def agreement(expected: list[int], tokens: list[int]) -> float:
    """The share of `expected`'s positions where `tokens` has the same id."""
    return sum(a == b for a, b in zip(tokens, expected)) / len(expected)


def per_round_fields(rounds: Sequence[dict[str, Any]]) -> dict:
    """`name` (the median over rounds) and `name_rounds` (every round) for each field of the rounds."""
    out: dict = {}
    for name in dict.fromkeys(name for record in rounds for name in record):
        values = [record.get(name) for record in rounds]
        out[name], out[rounds_key(name)] = median(values), values
    return out


def round_values(extra: dict, name: str) -> tuple[float, ...] | None:
    """A recorded field's per-round values, falling back to its median alone; None if absent or not numbers."""
    rounds = extra.get(rounds_key(name))
    if isinstance(rounds, list) and rounds and all(_number(v) is not None for v in rounds):
        return tuple(float(v) for v in rounds)
    scalar = _number(extra.get(name))
    return None if scalar is None else (scalar,)


def median(values: list[float | int | None]) -> float | int | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
