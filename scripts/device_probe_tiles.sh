#!/usr/bin/env bash
# Device call: split-K GPU tests; tile/raster candidates, kernel-only (profiler) and do_bench.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -n 4 --timeout 120 --timeout-method thread -k split_k tests/test_gemm_gpu.py 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
run() { timeout 150 python3 scripts/device_configs.py "$@" 2>&1 | grep -v -i -E "warn|ptxas" | tee -a $OUT/configs.txt; }
S="128x128:none:16::ovl:4w 128x128:b 128x192:b 128x192 256x128"
TIMING=profiler run 4096 2112 7168 $S $S
run 4096 2112 7168 $S $S
TIMING=profiler run 128 4096 7168 64x64 64x64:none:1 64x64:none:4 64x64 64x64:none:1 64x64:none:4
TIMING=profiler run 128 2112 7168 64x32 64x32:none:1 64x32 64x32:none:1
TIMING=profiler run 4096 7168 2048 256x128 128x192:a 256x128 128x192:a
