#!/usr/bin/env bash
# GPU smoke check: one distillation epoch in bf16-mixed and in fp32 through train.py with trainer=gpu,
# then the benchmark's rows on the GPU. Usage, from the repo root:
#   bash scripts/gpu_smoke.sh [DATA_DIR] [TEACHER_CKPT]
# DATA_DIR defaults to data/; TEACHER_CKPT (optional) skips training a teacher first.
# The benchmark's JSON lands in <tmp>/bench_gpu.json (path printed at the end).
set -euo pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=${1:-data}
TEACHER=${2:-}
OUT_ROOT=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
args=(experiment=distill_mlp trainer=gpu trainer.max_epochs=1 "paths.data_dir=$DATA" "paths.root_dir=$OUT_ROOT"
      trainer.enable_progress_bar=false '~callbacks.model_summary')
[ -n "$TEACHER" ] && args+=("teacher.ckpt_path=$TEACHER")
for precision in bf16-mixed 32-true; do
  start=$(date +%s)
  $PY train.py "${args[@]}" "trainer.precision=$precision" "name=gpu_$precision" 2>&1 | grep -vE "Warning|warn" | tail -16
  echo "precision $precision: $(( $(date +%s) - start )) s for the whole command"
done
# Every row on the GPU: plain loop, bare Trainer, kdlab as users run it (trainer=gpu), the teacher-output
# cache, and bf16-mixed / torch.compile of the student at batch 1024.
bench=(--device cuda --data-dir "$DATA/mnist" --batch-sizes 128,1024 --precision-batch-sizes 1024
       --rows 'distill/*,distill-cached/*,scratch/*' --repeats 3 --json "$OUT_ROOT/bench_gpu.json")
[ -n "$TEACHER" ] && bench+=(--teacher-ckpt "$TEACHER")
$PY scripts/benchmark.py "${bench[@]}"
echo "run folders under $OUT_ROOT/outputs; benchmark JSON: $OUT_ROOT/bench_gpu.json"
