#!/usr/bin/env bash
# Quick start 2: set up, run the library's own tests in parallel (namespace tests need root and iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# worksteal: an idle worker takes queued tests from a busy one, so no long test is left to run alone at the end.
exec .venv/bin/python -m pytest tests -n auto --dist worksteal "$@"
