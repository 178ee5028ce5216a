#!/usr/bin/env bash
# BLOCK_M 256 half waves vs plain (apply bench/experiments/half-waves.patch first). Interleaved A/B.
set -u
source scripts/device_env.sh
T="timeout 100 python3 scripts/ab_time.py --rounds 200"
{
$T 4096 4096 7168 256x128 256x128:hw
$T 4096 7168 16384 256x128 256x128:hw
$T 4096 32768 512 256x128 256x128:hw
$T 8192 8192 8192 256x128 256x128:hw
$T 4096 24576 1536 256x128 256x128:hw
$T 1000 4000 7040 256x128 256x128:hw
} > $OUT/hw.txt 2>&1
grep -vE "^\s*$|ptxas from|Warn" $OUT/hw.txt | tail -30
