#!/usr/bin/env bash
# Session 4: multicast B (two M-neighbour CTAs share the weight tile) at M = 128 with
# BLOCK_M 64, profiler timing, interleaved. Plus the top stall lines of last session's ncu
# report of 128x4096x7168 (64x64, .ab/m128n4096.ncu-rep).
set -u
source scripts/device_env.sh
{
export TIMING=profiler
C="timeout 100 python3 scripts/device_configs.py"
$C 128 4096 7168 64x64 64x64:b 64x64:a 64x64 64x64:b 64x64:a
$C 128 2112 7168 64x32 64x32:b 64x32 64x32:b
$C 128 7168 2048 128x64 64x64:b 64x112:b 128x64 64x64:b 64x112:b
$C 128 7168 16384 128x64 64x64:b 64x112:b 128x64 64x64:b 64x112:b
$C 128 32768 512 128x128 64x128:b 128x128 64x128:b
$C 128 24576 1536 128x192 64x192:b 64x96:b 128x192 64x192:b 64x96:b
unset TIMING
if [ -f .ab/m128n4096.ncu-rep ]; then
  ncu -i .ab/m128n4096.ncu-rep --page source --csv --print-source sass > /tmp/m128.csv 2>&1
  python3 scripts/ncu_top_sass.py /tmp/m128.csv 25
fi
} > $OUT/mcb.txt 2>&1
grep -E "passed|failed|rror|TFLOPS|%" $OUT/mcb.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//; s/ max clusters -//' | head -70
