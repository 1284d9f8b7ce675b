"""The pytest plugin: semgap's options, the mode x phase matrix, fixtures, and the post-run verdicts."""
from __future__ import annotations

import os
import sys
import warnings

import pytest

from semgap.bench import benchtable, calibration, preflight, rundir, stopping

from semgap.bench.testbed import interrupts

from semgap.report import writer

from semgap.analysis import verdicts
from semgap.bench.batchrunner import BatchCase, BatchReference, BatchRunner, batch_cases
from semgap.bench.config import SemgapConfig, add_options
from semgap.bench.design import BlockItem, schedule
from semgap.bench.runner import CaseRunner
from semgap.bench.runsessions import RunSessions
from semgap.bench.session import ExperimentSession
from semgap.client.modes import MODES
from semgap.bench.runrecord import CaseItem, RunRecord, SessionFailure, one_line

settings_key = pytest.StashKey[SemgapConfig]()
run_key = pytest.StashKey[RunRecord]()
merged_key = pytest.StashKey[bool]()
stop_key = pytest.StashKey[stopping.SequentialStop]()
# Every benchmark semgap runs, by its parameter, and how its failures name it (the case id after this).
BENCHMARK_PARAMETERS = {"semgap_case": "", "semgap_probe": "calibration:", "semgap_batch_case": "batching:",
                        "semgap_kv_case": "kv-recovery:"}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    preflight.check_invocation(config)
    settings = SemgapConfig.from_pytest(config)
    config.stash[settings_key] = settings
    if config.getoption("benchmark_json", None) is None:  # pytest-benchmark writes the run's JSON into its folder
        config.option.benchmark_json = settings.run_dir / "benchmark.json"
    preflight.histogram_in(config, settings.run_dir)
    # A benchmark that stops at a session-level failure, before its rounds, is reported as such already.
    config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used at all in this test")
    record = config.stash[run_key] = RunRecord(run_id=settings.run_dir.name)
    config.stash[stop_key] = stopping.SequentialStop(settings, lambda line: _say(config, line))
    config.pluginmanager.register(SessionFinishGuard(record), "semgap-sessionfinish")
    record.guard.install()


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal in the middle of the run, on a line of its own."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.ensure_newline()
        terminal.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    record = config.stash.get(run_key, None)
    if record is None:
        return
    record.guard.uninstall()
    if record.interrupted_by and record.final_exit_status is not None:
        # A run stopped by SIGINT/SIGTERM: its JSON, report and summary are written, its servers and
        # links gone. The interpreter's own shutdown (torch's and transformers' exit hooks, ~1 s on a
        # 2-core VM) would only delay the exit the signal asked for (issue 24: at most 3 s), so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(record.final_exit_status)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "semgap_case" in metafunc.fixturenames:
        # One benchmark per (case, block), in the order they run: block after block (see design.schedule).
        matrix = schedule(metafunc.config.stash[settings_key])
        metafunc.parametrize("semgap_case", matrix, ids=[item.id for item in matrix])
    if "semgap_probe" in metafunc.fixturenames:
        transports = calibration.calibrated_transports(metafunc.config.stash[settings_key])
        metafunc.parametrize("semgap_probe", calibration.probes(transports), ids=lambda probe: probe.id)
    if "semgap_batch_case" in metafunc.fixturenames:
        batching = batch_cases(metafunc.config.stash[settings_key])
        if not batching:
            pytest.skip("--semgap-batch-sessions none: the batching benchmark is left out", allow_module_level=True)
        metafunc.parametrize("semgap_batch_case", batching, ids=[case.id for case in batching])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Decided before any fixture runs, so a disabled run builds no model, server or namespace.
    reason = _benchmarking_disabled(config)
    if reason:
        for item in items:
            if BENCHMARK_PARAMETERS.keys() & set(getattr(item, "fixturenames", ())):
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session: pytest.Session) -> None:
    record = session.config.stash[run_key]
    for item in session.items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        for name, prefix in BENCHMARK_PARAMETERS.items():
            if name in params:
                record.cases[item.nodeid] = CaseItem(item.name, prefix + params[name].id)


def _benchmarking_disabled(config: pytest.Config) -> str:
    if config.getoption("benchmark_disable", False):
        return "benchmarking is disabled (--benchmark-disable): semgap needs measured rounds"
    if config.getoption("benchmark_skip", False):
        return "benchmarks are skipped (--benchmark-skip)"
    if preflight.under_xdist(config):
        return preflight.xdist_skip_reason()
    return ""


@pytest.fixture(scope="session")
def semgap_settings(request: pytest.FixtureRequest) -> SemgapConfig:
    return request.config.stash[settings_key]


@pytest.fixture(scope="session")
def semgap_sessions(request: pytest.FixtureRequest, semgap_settings: SemgapConfig):
    """Every model's link, server and connection, shared by every benchmark; all torn down at the end, also on failure.

    None when they could not be opened: the first benchmark reports why in one line, the others skip.
    """
    record = request.config.stash[run_key]
    record.started = True
    try:
        record.session = RunSessions(semgap_settings, _progress_writer(request.config)).open()
    except Exception as error:  # open() has undone itself; a KeyboardInterrupt stops the run instead
        record.session_failure = SessionFailure(one_line(error))
        yield None
        return
    try:
        yield record.session
    finally:
        # pytest tears session fixtures down with the last benchmark, not in sessionfinish: a signal
        # now waits until the links and servers are gone, then stops the run.
        with interrupts.held():
            try:
                record.conditions = record.session.conditions()
            finally:
                record.session.close()
                record.session = None


@pytest.fixture(scope="session")
def semgap_session(semgap_sessions: RunSessions | None) -> ExperimentSession | None:
    """The first model's session: the model-free calibration runs on its link."""
    return session_of(semgap_sessions, "")


def session_of(sessions: RunSessions | None, model: str) -> ExperimentSession | None:
    """`model`'s session, or None when the sessions did not open."""
    return None if sessions is None else sessions.of(model)


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
def semgap_bench(request: pytest.FixtureRequest, semgap_sessions: RunSessions | None, semgap_case: BlockItem) -> CaseRunner:
    session = session_of(semgap_sessions, semgap_case.case.model)
    _check_session(request, session, MODES[semgap_case.case.mode].needs_server)
    return CaseRunner(session, semgap_case)


@pytest.fixture(scope="session")
def semgap_batch_references() -> dict[str, BatchReference]:
    """Per model, every batching session's prompt and local's tokens for it, computed once, when first needed."""
    return {}


@pytest.fixture
def semgap_batching(request: pytest.FixtureRequest, semgap_sessions: RunSessions | None,
                    semgap_batch_references: dict[str, BatchReference], semgap_batch_case: BatchCase) -> BatchRunner:
    session = session_of(semgap_sessions, semgap_batch_case.model)
    if session is not None and session.transport is None:
        pytest.skip("the batching benchmark needs the server: --semgap-modes names no remote mode")
    _check_session(request, session, needs_server=True)
    model = session.settings.model
    if model not in semgap_batch_references:
        semgap_batch_references[model] = BatchReference.compute(session)
    return BatchRunner(session, semgap_batch_case, semgap_batch_references[model])


def _check_session(request: pytest.FixtureRequest, semgap_session: ExperimentSession | None, needs_server: bool) -> None:
    """Stop a benchmark at a failure every benchmark would repeat: the first fails saying it, the others skip."""
    record = request.config.stash[run_key]
    if semgap_session is not None and needs_server and record.session_failure is None:
        try:
            semgap_session.check_server()
        except RuntimeError as error:  # lost while an earlier benchmark ran, which failed saying so
            earlier = record.failures[-1]["name"] if record.failures else ""
            record.session_failure = SessionFailure(one_line(error), reported_by=earlier)
    if record.session_failure is not None and (semgap_session is None or needs_server):
        record.session_failure.stop(request.node.name)


@pytest.fixture(scope="module")
def semgap_calibration(request: pytest.FixtureRequest, semgap_session: ExperimentSession | None):
    """The calibration peers on the run's link; stopped, and their connections closed, after the module."""
    failure = request.config.stash[run_key].session_failure
    if semgap_session is None:
        pytest.skip(f"not calibrated: the session did not open ({failure.line if failure else 'unknown'})")
    reason = calibration.Calibration.unavailable(semgap_session)
    if reason:
        pytest.skip(reason)
    runner = calibration.Calibration(semgap_session)
    try:
        yield runner.start()
    finally:
        runner.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A block the sequential design no longer needs is left out: not run, not reported (semgap/bench/stopping.py)."""
    return True if item.config.stash[stop_key].skips(item) else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    record = item.config.stash[run_key]
    if item.nodeid in record.cases:  # an interrupt from here on cuts it short (SessionFinishGuard)
        record.begun.add(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    record = item.config.stash[run_key]
    if item.nodeid not in record.cases:
        return report
    if report.when == "call" or (report.when == "setup" and not report.passed):
        record.ended.add(item.nodeid)
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: why")
        record.add_skip(item.nodeid, str(report.longrepr[2]))
    if report.failed:
        # pytest-benchmark leaves errored benchmarks out of its JSON: keep why they failed.
        reason = call.excinfo.exconly() if call.excinfo else str(report.longrepr)
        record.add_failure(item.nodeid, report.when, reason)
    return report


class SessionFinishGuard:
    """The outermost sessionfinish (a plugin of its own: a module holds one implementation per hook).

    Signals wait until pytest-benchmark's JSON, the teardown and the report are done, and a
    benchmark an interrupt cut short is taken out before pytest-benchmark saves.
    """

    def __init__(self, record: RunRecord):
        self.record = record

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int):
        self.record.exit_status = exitstatus
        with interrupts.held(reraise=False), warnings.catch_warnings():
            # semgap writes the JSON of a run that measured nothing itself (pytest_sessionfinish below)
            warnings.filterwarnings("ignore", message="Not saving anything, no benchmarks have been run")
            self._drop_cut_short(session.config)
            result = yield
        if self.record.interrupted_by and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERRUPTED  # a signal during teardown or the report
        self.record.final_exit_status = int(session.exitstatus)
        return result

    def _drop_cut_short(self, config: pytest.Config) -> None:
        """Drop a benchmark an interrupt stopped: no bytes or tokens reached its extra_info, and in warm-up it has no round."""
        record, benchmark_session = self.record, config.pluginmanager.get_plugin("pytest-benchmark")
        if benchmark_session is None:
            return
        cut_short = set(record.cut_short([bench.fullname for bench in benchmark_session.benchmarks]))
        signal_name = record.interrupted_by or "KeyboardInterrupt"
        for nodeid in sorted(cut_short):
            record.add_failure(nodeid, "call", f"interrupted by {signal_name} before its rounds finished; "
                                               "its rounds are left out")
        for nodeid in sorted(set(record.cut_short(record.begun)) - cut_short):  # stopped before its first round
            record.add_failure(nodeid, "setup", f"interrupted by {signal_name} while it was being set up, "
                                                "before its first round")
        benchmark_session.benchmarks[:] = [b for b in benchmark_session.benchmarks if b.fullname not in cut_short]


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    record = config.stash[run_key]
    if record.session is not None:
        record.conditions = record.session.conditions()
    output_json["semgap"] = record.full_section(output_json)
    if record.output_json is None:  # the --benchmark-json file's, with raw data, comes before the autosave's
        record.output_json = output_json
        config.getoption("benchmark_json").parent.mkdir(parents=True, exist_ok=True)  # pytest-benchmark does not


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    record, settings = config.stash[run_key], config.stash[settings_key]
    if not record.started:
        return  # no semgap benchmark started (none selected, --collect-only, benchmarking disabled)
    record.save_json(config.getoption("benchmark_json"), settings.run_dir)
    try:
        record.verdicts = verdicts.compute(
            record.output_json, h1=settings.h1, h2=settings.h2, alpha=settings.alpha,
            min_agreement=settings.min_agreement,
        )
        record.written = writer.write(record.verdicts, record.output_json, settings.run_dir,
                                      draw_plots=settings.plots)
    except Exception as error:  # a broken report must not hide the measurements already saved
        record.report_error = f"{type(error).__name__}: {error}"
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    if record.output_json["benchmarks"] and record.run_status == "complete":
        rundir.point_latest(settings.results_dir, settings.run_dir)
    record.save_json(config.getoption("benchmark_json"), settings.run_dir)  # again, should a signal have come while the report was written
    if not record.report_error and settings.enforce and verdicts.any_not_supported(record.verdicts):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(tryfirst=True)
def pytest_benchmark_group_stats(config: pytest.Config, benchmarks: list[dict], group_by: str):
    """pytest-benchmark's table with one row per matrix case (semgap/bench/benchtable.py); its own grouping
    of the rows, and the JSON, are unchanged. A comparison (`--benchmark-compare`) is left as it is."""
    if any(bench.get("source") for bench in benchmarks):
        return None
    from pytest_benchmark.plugin import pytest_benchmark_group_stats as group_stats

    rows = benchmarks and benchtable.one_row_per_case(benchmarks)
    config.stash[merged_key] = [row["name"] for row in rows] != [bench["name"] for bench in benchmarks]
    return group_stats(config=config, benchmarks=rows, group_by=group_by)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables: the verdicts are the last thing on the screen
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    record, settings = config.stash[run_key], config.stash[settings_key]
    if not record.started or record.output_json is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("semgap verdicts")
    if config.stash.get(merged_key, False):
        write(benchtable.NOTE)
    if record.interrupted_by:
        write(f"semgap: interrupted by {record.interrupted_by}; the benchmarks that finished are saved", yellow=True)
    for warning in record.conditions.get("warnings", []):
        write(f"measurement warning: {warning}", yellow=True)
    for failure in record.failures:
        if record.session_failure is None or record.session_failure.line not in failure["reason"]:  # said above
            write(f"failed: {failure['case']} ({failure['when']}): {failure['reason'].splitlines()[0]}", red=True)
    if record.report_error:
        write(f"semgap could not compute its verdicts: {record.report_error}", red=True)
    else:
        for line in writer.terminal_lines(record.verdicts):
            write(line)
    by_reason: dict[str, list[str]] = {}
    for skip in record.skipped:
        by_reason.setdefault(skip["reason"], []).append(skip["case"])
    for reason, skipped in by_reason.items():  # one line per reason: a lost server skips every benchmark alike
        named = skipped[0] if len(skipped) == 1 else f"{len(skipped)} benchmarks ({skipped[0]}, ...)"
        write(f"skipped: {named}: {reason}", yellow=True)
    where = f"semgap: run {record.run_status}; {record.written_kinds(settings.run_dir)} in {settings.run_dir}/"
    latest = settings.results_dir / rundir.LATEST
    if not record.output_json["benchmarks"]:
        write(f"{where}; it measured nothing, so {latest} is unchanged")
    elif record.run_status == "complete":
        write(f"{where} ({latest} points there)")
    else:
        write(f"{where}; kept under its id: {latest} moves only to a complete run", yellow=True)
    if not record.report_error and settings.enforce and verdicts.any_not_supported(record.verdicts):
        write("semgap: a hypothesis is NOT SUPPORTED or LOSSY and --semgap-enforce is set: failing the run",
              red=True, bold=True)
