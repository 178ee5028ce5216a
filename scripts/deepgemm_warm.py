"""Compile, in parallel, the DeepGEMM kernels that the benchmarks will call (its JIT compiles one
kernel at a time per process, ~10 s each with NVCC): one process per job, each calling DeepGEMM
once on one benchmark case, so that `python -m bench ...` finds them in DG_JIT_CACHE_DIR.

    PYTHONPATH=.dg:. python3 scripts/deepgemm_warm.py [--jobs 14] [--kinds gemm,m-grouped-...]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import sys
import time

KINDS = ("gemm", "m-grouped-contiguous", "m-grouped-masked", "wgrad-1d1d", "k-grouped")


def list_jobs(kinds, sets) -> list[tuple[str, int]]:
    from bench import grouped, training
    from bench.shapes import SHAPE_SETS

    jobs = []
    for kind in kinds:
        if kind == "gemm":
            shapes = [s for name in sets for s in SHAPE_SETS[name]]
            jobs += [(kind, i) for i in range(len(shapes))]
        elif kind in grouped.KINDS:
            jobs += [(kind, i) for i in range(len(grouped.make_cases(kind)))]
        else:
            jobs += [(kind, i) for i in range(len(training.make_cases(kind)))]
    return jobs


def run_job(job, sets) -> str:
    kind, index = job
    start = time.time()
    try:
        import torch
        from bench import grouped, training

        if kind == "gemm":
            from bench.inputs import make_gemm_inputs
            from bench.providers import DeepGemmProvider
            from bench.shapes import SHAPE_SETS

            shape = [s for name in sets for s in SHAPE_SETS[name]][index]
            label = str(shape)
            DeepGemmProvider().prepare(make_gemm_inputs(shape, seed=index)).run()
        elif kind in grouped.KINDS:
            case = grouped.make_cases(kind)[index]
            label = case.label
            grouped.prepare_deepgemm(case, grouped.make_inputs(case, index))()
        else:
            case = training.make_cases(kind)[index]
            label = case.label
            training.prepare_gemm("deepgemm", case, training.make_gemm_inputs(case, index))[0]()
        torch.cuda.synchronize()
        return f"ok    {time.time() - start:5.1f} s  {kind} {label}"
    except Exception as error:
        return f"FAIL  {time.time() - start:5.1f} s  {kind} #{index}: {type(error).__name__}: " \
               f"{str(error).splitlines()[0][:300] if str(error) else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=14)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--sets", default="anchors,decode", help="dense shape sets")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    sets = [s for s in args.sets.split(",") if s]
    jobs = list_jobs(kinds, sets)
    start = time.time()
    failed = 0
    # (a worker that dies, e.g. of a segfault, breaks the pool: the futures then raise instead
    # of waiting forever, as multiprocessing.Pool would)
    ctx = mp.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_job, job, sets) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            try:
                line = future.result()
            except Exception as error:
                line = f"FAIL  worker died: {type(error).__name__}: {error}"
            failed += line.startswith("FAIL")
            print(line, flush=True)
    print(f"DeepGEMM warm-up: {len(jobs)} calls, {failed} failed, {time.time() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
