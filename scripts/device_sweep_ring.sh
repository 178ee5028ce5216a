#!/usr/bin/env bash
# After B scales moved into the ring: GPU suite, then re-tune tiles and rasterization per ANCHORS
# shape with interleaved A/B timing (scripts/ab_time.py; first spec = today's heuristic choice).
set -u
source scripts/device_env.sh
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread \
    > $OUT/gpu_tests.txt 2>&1
tail -2 $OUT/gpu_tests.txt
T="timeout 100 python3 scripts/ab_time.py --rounds 150"
{
$T 4096 4096 7168 256x128 256x128::8 256x128::4 256x128::1 256x128:a 256x128:a:4
$T 4096 32768 512 256x128 256x128::8 256x128::4 256x128::1 256x128:a
$T 4096 7168 16384 256x128 256x128::8 256x128::4 256x128:a
$T 4096 2112 7168 128x128:::::4w 128x192:b 256x128:::::2w 128x144 128x112:a 128x96:a
$T 128 4096 7168 64x64:b 64x48:b 64x64 128x32 64x32:b
$T 128 2112 7168 64x32 64x48 64x16 128x32 64x32:b
$T 64 7168 2048 64x64 64x32 64x48 64x112 64x128
$T 64 4096 7168 64x32 64x16 64x48 64x64
$T 64 2112 7168 64x16 64x32 64x48
$T 128 32768 512 128x128 128x96 128x160 64x128 64x128:b
$T 128 24576 1536 128x192 128x96 128x128 128x160
$T 128 7168 2048 128x64 128x48 64x64:b 128x96
} > $OUT/sweep.txt 2>&1
grep -vE "^\s*$|ptxas from|Warn" $OUT/sweep.txt | tail -80
