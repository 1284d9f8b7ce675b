"""scripts/gpu_check.sh --cpu: the GPU check's every step, dry-run on tiny-gpt2 on the CPU."""
import json
import os
import subprocess
import sys
import types

import pytest

from semgap.report import gpu_summary

from .conftest import REPO

SESSIONS = ("1-tiny-gpt2", "2-tiny-gpt2", "3-tiny-gpt2-naive")


@pytest.mark.slow
def test_cpu_dry_run_writes_every_sessions_results_and_prints_the_table_last(tmp_path, outside_xdist):
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for session in SESSIONS:
        run_dir = tmp_path / session / "latest"
        assert "skipped" not in result.stdout
        output = json.loads((run_dir / "benchmark.json").read_text())
        assert output["semgap"]["failures"] == [], output["semgap"]["failures"]
        assert (run_dir / "verdicts.json").exists() and (run_dir / "report.md").exists()
        assert list((run_dir / "logs").glob("server-*.log"))
    resident = json.loads((tmp_path / "1-tiny-gpt2" / "latest" / "benchmark.json").read_text())
    paths = {(b["extra_info"]["mode"], b["extra_info"]["phase"]): b["extra_info"]["fast_path"] for b in resident["benchmarks"]}
    assert len(paths) == 8  # every mode x phase
    # --cpu turns the fast path on: the resident modes ran the compiled static path, naive stayed dynamic.
    assert {path for (mode, _), path in paths.items() if mode != "naive"} == {"static+compile"}
    assert paths[("naive", "decode")] == "eager-dynamic"
    assert resident["semgap"]["decode_path_server"] == "static+compile"
    # The second session repeats the flow eagerly (--cpu compiles once): no path of it compiled.
    second = json.loads((tmp_path / "2-tiny-gpt2" / "latest" / "benchmark.json").read_text())
    assert {b["extra_info"]["fast_path"] for b in second["benchmarks"]} == {"eager-dynamic"}

    lines = result.stdout.strip().splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("model "))
    table = lines[header:]
    assert table[0].split()[:3] == ["model", "mode", "phase"]
    assert len(table) == 1 + 8 + 6 + 2  # the last lines printed: header, then every benchmark of the 3 sessions
    assert all(line.startswith("tiny-gpt2 ") for line in table[1:])
    assert (tmp_path / "summary.txt").read_text().strip().splitlines()[-len(table):] == table


def test_summary_rows_put_decode_steps_against_the_weight_streaming_floor():
    output = {
        "semgap": {"model": "gpt2", "dtype": "float16", "gpu_name": "NVIDIA H200"},
        "benchmarks": [{
            "stats": {"median": 0.010},
            "extra_info": {"model": "gpt2", "mode": "remote_cache", "phase": "decode", "decode_steps": 4,
                           "fast_path": "static+compile", "server_compute_ms": 4.0, "payload_bytes_sent": 100,
                           "payload_bytes_received": 900, "wire_tcp_bytes_sent": None,
                           "wire_tcp_bytes_received": None, "gpu_sm_util_mean_pct": 50.0,
                           "gpu_mem_peak_bytes": 2e9, "token_agreement_with_local": 1.0},
        }],
    }
    bandwidth = gpu_summary.Bandwidth(4.8e12, "nominal for H200")
    (row,) = gpu_summary.rows_of("1-gpt2", output, bandwidth)
    assert row.step_ms == pytest.approx(2.5) and row.engine_step_ms == pytest.approx(1.0)
    assert row.floor_ms == pytest.approx(248.879616e6 / 4.8e12 * 1e3)  # gpt2's fp16 weights, tied once
    assert row.times_floor == pytest.approx(1.0 / row.floor_ms)
    assert row.payload_bytes_per_round == 1000 and row.tcp_bytes_per_round is None
    header, line = gpu_summary.table_lines([row])
    assert header.split()[:4] == ["model", "mode", "phase", "path"]
    assert line.split()[:4] == ["gpt2", "remote_cache", "decode", "static+compile"]


def test_bandwidth_falls_back_to_the_name_table_and_honours_an_override(monkeypatch):
    assert gpu_summary.hbm_bandwidth("", 4300.0) == gpu_summary.Bandwidth(4.3e12, "given")
    monkeypatch.setattr(gpu_summary, "_nvml_bandwidth", lambda: None)  # no GPU seen: the name table decides
    assert gpu_summary.hbm_bandwidth("NVIDIA H200") == gpu_summary.Bandwidth(4.8e12, "nominal for H200")
    assert gpu_summary.hbm_bandwidth("a GPU no table names").bytes_per_s is None


def test_nvml_bandwidth_is_bus_width_times_memory_clock_on_both_edges(monkeypatch):
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda index: "gpu0",
        nvmlDeviceGetMemoryBusWidth=lambda handle: 6144, nvmlDeviceGetMaxClockInfo=lambda handle, clock: 3200,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H200", NVML_CLOCK_MEM=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    measured = gpu_summary.hbm_bandwidth("NVIDIA H200")
    assert measured.bytes_per_s == 6144 / 8 * 3200e6 * 2  # 4.9152e12 B/s: NVML wins over the name table
    assert measured.source == "NVML peak of NVIDIA H200 (6144-bit at 3200 MHz)"
