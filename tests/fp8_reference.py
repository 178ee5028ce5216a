"""An independent float64 numpy model of pyfp8gemm's quantization, and checks built on it.

Nothing here calls pyfp8gemm's quantizer: block amax comes from slicing the input block by block
(no padding), E4M3 rounding from the format's definition. Each `check_*` function raises
AssertionError with a readable message, so the tests (and the tests of the tests) can use them.
"""

from __future__ import annotations

import numpy as np
import torch

E4M3_MAX = 448.0
AMAX_MIN = 1e-4
BLOCK = 128

# E4M3 (fn variant): 3 mantissa bits, exponent bias 7, smallest normal 2^-6, subnormal step 2^-9.
E4M3_MANTISSA_BITS = 3
E4M3_MIN_NORMAL_EXPONENT = -6


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def align(n: int, alignment: int) -> int:
    return ceil_div(n, alignment) * alignment


def e4m3_round_nearest_even(q: np.ndarray) -> np.ndarray:
    """Round float64 values with |q| <= 448 to the nearest E4M3 value, ties to even. NaN stays NaN.

    The spacing of E4M3 values around q is 2^(e - 3) for q in [2^e, 2^(e+1)), e >= -6, and 2^-9
    below 2^-6 (subnormals). Dividing by a power of two is exact, and np.rint rounds half to even.
    """
    q = np.asarray(q, dtype=np.float64)
    finite = np.isfinite(q)
    assert np.all(np.abs(q[finite]) <= E4M3_MAX), "value out of E4M3 range"
    _, exponent = np.frexp(np.where(finite, q, 1.0))   # q = m * 2^exponent, 0.5 <= |m| < 1
    binade = np.maximum(exponent - 1, E4M3_MIN_NORMAL_EXPONENT)
    spacing = np.ldexp(1.0, binade - E4M3_MANTISSA_BITS)
    return np.where(finite, np.rint(q / spacing) * spacing, np.nan)


def block_slices(rows: int, cols: int, granularity: str):
    """Yield (scale_index, row_slice, col_slice) for every block, partial ones included."""
    block_rows = 1 if granularity == "1x128" else BLOCK
    for i in range(ceil_div(rows, block_rows)):
        for j in range(ceil_div(cols, BLOCK)):
            yield (i, j), slice(i * block_rows, (i + 1) * block_rows), slice(j * BLOCK, (j + 1) * BLOCK)


def reference_scales(x: np.ndarray, granularity: str) -> np.ndarray:
    """float64 decode scales: max(amax, 1e-4) / 448 per block, NaN for a block with NaN/inf."""
    rows, cols = x.shape
    if granularity == "1x128":
        # One column block at a time, all rows at once: same result as the per-block loop, faster.
        scales = np.empty((rows, ceil_div(cols, BLOCK)))
        for j in range(scales.shape[1]):
            block = x[:, j * BLOCK:(j + 1) * BLOCK]
            amax = np.abs(block).max(axis=1) if block.size else np.zeros(rows)
            scales[:, j] = np.maximum(amax, AMAX_MIN) / E4M3_MAX
            scales[~np.isfinite(block).all(axis=1), j] = np.nan
        return scales
    scales = np.empty((ceil_div(rows, BLOCK), ceil_div(cols, BLOCK)))
    for index, row_slice, col_slice in block_slices(rows, cols, granularity):
        block = x[row_slice, col_slice]
        if np.isfinite(block).all():
            scales[index] = max(np.abs(block).max(), AMAX_MIN) / E4M3_MAX
        else:
            scales[index] = np.nan
    return scales


def per_element(scale: np.ndarray, shape: tuple[int, int], granularity: str) -> np.ndarray:
    """Each element's scale, by repeating every block's scale over the block."""
    rows, cols = shape
    block_rows = 1 if granularity == "1x128" else BLOCK
    return np.repeat(np.repeat(scale, block_rows, axis=0), BLOCK, axis=1)[:rows, :cols]


def as_numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


# ------------------------------------------------------------------------------------------------
# Checks: each raises AssertionError on a mismatch
# ------------------------------------------------------------------------------------------------


def check_scales(x: torch.Tensor, q) -> None:
    """q.scale equals max(amax, 1e-4)/448 of each block of x, to float32 rounding; NaN where
    the block holds a non-finite value."""
    expected = reference_scales(as_numpy64(x), q.granularity)
    actual = as_numpy64(q.scale)
    assert actual.shape == expected.shape, f"scale shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=2**-23, atol=0, equal_nan=True,
                               err_msg="block scales differ from max(amax, 1e-4) / 448")


def check_data(x: torch.Tensor, q) -> None:
    """q.data equals round-to-nearest-even E4M3 of x / scale, element by element, exactly.

    x / scale is the float32 quotient (x and q's float32 scale, IEEE division as torch does it),
    so the only thing under test is the rounding to E4M3 (and the choice of scale per element).
    """
    rows, cols = x.shape
    x32 = x.detach().cpu().float().numpy()
    scale32 = per_element(q.scale.detach().cpu().numpy(), (rows, cols), q.granularity)
    with np.errstate(invalid="ignore", divide="ignore"):
        quotient = (x32 / scale32.astype(np.float32)).astype(np.float64)
    expected = e4m3_round_nearest_even(np.clip(quotient, -E4M3_MAX, E4M3_MAX))
    actual = as_numpy64(q.data)
    assert actual.shape == expected.shape, f"data shape {actual.shape} != {expected.shape}"
    mismatch = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)))
    if mismatch.any():
        r, c = np.argwhere(mismatch)[0]
        raise AssertionError(
            f"{int(mismatch.sum())} of {mismatch.size} E4M3 values differ from round-to-nearest-even"
            f" of x / scale; first at [{r}, {c}]: x={x32[r, c]!r} scale={scale32[r, c]!r} "
            f"quotient={quotient[r, c]!r} expected={expected[r, c]!r} got={actual[r, c]!r}"
        )


def check_round_trip(x: torch.Tensor, q) -> None:
    """|dequantize() - x| stays within half an E4M3 step (relative 2^-4, or 2^-10 * scale in
    the subnormal range), plus float32 rounding of the product; and each finite block's largest
    |value| maps to +-448 exactly (the scale uses the full E4M3 range)."""
    x64 = as_numpy64(x)
    scale = per_element(as_numpy64(q.scale), x64.shape, q.granularity)
    finite = np.isfinite(scale)
    deq = as_numpy64(q.dequantize())
    error = np.abs(deq - x64)[finite]
    with np.errstate(invalid="ignore"):
        bound = (2.0**-4 * np.abs(x64) + 2.0**-10 * scale + 2.0**-23 * np.abs(x64))[finite]
    worst = np.argmax(error - bound) if error.size else None
    assert error.size == 0 or error[worst] <= bound[worst], (
        f"round-trip error {error[worst]!r} exceeds the E4M3 bound {bound[worst]!r}"
    )
    # The scale maps each block's amax onto 448 (unless the 1e-4 clamp kicked in).
    abs_data, abs_x = np.abs(as_numpy64(q.data)), np.abs(x64)
    scales = as_numpy64(q.scale)
    for index, row_slice, col_slice in block_slices(*x64.shape, q.granularity):
        block_x = abs_x[row_slice, col_slice]
        if block_x.size and np.isfinite(scales[index]) and block_x.max() >= AMAX_MIN:
            peak = abs_data[row_slice, col_slice].max()
            assert peak == E4M3_MAX, f"block {index}: largest |data| is {peak!r}, not 448"


def check_layout(q) -> None:
    """The stored layout: data contiguous e4m3 with q's shape; 1x128 scales MN-major in a
    contiguous zero-padded (kb, align(rows, 4)) buffer; 128x128 scales row-major contiguous."""
    rows, cols = q.shape
    kb = ceil_div(cols, BLOCK)
    assert q.data.dtype == torch.float8_e4m3fn and q.data.is_contiguous()
    assert q.scale.dtype == torch.float32
    if q.granularity == "1x128":
        padded_rows = align(rows, 4)
        assert tuple(q.scale.shape) == (rows, kb), f"scale shape {tuple(q.scale.shape)}"
        assert q.scale.stride() == (1, padded_rows), f"scale strides {q.scale.stride()}"
        assert q.scale.data_ptr() % 16 == 0, "scale start is not 16-byte aligned"
        assert q.scale.untyped_storage().nbytes() >= kb * padded_rows * 4, "scale buffer too small"
        buffer = torch.as_strided(q.scale, (kb, padded_rows), (padded_rows, 1))
        torch.testing.assert_close(buffer[:, :rows], q.scale.t(), rtol=0, atol=0, equal_nan=True,
                                   msg="the buffer does not hold the scales")
        assert torch.all(buffer[:, rows:] == 0), "pad entries of the scale buffer are not zero"
    else:
        assert tuple(q.scale.shape) == (ceil_div(rows, BLOCK), kb)
        assert q.scale.is_contiguous(), f"scale strides {q.scale.stride()}"


def check_quantized(x: torch.Tensor, q) -> None:
    """All of the above."""
    check_layout(q)
    check_scales(x, q)
    check_data(x, q)
    check_round_trip(x, q)


def make_input(shape, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random values with magnitudes spread over many binades, so blocks get different scales
    and many elements land in E4M3's subnormal range; plus an all-zero row and a row whose amax
    is under the 1e-4 clamp when there are rows to spare."""
    rows, cols = shape
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    row_exponent = torch.randint(-12, 9, (rows, 1), generator=generator).double()
    col_exponent = torch.randint(-3, 4, (1, cols), generator=generator).double()
    x = values * torch.exp2(row_exponent + col_exponent)
    if rows >= 3:
        x[0] = 0.0
        x[1] *= 1e-7 / max(x[1].abs().max().item(), 1e-30)  # amax 1e-7 < AMAX_MIN
    return x.to(dtype)
