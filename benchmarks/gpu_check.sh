#!/usr/bin/env bash
# GPU check for the scale-out work (run on a lent GPU machine from the repo root).
# Needs the project's venv (make install); ZeRO-3 runs only when deepspeed is importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
