"""The GPU check's closing table: per run, mode and phase, latency, bytes and decode steps against the weight-streaming floor.

    python -m semgap.report.gpu_summary OUT_DIR [--hbm-gbps 4800] [--out OUT_DIR/summary.txt]

OUT_DIR holds one folder per pytest session (its --semgap-results), whose `latest` run holds the
benchmark.json pytest-benchmark wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from semgap.bench.rundir import LATEST

# Nominal HBM bandwidth by GPU name, where NVML cannot tell (first match wins, so longer names first).
NOMINAL_HBM_BYTES_PER_S = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
)
BENCHMARK_FILE = "benchmark.json"


@dataclass(frozen=True)
class Bandwidth:
    """The HBM bandwidth the floor divides by, and where the figure came from."""

    bytes_per_s: float | None
    source: str


@dataclass(frozen=True)
class SummaryRow:
    """One benchmark of one session, reduced to what the table shows."""

    session: str
    model: str
    mode: str
    phase: str
    fast_path: str
    median_ms: float
    payload_bytes_per_round: int | None
    tcp_bytes_per_round: int | None
    step_ms: float | None  # decode only: the round's median over its steps, as the client sees a token
    engine_step_ms: float | None  # decode only: the engine's own time per step (server-timed, synchronised)
    floor_ms: float | None  # weight bytes / HBM bandwidth: no decode step can beat it
    sm_util_mean_pct: float | None
    mem_peak_bytes: int | None
    token_agreement: float | None

    @property
    def times_floor(self) -> float | None:
        if self.engine_step_ms is None or not self.floor_ms:
            return None
        return self.engine_step_ms / self.floor_ms


def hbm_bandwidth(gpu_name: str, override_gbps: float | None = None) -> Bandwidth:
    """The GPU's peak HBM bandwidth: the override, else NVML (bus width x memory clock x 2), else by name."""
    if override_gbps:
        return Bandwidth(override_gbps * 1e9, "given")
    measured = _nvml_bandwidth()
    if measured is not None:
        return measured
    for name, bytes_per_s in NOMINAL_HBM_BYTES_PER_S:
        if name in gpu_name:
            return Bandwidth(bytes_per_s, f"nominal for {name}")
    return Bandwidth(None, "unknown (no GPU seen; pass --hbm-gbps)")


def _nvml_bandwidth() -> Bandwidth | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            name = pynvml.nvmlDeviceGetName(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no GPU, or a driver without these queries: fall back to the name table
        return None
    if not bus_bits or not clock_mhz:
        return None
    # HBM moves data on both clock edges.
    name = name.decode() if isinstance(name, bytes) else name
    return Bandwidth(bus_bits / 8 * clock_mhz * 1e6 * 2, f"NVML peak of {name} ({bus_bits}-bit at {clock_mhz} MHz)")


def _weight_bytes(model: str, dtype_name: str) -> int | None:
    import torch

    from semgap.model import presets

    try:
        return presets.weight_bytes_of(model, getattr(torch, dtype_name))
    except Exception:  # an unknown checkpoint or dtype: the floor column stays empty
        return None


def _total(extra: dict, prefix: str) -> int | None:
    sent, received = extra.get(f"{prefix}_sent"), extra.get(f"{prefix}_received")
    return None if sent is None or received is None else int(sent + received)


def rows_of(session: str, output_json: dict, bandwidth: Bandwidth) -> list[SummaryRow]:
    """The table rows of one session's benchmark JSON."""
    conditions = output_json.get("semgap", {})
    weight_bytes: dict[str, int | None] = {}
    rows = []
    for bench in output_json.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        model, phase = extra.get("model", conditions.get("model", "")), extra.get("phase", "")
        if model not in weight_bytes:
            weight_bytes[model] = _weight_bytes(model, conditions.get("dtype", "float16"))
        median_ms = bench["stats"]["median"] * 1e3
        steps = extra.get("decode_steps") or 0
        step_ms = engine_step_ms = floor_ms = None
        if phase == "decode" and steps:
            step_ms = median_ms / steps
            server_ms = extra.get("server_compute_ms")
            engine_step_ms = server_ms / steps if extra.get("mode") != "local" and server_ms else step_ms
            if weight_bytes[model] and bandwidth.bytes_per_s:
                floor_ms = weight_bytes[model] / bandwidth.bytes_per_s * 1e3
        rows.append(SummaryRow(
            session=session, model=model, mode=extra.get("mode", ""), phase=phase,
            fast_path=extra.get("fast_path", ""), median_ms=median_ms,
            payload_bytes_per_round=_total(extra, "payload_bytes"), tcp_bytes_per_round=_total(extra, "wire_tcp_bytes"),
            step_ms=step_ms, engine_step_ms=engine_step_ms, floor_ms=floor_ms,
            sm_util_mean_pct=extra.get("gpu_sm_util_mean_pct"), mem_peak_bytes=extra.get("gpu_mem_peak_bytes"),
            token_agreement=extra.get("token_agreement_with_local"),
        ))
    return rows


def _cell(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


COLUMNS = ("model", "mode", "phase", "path", "median ms", "payload/round", "tcp/round", "ms/token",
           "engine ms/step", "floor ms", "x floor", "SM util %", "peak mem", "agree")


def table_lines(rows: list[SummaryRow]) -> list[str]:
    """The rows as an aligned text table, header first."""
    cells = [COLUMNS] + [(
        row.model, row.mode, row.phase, row.fast_path, f"{row.median_ms:.2f}", _bytes(row.payload_bytes_per_round),
        _bytes(row.tcp_bytes_per_round), _cell(row.step_ms, ".3f"), _cell(row.engine_step_ms, ".3f"),
        _cell(row.floor_ms, ".3f"), _cell(row.times_floor, ".1f"), _cell(row.sm_util_mean_pct, ".0f"),
        _bytes(row.mem_peak_bytes), _cell(row.token_agreement, ".2f"),
    ) for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]


def _ensure_verdicts(run_dir: Path, output_json: dict) -> str:
    # The plugin writes verdicts.json after the run; where it could not (no matplotlib for the plots,
    # say), write the verdicts alone so the run still has them.
    if (run_dir / "verdicts.json").exists():
        return ""
    try:
        from semgap.analysis import verdicts

        run_verdicts = verdicts.compute(output_json)
    except Exception as error:
        return f"no verdicts ({type(error).__name__}: {error})"
    (run_dir / "verdicts.json").write_text(json.dumps(run_verdicts.to_dict(), indent=2, default=str) + "\n")
    return "verdicts.json written by gpu_summary (the plugin wrote none; plots missing)"


def _server_engine_stats(run_dir: Path) -> dict:
    # The server prints its engine's counters when it stops, after every round: the last such line.
    prefix = "semgap server engine stats: "
    found = {}
    for log in sorted((run_dir / "logs").glob("server-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                try:
                    found = json.loads(line[len(prefix):])
                except ValueError:  # a line cut short by a killed server: keep the previous one
                    continue
    return found


def _engine_counts(stats: dict) -> str:
    if not stats:
        return "-"
    return (f"{stats.get('compiled_graphs', 0)} graphs, {stats.get('cudagraph_skips', 0)} cudagraph skips, "
            f"{stats.get('dynamic_fallbacks', 0)} dynamic fallbacks")


def session_lines(session: str, run_dir: Path, output_json: dict, note: str) -> list[str]:
    """One line on how a session ran: device, decode paths, warm-up seconds, failures and warnings."""
    conditions = output_json.get("semgap", {})
    local = conditions.get("engine_stats_local") or {}
    server = _server_engine_stats(run_dir) or conditions.get("engine_stats_server_at_start") or {}
    lines = [
        f"{session}: {conditions.get('model', '?')} on {conditions.get('device', '?')} "
        f"{conditions.get('dtype', '')} {conditions.get('gpu_name', '')}".rstrip()
        + f"; decode path local={conditions.get('decode_path_local') or '-'} server={conditions.get('decode_path_server') or '-'}",
        f"  warm-up (compile + capture): local {local.get('warmup_s', 0.0):.1f} s, server {server.get('warmup_s', 0.0):.1f} s",
        f"  engines at the end (local / server): {_engine_counts(local)} / {_engine_counts(server)}",
    ]
    lines += [f"  failed: {failure.get('case')}: {failure.get('reason', '').splitlines()[0][:200]}"
              for failure in conditions.get("failures", [])]
    lines += [f"  warning: {warning[:200]}" for warning in conditions.get("warnings", [])]
    return lines + ([f"  {note}"] if note else [])


def summarise(out_dir: Path, override_gbps: float | None = None) -> list[str]:
    """Every line the summary prints, for every session folder under `out_dir`."""
    run_dirs = {path.parent.parent.name: path.parent for path in sorted(out_dir.glob(f"*/{LATEST}/{BENCHMARK_FILE}"))}
    if not run_dirs:
        return [f"no {BENCHMARK_FILE} under {out_dir}/*/{LATEST}/: no session measured anything"]
    outputs = {session: json.loads((run_dir / BENCHMARK_FILE).read_text()) for session, run_dir in run_dirs.items()}
    gpu_name = next((o.get("semgap", {}).get("gpu_name") for o in outputs.values() if o.get("semgap", {}).get("gpu_name")), "")
    bandwidth = hbm_bandwidth(gpu_name, override_gbps)
    lines, rows = [], []
    for session, output_json in outputs.items():
        lines += session_lines(session, run_dirs[session], output_json, _ensure_verdicts(run_dirs[session], output_json))
        rows += rows_of(session, output_json, bandwidth)
    lines.append(f"floor = weight bytes / HBM bandwidth; bandwidth {_bytes(bandwidth.bytes_per_s)}/s "
                 f"({bandwidth.source}). ms/token: client's view; engine ms/step: the engine alone")
    return lines + table_lines(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semgap.report.gpu_summary", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder holding one folder per session, each with its latest run")
    parser.add_argument("--hbm-gbps", type=float, default=None, help="HBM bandwidth in GB/s (default: from NVML)")
    parser.add_argument("--out", type=Path, default=None, help="also write the lines to this file")
    args = parser.parse_args(argv)
    lines = summarise(args.out_dir, args.hbm_gbps)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
