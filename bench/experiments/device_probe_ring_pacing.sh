#!/usr/bin/env bash
# Does the 3-stage ring pace BLOCK_M 256? Nsight Compute on 4096x4096x7168 with and without the
# promotion: the math warps' stall samples on the full-barrier wait (SYNCS.PHASECHK.TRYWAIT)
# against the wgmma wait (WARPGROUP.DEPBAR). Apply bench/experiments/ablation-nopromote.patch
# first (for ":nopromote"). Two ncu runs, a few minutes in all.
set -u
bash scripts/device_ncu.sh 4096 4096 7168 256x128 full256
bash scripts/device_ncu.sh 4096 4096 7168 256x128:nopromote nopromote256
