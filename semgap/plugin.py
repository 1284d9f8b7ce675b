"""The pytest plugin: semgap's options, the mode x phase matrix, fixtures, and the post-run verdicts."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest

from semgap import calibration, report, verdicts
from semgap.config import SemgapConfig, add_options
from semgap.harness import Case, CaseRunner, ExperimentSession, cases

settings_key = pytest.StashKey[SemgapConfig]()
run_key = pytest.StashKey["RunRecord"]()


@dataclass
class RunRecord:
    """What the plugin learns during the run and reports after it."""

    failures: list[dict] = field(default_factory=list)
    conditions: dict = field(default_factory=dict)
    session: ExperimentSession | None = None  # while it is open: after -x or Ctrl-C the JSON is written before teardown
    verdicts: object | None = None
    output_json: dict | None = None
    report_error: str = ""


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[settings_key] = SemgapConfig.from_pytest(config)
    config.stash[run_key] = RunRecord()
    json_path = config.getoption("benchmark_json", None)
    if json_path is not None:  # pytest-benchmark does not create the folder it writes into
        json_path.parent.mkdir(parents=True, exist_ok=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "semgap_case" in metafunc.fixturenames:
        matrix = cases(metafunc.config.stash[settings_key])
        metafunc.parametrize("semgap_case", matrix, ids=[case.id for case in matrix])
    if "semgap_probe" in metafunc.fixturenames:
        metafunc.parametrize("semgap_probe", calibration.probes(), ids=lambda probe: probe.id)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Decided before any fixture runs, so a disabled run builds no model, server or namespace.
    reason = _benchmarking_disabled(config)
    if reason:
        for item in items:
            if {"semgap_case", "semgap_probe"} & set(getattr(item, "fixturenames", ())):
                item.add_marker(pytest.mark.skip(reason=reason))


def _benchmarking_disabled(config: pytest.Config) -> str:
    if config.getoption("benchmark_disable", False):
        return "benchmarking is disabled (--benchmark-disable): semgap needs measured rounds"
    if config.getoption("benchmark_skip", False):
        return "benchmarks are skipped (--benchmark-skip)"
    if os.environ.get("PYTEST_XDIST_WORKER") or config.getoption("numprocesses", None):
        return "benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds"
    return ""


@pytest.fixture(scope="session")
def semgap_settings(request: pytest.FixtureRequest) -> SemgapConfig:
    return request.config.stash[settings_key]


@pytest.fixture(scope="session")
def semgap_session(request: pytest.FixtureRequest, semgap_settings: SemgapConfig):
    """The link, server and connection shared by every benchmark; all torn down at the end, also on failure."""
    record = request.config.stash[run_key]
    record.session = ExperimentSession(semgap_settings, _progress_writer(request.config)).open()
    try:
        yield record.session
    finally:
        try:
            record.conditions = record.session.conditions()
        finally:
            record.session.close()
            record.session = None


def _progress_writer(config: pytest.Config):
    """Write set-up progress straight to the terminal, past pytest's output capture."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if terminal is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(line)

    return write


@pytest.fixture
def semgap_bench(semgap_session: ExperimentSession, semgap_case: Case) -> CaseRunner:
    return CaseRunner(semgap_session, semgap_case)


@pytest.fixture(scope="module")
def semgap_calibration(semgap_session: ExperimentSession):
    """The calibration peers on the run's link; stopped, and their connections closed, after the module."""
    reason = calibration.Calibration.unavailable(semgap_session)
    if reason:
        pytest.skip(reason)
    runner = calibration.Calibration(semgap_session)
    try:
        yield runner.start()
    finally:
        runner.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    case = getattr(item, "callspec", None) and item.callspec.params.get("semgap_case")
    if case is not None and report.failed:
        # pytest-benchmark leaves errored benchmarks out of its JSON: keep why they failed.
        reason = call.excinfo.exconly() if call.excinfo else str(report.longrepr)
        item.config.stash[run_key].failures.append(
            {"name": item.name, "case": case.id, "when": report.when, "reason": reason[:2000]}
        )
    return report


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    record = config.stash[run_key]
    if record.session is not None:
        record.conditions = record.session.conditions()
    output_json["semgap"] = {**record.conditions, "calibration": calibration.summarize(output_json["benchmarks"]),
                             "failures": record.failures}
    record.output_json = output_json


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    record, settings = config.stash[run_key], config.stash[settings_key]
    if record.output_json is None:
        if not record.failures:
            return
        # Every benchmark failed, so pytest-benchmark wrote nothing: still leave the reasons behind.
        record.output_json = {"benchmarks": [], "semgap": {**record.conditions, "failures": record.failures}}
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        (settings.results_dir / "failures.json").write_text(json.dumps(record.output_json, indent=2))
    try:
        record.verdicts = verdicts.compute(
            record.output_json, h1=settings.h1, h2=settings.h2, alpha=settings.alpha
        )
        report.write(record.verdicts, record.output_json, settings.results_dir)
    except Exception as error:  # a broken report must not hide the measurements already saved
        record.report_error = f"{type(error).__name__}: {error}"
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    if settings.enforce and verdicts.any_not_supported(record.verdicts):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    record, settings = config.stash[run_key], config.stash[settings_key]
    if record.output_json is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("semgap verdicts")
    for warning in record.conditions.get("warnings", []):
        write(f"measurement warning: {warning}", yellow=True)
    for failure in record.failures:
        write(f"failed: {failure['case']} ({failure['when']}): {failure['reason'].splitlines()[0]}", red=True)
    if record.report_error:
        write(f"semgap could not compute its verdicts: {record.report_error}", red=True)
        return
    for line in report.terminal_lines(record.verdicts):
        write(line)
    write(f"report, verdicts and plots in {settings.results_dir}/")
    if settings.enforce and verdicts.any_not_supported(record.verdicts):
        write("semgap: a hypothesis is NOT SUPPORTED and --semgap-enforce is set: failing the run", red=True, bold=True)
