#!/usr/bin/env bash
# The GPU figures in one run (about 5-8 minutes on an H100/H200), needing only PyTorch and this repository:
#   bash benchmarks/gpu_bench.sh                      # writes benchmarks/results/gpu-cuda-<time>.md
#   bash benchmarks/gpu_bench.sh --out results.md     # one results file where you want it
#   bash benchmarks/gpu_bench.sh --device cpu --quick # a smoke run on any machine (the tests run this)
# Options go to benchmarks/gpu_bench.py (see its --help). PYTHON picks the interpreter (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
"$python" -c "import torch" 2>/dev/null || { echo "gpu_bench: $python has no torch; set PYTHON=/path/to/python" >&2; exit 2; }
# a hard stop a little after the script's own 420 s budget, so that a stuck compile cannot hold the machine
exec timeout --signal=INT 470 "$python" "$here/gpu_bench.py" "$@"
