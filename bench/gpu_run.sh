#!/usr/bin/env bash
# Every GPU check of the attention kernels plus the kernel benchmark, on a CUDA machine, without installing:
# the checkout is installed editable, without dependencies. Logs land in $OUT (default /tmp/pdpair-gpu).
#   bench/gpu_run.sh [tests|bench|all]   (MODEL_DIR=... adds the engine decode rows to the benchmark)
set -uo pipefail
what=${1:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/pdpair-gpu}
mkdir -p "$OUT"
# editable install without dependencies or network: `pdpair.X` maps onto the checkout's folders
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e "$root" > "$OUT/pip.log" 2>&1 \
  || { cat "$OUT/pip.log"; exit 1; }
export PYTHONUNBUFFERED=1
cd "$root"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -p no:cacheprovider -rs -s tests/kernels/test_attention_gpu_engine.py \
    tests/kernels/test_attention_gpu_swa.py tests/kernels/test_mamba_gpu.py \
    tests/kernels/test_attention_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || rc=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 bench/kernels.py --sweep --json "$OUT/bench.json" --out-dir "$OUT" ${MODEL_DIR:+--model-dir "$MODEL_DIR"} 2>&1 \
    | tee "$OUT/bench.log" || rc=1
fi
exit $rc
