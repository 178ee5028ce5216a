"""A/B timing of kernel configurations, launches interleaved so that drift cancels.

python scripts/ab_time.py MxNxK[,MxNxK...] SPEC [SPEC ...] [--rounds R]   (SPEC: scripts/config_spec.py,
    "auto": the heuristic's pick, "swap": heuristics.swap_ab_choice's); DeepGEMM's 1D2D kernel
    too where it imports
python scripts/ab_time.py MxNxK[,...] BMxBN[t][:mc] ... --1d1d [--accumulate]
    the 1D1D wgrad kernel, FP32 D (t: the "tma" epilogue; mc: a or b, a 2-CTA cluster sharing
    A or B; --accumulate: D += A @ B^T, C = D); DeepGEMM's 1D1D kernel too where it imports

Profiler bursts and do_bench time one config after another; the H200's clock drifts with power
and temperature over those seconds (the same config read 1128 and 1320 TFLOPS in one process).
Here every round launches cuBLAS block-wise and each config once, in rotating order, each after
an L2 flush and between its own CUDA events, so all contenders see the same conditions. Printed:
median TFLOPS, the 25-75% range, and the median over rounds of each config's time relative to
the first config's in the same round (the paired ratio: the number to compare).
"""
import argparse
import statistics

import torch

from bench.timing import interleaved_times
from config_spec import parse
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff

parser = argparse.ArgumentParser()
parser.add_argument("shapes", help="MxNxK, or several: MxNxK,MxNxK,... (one process)")
parser.add_argument("specs", nargs="+")
parser.add_argument("--rounds", type=int, default=300)
parser.add_argument("--1d1d", dest="one_d_one_d", action="store_true",
                    help="both operands 1x128, FP32 D: the wgrad kernel's configs (BMxBN[t])")
parser.add_argument("--accumulate", action="store_true", help="1D1D: D += A @ B^T (C = D)")
args = parser.parse_args()
summary = []         # (shape, {contender: speed vs first})


def race(m, n, k):
    """Time every contender on one shape; print its lines; add its ratios to `summary`."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    qa, qb = quantize(a, "1x128"), quantize(b, "1x128" if args.one_d_one_d else "128x128")
    ref = qa.dequantize().double() @ qb.dequantize().double().T

    contenders = {"cuBLAS block-wise": lambda: torch._scaled_mm(
        qa.data, qb.data.t(), scale_a=qa.scale, scale_b=qb.scale.t(), out_dtype=torch.bfloat16)}
    try:                                 # cuBLAS refuses some scale layouts (M = 1's stride)
        contenders["cuBLAS block-wise"]()
    except RuntimeError as error:
        print(f"  (cuBLAS block-wise left out: {str(error).splitlines()[0][:100]})")
        del contenders["cuBLAS block-wise"]
    diffs = {}
    for spec in args.specs:
        if args.one_d_one_d:
            from pyfp8gemm.host.heuristics import make_config
            from pyfp8gemm.host.launch import launch_1d1d
            tile, _, mc = spec.partition(":")
            bm, bn = map(int, tile.rstrip("t").split("x"))
            cfg = make_config(bm, bn, mc or "none", scaling="1d1d", accumulate=args.accumulate,
                              epilogue="tma" if tile.endswith("t") else "direct")
            out = torch.zeros((m, n), device="cuda", dtype=torch.float32)
            launch = (lambda cfg=cfg, out=out: launch_1d1d(
                qa.data, qa.scale, qb.data, qb.scale, out, out if args.accumulate else None,
                config=cfg))
        else:
            if spec == "swap":                    # the swap-AB kernel heuristics.swap_ab_choice gives
                from pyfp8gemm.host.device_info import get_num_sms
                from pyfp8gemm.host.heuristics import swap_ab_choice
                cfg = swap_ab_choice(m, n, k, get_num_sms(0))
                print(f"  swap: {cfg.config.name} split {cfg.split_k}")
            else:
                cfg = None if spec == "auto" else parse(spec)
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            launch = (lambda cfg=cfg, out=out:
                      fp8_gemm_nt_launch(qa.data, qa.scale, qb.data, qb.scale, out, config=cfg))
        try:
            launch()
        except ValueError as error:          # e.g. a cluster that needs an even tile count
            print(f"  ({spec} left out: {error})")
            continue
        torch.cuda.synchronize()
        diffs[spec] = calc_diff(out, ref)
        contenders[spec] = launch

    try:                                 # DeepGEMM's kernel (1D1D or 1D2D), where it imports
        import deep_gemm
        from pyfp8gemm import to_mn_major_tma_aligned
        dg_a = (qa.data, to_mn_major_tma_aligned(qa.scale))
        if args.one_d_one_d:
            dg_b = (qb.data, to_mn_major_tma_aligned(qb.scale))
            dg_out = torch.zeros((m, n), device="cuda", dtype=torch.float32)
            dg_run = (lambda: deep_gemm.fp8_gemm_nt(dg_a, dg_b, dg_out,
                                                    c=dg_out if args.accumulate else None,
                                                    recipe=(1, 1, 128)))
        else:
            dg_out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
            dg_run = lambda: deep_gemm.fp8_gemm_nt(dg_a, (qb.data, qb.scale), dg_out)
        dg_run()
        torch.cuda.synchronize()
        diffs["DeepGEMM"] = calc_diff(dg_out, ref)
        contenders["DeepGEMM"] = dg_run
    except Exception as error:           # no deep_gemm here, or it refused
        print(f"  (DeepGEMM left out: {type(error).__name__}: {str(error)[:100]})")

    names = list(contenders)
    times = interleaved_times(contenders, args.rounds, warmup=20)  # compile, clocks up

    tflops = lambda ms: 2 * m * n * k / ms / 1e9
    first = next(spec for spec in args.specs if spec in contenders)
    print(f"{m}x{n}x{k}, {args.rounds} interleaved rounds")
    ratios = {}
    for name in names:
        t = sorted(times[name])
        q1, med, q3 = t[len(t) // 4], statistics.median(t), t[3 * len(t) // 4]
        paired = statistics.median(x / y for x, y in zip(times[first], times[name]))
        ratios[name] = paired
        diff = f"diff {diffs[name]:.1e}" if name in diffs else ""
        print(f"  {name:34} {tflops(med):6.0f} TFLOPS ({tflops(q3):4.0f}-{tflops(q1):4.0f})  "
              f"speed vs first x{paired:.3f}  {diff}", flush=True)
    summary.append((f"{m}x{n}x{k}", ratios))


for shape in args.shapes.split(","):
    race(*map(int, shape.lower().split("x")))
if len(summary) > 1:     # one line per shape: each contender's speed against the first spec
    names = list(dict.fromkeys(name for _, ratios in summary for name in ratios))
    print("summary: speed vs " + args.specs[0] + "  |  " + "  ".join(names))
    for shape, ratios in summary:
        print(f"  {shape:18} " + "  ".join(f"{ratios[name]:6.3f}" if name in ratios else "     -"
                                          for name in names))
