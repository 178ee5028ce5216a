#!/usr/bin/env bash
# Small-M diagnostics in one device call: kernel-only times (profiler) of the M = 64/128 ANCHORS
# shapes next to cuBLAS, multicast/stage variants of the heuristic's tiles, one ncu report.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 150 python3 -m bench --no-progress --set small-m --timing profiler --rounds 2 \
    --providers pyfp8gemm,cublas-blockwise 2>&1 | grep -v Warn | tee $OUT/profiler.txt
for spec in "128 4096 7168 64x64 64x64:a 64x64:none:16:6 64x64:a:16:6 128x32 128x32:a 128x64:a" \
            "64 2112 7168 64x16 64x16:a 64x32 64x32:a" \
            "128 2112 7168 64x32 64x32:a 64x16 128x32:a" \
            "64 7168 2048 64x64 64x64:a 64x56 64x32:a"; do
  timeout 120 python3 scripts/device_configs.py $spec 2>&1 | grep -v Warn | tee -a $OUT/configs.txt
done
timeout 150 bash scripts/device_ncu.sh 128 4096 7168 64x64 m128n4096 2>&1 | tail -100 | tee $OUT/ncu.txt
rm -f $OUT/*.sass.csv
