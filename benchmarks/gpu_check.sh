#!/usr/bin/env bash
# The GPU path in at most 8 minutes: label generation and a short training run on CUDA, each printed against its
# bare part (teacher forward alone, student step alone). Without CUDA (or with GPU_CHECK_DEVICE=cpu) it runs the
# same measures at smoke sizes on the CPU: that fallback is what the test suite runs.
#   bash benchmarks/gpu_check.sh                      # CUDA when available
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
exec timeout 480 "$PY" benchmarks/gpu_check.py --device "$DEVICE"
