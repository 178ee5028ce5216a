"""Device smoke run: toolchain found, kernel correct on a few shapes, first timings.

Run on the GPU machine: python scripts/device_smoke.py [--quick]
"""
import sys
import time

import torch

from pyfp8gemm.cache import toolchain
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.testing import calc_diff
from pyfp8gemm.host.launch import fp8_gemm_nt_launch, _plan
from pyfp8gemm.host.device_info import get_num_sms


print("ptxas:", toolchain.find_tool("ptxas"))
print("versions:", toolchain.versions())
print("gpu:", torch.cuda.get_device_name(), "sms:", get_num_sms())

shapes = [(128, 256, 256), (256, 512, 1024), (1000, 576, 576), (7, 2112, 7296),
          (64, 2112, 7168), (4096, 4096, 7168), (4096, 2112, 7168), (129, 7168, 576)]
rows = []
for m, n, k in shapes:
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    qa, qb = quantize(a, "1x128"), quantize(b, "128x128")
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    ref = qa.dequantize().double() @ qb.dequantize().double().T
    cfg = _plan(m, n, k, 0, get_num_sms(), None).cfg
    rows.append((m, n, k, cfg.name, int(out.isnan().sum()), calc_diff(out, ref),
                 calc_diff(out, a.float() @ b.float().T), first))
    print(rows[-1], flush=True)

print(f"{'M':>5} {'N':>5} {'K':>5} {'config':44} {'nan':>5} {'diff_deq':>9} {'diff_fp32':>9}")
for m, n, k, name, nans, d1, d2, first in rows:
    print(f"{m:5} {n:5} {k:5} {name:44} {nans:5} {d1:9.2e} {d2:9.2e}  first call {first:.2f}s")

if "--time" in sys.argv:
    from triton.testing import do_bench
    print(f"\n{'M':>5} {'N':>5} {'K':>5} {'ours TF':>8} {'cuBLAS-bw TF':>12} {'ratio':>6}")
    for m, n, k in [(4096, 4096, 7168), (4096, 7168, 16384), (128, 7168, 2048), (64, 2112, 7168),
                    (4096, 24576, 1536), (128, 24576, 1536)]:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        qa, qb = quantize(a, "1x128"), quantize(b, "128x128")
        out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        ours = do_bench(lambda: fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out),
                        warmup=25, rep=100, return_mode="median")
        cub = do_bench(lambda: torch._scaled_mm(qa.data, qb.data.t(), scale_a=qa.scale,
                                                scale_b=qb.scale.t(), out_dtype=torch.bfloat16),
                       warmup=25, rep=100, return_mode="median")
        tf = lambda ms: 2 * m * n * k / ms / 1e9
        print(f"{m:5} {n:5} {k:5} {tf(ours):8.0f} {tf(cub):12.0f} {cub / ours:6.2f}", flush=True)
