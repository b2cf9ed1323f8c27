#!/usr/bin/env bash
# The device check of issue 14: one command, one table (stdout and $OUT/gpu_check.txt), under 5 minutes on
# one GPU. Needs a Python with a CUDA torch and memsv's pure-Python dependencies (the repo's .venv when it
# has them, else $PYTHON / python3 with this checkout on PYTHONPATH).
#   benchmarks/gpu_check.sh                 # CUDA
#   benchmarks/gpu_check.sh --device cpu --smoke   # the same code at toy sizes, no GPU
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch, kaldiio, typer" 2>/dev/null && py=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-.}/gpu_check.txt
"$py" benchmarks/gpu_check.py "$@" 2>&1 | tee "$out"
