"""The arithmetic of a benchmark: FLOPs, bytes, TFLOPS, GB/s, ratios, geometric means, calc_diff.

Pure Python (calc_diff takes torch tensors): everything here runs on the CPU and is unit-tested.
"""

from __future__ import annotations

import math
from typing import Iterable

from bench.shapes import Shape

SCALE_BLOCK = 128  # 1x128 activation scales, 128x128 weight scales

# What a provider's kernel reads and writes, which decides the bytes counted for GB/s.
FP8_BLOCKWISE = "fp8-blockwise"  # e4m3 A and B, fp32 scales 1x128 (A) and 128x128 (B), bf16 D
FP8_TENSORWISE = "fp8-tensorwise"  # e4m3 A and B, one fp32 scale each, bf16 D
BF16 = "bf16"  # bf16 A and B, bf16 D
OPERAND_FORMATS = (FP8_BLOCKWISE, FP8_TENSORWISE, BF16)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gemm_flops(shape: Shape) -> int:
    """Multiply-adds count twice: 2 * M * N * K."""
    return 2 * shape.m * shape.n * shape.k


def gemm_bytes(shape: Shape, operand_format: str) -> int:
    """The fewest bytes a kernel must move through device memory: every input read once,
    the output written once (what a perfect cache would leave)."""
    m, n, k = shape
    output_bytes = 2 * m * n  # bf16 D
    if operand_format == FP8_BLOCKWISE:
        a_scale_bytes = 4 * m * ceil_div(k, SCALE_BLOCK)
        b_scale_bytes = 4 * ceil_div(n, SCALE_BLOCK) * ceil_div(k, SCALE_BLOCK)
        return m * k + n * k + a_scale_bytes + b_scale_bytes + output_bytes
    if operand_format == FP8_TENSORWISE:
        return m * k + n * k + 4 + 4 + output_bytes
    if operand_format == BF16:
        return 2 * m * k + 2 * n * k + output_bytes
    raise ValueError(f"unknown operand format {operand_format!r}; known: {', '.join(OPERAND_FORMATS)}")


def tflops(shape: Shape, time_ms: float) -> float:
    """Tera floating-point operations per second for one GEMM that took time_ms."""
    return gemm_flops(shape) / (time_ms * 1e-3) / 1e12


def gb_per_s(num_bytes: int, time_ms: float) -> float:
    """Gigabytes (1e9) per second."""
    return num_bytes / (time_ms * 1e-3) / 1e9


def speed_ratio(time_ms: float | None, baseline_time_ms: float | None) -> float | None:
    """How many times faster than the baseline (> 1 is faster); None where either is missing."""
    if time_ms is None or baseline_time_ms is None or time_ms <= 0 or baseline_time_ms <= 0:
        return None
    return baseline_time_ms / time_ms


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive values (None entries are left out); None if none remain.

    The right mean for ratios: a 2x win and a 2x loss average to 1x.
    """
    logs = [math.log(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not logs:
        return None
    return math.exp(sum(logs) / len(logs))


def calc_diff(x, y) -> float:
    """DeepGEMM's similarity error: 1 - 2 * sum(x * y) / sum(x * x + y * y), in float64.

    0 for identical tensors; FP8 GEMMs against the fp32 product of the unquantized inputs land
    near 7e-4. pyfp8gemm.testing.calc_diff is the same formula; this copy lets the benchmark
    check the other providers even while the library is being written.
    """
    x = x.double()
    y = y.double()
    denominator = (x * x + y * y).sum()
    if float(denominator) == 0.0:
        return 0.0
    return float(1.0 - 2.0 * (x * y).sum() / denominator)
