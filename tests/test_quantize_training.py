"""Backward-pass quantization: 1x128 scales along the tokens of a transposed operand, and both
layouts from one call; checked against a plain loop over blocks and against `quantize`."""

from __future__ import annotations

import pytest
import torch

from pyfp8gemm import quantize
from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d
from pyfp8gemm.host.quantize_training import (
    padded_tokens,
    quantize_rowwise_and_transposed,
    quantize_transposed,
)
from pyfp8gemm.testing import calc_diff

E4M3 = torch.float8_e4m3fn


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def loop_reference(x: torch.Tensor, pad_to: int = 16):
    """x^T quantized per channel per 128 tokens, one block at a time."""
    tokens, channels = x.shape
    t_pad = -(-tokens // pad_to) * pad_to
    blocks = -(-tokens // 128)
    data = torch.zeros(channels, t_pad, dtype=E4M3)
    scale = torch.empty(channels, blocks)
    for c in range(channels):
        for i in range(blocks):
            block = x[i * 128:(i + 1) * 128, c].float()
            s = torch.tensor(max(block.abs().max().item(), 1e-4)) / torch.tensor(448.0)
            scale[c, i] = s
            data[c, i * 128:i * 128 + block.numel()] = (block / s).clamp(-448, 448).to(E4M3)
    return data, scale


@pytest.mark.parametrize("tokens", [1, 15, 16, 127, 128, 129, 300])
def test_transposed_matches_loop(generator, tokens):
    x = torch.randn(tokens, 24, generator=generator, dtype=torch.bfloat16) * 3
    q = quantize_transposed(x)
    data, scale = loop_reference(x)
    assert q.granularity == "1x128"
    assert q.shape == (24, padded_tokens(tokens))
    assert q.data.is_contiguous()                        # K-major: tokens are K
    assert q.scale.stride() == (1, 24)                  # MN-major, TMA-aligned (24 % 4 == 0)
    assert torch.equal(bits(q.data), bits(data))        # pad tokens are zeros
    assert torch.equal(q.scale, scale)


@pytest.mark.parametrize("tokens", [1, 100, 128, 200, 513])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_both_layouts_match_quantize(generator, tokens, dtype):
    """rows == quantize(x, "1x128") bitwise; cols_t == quantize(x.t(), "1x128") bitwise in the
    real tokens, zero in the padding."""
    x = torch.randn(tokens, 37, generator=generator).to(dtype)
    rows, cols_t = quantize_rowwise_and_transposed(x)
    ref_rows = quantize(x, "1x128")
    ref_t = quantize(x.t().contiguous(), "1x128")
    assert torch.equal(bits(rows.data), bits(ref_rows.data))
    assert torch.equal(rows.scale, ref_rows.scale) and rows.scale.stride() == ref_rows.scale.stride()
    assert torch.equal(bits(cols_t.data[:, :tokens]), bits(ref_t.data))
    assert torch.equal(cols_t.scale, ref_t.scale)
    assert cols_t.scale.stride() == (1, 40)             # align(37, 4)
    assert (cols_t.data[:, tokens:].float() == 0).all()


def test_switches_and_padding(generator):
    x = torch.randn(50, 32, generator=generator)
    rows, cols_t = quantize_rowwise_and_transposed(x, rowwise=False)
    assert rows is None and cols_t.shape == (32, 64)
    rows, cols_t = quantize_rowwise_and_transposed(x, transposed=False)
    assert cols_t is None and rows.shape == (50, 32)
    assert quantize_transposed(x, pad_to=128).shape == (32, 128)
    assert padded_tokens(0) == 0 and padded_tokens(17) == 32 and padded_tokens(17, 64) == 64
    empty = quantize_transposed(torch.randn(0, 32))
    assert empty.shape == (32, 0)


def test_non_finite_blocks(generator):
    """A NaN poisons exactly its (channel, 128-token) block's scale; the padding stays 0."""
    x = torch.randn(200, 8, generator=generator)
    x[150, 3] = float("nan")
    x[10, 5] = float("inf")
    q = quantize_transposed(x)
    expected = torch.zeros(8, 2, dtype=torch.bool)
    expected[3, 1] = expected[5, 0] = True
    assert torch.equal(q.scale.isnan(), expected)
    assert (q.data[:, 200:].float() == 0).all()


def test_wgrad_with_partial_token_block(generator):
    """dW = dY^T X from the transposed quantizations, at a token count that is no multiple of 16
    or 128, equals the float64 product of quantize(dY^T) and quantize(X^T)."""
    tokens, n, k = 300, 48, 64
    dy = torch.randn(tokens, n, generator=generator, dtype=torch.bfloat16)
    x = torch.randn(tokens, k, generator=generator, dtype=torch.bfloat16)
    dw = torch.empty(n, k)
    fp8_gemm_nt_1d1d(quantize_transposed(dy), quantize_transposed(x), dw)
    ref = (quantize(dy.t().contiguous(), "1x128").dequantize(torch.float64)
           @ quantize(x.t().contiguous(), "1x128").dequantize(torch.float64).t())
    assert calc_diff(dw, ref) < 1e-10
    assert calc_diff(dw, dy.float().t() @ x.float()) < 1e-3


def test_errors():
    with pytest.raises(ValueError, match=r"pad_to: expected one of"):
        quantize_transposed(torch.randn(4, 4), pad_to=8)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor"):
        quantize_transposed(torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match=r"x: expected dtype"):
        quantize_rowwise_and_transposed(torch.ones(4, 4, dtype=torch.int32))
