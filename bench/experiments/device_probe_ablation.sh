#!/usr/bin/env bash
# Where does the kernel time go? Apply bench/experiments/ablation-nopromote.patch first. The same
# kernels without the promotion (one FADD instead: timing only, results wrong) and without the
# wgmmas (promotion of an untouched fragment): full vs nopromote vs nomma bounds the share of
# each. Profiler timing, interleaved.
set -u
source scripts/device_env.sh
export TIMING=profiler
C="timeout 90 python3 scripts/device_configs.py"
{
$C 4096 4096 7168 256x128 256x128:nopromote 256x128:nomma 256x128 256x128:nopromote 256x128:nomma
$C 128 4096 7168 64x64:b 64x64:b:nopromote 64x64:b:nomma 64x64:b 64x64:b:nopromote 64x64:b:nomma
$C 4096 32768 512 256x128 256x128:nopromote 256x128:nomma 256x128 256x128:nopromote 256x128:nomma
} > $OUT/ablation.txt 2>&1
grep -E "TFLOPS|rror" $OUT/ablation.txt | sed 's/fp8_gemm_1d2d_//; s/_k128//; s/ max clusters -//'
