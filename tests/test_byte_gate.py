"""The CI byte gate (scripts/byte_gate.sh): its committed baseline is the default run's, and one added byte fails it."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from semgap.model import presets

from semgap.wire import transport

from .conftest import REPO

BASELINE = REPO / ".ci" / "bytes-baseline.json"
GATE_RUN = ("--semgap-blocks=1", "--semgap-rounds=1", "--semgap-warmup-rounds=1")  # as scripts/byte_gate.sh


def baseline() -> dict:
    return json.loads(BASELINE.read_text())


def compare(tmp_path: Path, fresh: dict) -> subprocess.CompletedProcess:
    (tmp_path / "fresh.json").write_text(json.dumps(fresh))
    return subprocess.run([sys.executable, "-m", "semgap.report", str(BASELINE), str(tmp_path / "fresh.json"),
                           "--fail-on-regression", "--out", str(tmp_path / "report")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_baseline_holds_every_case_of_the_default_run(outside_xdist):
    # Collected as the gate runs it: a new mode, phase or default that changes the cases needs a new baseline.
    collected = subprocess.run([sys.executable, "-m", "pytest", "--benchmark-only", "--collect-only", "-q",
                                "-p", "no:cacheprovider", "-k", "test_semantic_gap", *GATE_RUN],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    cases = {line.split("::", 1)[1] for line in collected.stdout.splitlines() if "::test_semantic_gap[" in line}
    recorded = baseline()
    assert cases and {bench["name"] for bench in recorded["benchmarks"]} == cases
    conditions = recorded["semgap"]
    assert (conditions["model"], conditions["transport"], conditions["run_status"]) == (
        presets.DEFAULT_MODEL, transport.DEFAULT_TRANSPORT, "complete")
    # judged on kernel TCP bytes, which are exact: every remote case has them
    assert all(bench["extra_info"]["wire_tcp_bytes_sent_rounds"][0] is not None
               for bench in recorded["benchmarks"] if bench["extra_info"]["mode"] != "local")


def test_the_baseline_passes_itself_and_one_added_byte_fails(tmp_path):
    same = compare(tmp_path, baseline())
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 byte regression(s)" in same.stdout

    grown = copy.deepcopy(baseline())
    [bench] = [b for b in grown["benchmarks"] if b["extra_info"]["case"] == "semantic-decode"]
    info = bench["extra_info"]
    for level in ("payload", "wire_tcp"):
        info[f"{level}_bytes_sent"] += 1
        info[f"{level}_bytes_sent_rounds"] = [value + 1 for value in info[f"{level}_bytes_sent_rounds"]]
    failed = compare(tmp_path, grown)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "1 byte regression(s)" in failed.stdout
    [line] = [line for line in failed.stdout.splitlines() if "semantic-decode" in line and "bytes" in line]
    assert "+1 (" in line and "BYTE REGRESSION" in line, line
