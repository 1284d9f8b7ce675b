"""Errors fit on a screen: a failure every benchmark would repeat is said once, in one line naming the fix,
and a command line that cannot measure stops before anything is built, saying what to type instead."""
import pytest

from semgap.client.modes import MODES, PHASES
from tests.conftest import unused_port

from .conftest import INNER_CONFTEST, REPO, TEST_MODEL
from .inner import QUICK, RUN_ORDER, by_case, new_run_dirs, run_json, run_pytest, run_suite, wait_for_no_leftovers

ALL_CASES = len(MODES) * len(PHASES)  # the default run: every mode and phase, one block

pytestmark = pytest.mark.slow

# Kills the spawned server in the third round of the third benchmark, just before the round's first
# call: the call finds the server gone, as when it dies while a client waits.
KILL_THE_SERVER = RUN_ORDER + r'''
import signal


def _kill_the_server_before(target):
    def killing(runner, *args):
        if _position(runner) == 2 and len(runner.rounds) == 2:
            os.killpg(runner.session.server.process.pid, signal.SIGKILL)
            runner.session.server.process.wait()
        return target(runner, *args)

    return killing


for _target in ("_prefill_round", "_decode_round"):
    setattr(semgap.bench.runner.CaseRunner, _target, _kill_the_server_before(getattr(semgap.bench.runner.CaseRunner, _target)))
'''


def assert_said_once(result, line: str) -> None:
    """`line` is the one error shown: in the failing benchmark's section and pytest's short summary, no traceback."""
    output = result.stdout.str()
    assert "Traceback" not in output and "\n    def " not in output, output  # no source listing either
    # The ERROR section, and pytest's short summary where the terminal is wide enough to hold it.
    assert 1 <= output.count(line) <= 2, output
    assert len(result.outlines) < 30, output  # the whole run fits on a screen


def test_a_server_lost_mid_benchmark_fails_that_one_keeps_what_finished_and_skips_the_rest(suite):
    suite.makeconftest(INNER_CONFTEST + KILL_THE_SERVER)
    result = run_pytest(suite, "--benchmark-only", "-rs", *QUICK, "--semgap-modes", "remote_cache,semantic")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    [run_dir] = new_run_dirs(suite.path)
    output = run_json(run_dir)
    [failure] = output["semgap"]["failures"]
    assert "lost the semgap server" in failure["reason"]
    result.stdout.fnmatch_lines([f"*SKIPPED*not run: {failure['name'].replace('[', '[[]')} failed with an error "
                                 "every benchmark would repeat*"])
    assert len(by_case(output)) == 2 and output["semgap"]["run_status"] == "failed"  # the two before it are kept


def test_an_unreachable_server_is_reported_once_and_every_other_benchmark_skips(suite):
    port = unused_port()  # nothing listens there
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-server", f"127.0.0.1:{port}")
    result.assert_outcomes(errors=1, skipped=ALL_CASES - 1)
    assert_said_once(result, f"no semgap server answers at 127.0.0.1:{port}")
    result.stdout.fnmatch_lines(["*start one with `python -m semgap.server --transport tcp --host 127.0.0.1 --port*"])
    [run_dir] = new_run_dirs(suite.path)  # the failed run has its directory; latest is not moved to it
    output = run_json(run_dir)
    assert output["benchmarks"] == [] and output["semgap"]["run_status"] == "failed"
    assert not (suite.path / "results" / "latest").exists()


def test_a_checkpoint_without_weights_is_reported_once(suite, preset_model):
    preset_model.config.save_pretrained(suite.path / "no-weights")  # config.json and nothing else
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-model=no-weights",
                        "--semgap-modes", "local,remote_cache")
    result.assert_outcomes(errors=1, skipped=3)
    assert_said_once(result, "no file named model.safetensors")


def test_a_model_of_a_list_that_cannot_open_is_named_and_the_models_opened_before_it_are_closed(suite, preset_model):
    """gpt2-test opens (its server spawns), then no-weights fails: the failure names that model, once, and
    gpt2-test's server was stopped by the run's teardown, not by the kernel when the run exited."""
    preset_model.config.save_pretrained(suite.path / "no-weights")
    result, _, pid = run_suite(suite, *QUICK, f"--semgap-model={TEST_MODEL},no-weights", "--semgap-modes", "local,remote_cache")
    result.assert_outcomes(errors=1, skipped=7)
    assert_said_once(result, "no-weights: ")
    result.stdout.fnmatch_lines(["*no-weights: *no file named model.safetensors*"])
    assert wait_for_no_leftovers(pid, suite.path) == []
    [log] = (suite.path / "results").glob(f"*/logs/server-{TEST_MODEL}-*.log")
    assert log.read_text().rstrip().endswith("semgap server stopped"), log.read_text()[-500:]


def test_a_server_that_does_not_start_in_time_is_one_line_with_its_log(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-server-start-timeout", "1",
                        "--semgap-modes", "remote_cache")
    result.assert_outcomes(errors=1, skipped=1)
    assert_said_once(result, "semgap server not ready after 1 s: ")
    result.stdout.fnmatch_lines(["*semgap server not ready after 1 s: *(whole log: results/*/logs/server-*.log)*"])


def test_xdist_with_benchmark_only_names_the_fix_and_the_fix_works(suite):
    # Both refused at configure or only collected: in this process, as nothing is spawned.
    result = suite.runpytest_inprocess("-n", "2", "--benchmark-only", *QUICK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-only cannot run under pytest-xdist (-n 2)" in result.stderr.str()
    assert "drop -n, or add -n 0 after it" in result.stderr.str()
    # pytest-benchmark's own refusal comes at start-up too, so collecting shows the fix gets past both.
    fixed = suite.runpytest_inprocess("-n", "2", "-n", "0", "--benchmark-only", *QUICK, "--collect-only", "-q")
    assert fixed.ret == pytest.ExitCode.OK, fixed.stderr.str()
    fixed.stdout.fnmatch_lines([f"{ALL_CASES} tests collected*"])


def test_histograms_go_into_the_run_directory(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-modes", "local",
                        "--semgap-phases", "prefill", "--benchmark-histogram")
    result.assert_outcomes(passed=1)
    [run_dir] = new_run_dirs(suite.path)
    assert [path.name for path in run_dir.glob("*.svg")] == ["histogram-prefill.svg"]


def test_histograms_without_pygal_are_refused_before_the_run_with_the_fix(suite):
    suite.makeconftest(INNER_CONFTEST + "import sys\nsys.modules['pygal'] = None  # as if not installed\n")
    result = run_pytest(suite, "--benchmark-only", "--benchmark-histogram")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-histogram needs pygal, not installed here: run `pip install 'pytest-benchmark[histogram]'`" \
        in result.stderr.str()


def test_a_path_option_as_a_separate_word_that_would_move_the_rootdir_stops_the_run(pytester, monkeypatch, tmp_path,
                                                                                     outside_xdist):
    monkeypatch.chdir(REPO)  # the checkout, with its pytest.ini; collecting only, so in this process

    def collect(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", *args)

    trapped = collect("--benchmark-storage", str(tmp_path))
    assert trapped.ret == pytest.ExitCode.USAGE_ERROR, trapped.stdout.str()[-2000:]
    assert f"(--benchmark-storage {tmp_path})" in trapped.stderr.str()
    assert "write path options with '='" in trapped.stderr.str()
    written = collect(f"--benchmark-storage={tmp_path}")  # the same option with '=': pytest.ini is read
    assert written.ret == pytest.ExitCode.OK, written.stderr.str()
    assert "tests/" not in written.stdout.str() and "benchmarks/test_semantic_gap.py" in written.stdout.str()


@pytest.mark.parametrize("host,where", [("127.0.0.1", "on this host's loopback"), ("::1", "on this host's loopback"),
                                        ("localhost", "on this host's loopback"), ("10.0.0.2", "on another host")])
def test_an_external_server_on_loopback_is_not_called_another_host(host, where):
    from types import SimpleNamespace
    from semgap.bench.config import SemgapConfig
    named = SemgapConfig.external_server.fget(SimpleNamespace(server=(host, 7000)))
    assert named == f"a server the suite did not start ({host}:7000, {where})"
