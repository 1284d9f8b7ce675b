#!/usr/bin/env bash
# GPU fidelity check: gpt2 and gpt-j-6b, every mode and phase, in under 5 minutes; installs nothing.
# Writes each session's benchmark JSON, verdicts, report, plots and server log into $OUT/<session>/latest/
# ($OUT else results/gpu/), then prints a summary table last. --cpu: the same steps on tiny-gpt2 on the
# CPU, a dry run of this script (tests/test_gpu_check.py runs it).
#
# Sessions, in order of importance, each skipped or cut when the time left cannot hold it (estimates
# for an H200 from DEVICE.md's probes; the first GPU run checks them):
#   1-gpt2            the four model-call modes (local, naive, remote_cache, semantic), both phases;
#                     static cache + torch.compile (CUDA graphs) where resident. The op-level modes
#                     (one RPC round trip per op in op_sync) are not in this budget.
#                     ~75 s: client compile ~20 s, server start + compile from inductor's cache ~15 s,
#                     naive (~0.5 s per call for 250 MB of weights) ~25 s, the rest ~15 s.
#   2-gpt-j-6b        local, remote_cache, semantic. ~140 s: client compile ~62 s, server start + compile
#                     ~35 s, one 12 GB weight upload ~20 s, rounds ~10 s, start-up and report ~15 s.
#   3-gpt-j-6b-naive  naive ships 12 GB of weights per call (~20 s each): 1 round, 1 decode step;
#                     both phases (3 calls) ~85 s, prefill alone ~45 s, else skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

CPU=0
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        *) echo "usage: $0 [--cpu]" >&2; exit 2 ;;
    esac
done

PY=python3  # the GPU machine has torch, transformers and pytest system-wide, and no venv
[ -x .venv/bin/python ] && PY=.venv/bin/python
OUT_DIR=${OUT:-results/gpu}
mkdir -p "$OUT_DIR"
START_S=$(date +%s)
SUMMARY_RESERVE_S=15  # the summary table must still print when a session runs into its time limit

if [ "$CPU" = 1 ]; then
    BUDGET_S=${SEMGAP_GPU_CHECK_BUDGET_S:-900}  # a dry run must run every session, however slow the CPU
    MODEL_A=tiny-gpt2; MODEL_B=tiny-gpt2
    # fast path on: static cache + compile through inductor's CPU backend, the GPU run's code path
    COMMON=(--semgap-device cpu --semgap-prompt-tokens 16 --semgap-blocks 1 --semgap-rounds 3 --semgap-warmup-rounds 1)
    # Session 1 compiles, as on the GPU; session 2 (the same tiny model again) stays eager: compiling
    # it twice would only repeat session 1 and double the dry run's time.
    STEPS=3; FAST=on; FAST_B=off
else
    BUDGET_S=${SEMGAP_GPU_CHECK_BUDGET_S:-290}
    MODEL_A=gpt2; MODEL_B=gpt-j-6b
    # 6 interleaved blocks of 1 round after 1 warm-up: the block test's least p is 1/64, and naive gpt2
    # decode, the longest benchmark, stays near 40 s.
    COMMON=(--semgap-device cuda --semgap-prompt-tokens 128 --semgap-blocks 6 --semgap-rounds 1 --semgap-warmup-rounds 1)
    STEPS=4; FAST=auto; FAST_B=auto
fi

elapsed() { echo $(( $(date +%s) - START_S )); }
left() { echo $(( BUDGET_S - SUMMARY_RESERVE_S - $(elapsed) )); }

# run_session NAME MIN_SECONDS PYTEST_ARGS...: one pytest session into $OUT_DIR/NAME, time-boxed.
run_session() {
    local name=$1 min_s=$2; shift 2
    local dir="$OUT_DIR/$name" limit
    limit=$(left)
    if [ "$limit" -lt "$min_s" ]; then
        echo "semgap gpu_check: $name skipped: ${limit} s left, it needs about ${min_s} s"
        return 0
    fi
    mkdir -p "$dir"
    echo "semgap gpu_check: $name starts at $(elapsed) s (limit ${limit} s)"
    # Paths as --option=value: pytest takes a bare existing path for a test path and roots itself there.
    # The run writes into $dir/<run id>/, and $dir/latest points at it once it measured something.
    # Only the experiment: the transport calibration (benchmarks/test_calibration.py) would not fit the budget.
    timeout -k 10 "$limit" "$PY" -m pytest --rootdir="$PWD" --benchmark-only -p no:cacheprovider -q -k test_semantic_gap \
        --benchmark-storage="$dir/benchmarks" --semgap-results="$dir" "${COMMON[@]}" "$@" >"$dir/pytest.log" 2>&1
    local rc=$?
    echo "semgap gpu_check: $name ended at $(elapsed) s with exit code $rc; log $dir/pytest.log"
    if [ "$rc" -ne 0 ]; then
        tail -n 25 "$dir/pytest.log"
    else
        grep -E "passed|failed|error" "$dir/pytest.log" | tail -n 1
    fi
}

echo "semgap gpu_check: python $PY, output $OUT_DIR, budget ${BUDGET_S} s"
"$PY" - <<'EOF'
import importlib.util, torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
missing = [name for name in ("matplotlib", "pynvml", "pytest_benchmark") if importlib.util.find_spec(name) is None]
if missing:
    print(f"missing modules: {', '.join(missing)} (matplotlib: no plots; gpu_summary still writes verdicts.json)")
EOF
if [ "$CPU" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "semgap gpu_check: no CUDA device here; run with --cpu for a dry run on the CPU" >&2
    exit 1
fi

run_session "1-$MODEL_A" 45 --semgap-model "$MODEL_A" --semgap-decode-steps "$STEPS" --semgap-fast-path "$FAST" \
    --semgap-modes local,naive,remote_cache,semantic
run_session "2-$MODEL_B" 90 --semgap-model "$MODEL_B" --semgap-decode-steps "$STEPS" --semgap-fast-path "$FAST_B" \
    --semgap-modes local,remote_cache,semantic
# naive decodes eager-dynamic whatever the setting (its cache crosses the wire); off also spares this
# session a compile for the client's reference tokens. Both phases need ~85 s on GPT-J, prefill ~45 s.
if [ "$(left)" -ge 95 ]; then NAIVE_PHASES=all; else NAIVE_PHASES=prefill; fi
run_session "3-$MODEL_B-naive" 45 --semgap-model "$MODEL_B" --semgap-modes naive --semgap-phases "$NAIVE_PHASES" \
    --semgap-fast-path off --semgap-decode-steps 1 --semgap-blocks 1 --semgap-rounds 1 --semgap-warmup-rounds 0 --semgap-rpc-timeout 300

echo "semgap gpu_check: sessions done at $(elapsed) s; summary in $OUT_DIR/summary.txt"
"$PY" -m semgap.report.gpu_summary "$OUT_DIR" --out "$OUT_DIR/summary.txt"
