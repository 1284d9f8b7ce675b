#!/usr/bin/env bash
# Quick start 1: set up, run the experiment on the default model, write results/<run id>/ (JSON, verdicts,
# report, plots, logs; results/latest points there).
# Extra arguments go to pytest, e.g. scripts/experiment.sh --semgap-model gpt2 --semgap-rounds 30
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --benchmark-only "$@"
