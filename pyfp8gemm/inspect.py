"""`python -m pyfp8gemm inspect [--json]`: compile every kernel the library can launch (the
GEMMs the heuristics can pick and the quantization kernels) and show what ptxas made of it. Needs no GPU: kernels compile from Python to SASS on any machine.

Per kernel: name, registers, spill bytes, shared memory (static + the dynamic amount the launcher
asks for) and counts of the SASS opcodes that show a Hopper GEMM is built as intended (QGMMA:
FP8 wgmma; UTMALDG/UTMASTG: TMA loads/stores; USETMAXREG: register reallocation; SYNCS: mbarriers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cache import toolchain
from .cache.compiler import compile_kernel


def inspect_all(progress=None, jobs: int = 1) -> list[dict]:
    """Compile (or fetch from the cache) every configuration and read its cubin back. With
    jobs > 1 and the disk cache on, the kernels missing from it are first compiled in that
    many processes (`pyfp8gemm.warmup`)."""
    from .cache import store
    from .host.kernels import all_kernel_specs

    if jobs > 1 and not store.disk_cache_disabled() and store.disk_store() is not None:
        from .warmup import warmup
        warmup(all_kernels=True, jobs=jobs, progress=progress is not None)
    rows = []
    specs = all_kernel_specs()
    for i, spec in enumerate(specs):
        start = time.perf_counter()
        kernel = compile_kernel(spec)
        usage = toolchain.resource_usage(kernel.cubin).get(kernel.name, {})
        sass = toolchain.sass(kernel.cubin)
        dynamic_smem, cluster_size = _launch_shape(spec)
        rows.append(dict(
            name=kernel.name,
            registers=usage.get("registers", kernel.meta.get("registers")),
            spill_bytes=usage.get("spill_store_bytes", 0) + usage.get("spill_load_bytes", 0),
            smem_bytes=usage.get("static_smem_bytes", 0) + dynamic_smem,
            threads=spec.threads,
            cluster_size=cluster_size,
            sass_opcodes=toolchain.count_opcodes(sass),
            seconds=round(time.perf_counter() - start, 3),
        ))
        if progress:
            progress(i + 1, len(specs), kernel.name)
    return rows


def _launch_shape(spec) -> tuple[int, int]:
    """(dynamic shared memory, cluster size) the launcher gives a kernel: a GEMM's from its
    GemmConfig, the quantization kernel's from its spec."""
    from .device.config import GemmConfig

    if "smem_bytes" in spec.config:
        return spec.config["smem_bytes"], 1
    cfg = GemmConfig(**spec.config)
    return cfg.smem_bytes, cfg.cluster_size


def format_table(rows: list[dict]) -> str:
    opcodes = list(toolchain.KEY_OPCODES)
    header = (f"{'kernel':52} {'regs':>4} {'spill':>5} {'smem':>7} "
              + " ".join(f"{op:>10}" for op in opcodes))
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['name']:52} {row['registers']:>4} {row['spill_bytes']:>5} "
                     f"{row['smem_bytes']:>7} "
                     + " ".join(f"{row['sass_opcodes'].get(op, 0):>10}" for op in opcodes))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyfp8gemm inspect",
        description="Compile every kernel configuration (no GPU needed) and report registers, "
                    "spills, shared memory and key SASS opcodes.")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="compile missing kernels in this many processes first (needs the "
                             "disk cache; default 1)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of objects (name, registers, spill_bytes, "
                             "smem_bytes, sass_opcodes, ...)")
    args = parser.parse_args(argv)

    def progress(done, total, name):
        print(f"\r[{done}/{total}] {name:60}", end="", file=sys.stderr, flush=True)

    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    rows = inspect_all(progress=None if args.json else progress, jobs=args.jobs)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("\r", end="", file=sys.stderr)
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
