"""Every measured round of a run as one tidy pandas DataFrame, and per-case aggregates of its columns.

``rounds(output_json)`` gives one row per benchmark round (a semgap benchmark is one case in one
block of the interleaved design, and its ``stats.data`` holds that block's rounds). Columns:

- identity: ``benchmark``, ``case``, ``mode``, ``label``, ``role``, ``lossless``, ``techniques``,
  ``model``, ``weights``, ``phase``, ``decode_steps``, ``link``, ``link_rate``, ``link_rate_bps``,
  ``block``, ``position_in_block``, ``round`` (0-based within its block) and ``latency_ms``
  (NaN when the JSON kept no raw rounds);
- always present, NaN where the run did not measure them: the bytes of every level and direction
  (``payload_bytes_sent``, ``wire_tcp_bytes_received``, ...), ``rpc_round_trips``, ``rpc_posts``,
  ``server_compute_ms``, ``server_codec_ms``, ``encode_ms`` and ``decode_ms`` (the client's codec),
  ``client_tracing_ms``, ``token_agreement_with_local``, ``max_abs_logit_error``;
- then every other per-round list of ``extra_info`` (``<name>_rounds`` becomes ``<name>``: a mode's
  counters such as ``ops_forwarded`` or ``flushes``), then its other scalars, one value per benchmark
  repeated on each of its rows (``zstd_level``, ``load_avg_1m``, ``fast_path``, ...).

Lists and objects that are not per-round values (``token_ids``) are left out. Pure: no I/O.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from semgap.analysis.measurements import case_of, is_case_benchmark, read_run, semgap_section

IDENTITY = ("benchmark", "case", "mode", "label", "role", "lossless", "techniques", "model", "weights", "phase",
            "decode_steps", "link", "link_rate", "link_rate_bps", "block", "position_in_block", "round", "latency_ms")
BYTE_COLUMNS = tuple(f"{prefix}_{direction}" for prefix in
                     ("payload_bytes", "wire_tcp_bytes", "wire_link_bytes", "wire_tcp_bytes_retransmitted")
                     for direction in ("sent", "received"))
#: The client's codec time per round: encoding requests and decoding responses.
CLIENT_CODEC_COLUMNS = ("encode_ms", "decode_ms")
MEASURES = (*BYTE_COLUMNS, "rpc_round_trips", "rpc_posts", "server_compute_ms", "server_codec_ms",
            *CLIENT_CODEC_COLUMNS, "client_tracing_ms", "token_agreement_with_local", "max_abs_logit_error")
#: What names one case of a run: a row of a (model, phase, link rate, decode steps) group.
CASE_KEY = ("model", "phase", "link_rate", "decode_steps", "label")
_SCALAR = (str, int, float, bool, type(None))


def _round_count(bench: dict, per_round: dict[str, list]) -> int:
    data = bench["stats"].get("data")
    if isinstance(data, list) and data:
        return len(data)
    return max((len(values) for values in per_round.values()), default=1)


def _benchmark_rows(bench: dict, meta: dict) -> list[dict[str, Any]]:
    name = str(bench.get("name"))
    extra = bench["extra_info"]
    case = case_of(extra, meta, name)
    per_round = {key[:-len("_rounds")]: value for key, value in extra.items()
                 if key.endswith("_rounds") and isinstance(value, list)}
    count = _round_count(bench, per_round)
    data = bench["stats"].get("data") if isinstance(bench["stats"].get("data"), list) else []
    identity = {"benchmark": name, "case": case.case, "mode": case.mode, "label": case.label, "role": case.role,
                "lossless": case.lossless, "techniques": case.techniques, "model": case.model,
                "weights": case.weights, "phase": case.phase, "decode_steps": case.decode_steps, "link": case.link,
                "link_rate": case.link_rate, "link_rate_bps": case.link_rate_bps, "block": extra.get("block", 0),
                "position_in_block": extra.get("position_in_block")}
    scalars = {key: value for key, value in extra.items()
               if isinstance(value, _SCALAR) and key not in identity and key not in per_round}
    rows = []
    for index in range(count):
        row = {**identity, "round": index, "latency_ms": data[index] * 1e3 if index < len(data) else math.nan}
        row.update({key: values[index] for key, values in per_round.items() if len(values) == count})
        rows.append({**scalars, **row})
    return rows


def rounds(output_json: dict) -> pd.DataFrame:
    """One row per measured round of every semgap benchmark of ``output_json`` (see the module docstring).

    Rows keep the JSON's order (benchmarks as they ran, rounds in order). Raises
    :class:`semgap.analysis.measurements.InvalidBenchmarkJSON` on JSON that the report could not read either.
    """
    read_run(output_json)  # the same validation, and the same errors, as the report's
    meta = semgap_section(output_json)
    rows = [row for bench in output_json["benchmarks"]
            if is_case_benchmark(bench.get("extra_info"))
            for row in _benchmark_rows(bench, meta)]
    frame = pd.DataFrame(rows)
    for column in (*IDENTITY, *MEASURES):
        if column not in frame:
            frame[column] = math.nan
    others = [column for column in frame.columns if column not in IDENTITY and column not in MEASURES]
    return frame[[*IDENTITY, *MEASURES, *others]]


def per_case(frame: pd.DataFrame, columns: Sequence[str], statistic: str = "median") -> dict[tuple, dict]:
    """``{(model, phase, link_rate, decode_steps, label): {column: value}}`` over each case's rounds.

    ``statistic`` is ``median`` (the median over blocks of each block's median, the report's figure
    for a case) or ``max`` (the worst round). A column the case never measured is None; so is a
    link rate the case did not have.
    """
    if statistic not in ("median", "max"):
        raise ValueError(f"unknown statistic {statistic!r}; choose from median, max")
    present = [column for column in columns if column in frame]
    values = frame[[*CASE_KEY, "block", *present]].copy()
    values[present] = values[present].apply(pd.to_numeric, errors="coerce")
    by_case = values.groupby(list(CASE_KEY), dropna=False, sort=False)
    if statistic == "median":
        table = values.groupby([*CASE_KEY, "block"], dropna=False, sort=False)[present].median()
        table = table.groupby(level=list(range(len(CASE_KEY))), dropna=False, sort=False).median()
    else:
        table = by_case[present].max()
    out = {}
    for key, row in table.iterrows():
        out[tuple(_none(k) for k in key)] = {column: _none(row.get(column)) for column in columns}
    return out


def _none(value: Any) -> Any:
    """None for a missing value (NaN, None, pandas' NA), else the value as a plain Python number or string."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value
