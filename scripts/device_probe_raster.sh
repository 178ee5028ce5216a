#!/usr/bin/env bash
# Session 4 probe: rasterization group height (units of BLOCK_M) at large M, profiler timing.
set -u
source scripts/device_env.sh
export TIMING=profiler
C="timeout 110 python3 scripts/device_configs.py"
{
$C 4096 4096 7168 256x128 256x128:none:8 256x128:none:4 256x128:none:2 256x128 256x128:none:8 256x128:none:4 256x128:none:2
$C 4096 7168 16384 256x128 256x128:none:8 256x128:none:4 256x128 256x128:none:8 256x128:none:4
$C 8192 8192 8192 256x128 256x128:none:8 256x128:none:4 256x128 256x128:none:8 256x128:none:4
$C 4096 24576 1536 256x128 256x128:none:8 256x128:none:4 256x128 256x128:none:8 256x128:none:4
$C 4096 2112 7168 128x128:none:16:::4w 128x128:none:8:::4w 128x128:none:4:::4w 128x128:none:16:::4w 128x128:none:8:::4w 128x128:none:4:::4w
$C 4096 7168 2048 256x128 256x128:none:8 256x128:none:4 256x128 256x128:none:8 256x128:none:4
} > $OUT/raster.txt 2>&1
grep -E "passed|failed|rror|TFLOPS" $OUT/raster.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//; s/ max clusters -//'
