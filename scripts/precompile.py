"""Compile kernels into the disk cache in parallel (GPU machine or not: compiling needs no GPU).

    python scripts/precompile.py --all [--jobs N]     every kernel the heuristics can launch,
                                                      and the forced ones of the GPU tests and
                                                      the device A/B steps (`forced_configs`)
    python scripts/precompile.py SPEC ... [--jobs N]  the given configs (scripts/config_spec.py)
        [--schedule S]                                of schedule S (default dense)
    python scripts/precompile.py --grouped-bench      the grouped benchmark's kernels: compiled
                                                      for each case's shape, and not

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


def forced_configs():
    """Configurations the heuristic does not pick but the GPU tests and the A/B steps of
    scripts/device_run.sh launch (so that no test worker compiles them one after another)."""
    from pyfp8gemm.device.config import GemmConfig
    from pyfp8gemm.host.heuristics import make_config, swap_ab_configs
    wgrad = [make_config(128, bn, mc, schedule=schedule, scaling="1d1d", accumulate=acc,
                         epilogue=epilogue)
             for schedule in ("dense", "k_grouped") for acc in (False, True)
             for bn, mc, epilogue in ((128, "none", "tma"), (96, "none", "tma"),
                                      (128, "a", "tma"), (128, "b", "tma"),
                                      (128, "a", "direct"), (128, "b", "direct"),
                                      # DeepGEMM's widths: one row-major box (wgradab)
                                      (152, "none", "tma"), (136, "none", "tma"),
                                      (152, "b", "tma"), (152, "none", "direct"))
             if not (schedule == "k_grouped" and mc == "a")]
    masked = [make_config(128, bn, mc, schedule="m_grouped_masked")
              for bn in (128, 192) for mc in ("none", "b")]
    contiguous = [make_config(128, bn, mc, schedule="m_grouped_contiguous")
                  for bn, mc in ((128, "none"), (192, "none"), (128, "b"), (192, "b"))]
    contiguous.append(GemmConfig(128, 192, 3, "b", schedule="m_grouped_contiguous"))
    return wgrad + masked + contiguous + swap_ab_configs()


def grouped_bench_configs():
    """The grouped benchmark's picks (bench/grouped.py, as its launches make the problem), each
    compiled for its shape (GemmConfig.compiled_shape) and not: not in --all, which has no
    shapes."""
    import dataclasses

    from bench import grouped
    from pyfp8gemm.host.heuristics import choose_config
    from pyfp8gemm.host.problem import GemmProblem
    configs = []
    for bench_kind in grouped.KINDS:
        kind = bench_kind.replace("-", "_")
        for case in grouped.make_cases(bench_kind):
            if kind == "m_grouped_contiguous":
                problem = GemmProblem(case.m_sum, case.n, case.k, kind, case.groups,
                                      case.expected_m)
            else:
                problem = GemmProblem(case.m_max, case.n, case.k, kind, case.groups,
                                      case.masked_hint)
            cfg = choose_config(problem, 132).config
            configs += [cfg, dataclasses.replace(cfg, compiled_shape=())]
    return configs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--all", action="store_true", help="heuristics.all_configs()")
    parser.add_argument("--grouped-bench", action="store_true",
                        help="the grouped benchmark's kernels, shape-compiled and not")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--schedule", default="dense", help="the SPECs' schedule")
    args = parser.parse_args()
    from config_spec import parse
    from pyfp8gemm.host.heuristics import all_configs
    configs = [parse(s, args.schedule).config for s in args.specs]
    if args.all:
        configs += all_configs() + forced_configs()
    if args.grouped_bench:
        configs += grouped_bench_configs()
    kernels = sorted(set(configs), key=lambda c: c.name)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        names = list(pool.map(_compile, kernels))
    print(f"precompiled {len(names)} kernels")


if __name__ == "__main__":
    main()
