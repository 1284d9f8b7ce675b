#!/usr/bin/env bash
# Quick start 1: set up, run the experiment on the default model, write results/<run id>/ (JSON, verdicts,
# report, plots, logs; results/latest points there).
# Extra arguments go to pytest, e.g. scripts/experiment.sh --semgap-model gpt2 --semgap-rounds 30
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# -c pytest.ini: the checkout's settings and rootdir, whatever paths the arguments name (a path given as
# a separate word, as in --semgap-secret-file ~/.semgap-secret, would move pytest's rootdir there).
exec .venv/bin/python -m pytest -c pytest.ini --benchmark-only "$@"
