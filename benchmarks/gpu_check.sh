#!/usr/bin/env bash
# The GPU checks of issues 11 and 12 as one prepared script, for a lent GPU machine (device tool): run from the
# repository root with the CIFAR-10 zip copied to device_data/cifar10-jpeg.zip (git-ignored; name it in `carry`).
# Not yet run on a GPU (none was lent when it was written): read its output before trusting it.
#   1. the GraNd engine's GPU ratios (full-width ResNet-18 at batch 128: target <= 2x a training step);
#   2. one full-data airbench fit at the gpu scale (target >= 93.5% in 10 epochs) and its wall time;
#   3. the reproduction at the gpu scale reduced to fit ~8 minutes (3 seeds, EL2N subsets retrained).
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
DATA=${DATA:-device_data/cifar10-jpeg.zip}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python -m pip install -q -e . 2>&1 | tail -2
python benchmarks/bench_grand.py --device cuda --repeats 7 --models resnet18_w64,resnet18_w16,cnn32 \
    --methods norms,vmap32 2>&1 | tee "$OUT/bench_grand_cuda.txt"
DATA=$DATA ACCELERATOR=gpu timeout 120 python benchmarks/probe_recipe_scale.py 50000 10 64 1024 0.4 2>&1 | tee "$OUT/probe_full.txt" || true
timeout 420 datadiet reproduce --scale gpu --data_dir "$DATA" --output_dir "$OUT/reproduce_gpu" \
    --seeds [0,1,2] --retrain_methods [el2n] 2>&1 | tail -40 | tee "$OUT/reproduce_gpu_tail.txt"
cp "$OUT"/reproduce_gpu/verdicts.md "$OUT"/ 2>/dev/null || true
