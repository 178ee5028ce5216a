"""Quantization for the backward pass of FP8 training: 1x128 scales along the token dimension.

The weight gradient of a Linear, dW (N, K) = dY^T (N, T) @ X (T, K), runs on the 1D1D GEMM as
``A @ B^T`` with A = dY^T (N, T) and B = X^T (K, T): both operands are *transposed* activations
whose reduction dimension is the tokens, so each gets one scale per channel per 128 tokens
(1x128 along T, DeepSeek-V3's recipe). The same dY also feeds the input gradient
dX = dY @ W with 1x128 scales along its rows (per token per 128 output channels), and the same X
feeds the forward GEMM with 1x128 scales along its rows. `quantize_rowwise_and_transposed`
makes both layouts from one float32 upcast of the input.

Layouts (the kernels' K-major operands, `FP8Tensor` with granularity "1x128"):

* rowwise: exactly ``quantize(x, "1x128")`` (bitwise).
* transposed: data E4M3 (C, T_pad) contiguous (tokens are the K dimension, K-major), scale
  float32 (C, ceil(T/128)) MN-major and TMA-aligned (strides (1, align(C, 4))). The values are
  exactly those of ``quantize(x.t(), "1x128")`` in the first T columns. T_pad = T rounded up to
  a multiple of `pad_to` (16 by default): TMA loads rows of T_pad E4M3 bytes and needs them
  16-byte aligned, so the wgrad GEMM's K must be a multiple of 16. The pad columns hold zeros
  (they add nothing to the product); the last scale block takes its amax over the real tokens
  only, as any partial block does.

Non-finite input behaves as in `quantize`: a block holding NaN or +-inf gets a NaN scale.

Two implementations give the same bits. On a Hopper GPU, a contiguous bf16 input with C % 16 == 0
goes through one fused kernel (device/quantize.py) that reads x once and writes both layouts;
anything else (and tracing under torch.compile, and PYFP8GEMM_FUSED_QUANTIZE=0) runs a few
vectorized torch ops on the input's device. Neither loops over blocks in Python or synchronizes
with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyfp8gemm.host import checks, quantize_kernel
from pyfp8gemm.host.fp8tensor import (
    BLOCK,
    QUANTIZABLE_DTYPES,
    FP8Tensor,
    _block_scales,
    _empty_mn_major_tma_aligned,
    _quantize_128x128_fused,
    _to_e4m3,
    quantize,
)

__all__ = [
    "quantize_transposed",
    "quantize_rowwise_and_transposed",
    "quantize_weight_and_transposed",
    "padded_tokens",
    "TOKEN_ALIGNMENT",
]

#: The default token padding of transposed operands: TMA's 16-byte rows of E4M3.
TOKEN_ALIGNMENT = 16

_PAD_CHOICES = (16, 32, 64, 128)


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def padded_tokens(tokens: int, pad_to: int = TOKEN_ALIGNMENT) -> int:
    """`tokens` rounded up to a multiple of `pad_to` (16, 32, 64 or 128): the K of the wgrad
    GEMM that a transposed operand of `tokens` tokens gets."""
    if pad_to not in _PAD_CHOICES:
        raise ValueError(
            f"pad_to: expected one of {_PAD_CHOICES} (a multiple of 16 for TMA's 16-byte rows "
            f"that divides the 128-token scale block), got {pad_to!r}"
        )
    return _ceil_div(tokens, pad_to) * pad_to


def _check_input(x) -> None:
    checks.check_tensor("x", x, dtypes=QUANTIZABLE_DTYPES, ndim=2)


def _quantize_fused(x: torch.Tensor, rowwise: bool, transposed: bool, pad_to: int):
    """Both layouts (or one) from the fused kernel (host/quantize_kernel.py), in the layouts of
    the torch-op path."""
    tokens, channels = x.shape
    device = x.device
    rows = cols = None
    if rowwise:
        rows = (torch.empty(tokens, channels, dtype=torch.float8_e4m3fn, device=device),
                _empty_mn_major_tma_aligned(tokens, _ceil_div(channels, BLOCK), device))
    t_pad = padded_tokens(tokens, pad_to)
    if transposed:
        cols = (torch.empty(channels, t_pad, dtype=torch.float8_e4m3fn, device=device),
                _empty_mn_major_tma_aligned(channels, _ceil_div(tokens, BLOCK), device))
    quantize_kernel.launch(x, rows, cols, t_pad)
    return (FP8Tensor(*rows, "1x128") if rows else None,
            FP8Tensor(*cols, "1x128") if cols else None)


def _transposed_from_float(xf: torch.Tensor, pad_to: int) -> FP8Tensor:
    """x^T quantized 1x128 along the tokens, from a float32 (T, C) tensor."""
    tokens, channels = xf.shape
    t_pad = padded_tokens(tokens, pad_to)
    tb = _ceil_div(tokens, BLOCK)
    # (T, C) -> zero-padded (tb * 128, C) -> (tb, 128, C): block (i, c) is [i, :, c]; zeros
    # never raise an amax, so a partial last block covers the real tokens only.
    blocks = F.pad(xf, (0, 0, 0, tb * BLOCK - tokens)).view(tb, BLOCK, channels)
    amax = blocks.abs().amax(dim=1)                         # (tb, C)
    finite = torch.isfinite(blocks).all(dim=1)              # (tb, C)
    scale = _block_scales(amax, finite)                     # (tb, C)
    q = _to_e4m3(blocks / scale.unsqueeze(1)).view(tb * BLOCK, channels)
    if t_pad > tokens:
        # A NaN-scaled last block would turn its pad tokens into NaN (0 / NaN): the padding
        # is not data, it stays zero.
        q[tokens:t_pad] = 0
    data = q[:t_pad].t().contiguous()                       # (C, T_pad), K-major
    # (tb, C) row-major is already the MN-major layout of the logical (C, tb) scales; copy it
    # into a buffer whose rows are padded to 4 floats (TMA's 16-byte strides).
    aligned = _empty_mn_major_tma_aligned(channels, tb, xf.device)
    aligned.copy_(scale.t())
    # Built here in the layouts the checks want; traced, they cannot run (they read pointers).
    if torch.compiler.is_compiling():
        return FP8Tensor._unchecked(data, aligned, "1x128")
    return FP8Tensor(data, aligned, "1x128")


def quantize_transposed(x: torch.Tensor, *, pad_to: int = TOKEN_ALIGNMENT) -> FP8Tensor:
    """x^T of a (T, C) bf16/fp16/fp32 tensor, quantized with 1x128 scales along T (one scale per
    channel per 128 tokens): an FP8Tensor of shape (C, T_pad), T_pad = T rounded up to a
    multiple of `pad_to` with zero columns (see the module docstring)."""
    _check_input(x)
    padded_tokens(0, pad_to)   # checks pad_to
    if quantize_kernel.applies(x):
        return _quantize_fused(x, False, True, pad_to)[1]
    return _transposed_from_float(x.float(), pad_to)


def quantize_rowwise_and_transposed(
    x: torch.Tensor,
    *,
    rowwise: bool = True,
    transposed: bool = True,
    pad_to: int = TOKEN_ALIGNMENT,
) -> tuple[FP8Tensor | None, FP8Tensor | None]:
    """Both 1x128 quantizations of a (T, C) activation or gradient, from one float32 upcast.

    Returns ``(rows, cols_t)``: ``rows`` = ``quantize(x, "1x128")`` (T, C), one scale per token
    per 128 channels (the forward and dgrad GEMMs' A operand); ``cols_t`` =
    ``quantize_transposed(x, pad_to=pad_to)`` (C, T_pad), one scale per channel per 128 tokens
    (the wgrad GEMM's operand). Either can be switched off (then None), e.g. when no weight
    gradient is needed.
    """
    _check_input(x)
    padded_tokens(0, pad_to)
    if (rowwise or transposed) and quantize_kernel.applies(x):
        return _quantize_fused(x, rowwise, transposed, pad_to)
    xf = x.float()   # no copy for a float32 x
    rows = quantize(xf, "1x128") if rowwise else None
    cols_t = _transposed_from_float(xf, pad_to) if transposed else None
    return rows, cols_t


def quantize_weight_and_transposed(
        w: torch.Tensor) -> tuple[FP8Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A (N, K) weight's 128x128 quantization and its transpose: ``(quantize(w, "128x128"),
    (data_t, scale_t))`` with data_t = data^T (K, N) and scale_t = scale^T
    (ceil(K/128), ceil(N/128)), both contiguous: the dgrad GEMM's B operand. A 128 x 128 block's
    scale serves both layouts, so W^T's bytes are W's, transposed.

    On a Hopper GPU a contiguous bf16 / float32 weight with N, K multiples of 16 goes through one
    kernel that reads w once and writes both; otherwise W's quantization is transposed by copies.
    """
    checks.check_tensor("w", w, dtypes=QUANTIZABLE_DTYPES, ndim=2)
    if quantize_kernel.applies_128x128(w, transposed=True):
        data, scale, wt = _quantize_128x128_fused(w, transposed=True)
        return FP8Tensor._unchecked(data, scale, "128x128"), wt
    q = quantize(w, "128x128")
    return q, (q.data.t().contiguous(), q.scale.t().contiguous())
