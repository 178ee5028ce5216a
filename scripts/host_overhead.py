"""Python cost of one GEMM call on a cache hit (host side only; kernels run async).

Times the public call, the launch entry, and the raw cuLaunchKernelEx underneath, on a small
shape so the GPU never backs up the host; reports medians in microseconds.
"""
import statistics
import time

import torch

import pyfp8gemm
from pyfp8gemm.host import launch


def median_us(fn, n=3000):
    for _ in range(200):
        fn()
    samples = []
    for i in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if i % 500 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(samples) * 1e6


m, n, k = 128, 2112, 7168
a = pyfp8gemm.quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
b = pyfp8gemm.quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
pyfp8gemm.fp8_gemm_nt(a, b, out)
torch.cuda.synchronize()

t_public = median_us(lambda: pyfp8gemm.fp8_gemm_nt(a, b, out))
t_tuple = median_us(lambda: pyfp8gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale), out))
t_launch = median_us(lambda: launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out))
plan = launch._plan(m, n, k, 0, pyfp8gemm.get_num_sms(), None)
params = next(iter(plan.param_blocks.values()))
stream = torch.cuda.current_stream().cuda_stream
t_raw = median_us(lambda: plan.kernel.launch_packed(plan.grid, stream, params.address))
t_empty = median_us(lambda: torch.empty(1, device="cuda"))
print(f"host cost per call (median, us): fp8_gemm_nt(FP8Tensor) {t_public:.1f} | "
      f"fp8_gemm_nt(tuples) {t_tuple:.1f} | fp8_gemm_nt_launch {t_launch:.1f} | "
      f"raw cuLaunchKernelEx {t_raw:.1f} | (torch.empty(1) for scale {t_empty:.1f})")
