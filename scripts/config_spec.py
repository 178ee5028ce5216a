"""Kernel choices written on the command line, for the tuning scripts.

Spec: [s]BMxBN[:mc[:group[:stages[:split]]]]
s: swap-AB (BM weight rows x BN tokens per tile, GemmConfig.swap_ab).
split: "4" splits every tile's K in 4, "4w" only the last wave's tiles (split_last_wave).
@N,G,GRID (suffix): GemmConfig.compiled_shape (0: read at run time).
"""
from pyfp8gemm.device.config import GemmConfig
from pyfp8gemm.host.heuristics import MAX_STAGES
from pyfp8gemm.host.problem import KernelChoice


def parse(spec: str, schedule: str = "dense") -> KernelChoice:
    """The KernelChoice of `spec` (module docstring) for a kernel of `schedule`."""
    spec, _, shape = spec.partition("@")
    compiled_shape = tuple(int(x) for x in shape.split(",")) if shape else ()
    parts = spec.split(":")
    swap_ab = parts[0].startswith("s")
    bm, bn = map(int, parts[0].lstrip("s").split("x"))
    mc = parts[1] if len(parts) > 1 and parts[1] else "none"
    group = int(parts[2]) if len(parts) > 2 and parts[2] else 16
    stages = (int(parts[3]) if len(parts) > 3 and parts[3]
              else min(MAX_STAGES, GemmConfig.max_stages(bm, bn, swap_ab=swap_ab,
                                                             schedule=schedule)))
    split = parts[4] if len(parts) > 4 and parts[4] else "1"
    split_k = int(split.rstrip("w"))
    cfg = GemmConfig(bm, bn, stages, mc, group, split_k=split_k > 1, schedule=schedule,
                     swap_ab=swap_ab, compiled_shape=compiled_shape)
    return KernelChoice(cfg, split_k, split.endswith("w"))
