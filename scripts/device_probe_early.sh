#!/usr/bin/env bash
# Device call: A/B of release_early (free a ring slot before issuing the next K block).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
run() { timeout 100 python3 scripts/device_configs.py "$@" 2>&1 | grep -v -i -E "warn|ptxas" | tee -a $OUT/configs.txt; }
ab() { local m=$1 n=$2 k=$3 c=$4; TIMING=profiler run $m $n $k $c $c:early $c $c:early; }
ab 128 4096 7168 64x64
ab 64 2112 7168 64x16
ab 128 2112 7168 64x32
ab 64 7168 2048 64x64
ab 128 24576 1536 128x96
ab 128 7168 16384 128x64
ab 64 4096 7168 64x32
ab 128 32768 512 128x128
ab 4096 2112 7168 128x128:none:16::ovl:4w
run 128 4096 7168 64x64 64x64:early 64x64 64x64:early
run 64 7168 2048 64x64 64x64:early 64x64 64x64:early
