#!/usr/bin/env bash
# Creates .venv beside this checkout, installs requirements.txt into it (quietly, only what is missing),
# then semgap itself, editable and without dependencies (pyproject.toml: the pytest plugin's entry point
# and the semgap-server and semgap-report commands). pip runs only when requirements.txt or pyproject.toml
# changed since the last successful install (their sha256 is kept in .venv/.semgap-requirements.sha256;
# delete that file to make pip check again).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "semgap: creating .venv"
    python3 -m venv .venv
fi
STAMP=.venv/.semgap-requirements.sha256
WANTED=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
    exit 0
fi
# pip byte-compiles what it installs one file at a time (35 s of a fresh install here); compileall
# does the same on every core. A few of torch's files are for newer Pythons and do not compile: pip
# passes over them too.
if ! .venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -r requirements.txt; then
    echo "semgap: installing requirements.txt into .venv failed (see above)" >&2
    exit 1
fi
# --no-build-isolation: the build uses .venv's own setuptools, so nothing more is fetched.
if ! .venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check --no-deps \
        --no-build-isolation -e .; then
    echo "semgap: installing semgap itself (pip install -e .) into .venv failed (see above)" >&2
    exit 1
fi
.venv/bin/python -m compileall -qq -j 0 .venv/lib >/dev/null || true
echo "$WANTED" > "$STAMP"
