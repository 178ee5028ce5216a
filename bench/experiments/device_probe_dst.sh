#!/usr/bin/env bash
# BLOCK_M 256: 4 stages with the direct-store epilogue vs 3 with the staged tile (apply bench/experiments/direct-store-epilogue.patch first).
set -u
source scripts/device_env.sh
T="timeout 40 python3 scripts/ab_time.py --rounds 150"
{
$T 4096 4096 7168 256x128 256x128:dst
$T 4096 7168 16384 256x128 256x128:dst
$T 4096 32768 512 256x128 256x128:dst
} > $OUT/dst.txt 2>&1
grep -vE "^\s*$|ptxas from|Warn" $OUT/dst.txt | tail -12
