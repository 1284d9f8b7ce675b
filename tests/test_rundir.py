"""semgap.bench.rundir: run folders that sort by start, and `latest` moved atomically to the newest."""
import os

import pytest

from semgap.bench import rundir


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
