#!/usr/bin/env bash
# GPU speed work (issue 16) on one CUDA machine, in one call, under ten minutes: the GPU tests (attention kernels,
# fused kernels, host path, SDPA prefill route, engine against the torch backend, the runtime on CUDA), the engine benchmark for the
# 8B shapes (bench/engine_gpu.py) and the extend-vs-SDPA kernel rows. Every stage has its own time limit; a stage
# that fails or times out is reported and the next one still runs. At most five files land in $OUT:
#   summary.txt       GPU, versions, each stage's exit status and seconds, the engine table again
#   gpu_tests.log     pytest -rs output of the GPU tests
#   engine_gpu.log    bench/engine_gpu.py's table (decode/prefill/scheduler rows beside their floors)
#   engine_gpu.json   the same rows as JSON, with the measured copy bandwidth and GEMM peak
#   kernels.log       bench/kernels.py --only extend: Triton extend vs torch SDPA backends, 8 x 4096 causal
#   bench/gpu_speed.sh [tests|bench|all]      (QUICK=1: small engine sizes, for a smoke run)
#   bench/gpu_speed.sh serving                 (nvidia-h200-x2, ~9 minutes: bench/serving_gpu.py, 1P1D vs two
#                                              colocated replicas; serving_gpu.log and serving_gpu.json in $OUT)
set -uo pipefail
what=${1:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/pdpair-gpu}
mkdir -p "$OUT"
sum="$OUT/summary.txt"
: > "$sum"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e "$root" > /tmp/pdpair-pip.log 2>&1 \
  || { echo "editable install failed (last lines):"; tail -n 5 /tmp/pdpair-pip.log; } | tee -a "$sum"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$root"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" 2>&1
} | tee -a "$sum"

stage() {  # stage NAME LIMIT_S LOGFILE CMD...: run with a time limit, record status and seconds
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout -k 15 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local note=""; [ $rc -eq 124 ] || [ $rc -eq 137 ] && note=" (time limit ${limit}s)"
  echo "stage $name: exit $rc$note, $((SECONDS - t0)) s" | tee -a "$sum"
  tail -n 3 "$log"
  return 0
}

if [ "$what" = tests ] || [ "$what" = all ]; then
  stage gpu_tests 240 "$OUT/gpu_tests.log" python3 -m pytest -q -p no:cacheprovider -rs \
    tests/kernels/test_fused_gpu.py tests/kernels/test_host_path_gpu.py tests/kernels/test_sdpa_extend.py \
    tests/kernels/test_attention_gpu.py tests/kernels/test_attention_gpu_engine.py \
    tests/integration/test_engine_runtime_cuda.py
  grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -n 2 >> "$sum"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  stage engine_gpu 230 "$OUT/engine_gpu.log" python3 bench/engine_gpu.py --json "$OUT/engine_gpu.json" \
    ${QUICK:+--quick}
  grep -E "^\||ceilings|GB of weights|total" "$OUT/engine_gpu.log" >> "$sum"
  stage kernels_extend 60 "$OUT/kernels.log" python3 bench/kernels.py --only extend --no-model \
    --out-dir /tmp/pdpair-kernels-out
  grep -E "SDPA|extend" "$OUT/kernels.log" >> "$sum"
fi
if [ "$what" = serving ]; then
  stage serving_gpu 570 "$OUT/serving_gpu.log" python3 bench/serving_gpu.py --json "$OUT/serving_gpu.json" \
    --budget 450
  grep -E "^\||goodput|SLO|skipped|failed|written|daemons" "$OUT/serving_gpu.log" >> "$sum"
fi
echo "files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$sum"
