#!/usr/bin/env bash
# Warpgroup 1 starts N cycles late (apply bench/experiments/stagger.patch first). Interleaved A/B.
set -u
source scripts/device_env.sh
T="timeout 70 python3 scripts/ab_time.py --rounds 200"
{
$T 4096 4096 7168 256x128 256x128:st128 256x128:st256 256x128:st512
$T 4096 7168 16384 256x128 256x128:st128 256x128:st256 256x128:st512
} > $OUT/stagger.txt 2>&1
grep -vE "^\s*$|ptxas from|Warn" $OUT/stagger.txt | tail -14
