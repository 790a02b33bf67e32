#!/usr/bin/env bash
# The one GPU check: build on the device machine, test the CUDA kernels against the
# references, then print the benchmark tables beside plain PyTorch re-timed on the same card.
#   device tool: run command="bash benchmarks/gpu_check.sh" timeout_s=570
# The device image has its own Python/torch/pybind11 and no network: build in place,
# without build isolation. Shared data does not travel: everything here is generated.
# A session gets one try: every step is capped so the whole stays under ~530 s, nothing
# stops at the first failure, and the log and each step's CSV land in $OUT as soon as the
# step ends (a run cut short still brings back what it measured). At most 8 files come
# back from $OUT: the log plus three CSVs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH=$PWD
save() { for f in "$@"; do cp "benchmarks/results/$f" "$OUT/" 2>/dev/null || true; done; }
step() { echo; echo "== $* ($(date +%T))"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
which nvcc || true
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi

step "build (CUDA, sm_${PYZSL_CUDA_ARCH:-90}; --force: a stale CPU-only build must not be reused)"
PYZSL_CUDA=1 PYZSL_CUDA_ARCH="${PYZSL_CUDA_ARCH:-90}" timeout 240 python3 setup.py build_ext --inplace --force -q \
  2>&1 | grep -E "pyzsl: |error" | cut -c1-300
python3 -c "import pyzsl, json; print(json.dumps(pyzsl.build_info()))"

step "CUDA tests (kernels vs references)"
PYZSL_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -rf tests/test_bilinear_hinge.py tests/test_topk.py \
  tests/test_pcgrad.py 2>&1 | tail -25

# bench SCRIPT CSV LINES SECONDS [ARGS]: one benchmark run, capped, its table's tail shown and
# its CSV saved at once
bench() { timeout "$4" python3 "benchmarks/$1" --device cuda "${@:5}" 2>&1 | tail -"$3"; save "$2"; }

step "bilinear hinge fwd+bwd, B=8192 dv=dt=300 C=200000, fp32 then TF32"
bench bilinear_hinge.py bilinear_hinge.csv 8 90 --repeat 5
bench bilinear_hinge.py bilinear_hinge.csv 8 75 --repeat 5 --tf32

step "retrieval: CSLS and top-10, N = 20k, 200k, fp32 then TF32"
bench retrieval.py retrieval.csv 12 75 --repeat 3
bench retrieval.py retrieval.csv 12 60 --repeat 3 --tf32

step "pcgrad: T in {8, 32}, P in {1e6, 1e7, 1e8}"
bench pcgrad.py pcgrad.csv 20 60 --T 8 32 --budget 2 --no-lock
step "done"
