#!/usr/bin/env bash
# Session 7 final call: the GPU suite (14 workers: the straddling-tile kernels take longer to
# compile), then `python -m bench` (do_bench, 2 rounds: README table and plot).
set -u
source scripts/device_env.sh
timeout 190 python3 -m pytest -q -m gpu -p no:cacheprovider -n 14 --timeout 150 --timeout-method thread \
    > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt
timeout 80 python3 -m bench --no-progress --rounds 2 --json $OUT/bench.json --plot $OUT/bench.png \
    > $OUT/bench.txt 2>&1
grep -v Warn $OUT/bench.txt | sed -n 1,28p
