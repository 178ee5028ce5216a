#!/usr/bin/env bash
# Profile one kernel with Nsight Compute on the GPU machine; the report and a per-SASS-line CSV
# (stall samples per instruction) land in $OUT. Usage:
#   bash scripts/device_ncu.sh M N K BMxBN[:mc[:group[:stages[:noovl]]]] [name]
set -u
OUT=${OUT:-/tmp/out}; NAME=${5:-prof}
ncu --clock-control none --set full --import-source no -k regex:fp8_gemm --launch-skip 3 \
    --launch-count 1 -o $OUT/$NAME -f python3 scripts/device_configs.py "$1" "$2" "$3" "$4" \
    > $OUT/$NAME.log 2>&1
ncu -i $OUT/$NAME.ncu-rep --page details --section SpeedOfLight --section WarpStateStats \
    --section ComputeWorkloadAnalysis --section Occupancy 2>&1 | grep -v "^    ---" | head -120
ncu -i $OUT/$NAME.ncu-rep --page source --csv --print-source sass > $OUT/$NAME.sass.csv 2>&1
ls -la $OUT
