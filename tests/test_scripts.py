"""scripts/setup.sh: pip runs on the first install and whenever requirements.txt or pyproject.toml changes,
and only then."""
import shutil
import subprocess

import pytest

from .conftest import REPO

# Stands in for the venv's python: records each call (pip, compileall), and fails it when the file
# `pip-fails` exists.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../../pip-calls"
[ ! -e "$(dirname "$0")/../../pip-fails" ]
"""


@pytest.fixture
def checkout(tmp_path):
    """A checkout with the real setup.sh and requirements.txt, and a .venv whose python only records its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts")
    shutil.copy(REPO / "requirements.txt", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def calls(checkout, module: str) -> int:
    """How many times setup.sh ran `python -m MODULE` so far."""
    path = checkout / "pip-calls"
    return sum(line.startswith(f"-m {module} ") for line in path.read_text().splitlines()) if path.exists() else 0


def setup(checkout) -> tuple[int, int]:
    """Run setup.sh; (its exit code, pip calls so far)."""
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=checkout, capture_output=True, text=True, timeout=60)
    return result.returncode, calls(checkout, "pip")


def test_pip_runs_once_per_change_of_requirements_and_again_after_a_failed_install(checkout):
    assert setup(checkout) == (0, 2)  # the first install: requirements.txt, then semgap itself
    pip_calls = (checkout / "pip-calls").read_text()
    assert "-m pip install --quiet --no-compile --disable-pip-version-check -r requirements.txt" in pip_calls
    assert "--no-deps --no-build-isolation -e ." in pip_calls  # the plugin's entry point and commands
    assert calls(checkout, "compileall") == 1  # byte-compiled after pip, on every core
    assert setup(checkout) == (0, 2)  # nothing changed: no pip
    with open(checkout / "requirements.txt", "a") as requirements:
        requirements.write("tqdm>=4\n")
    (checkout / "pip-fails").touch()
    assert setup(checkout) == (1, 3)  # changed, and pip failed on the requirements: semgap is not installed
    assert calls(checkout, "compileall") == 1  # nothing to compile after a failed install
    (checkout / "pip-fails").unlink()
    assert setup(checkout) == (0, 5)  # a failed install leaves no stamp: pip runs again
    assert setup(checkout) == (0, 5)
    with open(checkout / "pyproject.toml", "a") as project:
        project.write("# a changed entry point\n")
    assert setup(checkout) == (0, 7)  # pyproject.toml changed: both installs again


def test_the_test_script_shows_skip_reasons_and_the_slowest_tests_once(tmp_path):
    """scripts/test.sh passes -rs and --durations=15, but not a second --durations when .ci/run gives one."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "test.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "setup.sh").write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*"\n')
    python.chmod(0o755)

    def args(*extra: str) -> list[str]:
        return subprocess.run(["bash", "scripts/test.sh", *extra], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=True).stdout.split()

    assert "-rs" in args() and args().count("--durations=15") == 1
    assert [arg for arg in args("--durations=15") if arg.startswith("--durations")] == ["--durations=15"]
