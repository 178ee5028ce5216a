#!/usr/bin/env bash
# Session 4 final call: GPU suite; A/B of B scales two K blocks ahead + multicast B at BLOCK_M 64
# (old tree in .ab/old, profiler timing); `python -m bench` (do_bench) for the README.
set -u
source scripts/device_env.sh
NEW=$PWD
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread \
    > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt
S="--shape 128x4096x7168 --shape 64x4096x7168 --shape 128x2112x7168 --shape 64x7168x2048 --shape 64x2112x7168 --shape 128x7168x16384 --shape 4096x4096x7168"
for tree in old new; do
  dir=$NEW; [ $tree = old ] && dir=$NEW/.ab/old
  (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 110 python3 -m bench --no-progress --timing profiler \
      --rounds 2 --providers pyfp8gemm,cublas-blockwise $S > $OUT/ab_$tree.txt 2>&1)
  echo "== $tree"; grep -v Warn $OUT/ab_$tree.txt | head -16
done
timeout 190 python3 -m bench --no-progress --rounds 2 --json $OUT/bench.json --plot $OUT/bench.png \
    > $OUT/bench.txt 2>&1
grep -v Warn $OUT/bench.txt | tail -32
