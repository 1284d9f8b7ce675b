#!/usr/bin/env bash
# Quick start 2: set up, run the library's own tests in parallel (namespace tests need root and iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests -n auto "$@"
