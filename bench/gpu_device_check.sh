#!/usr/bin/env bash
# The GPU checks in one go, for a session that has a GPU (docs/benchmarks.md, "GPU kernels").
# Never run in CI (no GPU there). Runs, each under its own time limit:
#   1. the gpu-marked tests (CuPy sieve kernel vs NumPy, survivor compaction overflow, torch
#      draws on the device vs NumPy, scoring on the GPU);
#   2. bench/gpu_static.py (the SASS figures; with the compiler wheels if installed, else skipped);
#   3. bench/bench_sieve.py on the GPU (draw-tests/s per family, bytes copied back);
#   4. bench/bench_scoring.py: 100,000 survivors x (14,450 + 3,612) draws on torch/cuda, java_lcg
#      and mt19937.
# Usage (repository root; python3 with numpy, numba, cupy, torch, pytest, pytest-timeout):
#   OUT=/some/dir bash bench/gpu_device_check.sh      # figures and logs go to $OUT
# At most 9.3 minutes (the sum of the step limits; a device run may last 10). Nothing is installed: the package runs from the checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/workers:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.txt, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$OUT/$name.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc" | tee -a "$OUT/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PY" -c "import sys, numpy, torch, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, \
'torch', torch.__version__, 'cupy', cupy.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no torch GPU')" 2>&1
    uptime
} | tee "$OUT/env.txt"

step tests 180 "$PY" -m pytest -p no:cacheprovider -m gpu -q -rs \
    tests/unit/test_sieve_gpu.py tests/unit/test_torch_draws.py tests/unit/test_scoring_cli.py
step gpu_static 45 "$PY" bench/gpu_static.py --table
step bench_sieve 150 "$PY" bench/bench_sieve.py --backends numpy gpu --scale 0.25 \
    --families java_lcg minstd lcg32 pcg32 xorshift32 xorshift64 java_random mt19937 \
    --json-out "$OUT/bench_sieve.json"
step bench_scoring_java_lcg 90 "$PY" bench/bench_scoring.py --chunk 100000 --device cuda --no-numpy \
    --ref-seeds 1 --out-format npz --family java_lcg
step bench_scoring_mt19937 90 "$PY" bench/bench_scoring.py --chunk 100000 --device cuda --no-numpy \
    --ref-seeds 1 --out-format npz --family mt19937
uptime | tee -a "$OUT/env.txt"
echo "all logs in $OUT; overall: $([ $status -eq 0 ] && echo ok || echo FAILED)"
exit $status
