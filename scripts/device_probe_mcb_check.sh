#!/usr/bin/env bash
# Session 4: the BLOCK_M 64 multicast-B rule on the other shapes it applies to (N = 4096).
set -u
source scripts/device_env.sh
export TIMING=profiler
C="timeout 60 python3 scripts/device_configs.py"
{
$C 128 4096 2048 64x64 64x64:b 64x64 64x64:b
$C 96 4096 7168 64x64 64x64:b 64x64 64x64:b
$C 72 4096 2048 64x64 64x64:b 64x64 64x64:b
} > $OUT/mcb_check.txt 2>&1
grep -E "TFLOPS|rror" $OUT/mcb_check.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//; s/ max clusters -//'
