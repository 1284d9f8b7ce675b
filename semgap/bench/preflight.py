"""Checks of how pytest was started, made before anything is built: each stops the run and names the fix."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
XDIST_FIX = "drop -n, or add -n 0 after it"
HISTOGRAM_MODULES = ("pygal", "pygaljs")
# pytest-benchmark's --benchmark-histogram without a value: a prefix it makes from the time.
_DEFAULT_HISTOGRAM_PREFIX = re.compile(r"benchmark_\d{8}_\d{6}")


def check_invocation(config: pytest.Config) -> None:
    """Raise pytest.UsageError for a command line that would measure nothing, or the wrong thing."""
    _check_rootdir(config)
    _check_xdist(config)
    _check_histogram(config)


def under_xdist(config: pytest.Config) -> bool:
    """Whether pytest-xdist distributes this session (pytest-benchmark then disables benchmarking)."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER")) or config.getoption("dist", "no") != "no"


def xdist_skip_reason() -> str:
    return f"benchmarking is disabled under pytest-xdist: semgap needs measured rounds; {XDIST_FIX}"


def _check_rootdir(config: pytest.Config) -> None:
    """pytest takes a plugin option's value given as a separate word for a path when it picks its rootdir.

    `--benchmark-storage /some/dir` (an existing folder outside the checkout) moves the rootdir to
    that folder: pytest.ini is not read, so testpaths, --benchmark-save-data and the autosave
    storage are gone and tests/ is collected into the experiment.
    """
    ini = CHECKOUT / "pytest.ini"
    invoked = Path(config.invocation_params.dir).resolve()
    if not ini.exists() or not invoked.is_relative_to(CHECKOUT) or config.getoption("inifilename", None):
        return
    if config.inipath is not None and Path(config.inipath).resolve() == ini:
        return
    words = _separate_path_words(config.invocation_params.args, invoked)
    culprit = f" ({' '.join(words)})" if words else ""
    raise pytest.UsageError(
        f"pytest did not read {ini}: it took a path given as a separate word{culprit} for a test path and "
        f"rooted itself at {config.rootpath}, so the experiment's settings are missing and tests/ would be "
        "collected with it; write path options with '=', e.g. --benchmark-storage=/some/dir"
    )


def _separate_path_words(args: tuple[str, ...], invoked: Path) -> list[str]:
    """`--option PATH` pairs of the command line whose PATH exists outside `invoked`."""
    pairs = []
    for option, value in zip(args, args[1:]):
        if option.startswith("--") and "=" not in option and not value.startswith("-"):
            path = (invoked / value).resolve()
            if path.exists() and not path.is_relative_to(invoked):
                pairs.append(f"{option} {value}")
    return pairs


def _check_xdist(config: pytest.Config) -> None:
    # pytest-benchmark's own error here says only that --benchmark-only and --benchmark-disable clash.
    if config.getoption("benchmark_only", False) and under_xdist(config):
        raise pytest.UsageError(
            f"--benchmark-only cannot run under pytest-xdist (-n {config.getoption('numprocesses', '?')}): "
            f"pytest-benchmark disables benchmarking there, since rounds in parallel processes would "
            f"time each other; {XDIST_FIX}"
        )


def _check_histogram(config: pytest.Config) -> None:
    if not config.getoption("benchmark_histogram", None):
        return
    missing = [name for name in HISTOGRAM_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"--benchmark-histogram needs {' and '.join(missing)}, not installed here: run "
            "`pip install 'pytest-benchmark[histogram]'` (scripts/setup.sh installs requirements.txt, which has it)"
        )


def histogram_in(config: pytest.Config, run_dir: Path) -> None:
    """Put --benchmark-histogram's SVGs into the run's directory when no prefix was given."""
    prefixes = config.getoption("benchmark_histogram", None)
    if prefixes and _DEFAULT_HISTOGRAM_PREFIX.fullmatch(prefixes[-1]):
        config.option.benchmark_histogram = [str(run_dir / "histogram")]
