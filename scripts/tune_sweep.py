"""Heuristic tuning on the GPU: per shape, time the heuristic's config next to its neighbours.

    python scripts/tune_sweep.py [--shapes anchors|MxNxK,...] [--json PATH]

Prints, per shape, the heuristic's TFLOPS, the best config found and how much faster it is;
every candidate is checked for correctness (calc_diff against the dequantized reference) before
it is timed. Timing: triton do_bench median (L2 flushed), the same inputs for every candidate.
"""
import argparse
import json
import math

import torch
from triton.testing import do_bench

from bench.shapes import SHAPE_SETS, parse_shape
from pyfp8gemm.device.config import BLOCK_M_256_MAX_N, GemmConfig
from pyfp8gemm.host.device_info import get_num_sms
from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.heuristics import BLOCK_N_CANDIDATES, choose_dense, make_config
from pyfp8gemm.host.launch import fp8_gemm_nt_launch
from pyfp8gemm.testing import calc_diff, reference_gemm


def candidates(m, n, k, num_sms):
    """The heuristic's choice and its neighbours: BLOCK_N around it (multiples of 8 included),
    the other multicast modes, BLOCK_M 64 for small M (and the narrow 16 / 32 for M <= 32) and
    256 for large M, and the deepest
    ring that shared memory holds next to the heuristic's stage count."""
    chosen = choose_dense(m, n, k, num_sms).config
    block_ms = {chosen.block_m}
    if m <= 256:
        block_ms |= {64, 128}
    if m <= 32:
        block_ms |= {16, 32}        # narrow A tiles (make_config refuses them with multicast)
    if m >= 1024:
        block_ms |= {128, 256}
    configs = {chosen}
    for block_m in sorted(block_ms):
        for block_n in range(16, 257, 8):
            if block_m == 256 and block_n > BLOCK_M_256_MAX_N:
                continue
            if abs(block_n - chosen.block_n) > 32 and block_n not in (64, 128):
                continue
            if block_n % 16 and abs(block_n - chosen.block_n) > 16:
                continue
            m_tiles, n_tiles = math.ceil(m / block_m), math.ceil(n / block_n)
            for multicast in ("none", "a", "b"):
                if (multicast == "a" and n_tiles % 2) or (multicast == "b" and m_tiles % 2):
                    continue
                if multicast == "b" and m < 256:
                    continue        # no M-neighbour to share B with
                try:
                    configs.add(make_config(block_m, block_n, multicast))
                except ValueError:
                    continue        # e.g. a tile spanning three B-scale blocks
    if m >= 1024:           # rasterization group height
        for group_m in (4, 8, 32):
            configs.add(GemmConfig(chosen.block_m, chosen.block_n, chosen.stages,
                                   chosen.multicast, group_m))
    deepest = GemmConfig.max_stages(chosen.block_m, chosen.block_n)
    if deepest > chosen.stages:
        configs.add(GemmConfig(chosen.block_m, chosen.block_n, deepest, chosen.multicast,
                               chosen.group_m))
    return chosen, sorted(configs, key=lambda c: c.name)


def _compile(cfg):
    from pyfp8gemm.cache.compiler import compile_kernel
    from pyfp8gemm.host.kernels import kernel_spec
    compile_kernel(kernel_spec(cfg))
    return cfg.name


def precompile(configs, workers=16):
    """Fill the disk cache with every candidate, in parallel (ptxas dominates), so that the
    timing loop below only loads cubins."""
    import concurrent.futures
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(_compile, configs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="anchors", help="a bench shape set or MxNxK,...")
    parser.add_argument("--json")
    args = parser.parse_args()
    num_sms = get_num_sms()
    rows = []
    if args.shapes in SHAPE_SETS:
        shapes = SHAPE_SETS[args.shapes]
    else:
        shapes = [parse_shape(text) for text in args.shapes.split(",")]
    precompile(sorted({cfg for shape in shapes
                       for cfg in candidates(shape.m, shape.n, shape.k, num_sms)[1]},
                      key=lambda c: c.name))
    for shape in shapes:
        m, n, k = shape.m, shape.n, shape.k
        a = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "1x128")
        b = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), "128x128")
        ref = reference_gemm(a, b)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        chosen, configs = candidates(m, n, k, num_sms)
        results = {}
        for cfg in configs:
            out.fill_(float("nan"))
            fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out, config=cfg)
            diff = calc_diff(out, ref)
            if not diff < 1e-5:
                results[cfg.name] = dict(tflops=0.0, diff=diff, error="wrong result")
                continue
            ms = do_bench(lambda: fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out,
                                                     config=cfg),
                          warmup=10, rep=40, return_mode="median")
            results[cfg.name] = dict(tflops=2 * m * n * k / ms / 1e9, diff=diff)
        best = max(results, key=lambda name: results[name]["tflops"])
        ours = results[chosen.name]["tflops"]
        rows.append(dict(shape=f"{m}x{n}x{k}", chosen=chosen.name, chosen_tflops=ours,
                         best=best, best_tflops=results[best]["tflops"], all=results))
        print(f"{m:>5}x{n:>5}x{k:>5}  heuristic {ours:7.0f} {chosen.name:46}  best "
              f"{results[best]['tflops']:7.0f} {best} (x{results[best]['tflops'] / ours:.2f})",
              flush=True)
        bad = [name for name, r in results.items() if "error" in r]
        if bad:
            print("  WRONG RESULTS:", bad, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
