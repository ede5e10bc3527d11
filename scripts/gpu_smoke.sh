#!/usr/bin/env bash
# The GPU check, one script for a lent machine: the fast flagship end to end from nothing (the fast teacher trained,
# the student distilled, tested), a distillation epoch in bf16-mixed and in fp32, then the benchmark's rates and its
# time to accuracy on the GPU. Usage, from the repo root:
#   bash scripts/gpu_smoke.sh [DATA_DIR] [TEACHER_CKPT] [PART ...]
# DATA_DIR (default data/) holds mnist/ (the four IDX files, .gz or not: a GPU machine may have no network);
# TEACHER_CKPT (optional, "" for none) skips training a teacher for the epoch checks and the rate rows.
# PARTs, in order: flagship, epochs, rates, tta (default: all four). A part that fails stops the script non-zero.
# Everything lands in one fresh folder, printed at the end: run folders, bench_gpu.json, tta_gpu.json and .png.
# DEVICE=cpu QUICK=1 checks the script itself on a CPU: the same commands, two epochs a run in the benchmarks.
set -euo pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=$(realpath "${1:-data}")
TEACHER=${2:-}
shift $(( $# < 2 ? $# : 2 ))
PARTS=" ${*:-flagship epochs rates tta} "
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:+--quick}
OUT_ROOT=$(mktemp -d)
wants() { [[ $PARTS == *" $1 "* ]]; }
timed() {  # timed LABEL LINES COMMAND...: the command's last LINES lines of output, warnings aside, then its seconds
  local label=$1 lines=$2 start=$EPOCHREALTIME
  shift 2
  "$@" 2>&1 | grep -vE "Warning|warn" | tail -"$lines"
  echo "$label: $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s for the whole command"
}
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
common=("trainer=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)" "paths.root_dir=$OUT_ROOT" "paths.data_dir=$DATA"
        trainer.enable_progress_bar=false)

if wants flagship; then  # the README's "make run from nothing" on the GPU: no teacher cached yet under OUT_ROOT
  timed "flagship (distill_mlp_fast from nothing)" 24 $PY train.py experiment=distill_mlp_fast "${common[@]}"
fi

if wants epochs; then
  args=(experiment=distill_mlp "${common[@]}" trainer.max_epochs=1 '~callbacks.model_summary')
  [ -n "$TEACHER" ] && args+=("teacher.ckpt_path=$TEACHER")
  for precision in bf16-mixed 32-true; do
    timed "precision $precision" 16 $PY train.py "${args[@]}" "trainer.precision=$precision" "name=gpu_$precision"
  done
fi

if wants rates; then  # plain loop, bare Trainer, kdlab as users run it, the teacher-output cache, bf16 and compile
  bench=(--device "$DEVICE" $QUICK --data-dir "$DATA/mnist" --batch-sizes 128,1024 --precision-batch-sizes 1024
         --rows 'distill/*,distill-cached/*,scratch/*' --repeats 3 --json "$OUT_ROOT/bench_gpu.json")
  [ -n "$TEACHER" ] && bench+=(--teacher-ckpt "$TEACHER")
  $PY scripts/benchmark.py "${bench[@]}"
fi

if wants tta; then  # the standard and fast recipes to their targets, kdlab and the plain loop, on the GPU
  $PY scripts/benchmark.py --time-to-accuracy --device "$DEVICE" $QUICK --recipes train_teacher_mlp,distill_mlp \
    --presets standard,fast --repeats 1 --teacher-dir "$OUT_ROOT/outputs/teachers" --data-dir "$DATA/mnist" \
    --json "$OUT_ROOT/tta_gpu.json" --plot "$OUT_ROOT/tta_gpu.png"
fi
echo "everything under $OUT_ROOT"
