"""pyfp8gemm.testing: calc_diff and the reference FP8 GEMM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyfp8gemm
from pyfp8gemm import FP8Tensor, quantize
from pyfp8gemm.testing import calc_diff, reference_gemm

import fp8_reference as ref


# ------------------------------------------------------------------------------------------------
# calc_diff
# ------------------------------------------------------------------------------------------------


def test_calc_diff_equals_its_closed_form(generator):
    # 1 - 2xy / (x^2 + y^2) summed is |x - y|^2 / (|x|^2 + |y|^2).
    x = torch.randn(64, 96, generator=generator)
    y = x + 0.01 * torch.randn(64, 96, generator=generator)
    x64, y64 = x.double().numpy(), y.double().numpy()
    expected = ((x64 - y64) ** 2).sum() / (x64**2 + y64**2).sum()
    assert calc_diff(x, y) == pytest.approx(expected, rel=1e-9)


def test_calc_diff_in_chunks_is_the_whole_sum(generator, monkeypatch):
    """calc_diff sums in chunks (bounded float64 temporaries): a chunk size that does not divide
    the element count, non-contiguous inputs and a NaN in the last chunk all still count."""
    import pyfp8gemm.testing as testing

    x = torch.randn(40, 30, generator=generator).t()          # non-contiguous
    y = x + 0.05 * torch.randn(30, 40, generator=generator)
    whole = calc_diff(x, y)
    monkeypatch.setattr(testing, "_CALC_DIFF_CHUNK", 7)
    assert calc_diff(x, y) == pytest.approx(whole, rel=1e-12)
    y[-1, -1] = float("nan")
    assert math.isnan(calc_diff(x, y))


def test_calc_diff_landmarks(generator):
    x = torch.randn(100, generator=generator)
    assert calc_diff(x, x) == 0.0
    assert calc_diff(x, -x) == pytest.approx(2.0)
    assert calc_diff(torch.zeros(5), torch.zeros(5)) == 0.0
    assert calc_diff(x, torch.zeros(100)) == pytest.approx(1.0)
    assert isinstance(calc_diff(x, x), float)


def test_calc_diff_is_computed_in_float64(generator):
    # A 1e-6 relative error gives calc_diff ~5e-13: float32 arithmetic could not see it.
    x = torch.rand(10_000, generator=generator, dtype=torch.float64) + 1.0
    eps = 1e-6
    y = x * (1 + eps)
    expected = eps**2 / (2 + 2 * eps + eps**2)
    assert calc_diff(x, y) == pytest.approx(expected, rel=1e-4)


def test_calc_diff_accepts_mixed_dtypes(generator):
    x = torch.randn(32, 32, generator=generator)
    assert calc_diff(x.bfloat16(), x) < 1e-4
    assert calc_diff(x.bfloat16(), x) > 0


def test_calc_diff_propagates_nan_and_inf(generator):
    x = torch.randn(16, generator=generator)
    for bad in (math.nan, math.inf):
        y = x.clone()
        y[3] = bad
        assert math.isnan(calc_diff(x, y))
        assert not calc_diff(x, y) < 1e-3  # the usual check fails on it


def test_calc_diff_rejects_bad_input():
    with pytest.raises(ValueError, match=r"y: expected shape \(4, 4\)"):
        calc_diff(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        calc_diff(np.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="y: expected the same device as x"):
        calc_diff(torch.zeros(3), torch.zeros(3, device="meta"))


# ------------------------------------------------------------------------------------------------
# reference_gemm
# ------------------------------------------------------------------------------------------------


def _numpy_reference(a: FP8Tensor, b: FP8Tensor) -> np.ndarray:
    """A @ B^T from the FP8 bytes and scales, via the independent numpy model."""
    deq_a = ref.as_numpy64(a.data) * ref.per_element(ref.as_numpy64(a.scale), tuple(a.shape), a.granularity)
    deq_b = ref.as_numpy64(b.data) * ref.per_element(ref.as_numpy64(b.scale), tuple(b.shape), b.granularity)
    return deq_a @ deq_b.T


@pytest.mark.parametrize("m, n, k", [(1, 1, 16), (7, 130, 300), (130, 264, 512)])
def test_reference_gemm_is_the_exact_product(m, n, k, generator):
    a = quantize(torch.randn(m, k, generator=generator), "1x128")
    b = quantize(torch.randn(n, k, generator=generator), "128x128")
    out = reference_gemm(a, b)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    expected = _numpy_reference(a, b)
    np.testing.assert_allclose(reference_gemm(a, b, torch.float64).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.numpy(), expected.astype(np.float32))


def test_reference_gemm_output_dtype(generator):
    a = quantize(torch.randn(8, 256, generator=generator), "1x128")
    b = quantize(torch.randn(16, 256, generator=generator), "128x128")
    exact = reference_gemm(a, b, torch.float64)
    out = reference_gemm(a, b, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, exact.to(torch.bfloat16))


def test_reference_gemm_accepts_deepgemm_tuples(generator):
    x = torch.randn(9, 384, generator=generator)
    w = torch.randn(200, 384, generator=generator)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    expected = reference_gemm(a, b)
    # DeepGEMM's per_token_cast_to_fp8 returns a row-major (M, K/128) scale: also accepted.
    a_tuple = (a.data, a.scale.contiguous())
    b_tuple = (b.data, b.scale)
    assert torch.equal(reference_gemm(a_tuple, b_tuple), expected)
    assert torch.equal(reference_gemm(a_tuple, b), expected)
    assert torch.equal(reference_gemm([a.data, a.scale], b_tuple), expected)


def test_reference_gemm_takes_1x128_weights_too(generator):
    # The 1D1D (wgrad) case: both operands per-row scaled.
    a = quantize(torch.randn(5, 256, generator=generator), "1x128")
    b = quantize(torch.randn(6, 256, generator=generator), "1x128")
    np.testing.assert_array_equal(reference_gemm(a, b).numpy(), _numpy_reference(a, b).astype(np.float32))


def test_reference_gemm_is_close_to_the_unquantized_product(generator):
    # DESIGN.md: the FP8 quantization error alone puts calc_diff near 7e-4 for randn inputs.
    x = torch.randn(256, 1024, generator=generator)
    w = torch.randn(384, 1024, generator=generator)
    out = reference_gemm(quantize(x, "1x128"), quantize(w, "128x128"))
    diff = calc_diff(out, x.double() @ w.double().t())
    assert 2e-4 < diff < 1e-3


def test_reference_gemm_propagates_non_finite_blocks(generator):
    x = torch.randn(6, 256, generator=generator)
    w = torch.randn(260, 256, generator=generator)
    x[2, 200] = math.nan         # poisons output row 2
    w[131, 7] = math.inf         # poisons weight block row 1: output columns 128..255
    out = reference_gemm(quantize(x, "1x128"), quantize(w, "128x128"))
    nan_expected = torch.zeros_like(out, dtype=torch.bool)
    nan_expected[2, :] = True
    nan_expected[:, 128:256] = True
    assert torch.equal(torch.isnan(out), nan_expected)


@pytest.mark.parametrize(
    "a, b, error, words",
    [
        ("x", "w", TypeError, "a: expected a pyfp8gemm.FP8Tensor or a"),
        (torch.zeros(4, 128), "w", TypeError, "a: expected a pyfp8gemm.FP8Tensor or a"),
        (("data", "scale"), "w", TypeError, r"a\[0\] \(data\): expected a torch.Tensor"),
        ((torch.zeros(4, 128), torch.ones(4, 1)), "w", TypeError, "a\\[0\\] \\(data\\): expected dtype"),
        ((torch.zeros(4, 128, dtype=torch.float8_e4m3fn), torch.ones(4, 1, dtype=torch.float64)), "w",
         TypeError, r"a\[1\] \(scale\): expected dtype torch.float32"),
        ((torch.zeros(4, 128, dtype=torch.float8_e4m3fn), torch.ones(3, 1)), "w", ValueError,
         r"a\[1\] \(scale\): expected shape \(4, 1\) \(1x128\) or \(1, 1\) \(128x128\)"),
        ("a", "b_wrong_k", ValueError, r"a.shape\[1\] and b.shape\[1\]: K must match, got 256 and 384"),
    ],
    ids=["str", "plain-tensor", "tuple-of-str", "tuple-data-dtype", "tuple-scale-dtype",
         "tuple-scale-shape", "k-mismatch"],
)
def test_reference_gemm_rejects(a, b, error, words):
    operands = {
        "a": quantize(torch.randn(4, 256), "1x128"),
        "w": quantize(torch.randn(8, 256), "128x128"),
        "b_wrong_k": quantize(torch.randn(8, 384), "128x128"),
    }
    a = operands.get(a, a) if isinstance(a, str) else a   # "x" stays a string: not an operand
    b = operands[b]
    with pytest.raises(error, match=words):
        reference_gemm(a, b)


def test_a_reference_that_ignores_scales_is_caught(monkeypatch, generator):
    a = quantize(torch.randn(8, 256, generator=generator) * 3, "1x128")
    b = quantize(torch.randn(8, 256, generator=generator), "128x128")
    monkeypatch.setattr(FP8Tensor, "dequantize", lambda self, dtype=torch.float32: self.data.to(dtype))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(reference_gemm(a, b, torch.float64).numpy(), _numpy_reference(a, b),
                                   rtol=1e-12, atol=1e-12)


def test_testing_is_reachable_from_the_package():
    assert pyfp8gemm.testing.calc_diff is calc_diff
    assert pyfp8gemm.testing.reference_gemm is reference_gemm


@pytest.mark.gpu
def test_reference_gemm_on_cuda_matches_cpu(generator):
    x = torch.randn(130, 512, generator=generator)
    w = torch.randn(264, 512, generator=generator)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    on_gpu = reference_gemm(a.cuda(), b.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), reference_gemm(a, b), rtol=1e-6, atol=1e-6)
