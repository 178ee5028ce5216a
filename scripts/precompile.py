"""Compile kernels into the disk cache in parallel (GPU machine or not: compiling needs no GPU).

    python scripts/precompile.py --all [--jobs N]     every kernel the heuristics can launch
    python scripts/precompile.py SPEC ... [--jobs N]  the given configs (scripts/config_spec.py)

The device scripts run it first: the GPU suite then finds every kernel compiled (one process per
kernel here, instead of ptxas runs queued behind each other in the test workers).
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _compile(cfg):
    from pyfp8gemm.cache.compiler import compile_kernel
    from pyfp8gemm.host.kernels import kernel_spec
    compile_kernel(kernel_spec(cfg))
    return cfg.name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--all", action="store_true", help="heuristics.all_configs()")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    from config_spec import parse
    from pyfp8gemm.host.heuristics import all_configs
    configs = [parse(s).config for s in args.specs] + (all_configs() if args.all else [])
    kernels = sorted(set(configs), key=lambda c: c.name)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        names = list(pool.map(_compile, kernels))
    print(f"precompiled {len(names)} kernels")


if __name__ == "__main__":
    main()
