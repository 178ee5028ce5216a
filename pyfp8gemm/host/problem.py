"""What a GEMM computes (`GemmProblem`) and how the host chose to run it (`KernelChoice`).

A problem descriptor is what the heuristics look at; a `GemmConfig` (device/config.py) is what a
kernel is compiled for; a `KernelChoice` adds the launch policy that is not compiled in (the
split-K count and whether only the last wave is split).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..device.config import MAX_SPLIT_K, GemmConfig

KINDS = ("dense", "m_grouped_contiguous", "m_grouped_masked", "k_grouped")


@dataclass(frozen=True)
class GemmProblem:
    """D = A @ B^T of `kind`: M, N, K (M is M_sum for contiguous, M_max for masked, K the
    total of every group's K for k_grouped), the number of groups, the expected rows per group
    (a hint: masked and contiguous layouts are read on the GPU), the output type ("bf16": A and
    B scaled 1x128 / 128x128; "f32": both 1x128, the weight-gradient recipe), whether the
    output accumulates (D = C + A @ B^T) and whether C is a tensor other than D (the
    accumulating TMA epilogue adds into D, so a separate C costs a copy first)."""
    m: int
    n: int
    k: int
    kind: str = "dense"
    groups: int = 1
    expected_m: int | None = None
    out_dtype: str = "bf16"
    accumulate: bool = False
    m_alignment: int = 128        # contiguous layout: each group's rows start at a multiple
    separate_c: bool = False      # accumulate from a C that is not D itself

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        if self.kind == "dense" and self.groups != 1:
            raise ValueError("a dense problem has one group")
        if self.out_dtype not in ("bf16", "f32"):
            raise ValueError(f"out_dtype must be 'bf16' or 'f32', got {self.out_dtype!r}")
        if (self.kind == "k_grouped" or self.accumulate) and self.out_dtype != "f32":
            raise ValueError("k_grouped and accumulating problems have FP32 output")
        if self.separate_c and not self.accumulate:
            raise ValueError("separate_c needs accumulate (it says where C comes from)")

    @property
    def rows_per_group(self) -> int:
        """The M a group's tiles see: the hint, else M_max (masked) or M_sum / groups."""
        if self.expected_m is not None:
            return self.expected_m
        return self.m if self.kind == "m_grouped_masked" else -(-self.m // self.groups)


@dataclass(frozen=True)
class KernelChoice:
    """A kernel and its launch policy: K split `split_k` ways (every tile, or with
    `split_last_wave` only the tiles of the last, partial wave)."""
    config: GemmConfig
    split_k: int = 1
    split_last_wave: bool = False

    def __post_init__(self):
        if not 1 <= self.split_k <= MAX_SPLIT_K:
            raise ValueError(f"split_k must be in [1, {MAX_SPLIT_K}], got {self.split_k}")
        if self.split_k > 1 and not self.config.split_k:
            raise ValueError(f"{self.config.name}: split_k={self.split_k} needs a kernel built "
                             "with split-K (GemmConfig(split_k=True))")
        if self.split_last_wave and self.split_k == 1:
            raise ValueError("split_last_wave needs split_k > 1")

    @property
    def name(self) -> str:
        split = "" if self.split_k == 1 else f"_x{self.split_k}" + ("w" if self.split_last_wave
                                                                      else "")
        return self.config.name + split
