#!/usr/bin/env bash
# GPU checks, run on a lent CUDA machine (not by CI): the gpu-marked tests, the CuPy
# scatter-add micro-benchmark and the CuPy-backend training step vs PyTorch CUDA.
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 CI=true
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, numba, scipy; print('cupy', cupy.__version__, 'numba', numba.__version__)"
echo "== gpu tests =="
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
echo "== kernels (gpu part) =="
timeout 40 python3 - <<'PY' 2>&1 | tee "$OUT/gpu_kernels.log"
from benchmarks import kernels as k
notes = []
for r in k._gpu_rows(k.SIZES_QUICK, 5, {"torch"}, notes):
    print({key: (round(v, 5) if isinstance(v, float) else v) for key, v in r.items()})
print("\n".join(notes))
PY
echo "== training step on the GPU =="
timeout 120 python3 -m benchmarks.gpu --quick --compare 2>&1 | tee "$OUT/gpu_embedding.log"
