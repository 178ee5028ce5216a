#!/usr/bin/env bash
# Device call: GPU suite with mma_turns; A/B of turns on the non-overlapped kernels.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
run() { timeout 150 python3 scripts/device_configs.py "$@" 2>&1 | grep -v -i -E "warn|ptxas" | tee -a $OUT/configs.txt; }
S="256x128 256x128:none:noturn"
TIMING=profiler run 4096 4096 7168 $S $S
S2="128x128:none:16::ovl:4w 128x192:b 128x192:b:noturn 128x192 256x128 256x128:none:noturn"
TIMING=profiler run 4096 2112 7168 $S2 $S2
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread 2>&1 | tail -6 | tee $OUT/gpu_tests.txt
TIMING=profiler run 4096 7168 2048 $S 128x160:b 128x160:b:noturn $S
run 4096 4096 7168 $S $S
