#!/usr/bin/env bash
# Is the promotion's cost power? Sustained runs (1.5 s each, do_bench) of BLOCK_M 256 with and
# without promotion (ablation patch applied), with NVML's mean board power and SM clock.
set -u
source scripts/device_env.sh
cd scripts
timeout 120 python3 power_probe.py 4096 4096 7168 --rounds 2 --specs 256x128 256x128:nopromote 2>&1 | grep -v Warn | tee $OUT/power.txt
timeout 120 python3 power_probe.py 4096 32768 512 --rounds 2 --specs 256x128 256x128:nopromote 2>&1 | grep -v Warn | tee -a $OUT/power.txt
