#!/usr/bin/env bash
# BLOCK_M 256: do warpgroup turns (and DeepGEMM's multicast A) hide the promotion? Interleaved
# A/B timing (scripts/ab_time.py). Needs bench/experiments/ablation-nopromote.patch applied for
# the ":nopromote" reference.
set -u
source scripts/device_env.sh
T="timeout 150 python3 scripts/ab_time.py"
{
$T 4096 4096 7168 256x128 256x128:turn 256x128:a 256x128:a:turn 256x128:nopromote 256x128:turn:nopromote
$T 4096 32768 512 256x128 256x128:turn 256x128:a 256x128:a:turn 256x128:nopromote
$T 4096 7168 16384 256x128 256x128:turn 256x128:a 256x128:a:turn
$T 8192 8192 8192 256x128 256x128:turn 256x128:a:turn
$T 4096 2112 7168 128x128:::::4w 256x128:turn 256x128:turn:::::2w 128x192:b
$T 128 4096 7168 64x64:b 64x64:b:nopromote 64x64
} > $OUT/turns256.txt 2>&1
grep -vE "^\s*$|Warning|warn" $OUT/turns256.txt | tail -60
