#!/usr/bin/env bash
# The GPU checks of issue 12, in one run of under 8 minutes on one GPU:
#   1. host syncs of the MoE hot path under torch.cuda.set_sync_debug_mode (bf16, fwd+bwd):
#      benchmarks/host_syncs.py --cuda, and the CUDA tests of tests/diagnostics;
#   2. training the demo config on CUDA in bf16 with torch.compile (dynroute train);
#   3. the GPU layer suite: Mixtral, OLMoE, Qwen3-30B-A3B MoE layers at N = 4096, 16384.
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh [OUT_DIR]            # default: benchmarks/results/gpu_check
#   PYTHONPATH=src bash benchmarks/gpu_check.sh OUT_DIR --dry-run    # check the plan, run nothing on a GPU
#
# Every step has its own time limit and log under OUT_DIR; a failed step does not stop
# the next. OUT_DIR/summary.json lists each step's status and seconds; the exit status
# is non-zero when any step failed. Run from the repository root.
set -uo pipefail

OUT="benchmarks/results/gpu_check"
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        -*) echo "error: unknown option $arg; use [OUT_DIR] [--dry-run]" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
PY="${PYTHON:-python}"
if [ ! -f benchmarks/host_syncs.py ]; then
    echo "error: run from the repository root (benchmarks/host_syncs.py not found here)" >&2
    exit 2
fi
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
STEPS=()

# run NAME LIMIT_S CMD...: run with a time limit, log to OUT/NAME.log, record the status
run() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start status
    start=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    status=$?
    local took=$(( $(date +%s) - start ))
    if [ "$status" -eq 0 ]; then echo "   ok (${took}s)"; else echo "   FAILED: exit $status (${took}s), see $OUT/$name.log"; tail -5 "$OUT/$name.log"; fi
    STEPS+=("{\"step\": \"$name\", \"exit\": $status, \"seconds\": $took}")
}

# The train flags come from the training work of issue 12: say so plainly when absent.
TRAIN_HELP=$(COLUMNS=200 "$PY" -m dynroute.cli train --help 2>&1)
MISSING=""
for flag in --device --dtype --compile; do
    grep -q -- "$flag" <<<"$TRAIN_HELP" || MISSING="$MISSING $flag"
done

if [ "$DRY" -eq 1 ]; then
    echo "dry run: output would go to $OUT"
    "$PY" -c "import torch, dynroute; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', dynroute.__file__)" || exit 1
    "$PY" benchmarks/host_syncs.py --cuda --dry-run || exit 1
    "$PY" benchmarks/layer.py --suite gpu --dry-run || exit 1
    if [ -n "$MISSING" ]; then
        echo "dynroute train lacks$MISSING: the training step would fail (it needs the train flags of issue 12)"
    else
        echo "dynroute train has --device --dtype --compile"
    fi
    exit 0
fi

"$PY" - >"$OUT/environment.json" <<'EOF'
import json, torch, transformers
print(json.dumps({
    "torch": torch.__version__, "transformers": transformers.__version__,
    "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
}))
EOF

# 1. host syncs (bf16, grouped dispatch, forward + backward)
run host_syncs 90 "$PY" benchmarks/host_syncs.py --cuda --out "$OUT/host_syncs_cuda.json"
run sync_tests 90 "$PY" -m pytest -q -p no:randomly tests/diagnostics -k cuda

# 2. the demo config on CUDA, bf16 autocast, torch.compile
if [ -n "$MISSING" ]; then
    echo "== train_demo: dynroute train lacks$MISSING (the train flags of issue 12); skipped"
    STEPS+=("{\"step\": \"train_demo\", \"exit\": 3, \"seconds\": 0, \"why\": \"train lacks$MISSING\"}")
else
    run train_demo 150 "$PY" -m dynroute.cli train --config configs/demo.toml --out "$OUT/train_demo" \
        --device cuda --dtype bfloat16 --compile --steps 200 --no-progress
    cp "$OUT/train_demo/metrics.jsonl" "$OUT/train_demo_metrics.jsonl" 2>/dev/null || true
fi

# 3. the GPU layer cells (each cell is saved as it finishes: a timeout keeps the rest)
run layer_gpu 200 "$PY" benchmarks/layer.py --suite gpu --repeats 10 --budget 20 --no-resume \
    --out "$OUT/layer_gpu.json"

( IFS=,; echo "[${STEPS[*]}]" ) >"$OUT/summary.json"
echo "wrote $OUT/summary.json"
! grep -q '"exit": [1-9]' "$OUT/summary.json"
