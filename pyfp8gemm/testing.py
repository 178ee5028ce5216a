"""Helpers for checking FP8 GEMM results: the error metric and a reference GEMM.

    from pyfp8gemm import quantize
    from pyfp8gemm.testing import calc_diff, reference_gemm

    a = quantize(x, "1x128")            # (M, K) activations
    b = quantize(w, "128x128")          # (N, K) weights
    ref = reference_gemm(a, b)          # float32 (M, N): exact product of the FP8 values
    assert calc_diff(out, ref) < 1e-5   # a correct kernel lands near 1e-6 (bf16 rounding only)
    assert calc_diff(out, x.float() @ w.float().t()) < 1e-3   # vs the unquantized product
"""

from __future__ import annotations

import torch

from pyfp8gemm.host import checks
from pyfp8gemm.host.fp8tensor import FP8Tensor, to_mn_major_tma_aligned, _ceil_div, BLOCK

__all__ = ["calc_diff", "reference_gemm", "fp32_product"]


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's error metric: ``1 - 2 * sum(x * y) / sum(x * x + y * y)``, in float64.

    0 for identical tensors, ~2 * (relative error)^2 for close ones, up to 2 for x == -y.
    Two all-zero tensors give 0.0. Any NaN or inf in either gives NaN, so a check like
    ``calc_diff(out, ref) < 1e-3`` fails on it. Returns a Python float (synchronizes).
    """
    checks.check_tensor("x", x)
    checks.check_tensor("y", y)
    checks.check_shape("y", y, x.shape, why="the shape of x")
    checks.check_same_device(x=x, y=y)
    x, y = x.double(), y.double()
    denominator = (x * x + y * y).sum()
    if denominator.item() == 0.0:
        return 0.0
    similarity = 2 * (x * y).sum() / denominator
    return float(1 - similarity)


def _as_fp8_tensor(name: str, operand) -> FP8Tensor:
    """An FP8Tensor, or a DeepGEMM-style (data, scale) tuple turned into one.

    The tuple's granularity follows from the scale's shape: (rows, ceil(cols/128)) is 1x128 (any
    strides: it is re-laid out), (ceil(rows/128), ceil(cols/128)) is 128x128. When rows == 1 both
    read the same, and so do their products.
    """
    if isinstance(operand, FP8Tensor):
        return operand
    if not (isinstance(operand, (tuple, list)) and len(operand) == 2):
        raise TypeError(
            f"{name}: expected a pyfp8gemm.FP8Tensor or a (data, scale) tuple, "
            f"got {type(operand).__name__}"
        )
    data, scale = operand
    checks.check_tensor(f"{name}[0] (data)", data, dtypes=(torch.float8_e4m3fn,), ndim=2)
    checks.check_tensor(f"{name}[1] (scale)", scale, dtypes=(torch.float32,), ndim=2)
    rows, cols = data.shape
    if tuple(scale.shape) == (rows, _ceil_div(cols, BLOCK)):
        return FP8Tensor(data, to_mn_major_tma_aligned(scale), "1x128")
    if tuple(scale.shape) == (_ceil_div(rows, BLOCK), _ceil_div(cols, BLOCK)):
        return FP8Tensor(data, scale, "128x128")
    raise ValueError(
        f"{name}[1] (scale): expected shape {(rows, _ceil_div(cols, BLOCK))} (1x128) or "
        f"{(_ceil_div(rows, BLOCK), _ceil_div(cols, BLOCK))} (128x128) for data of shape "
        f"{(rows, cols)}, got {tuple(scale.shape)}"
    )


def reference_gemm(a, b, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The exact product ``A @ B^T`` of two FP8 operands, cast to `out_dtype`.

    a: (M, K) activations, an FP8Tensor ("1x128") or a (data, scale) tuple.
    b: (N, K) weights, an FP8Tensor ("128x128"; "1x128" works too, for 1D1D checks) or a
       (data, scale) tuple.

    Both are dequantized in float64, where ``data * scale`` is exact (4 significant bits times
    24), multiplied in float64 on their device, then cast. Slow on purpose: a check, not a kernel.
    """
    a = _as_fp8_tensor("a", a)
    b = _as_fp8_tensor("b", b)
    checks.check_same_device(a=a.data, b=b.data)
    checks.check_same_size("K", "a.shape[1]", a.shape[1], "b.shape[1]", b.shape[1])
    product = a.dequantize(torch.float64) @ b.dequantize(torch.float64).t()
    return product.to(out_dtype)


def fp32_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T of the unquantized inputs in true fp32: the yardstick for calc_diff < 1e-3.

    TF32 is switched off for the product (it would add ~1e-3 relative error of its own).
    """
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return x.float() @ w.float().t()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
