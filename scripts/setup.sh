#!/usr/bin/env bash
# Create .venv and install lightning-datadiet with its test tools. Safe to re-run (fast when already set up).
# TORCH_SPEC overrides the torch/torchvision pair (default: the pair this project is tested with; on machines
# with a different CUDA or CPU-only wheel index, e.g. TORCH_SPEC="torch torchvision").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC
fi
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import lightning_datadiet, torch; print('lightning-datadiet', lightning_datadiet.__version__, '| torch', torch.__version__)"
