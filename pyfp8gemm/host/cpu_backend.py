"""The CPU reference backend: what the GPU kernels compute, on CPU tensors (slow; for tests and
CPU-only development, never a fast path).

The kernels accumulate in two levels (DESIGN.md, "The numerics"): for each 128-wide K block the
tensor cores compute the FP8 partial product, and the math warps promote it into an FP32
accumulator scaled by the block's scales::

    acc += (a_data[:, kb] @ b_data[:, kb].T) * a_scale[:, kb, None] * b_scale_for(kb)

`blockwise_gemm` does exactly that in float32 (the partial product of E4M3 values is exact in
float32 up to summation order: each product of two E4M3 values fits in 8 significant bits, and a
128-term sum of them keeps far more than the tensor core's accumulator), batched over K blocks
with one bmm per chunk of blocks so that memory stays bounded. The callers round the FP32
result as their kernel does: to bf16 (dense and grouped 1D2D), or add `c` in FP32 (1D1D).
"""

from __future__ import annotations

import torch

__all__ = ["blockwise_gemm", "BLOCK", "CHUNK_ELEMENTS"]

#: The K block of the scales (and of the kernels' promotion).
BLOCK = 128
#: Chunks of K blocks are sized so that the (blocks, M, N) float32 partial products of one
#: chunk hold at most about this many elements (64 Mi floats = 256 MiB); at least one block.
CHUNK_ELEMENTS = 1 << 26

_GRANULARITIES = ("128x128", "1x128")


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _check(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def blockwise_gemm(
    a_data: torch.Tensor,
    a_scale: torch.Tensor,
    b_data: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    b_granularity: str,
) -> torch.Tensor:
    """``(a_data * a_scale) @ (b_data * b_scale)^T`` as the kernels compute it: a float32 (M, N).

    Args:
        a_data: (M, K) FP8 (or any float) values.
        a_scale: float32 (M, ceil(K/128)), one scale per row per 128 K, any strides.
        b_data: (N, K) FP8 (or any float) values.
        b_scale: float32 (ceil(N/128), ceil(K/128)) for ``b_granularity="128x128"`` (one scale
            per 128x128 block, the 1D2D kernel) or (N, ceil(K/128)) for ``"1x128"`` (one per
            row per 128 K, the 1D1D kernel); any strides.
        b_granularity: ``"128x128"`` or ``"1x128"``.

    K need not be a multiple of 128: the last block is partial, as the kernels' zero-filled
    TMA loads make it. The result lives on a_data's device (this is meant for CPU tensors, but
    any device works). Slow: one float32 bmm per chunk of K blocks.
    """
    if b_granularity not in _GRANULARITIES:
        raise ValueError(
            f"b_granularity: expected one of {_GRANULARITIES}, got {b_granularity!r}"
        )
    _check("a_data", a_data, 2)
    _check("a_scale", a_scale, 2)
    _check("b_data", b_data, 2)
    _check("b_scale", b_scale, 2)
    m, k = a_data.shape
    n, k_of_b = b_data.shape
    if k_of_b != k:
        raise ValueError(
            f"b_data: expected K = a_data.shape[1] = {k} columns (b is the (N, K) operand), "
            f"got shape {tuple(b_data.shape)}"
        )
    kb = _ceil_div(k, BLOCK)
    if tuple(a_scale.shape) != (m, kb):
        raise ValueError(
            f"a_scale: expected shape {(m, kb)} (M, ceil(K/128)), got {tuple(a_scale.shape)}"
        )
    expected_b = (n, kb) if b_granularity == "1x128" else (_ceil_div(n, BLOCK), kb)
    if tuple(b_scale.shape) != expected_b:
        raise ValueError(
            f"b_scale: expected shape {expected_b} for {b_granularity} scales of an (N, K) = "
            f"{(n, k)} operand, got {tuple(b_scale.shape)}"
        )
    device = a_data.device
    acc = torch.zeros((m, n), dtype=torch.float32, device=device)
    if m == 0 or n == 0 or k == 0:
        return acc

    # b's scales per output column: (N, kb).
    b_scale = b_scale.float()
    if b_granularity == "128x128":
        b_scale = b_scale.repeat_interleave(BLOCK, dim=0)[:n]
    a_scale = a_scale.float()

    # Zero-pad K to whole blocks (the kernels' TMA loads fill the tail with zeros), then view
    # the operands as (kb, rows, 128) stacks of blocks.
    pad = kb * BLOCK - k
    a_f = a_data.float()
    b_f = b_data.float()
    if pad:
        a_f = torch.nn.functional.pad(a_f, (0, pad))
        b_f = torch.nn.functional.pad(b_f, (0, pad))
    a_blocks = a_f.view(m, kb, BLOCK).transpose(0, 1)          # (kb, M, 128)
    b_blocks = b_f.view(n, kb, BLOCK).permute(1, 2, 0)          # (kb, 128, N)

    per_chunk = max(1, CHUNK_ELEMENTS // max(1, m * n))
    for start in range(0, kb, per_chunk):
        stop = min(kb, start + per_chunk)
        partial = torch.bmm(a_blocks[start:stop], b_blocks[start:stop])   # (c, M, N) fp32
        # The promotion: scale each block's partial product, then add in FP32, block by block
        # in K order (the kernel's order).
        partial *= a_scale[:, start:stop].t().unsqueeze(2)                 # (c, M, 1)
        partial *= b_scale[:, start:stop].t().unsqueeze(1)                 # (c, 1, N)
        for i in range(stop - start):
            acc += partial[i]
    return acc
