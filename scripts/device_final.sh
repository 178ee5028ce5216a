#!/usr/bin/env bash
# One device call: GPU tests, host overhead, the benchmark. Each GPU test has a 120 s limit
# (pytest-timeout, thread method: a hung kernel ends its worker process and frees the GPU).
# Needs .whl/ from scripts/fetch_device_wheels.sh (carry it). Usage (on the GPU machine):
#   bash scripts/device_final.sh [pytest args...]
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread "$@" 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
timeout 60 python3 scripts/host_overhead.py 2>&1 | grep -v Warn | tee $OUT/host_overhead.txt
timeout 200 python3 -m bench --no-progress --json $OUT/bench.json --plot $OUT/bench.png 2>&1 | grep -v Warn | tee $OUT/bench.txt
timeout 150 python3 -m bench --no-progress --timing profiler --rounds 2 --providers pyfp8gemm,cublas-blockwise \
    --json $OUT/bench_profiler.json 2>&1 | grep -v Warn | head -26 | tee $OUT/bench_profiler.txt
