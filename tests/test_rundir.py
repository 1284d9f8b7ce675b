"""semgap.bench.rundir: run folders that sort by start, and `latest` moved atomically to the newest."""
import configparser
import os
from pathlib import Path

import pytest
import pytest_benchmark.cli

from semgap.bench import rundir
from semgap.bench.runrecord import RunRecord


def test_run_ids_sort_by_start_and_never_repeat():
    early, later = rundir.new_run_id(1_790_000_000), rundir.new_run_id(1_790_000_001)
    assert early.startswith("20260921-141320-") and early < later  # UTC
    assert len({rundir.new_run_id(1_790_000_000) for _ in range(100)}) == 100


def test_latest_is_a_relative_symlink_replaced_in_place(tmp_path):
    first, second = (tmp_path / rundir.new_run_id(t) for t in (1_790_000_000, 1_790_000_060))
    for run in (first, second):
        run.mkdir()
        rundir.point_latest(tmp_path, run)
        assert os.readlink(tmp_path / "latest") == run.name  # relative: the folder can be moved whole
    assert (tmp_path / "latest").resolve() == second
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([first.name, second.name, "latest"])
    (tmp_path / "benchmarks").mkdir()
    assert rundir.run_dirs(tmp_path) == [first, second]  # latest and the autosave history are not runs


def test_a_latest_that_is_not_a_symlink_is_left_alone(tmp_path):
    (tmp_path / "latest").mkdir()
    run = tmp_path / rundir.new_run_id()
    run.mkdir()
    with pytest.raises(FileExistsError, match="not a symlink semgap made"):
        rundir.point_latest(tmp_path, run)
    assert (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()


def test_the_run_id_is_in_the_json_pytest_benchmark_saves_and_autosaves():
    # pytest_benchmark_update_json puts this section into both the run folder's JSON and the autosave.
    record = RunRecord(run_id="20261203-073026-d2b3a8")
    assert record.full_section({"benchmarks": []})["run_id"] == "20261203-073026-d2b3a8"


def test_pytest_benchmark_compare_finds_the_autosaves_without_storage():
    """`pytest-benchmark compare` reads no config: the autosaves must be where its --storage default looks."""
    ini = configparser.ConfigParser()
    ini.read(Path(__file__).resolve().parents[1] / "pytest.ini")
    storage = [arg.split("=", 1)[1] for arg in ini["pytest"]["addopts"].split() if arg.startswith("--benchmark-storage=")]
    default = pytest_benchmark.cli.make_parser().parse_args(["compare"]).storage
    assert [Path(s.removeprefix("file://")) for s in storage] == [Path(default.removeprefix("file://"))]


def test_a_benchmark_stopped_in_its_setup_is_cut_short_and_a_skipped_one_is_not():
    record = RunRecord(cases={"a": None, "b": None, "c": None})
    record.begun |= {"a", "b", "c"}
    record.ended |= {"a", "b"}  # a's call ended; b skipped in its setup
    assert record.cut_short(record.begun) == ["c"]


def test_the_closing_line_names_only_what_was_written(tmp_path):
    record = RunRecord()
    assert record.written_kinds(tmp_path) == "JSON"
    record.written = [tmp_path / "report.md", tmp_path / "verdicts.json"]
    (tmp_path / "logs").mkdir()
    assert record.written_kinds(tmp_path) == "JSON, report, verdicts and logs"
    record.written.append(tmp_path / "tradeoff.png")
    assert record.written_kinds(tmp_path) == "JSON, report, verdicts, plots and logs"
