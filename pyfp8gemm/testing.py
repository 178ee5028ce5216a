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

_CALC_DIFF_CHUNK = 1 << 24


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
    x, y = x.reshape(-1), y.reshape(-1)
    # Chunks of 2^24 elements: the float64 temporaries of a whole grouped output (16 x 4096 x
    # 7168: 3.8 GB each) ran GPU tests out of memory next to a second worker.
    products = torch.zeros(2, dtype=torch.float64, device=x.device)    # sum(x * y), sum(x^2+y^2)
    for start in range(0, x.numel(), _CALC_DIFF_CHUNK):
        xs = x[start:start + _CALC_DIFF_CHUNK].double()
        ys = y[start:start + _CALC_DIFF_CHUNK].double()
        products[0] += (xs * ys).sum()
        products[1] += (xs * xs + ys * ys).sum()
    dot, denominator = products.tolist()
    if denominator == 0.0:
        return 0.0
    return 1 - 2 * dot / denominator


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


# ---------------------------------------------------------------------------------------------
# FP8 training (issue 19): references of the 1D1D and k-grouped GEMMs and of a Linear's step
# ---------------------------------------------------------------------------------------------

__all__ += ["reference_gemm_1d1d", "reference_k_grouped", "reference_fp8_linear_step"]


def reference_gemm_1d1d(a, b, c: torch.Tensor | None = None) -> torch.Tensor:
    """``c + A @ B^T`` of two 1x128 operands, as float32: what fp8_gemm_nt_1d1d computes.

    a (M, K), b (N, K): FP8Tensors ("1x128") or (data, scale) tuples with per-row scales
    (rows, ceil(K/128)). c: None or a float32 (M, N). Dequantized and multiplied in float64
    (exact products), c added in float64, then cast to float32.
    """
    a = _as_fp8_tensor("a", a)
    b = _as_fp8_tensor("b", b)
    for name, operand in (("a", a), ("b", b)):
        if operand.granularity != "1x128" and operand.shape[0] != 1:
            raise ValueError(f"{name}: expected 1x128 scales (one per row per 128 K), got "
                             f"{operand.granularity}")
    checks.check_same_device(a=a.data, b=b.data)
    checks.check_same_size("K", "a.shape[1]", a.shape[1], "b.shape[1]", b.shape[1])
    product = a.dequantize(torch.float64) @ b.dequantize(torch.float64).t()
    if c is not None:
        checks.check_shape("c", c, product.shape, why="(M, N) from a (M, K) and b (N, K)")
        product = product + c.double()
    return product.float()


def reference_k_grouped(a, b, ks, c: torch.Tensor | None = None) -> torch.Tensor:
    """``d[g] = c[g] + A_g @ B_g^T`` in DeepGEMM's k-grouped contiguous layout, as float32.

    a, b: (data, scale) pairs as k_grouped_fp8_gemm_nt_contiguous takes them: data E4M3 1-D,
    the groups' K-major (M, k_g) / (N, k_g) blocks concatenated; scale float32 (M, sum(ks)/128)
    / (N, sum(ks)/128). ks: each group's K (multiples of 128, 0 allowed). c: None or (G, M, N).
    Each group is dequantized and multiplied in float64 (a group with K = 0 gives c[g], or 0).
    """
    (a_data, a_scale), (b_data, b_scale) = a, b
    m, n = a_scale.shape[0], b_scale.shape[0]
    out = torch.zeros((len(ks), m, n), dtype=torch.float64, device=a_data.device)
    offset = 0
    for g, k in enumerate(ks):
        if k:
            kb0, kb1 = offset // BLOCK, (offset + k) // BLOCK
            a_g = FP8Tensor(a_data[offset * m:(offset + k) * m].view(m, k),
                            to_mn_major_tma_aligned(a_scale[:, kb0:kb1]), "1x128")
            b_g = FP8Tensor(b_data[offset * n:(offset + k) * n].view(n, k),
                            to_mn_major_tma_aligned(b_scale[:, kb0:kb1]), "1x128")
            out[g] = a_g.dequantize(torch.float64) @ b_g.dequantize(torch.float64).t()
        offset += k
    if c is not None:
        checks.check_shape("c", c, out.shape, why="(G, M, N)")
        out += c.double()
    return out.float()


def reference_fp8_linear_step(x: torch.Tensor, weight: torch.Tensor, grad_output: torch.Tensor,
                              bias: torch.Tensor | None = None) -> dict:
    """One FP8 training step of ``y = x @ weight^T + bias`` with DeepSeek-V3's recipe, computed
    independently of pyfp8gemm.nn (plain `quantize` on transposed copies, float64 products):

    * forward: x (..., K) quantized 1x128, weight (N, K) 128x128; y = bf16(x_q @ w_q^T),
      cast to x's dtype, plus bias;
    * dgrad: grad_output (..., N) quantized 1x128 along its rows; dX = bf16(dY_q @ w_q), cast
      to x's dtype (w_q is the forward's quantization, transposed: 128x128 blocks transpose);
    * wgrad: dY^T (N, T) and X^T (K, T) quantized 1x128 along the tokens;
      dW = dY^T_q @ (X^T_q)^T in float64, returned as float32 (the FP32 wgrad);
    * grad_bias: the sum of grad_output over the tokens, float32.

    Returns a dict with "out", "grad_input", "grad_weight", "grad_bias" (None without bias).
    """
    from pyfp8gemm.host.fp8tensor import quantize

    k = x.shape[-1]
    n = weight.shape[0]
    x2 = x.reshape(-1, k)
    dy2 = grad_output.reshape(-1, n)
    x_q = quantize(x2, "1x128").dequantize(torch.float64)
    w_q = quantize(weight.detach(), "128x128").dequantize(torch.float64)
    dy_q = quantize(dy2, "1x128").dequantize(torch.float64)
    out = (x_q @ w_q.t()).to(torch.bfloat16).to(x.dtype)
    if bias is not None:
        out = out + bias.detach().to(out.dtype)
    grad_input = (dy_q @ w_q).to(torch.bfloat16).to(x.dtype)
    dyt_q = quantize(dy2.t().contiguous(), "1x128").dequantize(torch.float64)
    xt_q = quantize(x2.t().contiguous(), "1x128").dequantize(torch.float64)
    grad_weight = (dyt_q @ xt_q.t()).float()
    return {
        "out": out.reshape(*x.shape[:-1], n),
        "grad_input": grad_input.reshape(x.shape),
        "grad_weight": grad_weight,
        "grad_bias": dy2.float().sum(0) if bias is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# MoE grouped GEMMs (issue 18): references of the contiguous and masked m-grouped GEMMs
# ---------------------------------------------------------------------------------------------

__all__ += ["reference_m_grouped_contiguous", "reference_m_grouped_masked"]


def _dequantize_rows(name: str, operand, ndim: int) -> torch.Tensor:
    """float64 ``data * scale`` of 1x128 activations: an FP8Tensor or a (data, scale) pair with
    data (..., rows, K) and scale (..., rows, ceil(K/128)), any strides."""
    if isinstance(operand, FP8Tensor):
        data, scale = operand.data, operand.scale
    elif isinstance(operand, (tuple, list)) and len(operand) == 2:
        data, scale = operand
    else:
        raise TypeError(f"{name}: expected a pyfp8gemm.FP8Tensor or a (data, scale) tuple, "
                        f"got {type(operand).__name__}")
    checks.check_tensor(f"{name}[0] (data)", data, dtypes=(torch.float8_e4m3fn,), ndim=ndim)
    checks.check_tensor(f"{name}[1] (scale)", scale, dtypes=(torch.float32,), ndim=ndim)
    k = data.shape[-1]
    checks.check_shape(f"{name}[1] (scale)", scale, tuple(data.shape[:-1]) + (_ceil_div(k, BLOCK),),
                       why="1x128 scales: one per row per 128 K")
    return data.double() * scale.double().repeat_interleave(BLOCK, dim=-1)[..., :k]


class _GroupedWeights:
    """Grouped 128x128 weights (data (G, N, K), scale (G, ceil(N/128), ceil(K/128))), dequantized
    to float64 one group at a time: all G at once takes G*N*K*8 bytes (11 GiB at DeepGEMM's
    32 x 6144 x 7168), more than a GPU spares beside a second test worker."""

    def __init__(self, b):
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise TypeError(f"b: expected a (data, scale) tuple, got {type(b).__name__}")
        self.data, self.scale = b
        checks.check_tensor("b[0] (data)", self.data, dtypes=(torch.float8_e4m3fn,), ndim=3)
        checks.check_tensor("b[1] (scale)", self.scale, dtypes=(torch.float32,), ndim=3)
        self.groups, self.n, self.k = self.data.shape
        checks.check_shape("b[1] (scale)", self.scale,
                           (self.groups, _ceil_div(self.n, BLOCK), _ceil_div(self.k, BLOCK)),
                           why="128x128 scales of (G, N, K) weights")
        self._last = (None, None)

    def __getitem__(self, g: int) -> torch.Tensor:
        """float64 (N, K) of group g (the last one asked is kept: row blocks come in runs)."""
        if self._last[0] != g:
            expanded = self.scale[g].double().repeat_interleave(BLOCK, dim=0)[:self.n]
            expanded = expanded.repeat_interleave(BLOCK, dim=1)[:, :self.k]
            self._last = (g, self.data[g].double() * expanded)
        return self._last[1]


def reference_m_grouped_contiguous(a, b, m_indices: torch.Tensor, *, use_psum_layout: bool = False,
                                   alignment: int | None = None,
                                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What m_grouped_fp8_gemm_nt_contiguous computes, in float64, cast to `out_dtype`: (M_sum, N).

    The rows form blocks of `alignment` rows (default: get_mk_alignment_for_contiguous_layout());
    a block whose first row's id g is in [0, G) gets ``A[rows] @ B[g]^T`` for all its rows, any
    other block zeros. With ``use_psum_layout``, `m_indices` is (G,) cumulative ends and group g
    owns rows [align(psum[g-1]), psum[g]), every other row being -1. Written as plain loops over
    groups and blocks (independent of the library's vectorized conversion). Reads the ids on
    the host (a sync on CUDA: fine for a reference).
    """
    from pyfp8gemm.host.grouped import get_mk_alignment_for_contiguous_layout

    if alignment is None:
        alignment = get_mk_alignment_for_contiguous_layout()
    a64 = _dequantize_rows("a", a, 2)
    b64 = _GroupedWeights(b)
    m_sum, groups, n = a64.shape[0], b64.groups, b64.n
    ids = m_indices.reshape(-1).tolist()
    if use_psum_layout:
        row_ids = [-1] * m_sum
        end = 0
        for g, group_end in enumerate(ids):
            start = _ceil_div(end, alignment) * alignment
            for row in range(start, min(group_end, m_sum)):
                row_ids[row] = g
            end = group_end
        ids = row_ids
    out = torch.zeros((m_sum, n), dtype=torch.float64, device=a64.device)
    for start in range(0, m_sum, alignment):
        g = ids[start]
        if 0 <= g < groups:
            stop = min(start + alignment, m_sum)
            out[start:stop] = a64[start:stop] @ b64[g].t()
    return out.to(out_dtype)


def reference_m_grouped_masked(a, b, masked_m: torch.Tensor,
                               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What m_grouped_fp8_gemm_nt_masked computes, in float64, cast to `out_dtype`: (G, M_max, N)
    with ``out[g, :m_g] = A[g, :m_g] @ B[g]^T``, m_g = min(max(masked_m[g], 0), M_max), and
    ZEROS in rows at or past m_g (which the GEMM leaves untouched: compare rows below m_g only).
    Reads masked_m on the host (a sync on CUDA: fine for a reference)."""
    a64 = _dequantize_rows("a", a, 3)
    b64 = _GroupedWeights(b)
    groups, m_max, _ = a64.shape
    out = torch.zeros((groups, m_max, b64.n), dtype=torch.float64, device=a64.device)
    for g, rows in enumerate(masked_m.reshape(-1).tolist()):
        rows = min(max(int(rows), 0), m_max)
        out[g, :rows] = a64[g, :rows] @ b64[g].t()
    return out.to(out_dtype)
