#!/usr/bin/env bash
# Profile one kernel with Nsight Compute on the GPU machine: key sections and the SASS lines with
# the most stall samples are printed (and kept in $OUT/<name>.txt); the report stays in /tmp
# (too big to come back). Usage (on the GPU machine, from the repository root):
#   bash scripts/device_ncu.sh M N K BMxBN[:mc[:group[:stages[:noovl]]]] [name]
set -u
source scripts/device_env.sh
NAME=${5:-prof}
{
timeout 200 ncu --clock-control none --set full --import-source no -k regex:fp8_gemm --launch-skip 3 \
    --launch-count 1 -o /tmp/$NAME -f python3 scripts/device_configs.py "$1" "$2" "$3" "$4" \
    > /tmp/$NAME.log 2>&1
tail -2 /tmp/$NAME.log
ncu -i /tmp/$NAME.ncu-rep --page details --section SpeedOfLight --section WarpStateStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis 2>&1 \
    | grep -v "^    ---" | grep -v "^ *$" | grep -v "^          " | head -60
ncu -i /tmp/$NAME.ncu-rep --page source --csv --print-source sass > /tmp/$NAME.sass.csv 2>&1
python3 scripts/ncu_top_sass.py /tmp/$NAME.sass.csv 30
} > $OUT/$NAME.txt 2>&1
cat $OUT/$NAME.txt
