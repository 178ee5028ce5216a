"""GEMM shapes: the named sets the benchmark knows, and parsing of `MxNxK` strings.

A shape is (M, N, K) for D[M, N] = A[M, K] @ B[N, K]^T, the "NT" GEMM that pyfp8gemm,
DeepGEMM and cuBLAS all compute here: A holds the activations (M tokens of K features),
B the weights (N outputs of K inputs).
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple


class Shape(NamedTuple):
    m: int
    n: int
    k: int

    @property
    def label(self) -> str:
        """The name a person reads in tables and plots: `MxNxK`."""
        return f"{self.m}x{self.n}x{self.k}"

    def __str__(self) -> str:
        return self.label


# DeepSeek-V3's dense projections (N, K).
DEEPSEEK_V3_NK = ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168),
                  (7168, 2048))

# The 19 reference shapes (the README's "Reference figures": DeepSeek-V3 projections at M = 64,
# 128 and 4096, plus one square 8192^3), in the same order, so that our table lines up with it.
ANCHOR_SHAPES: tuple[Shape, ...] = tuple(
    Shape(m, n, k)
    for m in (64, 128, 4096)
    for (n, k) in DEEPSEEK_V3_NK
) + (Shape(8192, 8192, 8192),)

# Decode batches of serving (1-32 tokens per GPU) on DeepSeek-V3's projections: pure weight
# streaming, reported in GB/s next to TFLOPS (issue 22's small-M roofline).
DECODE_SHAPES: tuple[Shape, ...] = tuple(
    Shape(m, n, k) for m in (1, 2, 4, 8, 16, 32) for (n, k) in DEEPSEEK_V3_NK)

# A quick look (a few seconds per provider): one small-M shape, one mid, one large.
SMALL_SHAPES: tuple[Shape, ...] = (
    Shape(64, 2112, 7168),
    Shape(128, 7168, 2048),
    Shape(4096, 4096, 7168),
)

# Decode-sized GEMMs with few output tiles (DeepSeek-V3's 576- and 1536-wide projections, and
# narrow N with long K): where split-K spreads K over the otherwise idle SMs.
FEW_TILE_SHAPES: tuple[Shape, ...] = (
    Shape(1, 576, 7168),
    Shape(16, 576, 7168),
    Shape(64, 576, 7168),
    Shape(64, 1536, 7168),
    Shape(64, 256, 16384),
    Shape(128, 512, 7168),
)

SHAPE_SETS: dict[str, tuple[Shape, ...]] = {
    "anchors": ANCHOR_SHAPES,
    "few-tiles": FEW_TILE_SHAPES,
    "small": SMALL_SHAPES,
    # The anchors split by regime: M <= 128 is memory-bound (weights dominate the bytes),
    # M >= 4096 is compute-bound.
    "small-m": tuple(s for s in ANCHOR_SHAPES if s.m <= 128),
    "decode": DECODE_SHAPES,
    "large-m": tuple(s for s in ANCHOR_SHAPES if s.m >= 4096),
}

DEFAULT_SET = "anchors"

_SHAPE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX,*]\s*(\d+)\s*[xX,*]\s*(\d+)\s*$")


def parse_shape(text: str) -> Shape:
    """Parse "4096x4096x7168" (also "4096,4096,7168" or "4096X4096X7168") into Shape(M, N, K).

    Raises ValueError with a message that says what was expected.
    """
    match = _SHAPE_PATTERN.match(text)
    if match is None:
        raise ValueError(f"shape {text!r} is not of the form MxNxK, e.g. 4096x4096x7168")
    m, n, k = (int(group) for group in match.groups())
    if min(m, n, k) <= 0:
        raise ValueError(f"shape {text!r}: M, N and K must all be positive")
    return Shape(m, n, k)


def select_shapes(set_names: Iterable[str] | None, extra_shapes: Iterable[Shape] | None) -> list[Shape]:
    """The shapes to benchmark, in order, without duplicates.

    - nothing given: the default set (the ANCHORS.md shapes);
    - only shapes given (--shape): just those;
    - sets given (--set), with or without shapes: the sets' shapes, then the extra shapes.
    """
    set_names = list(set_names or [])
    extra_shapes = list(extra_shapes or [])
    if not set_names and not extra_shapes:
        set_names = [DEFAULT_SET]
    chosen: list[Shape] = []
    for name in set_names:
        if name not in SHAPE_SETS:
            known = ", ".join(sorted(SHAPE_SETS))
            raise ValueError(f"unknown shape set {name!r}; known sets: {known}")
        chosen.extend(SHAPE_SETS[name])
    chosen.extend(extra_shapes)
    unique: list[Shape] = []
    for shape in chosen:
        if shape not in unique:
            unique.append(shape)
    return unique
