#!/usr/bin/env bash
# Creates .venv beside this checkout and installs requirements.txt into it (quietly, only what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "semgap: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt; then
    echo "semgap: installing requirements.txt into .venv failed (see above)" >&2
    exit 1
fi
