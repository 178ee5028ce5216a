#!/usr/bin/env bash
# Last device call of session 3: GPU suite, A/B of the last-wave split at BLOCK_M 256, the benchmark.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
run() { timeout 90 python3 scripts/device_configs.py "$@" 2>&1 | grep -v -i -E "warn|ptxas" | tee -a $OUT/configs.txt; }
S="256x128:none:16:::4w 256x128:none:16:::8w 128x128:none:16::ovl:4w 256x128"
TIMING=profiler run 4096 2112 7168 $S $S
timeout 150 python3 -m bench --no-progress --json $OUT/bench.json --plot $OUT/bench.png 2>&1 | grep -v Warn | head -28 | tee $OUT/bench.txt
timeout 100 python3 -m bench --no-progress --timing profiler --rounds 2 --providers pyfp8gemm,cublas-blockwise \
    --json $OUT/bench_profiler.json 2>&1 | grep -v Warn | head -28 | tee $OUT/bench_profiler.txt
run 4096 2112 7168 $S $S
