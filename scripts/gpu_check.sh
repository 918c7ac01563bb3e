#!/usr/bin/env bash
# The trainer's GPU check, in under five minutes on one machine with CUDA (see
# ddpm_course/gpu_check.py for what it measures and the tolerances):
#   1. one GPU: CUDA vs CPU forward, bf16 matmul peak, 300 bf16 steps of cifar10-ddpm eager and
#      with torch.compile, 16 DDIM-50 samples;
#   2. every visible GPU under torchrun (DDP): global images/s.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default gpu-check/); exits non-zero on a failure.
set -euo pipefail
out=${1:-gpu-check}
python=${PYTHON:-python}
mkdir -p "$out"
"$python" -m ddpm_course.experiments.gpu_check --device cuda --compile --out "$out/single.json"
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -gt 1 ]; then
  "$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" \
    -m ddpm_course.experiments.gpu_check --device cuda --steps 200 --out "$out/ddp.json"
else
  echo "one GPU visible: no DDP run (it needs two or more)"
fi
echo "reports in $out/ (single.json, ddp.json with 2+ GPUs), samples: $out/single.png"
