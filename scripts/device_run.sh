#!/usr/bin/env bash
# GPU work for one device call (on the device machine, from the repository root):
#   bash scripts/device_run.sh STEP [STEP ...]
# STEPs:
#   precompile  every kernel, in parallel, into the cache the tests share, the grouped
#               benchmark's shape-compiled kernels (and the configs
#               $PRECOMPILE_SPECS of schedule $PRECOMPILE_SCHEDULE: the A/B steps' variants)
#   warm        only the kernels of the benchmark shapes (`python -m pyfp8gemm warmup`)
#   tests       the GPU suite but the heavy files (14 workers)
#   heavy       the grouped and training GPU tests (2 workers: float64 references take GiBs)
#   qtest       the fused quantization kernel's GPU tests
#   bench       dense ANCHORS shapes;  decode  the dense M <= 128 shapes
#   inspect     registers and spills of every compiled kernel (python -m pyfp8gemm inspect)
#   grouped     the m-grouped kinds ($GROUPED_KINDS);   training  wgrad-1d1d, k-grouped, train-step ($TRAIN_KINDS)
#   swapab      swap-AB: GPU tests + A/B against the heuristic's pick and DeepGEMM
#   wgradab     the 1D1D kernel's tile widths side by side (ab_time.py --1d1d)
#   groupedab   m-grouped configs side by side (ab_grouped.py), then dense ones (ab_time.py)
#   sanitize    compute-sanitizer memcheck + racecheck (sanitize_small.py, sanitize_quantize.py)
#   dgbuild     build DeepGEMM from .devcarry/ (scripts/deepgemm_source.sh), in the background
#   dgdiag      does DeepGEMM run here? (then DG_OK=1 puts it in the benches' providers)
#   dgwarm      compile DeepGEMM's benchmark kernels in parallel ($DG_KINDS, $DGWARM_S)
#   ncu         Nsight Compute, full set, on one launch of ours ($NCU_SPEC) and DeepGEMM's
#               ($NCU_SHAPE): details and SASS source pages as CSV in the logs
#   save        pyfp8gemm's and DeepGEMM's kernel caches and DeepGEMM's build as
#               $OUT/devcarry.tar: unpack it into .devcarry/ to skip that work next time
# dg:STEP runs STEP only if DeepGEMM runs (dgdiag), nodg:STEP only if not. Steps that would start
# past BUDGET_S seconds (560) skip. Carry .whl and .devcarry. Each step prints its tail; the logs
# come back in $OUT/logs.tar.xz.
set -u
source scripts/device_env.sh
# The device returns at most 8 files: every log goes to /tmp/device_logs, packed into
# $OUT/logs.tar.xz when this script exits (also after a step timed out); `save` adds
# $OUT/devcarry.tar (unpack it into .devcarry/ for the next session's calls).
RESULTS=$OUT OUT=/tmp/device_logs
mkdir -p $OUT
rm -f $OUT/dg_ok $OUT/dg_preload     # (a warm machine keeps /tmp: DeepGEMM is checked again)
trap 'tar -C /tmp -cJf $RESULTS/logs.tar.xz device_logs 2>/dev/null' EXIT
export PYFP8GEMM_CACHE_DIR=/tmp/kcache PYFP8GEMM_TEST_CACHE_DIR=/tmp/kcache
for cache in kcache dgcache; do     # saved by an earlier call's `save` step
  [ -f .devcarry/$cache.tar.xz ] && [ ! -d /tmp/$cache ] && tar -C /tmp -xJf .devcarry/$cache.tar.xz
done
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
heavy="tests/test_grouped_gpu.py tests/test_training_gpu.py"
# A device command may run 600 s: steps that would start past BUDGET_S skip, so `save` still runs.
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
tl() {  # timeout N, cut to what is left of BUDGET_S
  local n=$1 left=$(( deadline - $(date +%s) )); shift
  timeout $(( n < left ? n : (left > 1 ? left : 1) )) "$@"
}
for step in "$@"; do
  start=$(date +%s)
  [ -f $OUT/dg_ok ] && DG_OK=1          # set by dgdiag, maybe in another invocation
  [ -f $OUT/dg_preload ] && export LD_PRELOAD=$(cat $OUT/dg_preload)
  case $step in          # dg:STEP runs only where DeepGEMM runs, nodg:STEP only where it does not
    dg:*)   step=${step#dg:};   [ -z "${DG_OK:-}" ] && { echo "[$step: skipped, no DeepGEMM]"; continue; } ;;
    nodg:*) step=${step#nodg:}; [ -n "${DG_OK:-}" ] && { echo "[$step: skipped, DeepGEMM runs]"; continue; } ;;
  esac
  if [ $step != save ] && [ $(( deadline - start )) -lt 40 ]; then
    echo "[$step: skipped, $(( deadline - start )) s left of BUDGET_S]"; continue
  fi
  case $step in
    precompile)
      tl 240 python3 scripts/precompile.py --all --grouped-bench ${PRECOMPILE_SCHEDULE:+--schedule \
          $PRECOMPILE_SCHEDULE} ${PRECOMPILE_SPECS:-} 2>&1 | grep -v Warn | tail -2 ;;
    warm)     # only what the benchmarks and the heavy tests pick (ANCHORS and DeepGEMM shapes)
      tl 240 python3 -m pyfp8gemm warmup --jobs 16 --m-range 1:8192 --groups 4 6 8 32 \
          --wgrad --shapes 2112,7168 24576,1536 32768,512 7168,16384 4096,7168 7168,2048 \
          8192,8192 6144,7168 7168,3072 4096,4096 4096,2048 2048,7168 2>&1 | tail -2 ;;
    inspect)  # registers and spills of every cached kernel (after precompile: no compiling)
      tl 200 python3 -m pyfp8gemm inspect --jobs 16 --json > $OUT/inspect.json 2> $OUT/inspect_err.txt
      python3 -c "import json, sys; rows = json.load(open(sys.argv[1]))
spilled = [(r['name'], r['spill_bytes']) for r in rows if r['spill_bytes']]
print(len(rows), 'kernels,', len(spilled), 'with spills', spilled)" $OUT/inspect.json ;;
    tests)
      tl 200 python3 -m pytest -q -m gpu -p no:cacheprovider -n 14 --timeout 180 \
          --timeout-method thread $(for f in $heavy; do echo --ignore=$f; done) \
          > $OUT/gpu_tests.txt 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" $OUT/gpu_tests.txt | cut -c1-160 | tail -20 ;;
    heavy)
      tl 300 python3 -m pytest -q -m gpu -p no:cacheprovider -n 2 --timeout 200 \
          --timeout-method thread $heavy > $OUT/gpu_tests_heavy.txt 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" $OUT/gpu_tests_heavy.txt | cut -c1-160 | tail -20 ;;
    bench)
      tl 240 python3 -m bench --no-progress --rounds 2 --json $OUT/bench.json \
          > $OUT/bench.txt 2>&1
      grep -v Warn $OUT/bench.txt | tail -28 ;;
    grouped)
      for kind in ${GROUPED_KINDS:-m-grouped-contiguous m-grouped-masked}; do
        tl 150 python3 -m bench --kind $kind --no-progress --json $OUT/bench_$kind.json \
            --providers pyfp8gemm,cublas-loop,torch-grouped-bf16${DG_OK:+,deepgemm} \
            > $OUT/bench_$kind.txt 2>&1
        grep -v Warn $OUT/bench_$kind.txt | tail -22
      done ;;
    training)
      for kind in ${TRAIN_KINDS:-wgrad-1d1d k-grouped train-step}; do
        providers=pyfp8gemm,cublas-blockwise,torch-bf16${DG_OK:+,deepgemm}
        [ $kind = train-step ] && providers=pyfp8gemm,torch-bf16
        tl 150 python3 -m bench --kind $kind --no-progress --json $OUT/bench_$kind.json \
            --providers $providers > $OUT/bench_$kind.txt 2>&1
        grep -v Warn $OUT/bench_$kind.txt | tail -16
      done ;;
    qtest)    # the fused quantization kernel against the torch ops
      tl 200 python3 -m pytest -q -m gpu -p no:cacheprovider -n 4 --timeout 180 \
          tests/test_quantize_fused_gpu.py > $OUT/gpu_tests_quantize.txt 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed|Error" $OUT/gpu_tests_quantize.txt | cut -c1-300 | tail -12 ;;
    dgbuild)
      (bash scripts/deepgemm_build.sh > $OUT/deepgemm_build.txt 2>&1; echo "rc $?" \
          >> $OUT/deepgemm_build.txt) &
      echo "building DeepGEMM in the background" ;;
    dgdiag)   # does DeepGEMM import and run next to pyfp8gemm? DG_OK=1 adds it to the benches
      while ! grep -q "^rc " $OUT/deepgemm_build.txt 2>/dev/null; do sleep 2; done
      tail -4 $OUT/deepgemm_build.txt
      tl 120 python3 -X faulthandler scripts/deepgemm_warm.py --jobs 1 --kinds gemm \
          --sets small > $OUT/deepgemm_diag.txt 2>&1 && DG_OK=1 && touch $OUT/dg_ok
      # If the extension's libstdc++ is newer than the process's, load the newer one first.
      for lib in $(ls /opt/gcc*/lib*/libstdc++.so.6 2>/dev/null | head -1); do
        [ -n "${DG_OK:-}" ] && break
        echo "retrying with LD_PRELOAD=$lib" >> $OUT/deepgemm_diag.txt
        LD_PRELOAD=$lib timeout 120 python3 -X faulthandler scripts/deepgemm_warm.py --jobs 1 \
            --kinds gemm --sets small >> $OUT/deepgemm_diag.txt 2>&1 && DG_OK=1 && \
            touch $OUT/dg_ok && echo $lib > $OUT/dg_preload
      done
      grep -v "using ptxas\|using cuobjdump" $OUT/deepgemm_diag.txt | tail -25 ;;
    dgwarm)
      while ! grep -q "^rc " $OUT/deepgemm_build.txt 2>/dev/null; do sleep 2; done
      tail -3 $OUT/deepgemm_build.txt
      left=$(( deadline - $(date +%s) - 30 )); limit=${DGWARM_S:-300}
      timeout $(( left < limit ? left : limit )) python3 scripts/deepgemm_warm.py --jobs 14 \
          --kinds ${DG_KINDS:-gemm,m-grouped-contiguous,m-grouped-masked,wgrad-1d1d,k-grouped} \
          > $OUT/deepgemm_warm.txt 2>&1
      grep -E "FAIL|warm-up" $OUT/deepgemm_warm.txt | cut -c1-200 | tail -12 ;;
    decode)
      tl 240 python3 -m bench --no-progress --set small-m --set decode --rounds 2 \
          --providers pyfp8gemm,cublas-blockwise,cublas-tensorwise${DG_OK:+,deepgemm} \
          --json $OUT/bench_decode.json > $OUT/bench_decode.txt 2>&1
      grep -v Warn $OUT/bench_decode.txt | tail -44 ;;
    save)
      rm -rf /tmp/devcarry && mkdir -p /tmp/devcarry
      tar -C /tmp -cJf /tmp/devcarry/kcache.tar.xz kcache
      ls .dg/deep_gemm/_C*.so >/dev/null 2>&1 && \
          tar -cJf /tmp/devcarry/deepgemm-C.tar.xz .dg/deep_gemm/_C*.so
      [ -d /tmp/dgcache ] && tar -C /tmp -cJf /tmp/devcarry/dgcache.tar.xz dgcache
      tar -C /tmp/devcarry -cf $RESULTS/devcarry.tar . && ls -la /tmp/devcarry ;;
    swapab)   # swap-AB: GPU tests, then the heuristic's pick, swap_ab_choice's and DeepGEMM on
              # the decode shapes (one process), and masked decode cases forced swapped
      tl 150 python3 -m pytest -q -m gpu -p no:cacheprovider -n 4 --timeout 120 \
          tests/test_gemm_gpu.py tests/test_grouped_gpu.py -k swap_ab > $OUT/gpu_tests_swap.txt 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed|Error" $OUT/gpu_tests_swap.txt | cut -c1-300 | tail -12
      shapes=$(python3 -c "from bench.shapes import DECODE_SHAPES as S
print(','.join(f'{s.m}x{s.n}x{s.k}' for s in S))")
      tl 200 python3 scripts/ab_time.py $shapes auto swap --rounds 50 2>&1 | grep -v "using " \
          > $OUT/swapab.txt
      sed -n '/^summary/,$p' $OUT/swapab.txt
      for case in "8 s64x32 s64x24" "9 s64x32 s64x24" "12 s64x32 s64x24" "14 s64x32 s64x24" \
                  "8 s64x8 --rows 4" "8 s64x8 s64x16 --rows 8" "12 s64x8 --rows 1"; do
        tl 40 python3 scripts/ab_grouped.py m-grouped-masked $case --rounds 40 2>&1 \
            | grep -v "using " | tee -a $OUT/swapab_masked.txt | tail -5
      done ;;
    wgradab)  # 1D1D tiles side by side (DeepGEMM too where DG_OK) where DeepGEMM led (session
              # 13): at 24576x1536 its pick, 152 sharing B, ran x1.10 over our 152t
      for shape in 24576x1536x4096 4096x7168x4096; do
        tl 90 python3 scripts/ab_time.py $shape 128x128t 128x152t 128x152t:b 128x128t:b \
            --1d1d --accumulate --rounds 40 2>&1 | grep -v "using " | tee -a $OUT/wgradab.txt \
            | tail -8
      done ;;
    groupedab)  # grouped configs side by side (ab_grouped.py; DeepGEMM too where DG_OK), then
                # dense ones (ab_time.py): $GROUPED_AB and $DENSE_AB, cases separated by ";"
                # (DENSE_AB="" runs none)
      IFS=";" read -ra cases <<< "${GROUPED_AB:-m-grouped-contiguous 0 128x192:b 128x192:b:8;\
m-grouped-contiguous 4 128x192:b 128x192:b:8;m-grouped-contiguous 2 128x192:b 128x192:b:8}"
      for case in "${cases[@]}"; do
        tl 90 python3 scripts/ab_grouped.py $case --rounds 40 2>&1 | grep -v "using " \
            | tee -a $OUT/groupedab.txt | tail -6
      done
      IFS=";" read -ra cases <<< "${DENSE_AB-32768x6144x7168 128x192:b 128x192:b:8}"
      for case in "${cases[@]}"; do
        tl 60 python3 scripts/ab_time.py $case --rounds 30 2>&1 | grep -v "using " \
            | tee -a $OUT/groupedab.txt | tail -4
      done ;;
    ncu)
      NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu | head -1)
      tl 240 $NCU --clock-control none --nvtx --nvtx-include ours/ --nvtx-include deepgemm/ \
          --set full --import-source no -f -o /tmp/ncu_pair python3 scripts/ncu_pair.py \
          ${NCU_SHAPE:-32768x6144x7168} ${NCU_SPEC:-128x192:b} > $OUT/ncu_run.txt 2>&1
      grep -v "using " $OUT/ncu_run.txt | tail -6
      $NCU -i /tmp/ncu_pair.ncu-rep --page details --csv > $OUT/ncu_details.csv 2>&1
      $NCU -i /tmp/ncu_pair.ncu-rep --page source --csv --print-source sass \
          > $OUT/ncu_source.csv 2>&1
      python3 scripts/ncu_summary.py $OUT/ncu_details.csv duration "sm busy" "issue slots" \
          throughput "hit rate" "warp cycles" "eligible" "registers" "dram" "frequency" "instructions" ;;
    sanitize)  # compute-sanitizer on one small problem of every kernel family and variant
      S=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
      for tool in memcheck racecheck; do
        for script in ${SANITIZE:-sanitize_small sanitize_quantize}; do
          tl 120 $S --tool $tool --report-api-errors no python3 scripts/$script.py 2>&1 \
              | grep -v "using " | tail -3
        done
      done ;;
    *) echo "unknown step $step" ;;
  esac
  echo "[$step: $(( $(date +%s) - start )) s]"
done
