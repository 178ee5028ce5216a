"""One launch of ours and one of DeepGEMM's 1D2D kernel on the same inputs, for Nsight Compute.

python scripts/ncu_pair.py MxNxK SPEC      (SPEC: scripts/config_spec.py, or "auto")

Each kernel runs a few times to compile and warm up, then once inside an NVTX range ("ours",
"deepgemm") so that `ncu --nvtx --nvtx-include ours/ --nvtx-include deepgemm/` profiles just
those two launches (scripts/device_run.sh's `ncu` step). Outputs are NaN-poisoned and checked.
"""
import sys

import torch

from config_spec import parse
from pyfp8gemm import to_mn_major_tma_aligned
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff

m, n, k = map(int, sys.argv[1].lower().split("x"))
spec = sys.argv[2]
qa = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
qb = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
ref = qa.dequantize().float() @ qb.dequantize().float().T

cfg = None if spec == "auto" else parse(spec)
ours = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
runs = {"ours": lambda: fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, ours, config=cfg)}
outs = {"ours": ours}
try:
    import deep_gemm
    dg_a = (qa.data, to_mn_major_tma_aligned(qa.scale))
    dg = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    runs["deepgemm"] = lambda: deep_gemm.fp8_gemm_nt(dg_a, (qb.data, qb.scale), dg)
    outs["deepgemm"] = dg
except ImportError as error:
    print(f"DeepGEMM left out: {error}")

for name, run in runs.items():
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    print(f"{name}: calc_diff {calc_diff(outs[name], ref):.1e}, NaN left "
          f"{int(outs[name].isnan().sum())}")
for name, run in runs.items():
    torch.cuda.nvtx.range_push(name)
    run()
    torch.cuda.nvtx.range_pop()
torch.cuda.synchronize()
