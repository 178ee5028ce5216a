"""Time explicit configs side by side on one shape (tuning experiments).

python scripts/device_configs.py M N K SPEC ...   (SPEC: see scripts/config_spec.py)

Each spec may be given twice (e.g. A B A B) to interleave repeated timings.
TIMING=profiler times kernels alone (torch profiler bursts, bench/timing.py) instead of do_bench.
"""
import os
import sys

import torch
from triton.testing import do_bench

from config_spec import parse
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.testing import calc_diff
from pyfp8gemm.host.launch import fp8_gemm_nt_launch


m, n, k = map(int, sys.argv[1:4])
a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
qa, qb = quantize(a, "1x128"), quantize(b, "128x128")
ref = qa.dequantize().double() @ qb.dequantize().double().T
if os.environ.get("TIMING") == "profiler":
    from bench.timing import time_with_profiler
    do_bench = lambda fn, warmup, rep, return_mode: time_with_profiler(fn, warmup)
cub = do_bench(lambda: torch._scaled_mm(qa.data, qb.data.t(), scale_a=qa.scale, scale_b=qb.scale.t(),
                                        out_dtype=torch.bfloat16), warmup=25, rep=100,
               return_mode="median")
tf = lambda ms: 2 * m * n * k / ms / 1e9
print(f"{m}x{n}x{k}: cuBLAS block-wise {tf(cub):.0f} TFLOPS")
for spec in sys.argv[4:]:
    cfg = parse(spec)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out, config=cfg)
    diff = calc_diff(out, ref)
    from pyfp8gemm.host.launch import loaded_kernel
    clusters = loaded_kernel(cfg, 0).max_active_clusters() if cfg.cluster_size > 1 else "-"
    ms = do_bench(lambda: fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out, config=cfg),
                  warmup=25, rep=100, return_mode="median")
    label = cfg.name + (f"_x{cfg.split_k}" + ("w" if cfg.split_last_wave else "")
                        if cfg.split_k > 1 else "")
    print(f"  {label:52} {tf(ms):6.0f} TFLOPS  x{cub / ms:.2f}  diff {diff:.1e} max clusters {clusters}", flush=True)
