#!/usr/bin/env bash
# Quick start 2: set up, run the library's own tests in parallel (namespace tests need root and iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests start about 360 Python processes (inner runs, servers, peers): let them keep the checkout's
# bytecode (__pycache__, ignored by git) rather than each compile semgap anew (0.45 s a process).
unset PYTHONDONTWRITEBYTECODE
# worksteal: an idle worker takes queued tests from a busy one, so no long test is left to run alone at the end.
# -rs: why each test was skipped; --durations=15: the slowest tests, unless the caller (.ci/run) asks already.
durations=(--durations=15)
for arg in "$@"; do [[ "$arg" == --durations* ]] && durations=(); done
exec .venv/bin/python -m pytest tests -n auto --dist worksteal -rs "${durations[@]}" "$@"
