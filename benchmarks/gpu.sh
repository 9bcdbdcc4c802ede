#!/usr/bin/env bash
# The prepared GPU check (issue 7), one call of the workplace's `device` tool:
#   run(command="bash benchmarks/gpu.sh", timeout_s=600)
# 1. the CUDA tests (tests/test_cuda.py: GPU meta-steps equal the CPU's, compile on CUDA,
#    the bench on CUDA); 2. the full-scale meta-iteration, warped-step and batched-objective
#    figures on the GPU, eager and compiled. Needs only torch, numpy, tqdm and pytest (the lent
#    machines' python3 has them). Results go to $OUT (the tool brings them back) or runs/gpu.
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
for mode in eager compile; do
  python3 - "$out/bench-$mode" "$mode" <<'PY' 2>&1 | tee "$out/bench-$mode.log"
import sys
from warpgrad.bench import main
main("full", sys.argv[1], device="cuda", compile_forward=sys.argv[2] == "compile",
     sections=("meta_iteration", "warped_step", "batched_objective"))
PY
done
