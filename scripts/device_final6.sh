#!/usr/bin/env bash
# Final call of a session: every kernel compiled in parallel, the GPU suite (14 workers),
# `python -m bench` (do_bench, 2 rounds: README table and plot),
# then, where the DeepGEMM harness is carried (.dgref, never committed: see bench/JOURNAL.md,
# session 6), DeepGEMM's own kernel next to ours on each shape it was built for (interleaved).
set -u
source scripts/device_env.sh
timeout 150 python3 scripts/precompile.py --all 2>&1 | grep -v Warn | tail -1
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -n 14 --timeout 150 --timeout-method thread \
    > $OUT/gpu_tests.txt 2>&1
tail -2 $OUT/gpu_tests.txt
timeout 200 python3 -m bench --no-progress --rounds 2 --json $OUT/bench.json --plot $OUT/bench.png \
    > $OUT/bench.txt 2>&1
grep -v Warn $OUT/bench.txt | tail -30
[ -d .dgref ] || exit 0
for shape in "64 7168 2048" "128 2112 7168" "128 4096 7168" "4096 2112 7168" "4096 24576 1536" \
             "4096 32768 512" "4096 7168 16384" "4096 4096 7168" "4096 7168 2048" "8192 8192 8192"; do
  timeout 40 python3 .dgref/ab_dg.py $shape heuristic --rounds 100 --no-variants 2>&1 \
      | grep -E "^[0-9]+x|^  |rror"
done > $OUT/vs_deepgemm.txt 2>&1
grep -E "^[0-9]+x|heuristic|rror" $OUT/vs_deepgemm.txt | cut -c1-105
