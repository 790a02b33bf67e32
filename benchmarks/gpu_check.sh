#!/usr/bin/env bash
# The one GPU check: build on the device machine, test the CUDA kernels against the
# references, then print the benchmark tables beside plain PyTorch re-timed on the same card.
#   device tool: run command="bash benchmarks/gpu_check.sh" timeout_s=540
# The device image has its own Python/torch/pybind11 and no network: build in place,
# without build isolation. Shared data does not travel: everything here is generated.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== build"
PYZSL_CUDA=1 PYZSL_CUDA_ARCH="${PYZSL_CUDA_ARCH:-90}" python3 setup.py build_ext --inplace -q 2>&1 | grep -E "pyzsl: |error" 
python3 -c "import pyzsl, json; print(json.dumps(pyzsl.build_info()))"

echo "== CUDA tests (kernels vs references)"
PYZSL_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -x tests/test_bilinear_hinge.py tests/test_topk.py \
  $(ls tests/test_pcgrad.py 2>/dev/null) 2>&1 | tail -15

echo "== bilinear hinge fwd+bwd, B=8192 dv=dt=300 C=200000 (fp32, then TF32)"
timeout 150 python3 benchmarks/bilinear_hinge.py --device cuda --repeat 5 2>&1 | tail -8
timeout 150 python3 benchmarks/bilinear_hinge.py --device cuda --repeat 5 --tf32 2>&1 | tail -8

echo "== retrieval: CSLS and top-10, N = 20k, 200k (fp32, then TF32)"
timeout 120 python3 benchmarks/retrieval.py --device cuda --repeat 3 2>&1 | tail -12
timeout 120 python3 benchmarks/retrieval.py --device cuda --repeat 3 --tf32 2>&1 | tail -12

if [ -f benchmarks/pcgrad.py ]; then
  echo "== pcgrad"
  timeout 120 python3 benchmarks/pcgrad.py --device cuda 2>&1 | tail -20
fi
cp benchmarks/results/*.csv "$OUT"/ 2>/dev/null || true
