#!/usr/bin/env bash
# Session 5 final call: GPU suite, `python -m bench` (do_bench, 2 rounds: README table and plot),
# then kernel-only (profiler) figures for pyfp8gemm and cuBLAS block-wise.
set -u
source scripts/device_env.sh
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread \
    > $OUT/gpu_tests.txt 2>&1
tail -2 $OUT/gpu_tests.txt
timeout 200 python3 -m bench --no-progress --rounds 2 --json $OUT/bench.json --plot $OUT/bench.png \
    > $OUT/bench.txt 2>&1
grep -v Warn $OUT/bench.txt | tail -30
timeout 130 python3 -m bench --no-progress --timing profiler --rounds 2 \
    --providers pyfp8gemm,cublas-blockwise --json $OUT/bench_profiler.json > $OUT/bench_profiler.txt 2>&1
grep -v Warn $OUT/bench_profiler.txt | tail -26
