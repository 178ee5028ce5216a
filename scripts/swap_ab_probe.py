"""Is swap-AB worth a kernel of its own for decode (M <= 32)? A probe with no new kernel code.

    python scripts/swap_ab_probe.py [--rounds 60]          (on the GPU machine)

Swap-AB computes D^T (N, M) = B (N, K) . A^T, so the weight rows fill the wgmma's 64-row side
and the few tokens its N side (16 or 32) instead of wasting 48-63 of 64 rows. With the weight's
128x128 scales expanded to one scale per weight row (every row of a 128-row block the same),
that is exactly the 1D1D kernel's problem: A = W with per-row scales, B = X with per-row
(1x128) scales, FP32 D^T. This times, interleaved in rounds (ab_time.py's method), for each
decode shape:

  dense       pyfp8gemm.fp8_gemm_nt as the heuristic picks (narrow 16-row tiles for M <= 16)
  swap 64xT   the 1D1D kernel on (W, X) with BLOCK_M 64 (weight rows) x BLOCK_N T (tokens,
              M padded to a multiple of 8 with zero rows), FP32 D^T; then the transposed bf16
              copy into D (timed with it: a real swap-AB kernel would store D directly, so the
              kernel alone is printed too)
  DeepGEMM    deep_gemm.fp8_gemm_nt, where it imports

and checks each against the float64 product of the dequantized inputs. If "swap (kernel
alone)" beats dense and DeepGEMM clearly, a swap-AB variant of the 1D2D kernel (design in
bench/JOURNAL.md, session 10) is worth building; if not, the narrow tiles are the answer.
"""
import argparse
import statistics

import torch

from bench.timing import interleaved_times
from pyfp8gemm import fp8_gemm_nt
from pyfp8gemm.host.fp8tensor import quantize, to_mn_major_tma_aligned
from pyfp8gemm.host.heuristics import make_config
from pyfp8gemm.host.launch import launch_1d1d
from pyfp8gemm.testing import calc_diff

SHAPES = [(n, k) for n, k in ((2112, 7168), (4096, 7168), (7168, 2048), (7168, 16384),
                              (24576, 1536))]
MS = (1, 4, 8, 16, 32)


def deepgemm_runner(qa, qb, out):
    try:
        import deep_gemm
    except Exception:
        return None
    a, b = (qa.data, qa.scale), (qb.data, qb.scale)
    return lambda: deep_gemm.fp8_gemm_nt(a, b, out)


def time_rounds(contenders, rounds):
    """Median microseconds of each contender over interleaved rounds."""
    return {name: statistics.median(t) * 1e3
            for name, t in interleaved_times(contenders, rounds).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}: median us over {args.rounds} interleaved rounds")
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        qb = quantize(w, "128x128")
        # The weight's block scales, one per weight row (what the 1D1D kernel reads for A).
        row_scale = to_mn_major_tma_aligned(
            qb.scale.repeat_interleave(128, dim=0)[:n].contiguous())
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            qa = quantize(x, "1x128")
            ref = (qa.dequantize().double() @ qb.dequantize().double().T)
            tokens = -(-m // 8) * 8
            x_pad = torch.zeros(tokens, k, device="cuda", dtype=torch.bfloat16)
            x_pad[:m] = x
            qx = quantize(x_pad, "1x128")
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            contenders, outputs = {"dense": lambda: fp8_gemm_nt(qa, qb, out)}, {"dense": out}
            for block_n in (16, 32):
                cfg = make_config(64, block_n, scaling="1d1d")
                d_t = torch.empty(n, tokens, device="cuda", dtype=torch.float32)
                swapped = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

                def kernel(cfg=cfg, d_t=d_t):
                    launch_1d1d(qb.data, row_scale, qx.data, qx.scale, d_t, None, config=cfg)

                def with_copy(kernel=kernel, d_t=d_t, swapped=swapped):
                    kernel()
                    swapped.copy_(d_t[:, :m].t())
                contenders[f"swap 64x{block_n} (kernel alone)"] = kernel
                contenders[f"swap 64x{block_n} + transposed copy"] = with_copy
                outputs[f"swap 64x{block_n} + transposed copy"] = swapped
            dg_out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            dg = deepgemm_runner(qa, qb, dg_out)
            if dg is not None:
                contenders["DeepGEMM"], outputs["DeepGEMM"] = dg, dg_out
            for run in contenders.values():
                run()
            torch.cuda.synchronize()
            diffs = {name: calc_diff(o, ref) for name, o in outputs.items()}
            times = time_rounds(contenders, args.rounds)
            gbs = lambda us: (n * k + m * k + n * m * 2) / us / 1e3  # noqa: E731
            print(f"M={m} N={n} K={k}")
            for name, us in times.items():
                diff = f"diff {diffs[name]:.1e}" if name in diffs else ""
                print(f"  {name:36} {us:8.1f} us {gbs(us):7.0f} GB/s  "
                      f"x{times['dense'] / us:.2f} vs dense  {diff}")


if __name__ == "__main__":
    main()
