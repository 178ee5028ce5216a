"""The benchmark's inputs: random bf16 matrices, quantized the DeepSeek-V3 way.

Every provider multiplies the same numbers. The quantization lives here, in plain torch, and not
in pyfp8gemm, so that the baseline columns stand on their own and a bug in the library under test
cannot move them. The recipe is DeepGEMM's test recipe (`per_token_cast_to_fp8`,
`per_block_cast_to_fp8`): scale = amax / 448 per block, amax clamped at 1e-4, data = x / scale
rounded to e4m3.

The layouts are those of docs/INTERFACES.md, which pyfp8gemm and DeepGEMM (SM90) take directly:
- A (M, K) e4m3 row-major; its 1x128 scales (M, ceil(K/128)) fp32 "MN-major, TMA-aligned":
  strides (1, align(M, 4)), i.e. column-major with the column length padded to 16 bytes.
- B (N, K) e4m3 row-major; its 128x128 scales (ceil(N/128), ceil(K/128)) fp32 row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.metrics import SCALE_BLOCK, ceil_div
from bench.shapes import Shape

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value
AMAX_FLOOR = 1e-4  # keeps all-zero blocks from dividing by zero


def align(value: int, alignment: int) -> int:
    return ceil_div(value, alignment) * alignment


def mn_major_tma_aligned(scale: torch.Tensor) -> torch.Tensor:
    """The same (rows, cols) values, laid out column-major with the column stride padded to a
    multiple of 4 floats (16 bytes): strides (1, align(rows, 4))."""
    rows, cols = scale.shape
    padded_rows = align(rows, 4)
    storage = torch.empty((cols, padded_rows), dtype=scale.dtype, device=scale.device)
    storage[:, :rows] = scale.t()
    return storage[:, :rows].t()


def quantize_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token quantization of activations: one scale per row per 128 columns.

    Returns (data e4m3 (rows, cols) contiguous, scale fp32 (rows, ceil(cols/128)) MN-major and
    TMA-aligned).
    """
    rows, cols = x.shape
    padded_cols = align(cols, SCALE_BLOCK)
    padded = torch.zeros((rows, padded_cols), dtype=torch.float32, device=x.device)
    padded[:, :cols] = x.float()
    blocks = padded.view(rows, padded_cols // SCALE_BLOCK, SCALE_BLOCK)
    amax = blocks.abs().amax(dim=2).clamp(min=AMAX_FLOOR)
    scale = amax / FP8_MAX
    data = (blocks / scale.unsqueeze(2)).to(FP8_DTYPE).view(rows, padded_cols)[:, :cols].contiguous()
    return data, mn_major_tma_aligned(scale)


def quantize_128x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block quantization of weights: one scale per 128x128 block.

    Returns (data e4m3 (rows, cols) contiguous, scale fp32 (ceil(rows/128), ceil(cols/128))
    row-major).
    """
    rows, cols = x.shape
    padded_rows, padded_cols = align(rows, SCALE_BLOCK), align(cols, SCALE_BLOCK)
    padded = torch.zeros((padded_rows, padded_cols), dtype=torch.float32, device=x.device)
    padded[:rows, :cols] = x.float()
    blocks = padded.view(padded_rows // SCALE_BLOCK, SCALE_BLOCK, padded_cols // SCALE_BLOCK, SCALE_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=AMAX_FLOOR)
    scale = amax / FP8_MAX
    data = (blocks / scale[:, None, :, None]).to(FP8_DTYPE).view(padded_rows, padded_cols)
    return data[:rows, :cols].contiguous(), scale.contiguous()


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (the plain FP8 recipe cuBLAS per-tensor uses).

    Returns (data e4m3 contiguous, scale fp32 0-dim tensor).
    """
    amax = x.float().abs().amax().clamp(min=AMAX_FLOOR)
    scale = (amax / FP8_MAX).to(torch.float32)
    data = (x.float() / scale).to(FP8_DTYPE).contiguous()
    return data, scale


@dataclass
class GemmInputs:
    """One problem D = A @ B^T, in every form a provider may want."""

    shape: Shape
    a_bf16: torch.Tensor  # (M, K)
    b_bf16: torch.Tensor  # (N, K)
    a_fp8: torch.Tensor  # (M, K) e4m3
    a_scale: torch.Tensor  # (M, ceil(K/128)) fp32, strides (1, align(M, 4))
    b_fp8: torch.Tensor  # (N, K) e4m3
    b_scale: torch.Tensor  # (ceil(N/128), ceil(K/128)) fp32 row-major
    reference: torch.Tensor  # (M, N) fp32 product of the unquantized bf16 inputs


def make_gemm_inputs(shape: Shape, seed: int, device: str = "cuda") -> GemmInputs:
    """Fresh randn inputs (never zeros: zeros hide unwritten outputs and run unrealistically fast)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    a_bf16 = torch.randn((shape.m, shape.k), generator=generator, device=device).to(torch.bfloat16)
    b_bf16 = torch.randn((shape.n, shape.k), generator=generator, device=device).to(torch.bfloat16)
    a_fp8, a_scale = quantize_1x128(a_bf16)
    b_fp8, b_scale = quantize_128x128(b_bf16)
    reference = fp32_reference(a_bf16, b_bf16)
    return GemmInputs(shape, a_bf16, b_bf16, a_fp8, a_scale, b_fp8, b_scale, reference)


def fp32_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A @ B^T in true fp32 (TF32 off), the yardstick for every provider's calc_diff.

    pyfp8gemm.testing.fp32_product computes the same; like bench.metrics.calc_diff, this copy
    keeps the yardstick independent of the library under test (see the module docstring)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return a.float() @ b.float().t()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
