#!/usr/bin/env bash
# The prepared GPU check (issue 7), one call of the workplace's `device` tool:
#   run(command="bash benchmarks/gpu.sh", timeout_s=570)
# Stages, most important first, each capped so that the whole stays inside GPU_BUDGET_S
# (default 500 s) and a stage that runs long costs only itself:
#   1. the CUDA tests (tests/test_cuda.py: GPU meta-steps equal the CPU's, CUDA graphs,
#      the bench);
#   2. figure 8 on the accelerator with CUDA graphs: real meta-iterations over the whole
#      meta-batch (one point per update, points batched), the 1,000-iterations-in-an-hour
#      question;
#   3. figure 8's one-point-per-update rows (first-order, exact) on the reference core (no
#      warpgrad.accel.convert: what the accelerator gives on this GPU), printed to all.log;
#   4. a profile of one task's first-order meta-iteration, with CUDA graphs and eager
#      (benchmarks/profile_gpu.py: how busy the GPU is, what the host does meanwhile);
#   5. figure 8 with cuDNN's benchmark mode (it times its convolution algorithms per shape);
#   6. figures 1, 4 and 5 with CUDA graphs, and figure 10 (the meta-iteration's convolutions
#      alone, replayed call by call on cuDNN: the floor under the one-hour goal);
#   7. the eager figures 1, 2, 4 and 5, then figure 8 eager.
# GPU_STAGES (comma-separated: info, glyphs, tests, graphs-training, reference-training,
# profile, cudnn-training, graphs, eager, training; and, only when named, reference (figures
# 1 and 2 on the reference core), host-ops (figure 9 counted on the GPU) and scale-out
# (figure 11: one process per GPU, NCCL, 1 GPU and 2 where there are two): a ninth file
# would not come back) picks stages, e.g. for a second call on what the first left undone;
# GPU_TESTS is a pytest -k expression for the tests stage.
# Needs only torch, numpy, matplotlib, tqdm and pytest (the lent machines' python3 has them).
# GPU_SCALE=small GPU_DEVICE=cpu OUT=/tmp/g bash benchmarks/gpu.sh rehearses it here.
# What comes back ($OUT, or runs/gpu; 8 files at most): all.log, profile-{graphs,eager}.txt
# and one bench-STAGE.json per finished stage
# (`python -c "from warpgrad.bench import markdown; ..."` renders a table from it).
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WARPGRAD_CACHE=${WARPGRAD_CACHE:-/tmp/warpgrad-cache}
deadline=$((SECONDS + ${GPU_BUDGET_S:-500}))
log="$out/all.log"

stage() {  # stage NAME CAP_S COMMAND...: run COMMAND for at most CAP_S (less if time is short)
  local name=$1 cap=$2; shift 2
  local left=$((deadline - SECONDS))
  if ((left < 20)); then echo "== $name: skipped, ${left}s left" | tee -a "$log"; return; fi
  ((cap > left)) && cap=$left
  echo "== $name (at most ${cap}s, $((deadline - SECONDS))s left)" | tee -a "$log"
  local start=$SECONDS
  timeout -k 5 "$cap" "$@" 2>&1 | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s" | tee -a "$log"
}

bench() {  # bench NAME REFERENCE GRAPHS SECTIONS [CUDNN]: the suite on the GPU; JSON to $out
  # -c, not a here-document: the bench's forkserver children re-import __main__ by its path
  python3 -c '
import os, shutil, sys, tempfile
from warpgrad.bench import main
name, reference, graphs, sections, cudnn, out = sys.argv[1:]
tmp = tempfile.mkdtemp()
main(os.environ.get("GPU_SCALE", "full"), tmp, device=os.environ.get("GPU_DEVICE", "cuda"),
     reference=reference == "1", cuda_graphs=graphs == "1", cudnn_benchmark=cudnn == "1",
     sections=tuple(sections.split(",")))
shutil.copy(f"{tmp}/bench.json", f"{out}/bench-{name}.json")
' "$1" "$2" "$3" "$4" "${5:-0}" "$out"
}
export -f bench
export out

reference_training() {  # figure 8, one point per update, reference core: JSON lines in the log
  python3 -c '
import dataclasses, json, os
from warpgrad.bench import SCALES, run_case
scale = dataclasses.replace(SCALES[os.environ.get("GPU_SCALE", "full")], reference=True,
                            device=os.environ.get("GPU_DEVICE", "cuda"))
for variant in ("first-order", "exact"):
    result = run_case("training", scale, variant, "one point per update")
    print(json.dumps({"figure": "training, reference core", "variant": variant,
                      **result}), flush=True)
'
}
export -f reference_training

stages=",${GPU_STAGES:-info,glyphs,tests,graphs-training,reference-training,profile,cudnn-training,graphs,eager,training},"
want() { [[ $stages == *",$1,"* ]]; }
figures=meta_iteration,overhead,warped_step,batched_objective
want info && stage info 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv; nproc; python3 -c "import torch, sys; print(sys.version, torch.__version__, \
  torch.version.cuda, torch.cuda.get_device_name())"'
want glyphs && stage glyphs 60 python3 -c "from warpgrad.data import load_glyphs; print(load_glyphs())"
want tests && stage tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  -k "${GPU_TESTS:-}"
want graphs-training && stage graphs-training 150 bash -c 'bench "$@"' _ graphs-training 0 1 training
want reference-training && stage reference-training 180 bash -c reference_training
profile="python3 benchmarks/profile_gpu.py --scale ${GPU_SCALE:-full} --device ${GPU_DEVICE:-cuda}"
want profile && stage profile 150 bash -c "$profile --cuda-graphs --out $out/profile-graphs.txt \
  && $profile --out $out/profile-eager.txt"
want cudnn-training && stage cudnn-training 150 bash -c 'bench "$@"' _ cudnn-training 0 1 training 1
want graphs && stage graphs 120 bash -c 'bench "$@"' _ graphs 0 1 meta_iteration,warped_step,batched_objective,convolutions
want eager && stage eager 150 bash -c 'bench "$@"' _ eager 0 0 $figures
want training && stage training 200 bash -c 'bench "$@"' _ training 0 0 training
want reference && stage reference 200 bash -c 'bench "$@"' _ reference 1 0 meta_iteration,overhead
want host-ops && stage host-ops 120 bash -c 'bench "$@"' _ host-ops 0 0 host_ops
want scale-out && stage scale-out 150 bash -c 'bench "$@"' _ scale-out 0 0 scale_out
echo "== done, $((SECONDS))s in all" | tee -a "$log"
