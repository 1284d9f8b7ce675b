#!/usr/bin/env bash
# Quick start 2: set up, run the library's own tests in parallel (namespace tests need root and iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests start about 360 Python processes (inner runs, servers, peers): let them keep the checkout's
# bytecode (__pycache__, ignored by git) rather than each compile semgap anew (0.45 s a process).
unset PYTHONDONTWRITEBYTECODE
# worksteal: an idle worker takes queued tests from a busy one, so no long test is left to run alone at the end.
exec .venv/bin/python -m pytest tests -n auto --dist worksteal "$@"
