"""Split-K on the GPU: the heuristic's split-K config next to the same tile without split-K.

    python scripts/split_k_probe.py [MxNxK ...]

Checked correct first (calc_diff against the dequantized reference); do_bench medians (L2
flushed, launch included), the two timed alternately, twice.
"""
import dataclasses
import sys

import torch
from triton.testing import do_bench

from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.heuristics import choose_config
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff, reference_gemm

shapes = sys.argv[1:] or ["64x576x7168", "1x576x7168", "32x1536x7168", "64x256x16384",
                          "16x576x2048", "128x512x7168"]
sms = torch.cuda.get_device_properties(0).multi_processor_count
for text in shapes:
    m, n, k = map(int, text.split("x"))
    a = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
    b = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
    ref = reference_gemm(a, b)
    chosen = choose_config(m, n, k, sms)
    whole = dataclasses.replace(chosen, split_k=1)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    row = f"{text:>14} {chosen.name:44} split {chosen.split_k:2}"
    times = {chosen: [], whole: []}
    for cfg in (chosen, whole):
        out.fill_(float("nan"))
        fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out, config=cfg)
        diff = calc_diff(out, ref)
        row += f"  diff {diff:.1e}"
    for _ in range(2):
        for cfg in (chosen, whole):
            times[cfg].append(do_bench(lambda: fp8_gemm_nt_launch(
                a.data, a.scale, b.data, b.scale, out, config=cfg), warmup=10, rep=50))
    t_split, t_whole = min(times[chosen]), min(times[whole])
    print(f"{row}  {t_split * 1e3:7.1f} us vs {t_whole * 1e3:7.1f} us without split "
          f"(x{t_whole / t_split:.2f})", flush=True)
