#!/usr/bin/env bash
# The CI byte gate (.ci/run calls it after the tests): a short run of the default experiment whose bytes per
# round, case by case, must not exceed those of the committed baseline, .ci/bytes-baseline.json. Bytes are
# deterministic (tests/test_wire_truth.py), so any increase is a change of the code, never noise; latency is
# printed beside them and never gated here (one block cannot judge it).
#
#   bash scripts/byte_gate.sh            compare a fresh run with the baseline; exit 1 on any byte increase
#   bash scripts/byte_gate.sh --update   after an intended change of bytes: write the fresh run as the baseline
#
# Extra arguments after --update, or alone, go to pytest. The run's folder is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=.ci/bytes-baseline.json
update=no
if [ "${1:-}" = "--update" ]; then update=yes; shift; fi
bash scripts/setup.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "semgap byte gate: a short run of the default experiment (1 block, 1 round after 1 warm-up)"
if ! .venv/bin/python -m pytest --benchmark-only -q -p no:cacheprovider -k test_semantic_gap \
        --semgap-blocks 1 --semgap-rounds 1 --semgap-warmup-rounds 1 --semgap-plots off --semgap-results "$work/results" \
        "$@" >"$work/pytest.log" 2>&1; then
    tail -n 40 "$work/pytest.log"
    echo "semgap byte gate: the run failed (its log's end is above)" >&2
    exit 1
fi
fresh="$work/results/latest/benchmark.json"
if [ "$update" = yes ]; then
    cp "$fresh" "$BASELINE"
    echo "semgap byte gate: wrote $BASELINE; commit it with the change that moved the bytes"
    exit 0
fi
.venv/bin/python -m semgap.report "$BASELINE" "$fresh" --fail-on-regression --out "$work/report"
