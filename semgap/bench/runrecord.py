"""What a run learns as it goes (failures, interrupts, which benchmarks finished), the status it ends with, and its JSON."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from semgap.bench import calibration, stopping
from semgap.bench.runsessions import RunSessions
from semgap.bench.testbed.interrupts import SignalGuard

def one_line(error: BaseException) -> str:
    """An error as one line: its `summary` if it has one (semgap's errors that carry a log), else its first
    line, after the error's type unless semgap raised it (semgap's messages say what to do)."""
    summary = getattr(error, "summary", None)
    if summary:
        return summary
    text = str(error).strip()
    if not text:
        return type(error).__name__
    own = type(error).__module__.split(".")[0] == "semgap"
    return text.splitlines()[0] if own else f"{type(error).__name__}: {text.splitlines()[0]}"


@dataclass
class SessionFailure:
    """A failure every later benchmark would repeat (no server, a model that cannot load, a lost server).

    The first benchmark to meet it fails with one line; every other skips, naming that benchmark.
    """

    line: str
    reported_by: str = ""  # the name of the benchmark that reported it

    def stop(self, name: str) -> None:
        """Fail benchmark `name` with the one line if none did yet, else skip it with a pointer; never returns."""
        if not self.reported_by:
            self.reported_by = name
            pytest.fail(f"semgap: {self.line}", pytrace=False)
        pytest.skip(f"not run: {self.reported_by} failed with an error every benchmark would repeat")


@dataclass
class CaseItem:
    name: str  # the test's name, e.g. test_semantic_gap[semantic-decode]
    case: str  # the case id, e.g. semantic-decode


@dataclass
class RunRecord:
    """What the plugin learns during the run and reports after it."""

    run_id: str = ""  # the name of the run's folder (rundir.new_run_id), in its JSON, verdicts and report
    guard: SignalGuard = field(default_factory=SignalGuard)
    cases: dict[str, CaseItem] = field(default_factory=dict)  # node id -> the semgap benchmark to run there (any kind)
    started: bool = False  # a semgap benchmark set up its session: this run gets a directory
    begun: set[str] = field(default_factory=set)  # node ids whose setup began
    ended: set[str] = field(default_factory=set)  # node ids whose call phase ended, or whose setup failed or skipped
    failures: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"name", "case", "reason"} of each skipped benchmark
    session_failure: SessionFailure | None = None
    conditions: dict = field(default_factory=dict)
    session: RunSessions | None = None  # while they are open: after -x or Ctrl-C the JSON is written before teardown
    exit_status: int = 0
    final_exit_status: int | None = None  # the session's, after every sessionfinish hook
    verdicts: object | None = None
    output_json: dict | None = None
    report_error: str = ""
    written: list[Path] = field(default_factory=list)  # the report's files (writer.write), once written

    def add_failure(self, nodeid: str, when: str, reason: str) -> None:
        item = self.cases[nodeid]
        self.failures.append({"name": item.name, "case": item.case, "when": when, "reason": reason[:2000]})

    def add_skip(self, nodeid: str, reason: str) -> None:
        item = self.cases[nodeid]
        self.skipped.append({"name": item.name, "case": item.case, "reason": reason.removeprefix("Skipped: ")[:500]})

    def cut_short(self, nodeids) -> list[str]:
        """Which of `nodeids` are semgap benchmarks whose call never ended: an interrupt stopped them.

        A benchmark that failed ended; whether its rounds are kept is pytest-benchmark's and the
        runner's decision (an error inside the rounds drops them, a failed check after them keeps them).
        """
        return [nodeid for nodeid in nodeids if nodeid in self.cases and nodeid not in self.ended]

    @property
    def interrupted_by(self) -> str | None:
        return self.guard.received

    @property
    def run_status(self) -> str:
        """`interrupted` (a signal, or pytest stopped by a KeyboardInterrupt), `failed` (a benchmark or the
        session failed), else `complete`."""
        if self.interrupted_by or self.exit_status == pytest.ExitCode.INTERRUPTED:
            return "interrupted"
        if self.failures or self.session_failure:
            return "failed"
        return "complete"

    def written_kinds(self, run_dir: Path) -> str:
        """What the run's folder holds, in words: "JSON, report, verdicts, plots and logs", less what is missing."""
        kinds = ["JSON"] + (["report", "verdicts"] if self.written else [])
        kinds += ["plots"] * any(path.suffix == ".png" for path in self.written)
        kinds += ["logs"] * (run_dir / "logs").is_dir()
        return ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else kinds[0]

    def semgap_section(self) -> dict:
        """The run's conditions and status, as the `semgap` section of its JSON has them."""
        return {"run_id": self.run_id, **self.conditions, "failures": self.failures, "skipped": self.skipped,
                "run_status": self.run_status,
                "interrupted_by": self.interrupted_by}

    def full_section(self, output_json: dict) -> dict:
        """The JSON's `semgap` section: the run's conditions and status, its transport calibration, and the
        sequential design's looks (None for a fixed design)."""
        section = {**self.semgap_section(), "calibration": calibration.summarize(output_json["benchmarks"])}
        looked = stopping.outcome({**output_json, "semgap": section}) if section.get("design") else None
        return {**section, "looks": looked.to_dict() if looked else None}

    def save_json(self, written: Path, run_dir: Path) -> None:
        """The run's JSON in its folder, also when pytest-benchmark wrote none (nothing was measured), and
        written again when a signal came after pytest-benchmark wrote it (during teardown)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.output_json is None:
            self.output_json = {"benchmarks": []}
        section = self.full_section(self.output_json)
        if self.output_json.get("semgap") != section:
            self.output_json["semgap"] = section
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_text(json.dumps(self.output_json, indent=2, default=str))
        in_run_dir = run_dir / "benchmark.json"
        if written.resolve() != in_run_dir.resolve():  # --benchmark-json named another place: keep a copy here too
            shutil.copyfile(written, in_run_dir)
