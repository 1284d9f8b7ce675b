"""Tests of semgap.report: files written, terminal lines, run comparison and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semgap import report, verdicts

REPO = Path(__file__).resolve().parents[1]


def bench(mode, latency_s, sent=1000, received=1000, phase="decode", rate=None, bps=None, n=20):
    """Synthetic semgap benchmark with tight, deterministic round times (seconds)."""
    lat = [float(x) for x in latency_s * (1 + 0.01 * np.linspace(-1, 1, n))]
    if mode == "local":
        sent = received = 0
    extra = {"mode": mode, "phase": phase, "model": "tiny-gpt2", "link": "netns" if rate else "loopback",
             "link_rate": rate, "link_rate_bps": bps, "rpc_round_trips": 3, "server_compute_ms": 2.0,
             "payload_bytes_sent": sent, "payload_bytes_received": received,
             "payload_bytes_sent_rounds": [sent] * n, "payload_bytes_received_rounds": [received] * n,
             "wire_tcp_bytes_sent": sent + 100, "wire_tcp_bytes_received": received + 100,
             "wire_levels": ["payload", "tcp"], "token_agreement_with_local": 1.0}
    return {"name": f"test_semantic_gap[{mode}-{phase}]", "group": phase, "params": {}, "extra_info": extra,
            "stats": {"median": float(np.median(lat)), "rounds": n, "data": lat}}


def run_json(semantic_bytes=300, semantic_latency=0.06, rates=False):
    if rates:
        benches = [bench("local", 0.05)]
        for rate, bps, sem in (("100mbit", 10**8, 0.06), ("1gbit", 10**9, 0.08), ("10gbit", 10**10, 0.09)):
            benches += [bench("remote_cache", 0.1, rate=rate, bps=bps),
                        bench("semantic", sem, semantic_bytes, semantic_bytes, rate=rate, bps=bps)]
    else:
        benches = [bench(m, lat, s, s, phase=ph) for ph in ("prefill", "decode")
                   for m, lat, s in (("local", 0.05, 0), ("naive", 0.4, 500_000), ("remote_cache", 0.1, 1000),
                                     ("semantic", semantic_latency, semantic_bytes))]
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "commit_info": {"id": "deadbeef", "dirty": False},
            "benchmarks": benches, "datetime": "2025-01-01T00:00:00", "version": "5.3.0",
            "semgap": {"model": "tiny-gpt2", "link": "loopback", "versions": {"torch": "2.3.0"},
                       "failures": [{"name": "test_semantic_gap[naive-decode-1gbit]", "reason": "timeout"}]}}


# ---------------------------------------------------------------- write / terminal lines

def test_write_creates_report_files(tmp_path):
    data = run_json()
    rv = verdicts.compute(data)
    paths = report.write(rv, data, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["latency_vs_bytes.png", "report.md", "verdicts.json"]
    assert all(p.stat().st_size > 0 for p in paths)
    saved = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert [v["hypothesis"] for v in saved["verdicts"]] == ["H1", "H2", "H1", "H2"]
    assert {v["verdict"] for v in saved["verdicts"]} == {"SUPPORTED"}
    md = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## Verdicts", "## Per mode and phase", "## Against local", "## Against naive",
                    "## RTT projection", "## Failures", "## Conditions"):
        assert heading in md
    assert "**tcp**: kernel TCP socket counters" in md
    assert "timeout" in md and "Test CPU" in md and "deadbeef (clean)" in md
    assert (tmp_path / "out" / "latency_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"


def test_conditions_total_the_retransmitted_bytes():
    data = run_json()

    def row() -> str:
        markdown = report.markdown(verdicts.compute(data), data)
        return next(line for line in markdown.splitlines() if line.startswith("| TCP retransmitted"))

    assert row().endswith("| - |")  # a run from before the field: nothing claimed
    for index, bench_ in enumerate(data["benchmarks"]):
        n = len(bench_["stats"]["data"])
        bench_["extra_info"]["wire_tcp_bytes_retransmitted_sent_rounds"] = [0] * (n - 1) + [65_483 * (index == 3)]
        bench_["extra_info"]["wire_tcp_bytes_retransmitted_received_rounds"] = [None] * n
    assert "| sent 65,483, received unknown; 1 rounds with any |" in row()


def test_failures_only_run_still_writes_a_report(tmp_path):
    data = {"benchmarks": [], "semgap": {"failures": [{"name": "test_semantic_gap[semantic-decode]",
                                                       "reason": "RuntimeError: boom\ntraceback..."}],
                                         "warnings": ["netns unavailable"]}}
    rv = verdicts.compute(data)
    paths = report.write(rv, data, tmp_path)
    assert sorted(p.name for p in paths) == ["report.md", "verdicts.json"]
    md = (tmp_path / "report.md").read_text()
    assert "| test_semantic_gap[semantic-decode] | RuntimeError: boom |" in md
    assert "measurement warning: netns unavailable" in md
    assert report.terminal_lines(rv) == []


def test_rate_plot_only_with_rates(tmp_path):
    data = run_json(rates=True)
    rv = verdicts.compute(data)
    names = {p.name for p in report.write(rv, data, tmp_path)}
    assert "latency_vs_rate.png" in names
    assert "## Link-rate crossover (H2)" in (tmp_path / "report.md").read_text()
    assert "interpolated" in (tmp_path / "report.md").read_text()


def test_terminal_lines():
    rv = verdicts.compute(run_json(semantic_latency=0.095))
    header, *lines = report.terminal_lines(rv)
    assert header.startswith("reduction = 1 - semantic/remote_cache")
    assert len(lines) == 4
    h1_decode = [ln for ln in lines if ln.startswith("H1") and "decode" in ln][0]
    assert "+63.6% exact tcp vs 30%" in h1_decode  # tcp level: 1 - (400+400)/(1100+1100)
    assert h1_decode.endswith("SUPPORTED") and "NOT" not in h1_decode
    h2_decode = [ln for ln in lines if ln.startswith("H2") and "decode" in ln][0]
    assert "+5.0%" in h2_decode and h2_decode.endswith("NOT SUPPORTED")
    assert all(len(ln) < 100 for ln in lines)


# ---------------------------------------------------------------- compare

def test_compare_identical_runs_flags_nothing():
    result = report.compare_runs(run_json(), run_json())
    assert not result.has_regressions
    assert result.lines[-1] == "0 byte regression(s), 0 latency regression(s)"
    assert sum("within noise" in ln for ln in result.lines) == 8


def test_compare_flags_byte_regression_exactly():
    result = report.compare_runs(run_json(semantic_bytes=300), run_json(semantic_bytes=350))
    assert result.byte_regressions == ["prefill tiny-gpt2 -       semantic", "decode  tiny-gpt2 -       semantic"]
    assert not result.latency_regressions
    line = [ln for ln in result.lines if "BYTE REGRESSION" in ln][0]
    assert "+100 (+12.5%)" in line  # tcp level: (350+100)*2 - (300+100)*2


def test_compare_flags_latency_regression_beyond_noise():
    result = report.compare_runs(run_json(semantic_latency=0.06), run_json(semantic_latency=0.08))
    assert len(result.latency_regressions) == 2
    assert not result.byte_regressions
    faster = report.compare_runs(run_json(semantic_latency=0.08), run_json(semantic_latency=0.06))
    assert not faster.has_regressions
    assert sum(ln.endswith("faster") for ln in faster.lines) == 2


def test_compare_lines_wrapper():
    assert report.compare(run_json(), run_json()) == report.compare_runs(run_json(), run_json()).lines


# ---------------------------------------------------------------- CLI

def cli(*args):
    return subprocess.run([sys.executable, "-m", "semgap.report", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_regenerates_report(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(run_json()))
    proc = cli(src, "--out", tmp_path / "res", "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "res" / "report.md").exists()
    assert (tmp_path / "res" / "latency_vs_bytes.png").exists()
    assert "H2 latency decode" in proc.stdout


def test_cli_threshold_options_change_verdicts(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(run_json()))
    proc = cli(src, "--out", tmp_path / "res", "--h1", 0.9, "--h2", 0.9)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "res" / "verdicts.json").read_text())
    assert {v["verdict"] for v in saved["verdicts"]} == {"NOT SUPPORTED"}


def test_cli_uses_the_thresholds_the_run_saved_unless_told_otherwise(tmp_path):
    data = run_json()
    data.setdefault("semgap", {}).update({"h1": 0.9, "h2": 0.9, "alpha": 0.05})
    src = tmp_path / "run.json"
    src.write_text(json.dumps(data))
    assert cli(src, "--out", tmp_path / "saved").returncode == 0
    saved = json.loads((tmp_path / "saved" / "verdicts.json").read_text())
    assert {v["verdict"] for v in saved["verdicts"]} == {"NOT SUPPORTED"} and saved["h1"] == 0.9
    assert cli(src, "--out", tmp_path / "told", "--h1", 0.3).returncode == 0
    assert json.loads((tmp_path / "told" / "verdicts.json").read_text())["h1"] == 0.3


def test_cli_compares_two_runs(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(run_json(semantic_bytes=300)))
    b.write_text(json.dumps(run_json(semantic_bytes=350)))
    proc = cli(a, b, "--out", tmp_path / "res")
    assert proc.returncode == 0, proc.stderr
    assert "BYTE REGRESSION" in proc.stdout
    assert "2 byte regression(s)" in proc.stdout
    assert cli(a, b, "--out", tmp_path / "res", "--fail-on-regression").returncode == 1
    assert cli(a, a, "--out", tmp_path / "res", "--fail-on-regression").returncode == 0


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"machine_info": {}}', "missing 'benchmarks'"),
    ('{"benchmarks": []}', "no semgap benchmarks"),
])
def test_cli_rejects_invalid_input(tmp_path, content, message):
    src = tmp_path / "bad.json"
    src.write_text(content)
    proc = cli(src, "--out", tmp_path / "res")
    assert proc.returncode == 2
    assert message in proc.stderr and "bad.json" in proc.stderr
    assert not (tmp_path / "res").exists()


def test_cli_missing_file(tmp_path):
    proc = cli(tmp_path / "absent.json", "--out", tmp_path / "res")
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
