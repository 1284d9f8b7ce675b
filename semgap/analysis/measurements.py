"""Read a run's pytest-benchmark JSON into cases, each with its rounds grouped by block (pure, no I/O).

One semgap benchmark is one (case, block) of the interleaved design: its ``stats.data`` holds
that block's rounds, its ``extra_info`` what they moved. Old JSON, from before blocks, still
loads: each benchmark is then one block, and a mode's role comes from its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from semgap import schema
from semgap.analysis import effects, stats
from semgap.schema import LEVEL_PREFIX

#: The role of each mode of JSON written before modes declared one.
LEGACY_ROLES = {"local": "local", "naive": "blind", "remote_cache": "blind", "semantic": "semantic"}
ROLES = ("local", "blind", "semantic")
MODE_ORDER = ("local", "naive", "remote_cache", "op_sync", "op_pipelined", "op_replay", "semantic")
PHASE_ORDER = ("prefill", "decode")
LEGACY_NOTE = ("old JSON without blocks: each benchmark counts as one block and a mode's role comes from "
               "its name, so latency verdicts have one block and cannot reach alpha")


class InvalidBenchmarkJSON(ValueError):
    """The input is not a pytest-benchmark JSON dict that semgap can read."""


@dataclass(frozen=True)
class BlockRecord:
    """One benchmark: the rounds one case ran in one block, and what they moved."""

    name: str
    block: int
    position_in_block: int | None
    latency_s: tuple[float, ...]
    raw_rounds: bool
    bytes_sent_rounds: dict[str, tuple[float, ...]]
    bytes_received_rounds: dict[str, tuple[float, ...]]
    retransmitted_rounds: dict[str, tuple[float | None, ...]]  # direction -> per round, None = unknown
    round_trips: float | None
    server_compute_ms: float | None
    token_agreement_with_local: float | None
    load_avg_1m: float | None
    cpu_steal_pct: float | None

    def bytes_rounds(self, level: str) -> tuple[float, ...]:
        """Per-round totals (sent + received) at ``level``."""
        sent, received = self.bytes_sent_rounds[level], self.bytes_received_rounds[level]
        if len(sent) == len(received):
            return tuple(s + r for s, r in zip(sent, received))
        return (stats.median(sent) + stats.median(received),)


@dataclass
class CaseRecord:
    """One case (a row of a group: mode or ablation label, phase, rate, decode steps) over its blocks."""

    case: str
    label: str
    mode: str
    role: str
    lossless: bool | None
    weights: str | None
    model: str
    phase: str
    decode_steps: int
    link: str | None
    link_rate: str | None
    link_rate_bps: int | None
    techniques: str | None = None  # semantic rows: the technique set, e.g. "prune,cast" or "none"
    blocks: dict[int, BlockRecord] = field(default_factory=dict)

    @property
    def identity(self) -> tuple:
        """What makes a case the same case in another run."""
        return (self.model, self.case, self.decode_steps, self.label)

    @property
    def group_key(self) -> tuple:
        return (self.model, self.phase, self.link_rate, self.decode_steps)

    @property
    def block_indices(self) -> list[int]:
        return sorted(self.blocks)

    def latency_blocks(self, indices: Sequence[int] | None = None) -> list[tuple[float, ...]]:
        """Round times per block, for ``indices`` (default: all blocks, in order)."""
        return [self.blocks[i].latency_s for i in (self.block_indices if indices is None else indices)]

    @property
    def latency_s(self) -> list[float]:
        """Every round of every block."""
        return [x for block in self.latency_blocks() for x in block]

    @property
    def raw_rounds(self) -> bool:
        return all(b.raw_rounds for b in self.blocks.values())

    @property
    def levels(self) -> set[str]:
        return set.intersection(*(set(b.bytes_sent_rounds) for b in self.blocks.values()))

    def bytes_blocks(self, level: str, direction: str | None = None) -> list[tuple[float, ...]]:
        """Per-block byte rounds at ``level``: totals, or one ``direction`` ("sent"/"received")."""
        if direction is None:
            return [self.blocks[i].bytes_rounds(level) for i in self.block_indices]
        return [getattr(self.blocks[i], f"bytes_{direction}_rounds")[level] for i in self.block_indices]

    def bytes_per_round(self, level: str, direction: str | None = None) -> float:
        """The case's bytes per round: the median over blocks of each block's median."""
        return stats.blocked_median(self.bytes_blocks(level, direction))

    def retransmitted_per_round(self, direction: str) -> float | None:
        """Median retransmitted TCP bytes per round in ``direction``; None when never counted."""
        values = [v for b in self.blocks.values() for v in b.retransmitted_rounds.get(direction, ()) if v is not None]
        return stats.median(values) if values else None

    def _blocked(self, name: str) -> float | None:
        values = [getattr(b, name) for b in self.blocks.values() if getattr(b, name) is not None]
        return stats.median(values) if values else None

    @property
    def round_trips(self) -> float | None:
        return self._blocked("round_trips")

    @property
    def server_compute_ms(self) -> float | None:
        return self._blocked("server_compute_ms")

    @property
    def token_agreement(self) -> float | None:
        """The worst agreement with local over the blocks (None when never measured)."""
        values = [b.token_agreement_with_local for b in self.blocks.values()
                  if b.token_agreement_with_local is not None]
        return min(values) if values else None


@dataclass(frozen=True)
class RunInfo:
    """The run-level settings of the ``semgap`` section that the judging side reads."""

    blocks: int | None
    rounds_per_block: int | None
    warmup_rounds_per_block: int | None
    block_order_seed: int | None
    h1: float | None
    h2: float | None
    alpha: float | None
    min_agreement: float | None
    cores: int | None
    run_status: str
    interrupted_by: str | None
    legacy: bool

    @classmethod
    def from_json(cls, output_json: dict, legacy: bool) -> "RunInfo":
        meta = semgap_section(output_json)
        return cls(blocks=_int(meta.get("blocks")), rounds_per_block=_int(meta.get("rounds_per_block")),
                   warmup_rounds_per_block=_int(meta.get("warmup_rounds_per_block")),
                   block_order_seed=_int(meta.get("block_order_seed")),
                   h1=_num(meta.get("h1")), h2=_num(meta.get("h2")), alpha=_num(meta.get("alpha")),
                   min_agreement=_num(meta.get("min_agreement")), cores=_int(meta.get("cores")),
                   run_status=str(meta.get("run_status") or "complete"),
                   interrupted_by=meta.get("interrupted_by"), legacy=legacy)

    @property
    def complete(self) -> bool:
        return self.run_status == "complete"


@dataclass
class Run:
    """A run as the judging side sees it: its cases, its settings, and notes on how it was read."""

    cases: list[CaseRecord]
    info: RunInfo
    notes: list[str]


def semgap_section(output_json: dict) -> dict:
    section = output_json.get("semgap")
    return section if isinstance(section, dict) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def _byte_rounds(extra: dict, role: str) -> tuple[dict, dict]:
    """Sent/received rounds for every available level (local: zeros everywhere)."""
    listed = extra.get(schema.WIRE_LEVELS)
    sent: dict[str, tuple[float, ...]] = {}
    received: dict[str, tuple[float, ...]] = {}
    for level in LEVEL_PREFIX:
        if role == "local":
            sent[level] = received[level] = (0.0,)
            continue
        if isinstance(listed, list) and level != "payload" and level not in listed:
            continue
        s = schema.round_values(extra, schema.level_key(level, "sent"))
        r = schema.round_values(extra, schema.level_key(level, "received"))
        if s is not None and r is not None:
            sent[level], received[level] = s, r
    return sent, received


def _retransmitted(extra: dict) -> dict[str, tuple[float | None, ...]]:
    out = {}
    for direction in schema.DIRECTIONS:
        values = extra.get(schema.rounds_key(schema.retransmitted_key(direction)))
        if isinstance(values, list):
            out[direction] = tuple(_num(v) for v in values)
    return out


def _latency_rounds(bench: dict, name: str) -> tuple[tuple[float, ...], bool]:
    """Raw round times in seconds, or the median alone when data was not saved."""
    st = bench.get("stats")
    if not isinstance(st, dict):
        raise InvalidBenchmarkJSON(f"benchmark {name!r} has no 'stats' dict")
    data = st.get("data")
    if isinstance(data, list) and data:
        if not all(_num(v) is not None and v > 0 for v in data):
            raise InvalidBenchmarkJSON(f"benchmark {name!r}: stats.data must be positive numbers")
        return tuple(float(v) for v in data), True
    if _num(st.get("median")) is not None and st["median"] > 0:
        return (float(st["median"]),), False
    raise InvalidBenchmarkJSON(f"benchmark {name!r}: stats has neither 'data' nor a positive 'median'")


def _role(extra: dict, name: str) -> str:
    role = extra.get("role", LEGACY_ROLES.get(str(extra["mode"])))
    if role not in ROLES:
        raise InvalidBenchmarkJSON(f"benchmark {name!r}: role {role!r} is none of {', '.join(ROLES)} "
                                   f"(a mode from before roles must be one of {', '.join(LEGACY_ROLES)})")
    return role


def _block(bench: dict, extra: dict, name: str, role: str) -> BlockRecord:
    latency, raw = _latency_rounds(bench, name)
    sent, received = _byte_rounds(extra, role)
    if "payload" not in sent:
        raise InvalidBenchmarkJSON(f"benchmark {name!r}: payload_bytes_sent/received missing")
    block = extra.get("block", 0)
    if _num(block) is None or block < 0 or block != int(block):
        raise InvalidBenchmarkJSON(f"benchmark {name!r}: block must be a whole number >= 0, got {block!r}")
    position = _num(extra.get("position_in_block"))
    return BlockRecord(
        name=name, block=int(block), position_in_block=None if position is None else int(position),
        latency_s=latency, raw_rounds=raw, bytes_sent_rounds=sent, bytes_received_rounds=received,
        retransmitted_rounds=_retransmitted(extra), round_trips=_num(extra.get(schema.ROUND_TRIPS)),
        server_compute_ms=_num(extra.get(schema.SERVER_COMPUTE_MS)),
        token_agreement_with_local=_num(extra.get(schema.TOKEN_AGREEMENT)),
        load_avg_1m=_num(extra.get(schema.LOAD_AVG)), cpu_steal_pct=_num(extra.get(schema.CPU_STEAL)),
    )


def case_of(extra: dict, meta: dict, name: str) -> CaseRecord:
    """The case (without blocks) that a benchmark's ``extra_info`` describes; ``meta`` is the run's semgap section."""
    info = schema.CaseInfo.from_extra_info(extra, default_model=meta.get("model"), role=_role(extra, name))
    return CaseRecord(
        case=info.case, label=info.label, mode=info.mode, role=info.role, lossless=info.lossless,
        weights=info.weights, model=info.model, phase=info.phase, decode_steps=info.decode_steps,
        link=info.link, link_rate=info.link_rate, link_rate_bps=info.link_rate_bps,
        techniques=info.techniques if info.role == "semantic" else None,
    )


def is_case_benchmark(extra: Any) -> bool:
    """Whether a benchmark's extra_info is a case of the mode x phase matrix: it names a mode and no KV-recovery
    scenario (those benchmarks, benchmarks/test_kv_recovery.py, have a report table of their own)."""
    return isinstance(extra, dict) and schema.KIND_MATRIX in extra and schema.KIND_KV_RECOVERY not in extra


def read_run(output_json: Any) -> Run:
    """Semgap's cases (benchmarks with ``extra_info.mode``), each with its blocks, in JSON order.

    Raises :class:`InvalidBenchmarkJSON` when the structure is not readable.
    Benchmarks without ``extra_info.mode`` (not semgap's) or with ``extra_info.scenario`` (KV recovery,
    reported apart) are ignored. A second benchmark for the same (case, block) is ignored with a note.
    """
    notes: list[str] = []
    if not isinstance(output_json, dict):
        raise InvalidBenchmarkJSON("top level must be a JSON object")
    benches = output_json.get("benchmarks")
    if not isinstance(benches, list):
        raise InvalidBenchmarkJSON("missing 'benchmarks' list (is this a pytest-benchmark JSON?)")
    meta = semgap_section(output_json)
    cases: dict[tuple, CaseRecord] = {}
    legacy = False
    for i, bench in enumerate(benches):
        if not isinstance(bench, dict):
            raise InvalidBenchmarkJSON(f"benchmarks[{i}] is not an object")
        name = str(bench.get("name", f"benchmarks[{i}]"))
        extra = bench.get("extra_info") or {}
        if not is_case_benchmark(extra):
            continue
        if "phase" not in extra:
            raise InvalidBenchmarkJSON(f"benchmark {name!r}: extra_info has 'mode' but no 'phase'")
        legacy |= "block" not in extra or "role" not in extra
        fresh = case_of(extra, meta, name)
        record = cases.setdefault(fresh.identity, fresh)
        block = _block(bench, extra, name, record.role)
        if block.block in record.blocks:
            notes.append(f"duplicate benchmark {name!r} for {record.case} block {block.block} ignored; "
                         f"kept {record.blocks[block.block].name!r}")
            continue
        record.blocks[block.block] = block
    legacy = legacy and bool(cases)
    if legacy:
        notes.append(LEGACY_NOTE)
    return Run(list(cases.values()), RunInfo.from_json(output_json, legacy), notes)


def mode_rank(label: str) -> tuple[int, str]:
    return (MODE_ORDER.index(label) if label in MODE_ORDER else len(MODE_ORDER), label)


def phase_rank(phase: str) -> int:
    return PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)


def blind_baselines(group: dict[str, CaseRecord]) -> list[str]:
    """Labels of a group's semantic-blind rows, in report order."""
    return [label for label, case in group.items() if case.role == "blind"]


def judged_level(cases: Sequence[CaseRecord]) -> str:
    """Best judged byte level (tcp, else payload) that every non-local case given has."""
    remote = [case for case in cases if case.role != "local"]
    if not remote:
        return "payload"
    return effects.choose_byte_level(sorted(set.intersection(*(case.levels for case in remote))))
