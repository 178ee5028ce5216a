#!/usr/bin/env bash
# Session 4 probe: profiler-timed multicast/stages at large M, BLOCK_N 192 at 128x24576x1536.
# Everything goes to $OUT/probe.txt; stdout gets the TFLOPS lines only.
set -u
source scripts/device_env.sh
{
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread \
    tests/test_gemm_gpu.py -k "n192" 2>&1 | tail -4
export TIMING=profiler
C="timeout 100 python3 scripts/device_configs.py"
$C 128 24576 1536 128x96 128x192 128x96 128x192 128x192:none:16::noovl:1:noturn
$C 4096 4096 7168 256x128 256x128:a 256x128:b 256x128:none:16:2 128x128 128x128:a 256x128 256x128:a 256x128:b
$C 4096 7168 16384 256x128 256x128:a 256x128:b 256x128 256x128:a 256x128:b
$C 4096 24576 1536 256x128 256x128:a 256x128:b 256x128 256x128:a 256x128:b
$C 4096 32768 512 256x128 256x128:a 256x128:b 256x128 256x128:a 256x128:b
} > $OUT/probe.txt 2>&1
grep -E "passed|failed|error|TFLOPS" $OUT/probe.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//'
