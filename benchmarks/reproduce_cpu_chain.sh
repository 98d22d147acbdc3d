#!/bin/bash
# CPU reproduction in an order that yields a verdict early: seed 0 at 50% kept first, then the whole preset
# (finished runs are skipped: run keys do not depend on the seeds/fractions lists).
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
mkdir -p runs
PY=${PYTHON:-python}
D=${DATA:-../shared/data/cifar10-jpeg.zip}
nice $PY -m lightning_datadiet.cli reproduce --scale cpu --data_dir $D --output_dir runs/reproduce_cpu --seeds "[0]" --keep_fractions "[0.5]" > runs/reproduce_cpu_step1.log 2>&1
nice $PY -m lightning_datadiet.cli reproduce --scale cpu --data_dir $D --output_dir runs/reproduce_cpu --seeds "[0]" --keep_fractions "[0.5,0.4]" > runs/reproduce_cpu_step2.log 2>&1
nice $PY -m lightning_datadiet.cli reproduce --scale cpu --data_dir $D --output_dir runs/reproduce_cpu > runs/reproduce_cpu_full.log 2>&1
