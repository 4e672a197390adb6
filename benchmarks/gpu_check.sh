#!/usr/bin/env bash
# The GPU check (issue 18): training with AMP, generation against the forward-only ceiling, byte
# identity across actor counts, peak GPU memory, each as a ratio, in one run of a few minutes.
#   benchmarks/gpu_check.sh             # on a machine with one CUDA GPU (installs into .venv if needed)
#   benchmarks/gpu_check.sh --dry-run   # the same code paths on the CPU at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  # on a GPU machine take the CUDA build of torch that the machine's pip offers; on CPU the Makefile's wheel
  .venv/bin/pip install -q torch==2.13.0 || .venv/bin/pip install -q torch
  .venv/bin/pip install -q -e '.[dev]'
fi
exec timeout -s TERM -k 20 480 "$PY" benchmarks/gpu_check.py "$@"
