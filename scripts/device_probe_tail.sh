#!/usr/bin/env bash
# Device call: GPU suite on the last-wave split, its A/B on wave-quantized shapes, the
# small-M fixed cost (K sweep, kernel time), and more of the small-M ncu report (.ab/).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if [ -f .ab/m128n4096.ncu-rep ]; then
  ncu -i .ab/m128n4096.ncu-rep --page details --section LaunchStats --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats 2>&1 | grep -v "^    ---" | head -90 > $OUT/ncu_more.txt
  ncu -i .ab/m128n4096.ncu-rep --page raw --csv 2>&1 | python3 -c "
import csv,sys
rows=list(csv.reader(sys.stdin)); h=rows[0]; v=rows[2] if len(rows)>2 else rows[1]
keys=('sm__cycles_active','stall','lts__t_sectors_srcunit_tex','dram__bytes','l1tex__m_xbar2l1tex','tma','sm__warps_active','launch__')
for a,b in zip(h,v):
    if any(k in a for k in keys): print(a,b)
" > $OUT/ncu_raw.txt 2>&1
fi
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -n 8 --timeout 120 --timeout-method thread 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
A=128x128:b; B=128x128; C=128x128:none:16::ovl:4w; D=128x128:none:16::ovl:8w; E=128x128:none:16::ovl:2w
timeout 120 python3 scripts/device_configs.py 4096 2112 7168 $A $B $C $D $E $A $B $C $D $E 2>&1 | grep -v -i warn | tee $OUT/tail.txt
timeout 60 python3 scripts/device_configs.py 2048 2112 7168 $A $C $A $C 2>&1 | grep -v -i warn | tee -a $OUT/tail.txt
timeout 150 python3 -m bench --no-progress --timing profiler --rounds 2 --providers pyfp8gemm,cublas-blockwise,cublas-tensorwise \
  --shape 128x4096x1024 --shape 128x4096x2048 --shape 128x4096x4096 --shape 128x4096x7168 --shape 128x4096x14336 \
  --shape 4096x2112x7168 --shape 2048x2112x7168 2>&1 | grep -v -i warn | head -16 | tee $OUT/ksweep.txt
