#!/usr/bin/env bash
# Session 4: where does the time go? The same kernels with the promotion removed (wrong results,
# timing only): if they run much faster, the promotion path is the limit; if not, the TMA/wgmma
# pipeline is.
set -u
source scripts/device_env.sh
export TIMING=profiler
C="timeout 70 python3 scripts/device_configs.py"   # (with the patch applied)
{
$C 4096 4096 7168 256x128 256x128:nopromote 256x128 256x128:nopromote
$C 128 4096 7168 64x64:b 64x64:b:nopromote 64x64:b 64x64:b:nopromote
} > $OUT/ablation.txt 2>&1
grep -E "TFLOPS|rror" $OUT/ablation.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//; s/ max clusters -//'
