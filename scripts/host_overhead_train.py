"""Host cost of one training step of pyfp8gemm.nn.Linear (forward + backward), on any CPU.

    python scripts/host_overhead_train.py [--tokens 256] [--in 1024] [--out 2048] [--profile]

The fake driver of scripts/host_overhead.py (a do-nothing libcuda, CPU tensors that pass the
Hopper checks) with the quantization kernels' and the 1D1D GEMM's launch paths switched on for
CPU tensors: every line of Python, every launch's preparation and the foreign calls run, the
kernels do not. Prints the median step in microseconds (and, with --profile, cProfile's top
functions by own time). On an H100 host the same step took ~1.0-1.2 ms (bench/JOURNAL.md,
session 11), most of a small layer's step.
"""
import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from host_overhead import install_fake_driver  # noqa: E402


def install_kernel_paths_for_cpu_tensors() -> None:
    from pyfp8gemm.host import gemm_1d1d, quantize_kernel

    torch.cuda.current_device = lambda: 0

    def launchable(x, dtypes):
        rows, cols = x.shape if x.dim() == 2 else (0, 0)
        return (x.dtype in dtypes and x.dim() == 2 and quantize_kernel.enabled() and rows > 0
                and cols % 16 == 0 and x.is_contiguous())
    quantize_kernel._launchable = launchable
    quantize_kernel._device_index = lambda x: 0
    gemm_1d1d._runs_on_cpu_backend = lambda device: False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--in", dest="in_f", type=int, default=1024)
    parser.add_argument("--out", dest="out_f", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    install_fake_driver()
    install_kernel_paths_for_cpu_tensors()
    import pyfp8gemm.nn as fnn

    lin = fnn.Linear(args.in_f, args.out_f, bias=False, dtype=torch.bfloat16)
    # Megatron's main_grad: the wgrad accumulates in place (no float32 -> bf16 cast of dW,
    # which on CPU tensors would be real work and swamp the host cost).
    lin.weight.main_grad = torch.zeros(args.out_f, args.in_f, dtype=torch.float32)
    x = torch.randn(args.tokens, args.in_f, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(args.tokens, args.out_f, dtype=torch.bfloat16)

    def step():
        lin.weight.grad = None
        x.grad = None
        lin(x).backward(dy)

    for _ in range(20):
        step()
    samples = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    print(f"host per step ({args.tokens} tokens, {args.in_f} -> {args.out_f}, fake driver): "
          f"median {statistics.median(samples) * 1e6:.0f} us")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(100):
            step()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
