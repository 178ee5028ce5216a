"""quantize() and FP8Tensor against the float64 numpy model in fp8_reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyfp8gemm
from pyfp8gemm import FP8Tensor, quantize, to_mn_major_tma_aligned
from pyfp8gemm.host import fp8tensor

import fp8_reference as ref

GRANULARITIES = ("1x128", "128x128")

# Odd shapes from the issue, plus exact multiples and off-by-one blocks in both directions.
SHAPES = [(1, 1), (7, 130), (257, 7296), (4097, 128), (128, 128), (129, 255), (3, 1000)]
SMALL_SHAPES = [(1, 1), (7, 130), (129, 255), (3, 1000)]


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quantize_matches_reference_bf16(shape, granularity, generator):
    x = ref.make_input(shape, torch.bfloat16, generator)
    ref.check_quantized(x, quantize(x, granularity))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quantize_matches_reference_other_dtypes(shape, granularity, dtype, generator):
    x = ref.make_input(shape, dtype, generator)
    ref.check_quantized(x, quantize(x, granularity))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_partial_block_amax_ignores_padding(granularity, generator):
    # The last column block holds 2 valid columns, the last row block (128x128) 1 valid row.
    # Small values there: a pad value of anything but 0 (or a stray neighbour) would show.
    rows, cols = 129, 130
    x = torch.randn(rows, cols, generator=generator)
    x[:, 128:] *= 1e-3
    x[128:, :] *= 1e-3
    q = quantize(x, granularity)
    ref.check_scales(x, q)
    if granularity == "1x128":
        expected_last = x[:, 128:].abs().amax(dim=1).clamp_min(1e-4) / 448
        torch.testing.assert_close(q.scale[:, 1], expected_last, rtol=2**-23, atol=0)
    else:
        expected_corner = x[128:, 128:].abs().amax().clamp_min(1e-4) / 448
        torch.testing.assert_close(q.scale[1, 1], expected_corner, rtol=2**-23, atol=0)


def test_scale_formula_and_clamp():
    # One row, three blocks: amax 448, amax 1 (via a negative value), all zero (clamped to 1e-4).
    x = torch.zeros(1, 384)
    x[0, 5] = 448.0
    x[0, 130] = -1.0
    q = quantize(x, "1x128")
    torch.testing.assert_close(
        q.scale[0], torch.tensor([1.0, 1.0 / 448, 1e-4 / 448]), rtol=2**-23, atol=0
    )
    assert q.data.float()[0, 5] == 448.0 and q.data.float()[0, 130] == -448.0
    assert torch.all(q.data.float()[0, 256:] == 0)


def test_amax_clamp_constant_is_deepgemms():
    assert fp8tensor.AMAX_MIN == 1e-4 and fp8tensor.E4M3_MAX == 448.0


def test_rounding_is_to_nearest_even():
    # With scale 1 (amax 448), these quotients sit exactly halfway between E4M3 neighbours
    # (step 2 in [16, 32), step 0.125 in [1, 2), subnormal step 2^-9) and must go to the even one.
    x = torch.zeros(1, 128)
    halfway = [17.0, 19.0, 1.0625, 1.1875, 2**-10, 3 * 2**-10]
    to_even = [16.0, 20.0, 1.0, 1.25, 0.0, 2**-8]
    x[0, 0] = 448.0
    x[0, 1:1 + len(halfway)] = torch.tensor(halfway)
    q = quantize(x, "1x128")
    assert q.scale[0, 0] == 1.0
    assert q.data.float()[0, 1:1 + len(halfway)].tolist() == to_even


def test_reference_rounding_agrees_with_torch_cast(generator):
    # The numpy model of E4M3 rounding and torch's own cast must agree on every E4M3 binade.
    q = (torch.rand(200_000, generator=generator, dtype=torch.float64) * 2 - 1) * torch.exp2(
        torch.randint(-12, 9, (200_000,), generator=generator).double()
    )
    q = q.clamp(-448, 448).float()
    np.testing.assert_array_equal(
        ref.e4m3_round_nearest_even(q.double().numpy()),
        q.to(torch.float8_e4m3fn).double().numpy(),
    )


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_dequantize_is_data_times_scale(granularity, generator):
    x = ref.make_input((130, 300), torch.float32, generator)
    q = quantize(x, granularity)
    scale = ref.per_element(ref.as_numpy64(q.scale), tuple(x.shape), granularity)
    expected = (ref.as_numpy64(q.data) * scale).astype(np.float32)
    deq = q.dequantize()
    assert deq.dtype == torch.float32 and deq.shape == x.shape
    np.testing.assert_array_equal(deq.numpy(), expected)
    np.testing.assert_array_equal(q.dequantize(torch.float64).numpy(), ref.as_numpy64(q.data) * scale)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_round_trip_relative_error(granularity, generator):
    # Normal-range data (no tiny rows): the whole-tensor relative error of E4M3 is a few percent.
    x = torch.randn(256, 512, generator=generator)
    q = quantize(x, granularity)
    relative = ((q.dequantize() - x).norm() / x.norm()).item()
    assert 1e-3 < relative < 0.04


def test_empty_tensors():
    for granularity in GRANULARITIES:
        for shape in [(0, 256), (4, 0)]:
            q = quantize(torch.empty(shape), granularity)
            assert q.shape == shape and q.dequantize().shape == shape


class _CountTorchCalls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_quantize_is_vectorized(granularity, generator):
    # The same number of torch calls for 1 block as for 1,600: no Python loop over blocks.
    counts = []
    for shape in [(128, 128), (5120, 5120)]:
        x = torch.randn(shape, generator=generator, dtype=torch.bfloat16)
        with _CountTorchCalls() as counter:
            quantize(x, granularity)
        counts.append(counter.calls)
    assert counts[0] == counts[1] and counts[0] > 0


# ------------------------------------------------------------------------------------------------
# Non-finite input: NaN scale for the whole block, never a finite value
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_non_finite_block_dequantizes_to_nan(granularity, bad_value, generator):
    rows, cols = 260, 300
    x = torch.randn(rows, cols, generator=generator, dtype=torch.bfloat16)
    r = int(torch.randint(0, rows, (1,), generator=generator))
    c = int(torch.randint(0, cols, (1,), generator=generator))
    x[r, c] = bad_value
    q = quantize(x, granularity)

    block_rows = 1 if granularity == "1x128" else 128
    bad_block = (r // block_rows, c // 128)
    bad_rows = slice(bad_block[0] * block_rows, (bad_block[0] + 1) * block_rows)
    bad_cols = slice(bad_block[1] * 128, (bad_block[1] + 1) * 128)

    assert math.isnan(q.scale[bad_block])
    deq = q.dequantize()
    assert torch.isnan(deq[bad_rows, bad_cols]).all(), "a non-finite block must decode to NaN"
    deq[bad_rows, bad_cols] = 0.0
    assert torch.isfinite(deq).all(), "only the non-finite block may hold NaN"
    assert torch.isfinite(q.scale).sum() == q.scale.numel() - 1
    # Every other block is quantized exactly as without the bad value.
    ref.check_scales(x, q)
    ref.check_data(x, q)


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 257])
@pytest.mark.parametrize("cols", [1, 128, 129, 1000])
def test_stored_scale_layouts(rows, cols, generator):
    x = torch.randn(rows, cols, generator=generator)
    ref.check_layout(quantize(x, "1x128"))
    ref.check_layout(quantize(x, "128x128"))


def test_1x128_scale_strides_example():
    q = quantize(torch.randn(7, 300), "1x128")
    assert tuple(q.scale.shape) == (7, 3)
    assert q.scale.stride() == (1, 8)       # rows padded to 8 = align(7, 4)
    q = quantize(torch.randn(8, 300), "1x128")
    assert q.scale.stride() == (1, 8)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.contiguous(),                    # row-major (rows, kb)
        lambda s: s.t().contiguous().t(),            # MN-major but not padded
        lambda s: torch.cat([s, s], dim=1)[:, ::2],  # strided view
    ],
    ids=["row-major", "mn-major-unpadded", "strided"],
)
@pytest.mark.parametrize("rows", [1, 6, 8, 13])
def test_to_mn_major_tma_aligned_converts(make, rows, generator):
    scale = make(torch.rand(rows, 3, generator=generator))
    aligned = to_mn_major_tma_aligned(scale)
    assert aligned.shape == scale.shape
    assert aligned.stride() == (1, ref.align(rows, 4))
    assert aligned.data_ptr() % 16 == 0
    assert torch.equal(aligned, scale)
    assert fp8tensor.is_mn_major_tma_aligned(aligned)


def test_to_mn_major_tma_aligned_keeps_aligned_input():
    q = quantize(torch.randn(10, 400), "1x128")
    assert to_mn_major_tma_aligned(q.scale) is q.scale


def test_to_mn_major_tma_aligned_copies_a_misaligned_start():
    # Right strides, but starting one float into the buffer: TMA needs a 16-byte aligned start.
    buffer = torch.rand(3, 9)
    shifted = torch.as_strided(buffer, (8, 3), (1, 8), storage_offset=1)
    assert shifted.data_ptr() % 16 != 0
    aligned = to_mn_major_tma_aligned(shifted)
    assert aligned is not shifted and aligned.data_ptr() % 16 == 0
    assert torch.equal(aligned, shifted)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ([[1.0]], TypeError, "torch.Tensor"),
        (torch.ones(4, 2, dtype=torch.float64), TypeError, "torch.float32"),
        (torch.ones(4, 2, 1), ValueError, "2-D"),
        (torch.ones(4), ValueError, "2-D"),
    ],
)
def test_to_mn_major_tma_aligned_rejects(bad, error, words):
    with pytest.raises(error, match=words):
        to_mn_major_tma_aligned(bad)


# ------------------------------------------------------------------------------------------------
# FP8Tensor
# ------------------------------------------------------------------------------------------------


def test_fp8tensor_basics(generator):
    x = torch.randn(300, 520, generator=generator)
    q = quantize(x, "1x128")
    assert isinstance(q, FP8Tensor)
    assert q.shape == torch.Size([300, 520]) and q.size(1) == 520 and q.ndim == 2
    assert q.device == torch.device("cpu")
    assert q.granularity == "1x128"
    text = repr(q)
    assert "FP8Tensor" in text and "(300, 520)" in text and "1x128" in text


def test_t_is_a_view_for_128x128(generator):
    x = torch.randn(300, 520, generator=generator)
    q = quantize(x, "128x128")
    qt = q.t()
    assert qt.shape == (520, 300) and tuple(qt.scale.shape) == (5, 3)
    assert qt.data.data_ptr() == q.data.data_ptr() and qt.scale.data_ptr() == q.scale.data_ptr()
    assert qt.data.stride() == (1, 520) and qt.scale.stride() == (1, 5)
    assert torch.equal(qt.dequantize(), q.dequantize().t())
    back = qt.t()
    assert back.data.is_contiguous() and back.scale.is_contiguous()
    assert torch.equal(back.dequantize(), q.dequantize())


def test_t_refuses_1x128():
    with pytest.raises(ValueError, match="128x128"):
        quantize(torch.randn(4, 256), "1x128").t()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_to_preserves_layouts(granularity, generator):
    x = torch.randn(7, 300, generator=generator)
    q = quantize(x, granularity)
    assert q.to("cpu") is q and q.cpu() is q
    # The meta device keeps shapes and strides without memory: enough to check the layout logic.
    moved = q.to("meta")
    assert moved.device.type == "meta" and moved.granularity == granularity
    assert moved.scale.stride() == q.scale.stride() and moved.data.stride() == q.data.stride()
    if granularity == "128x128":
        moved_t = q.t().to("meta")
        assert moved_t.scale.stride() == q.t().scale.stride()


def _scale_for(rows, cols, granularity):
    shape = fp8tensor.expected_scale_shape(rows, cols, granularity)
    scale = torch.ones(shape)
    return to_mn_major_tma_aligned(scale) if granularity == "1x128" else scale


def _fp8(rows, cols):
    return torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)


@pytest.mark.parametrize(
    "make_args, error, words",
    [
        (lambda: ([[1]], _scale_for(8, 256, "1x128"), "1x128"), TypeError, "data: expected a torch.Tensor"),
        (lambda: (torch.zeros(8, 256), _scale_for(8, 256, "1x128"), "1x128"), TypeError,
         "data: expected dtype torch.float8_e4m3fn, got torch.float32"),
        (lambda: (_fp8(8, 256)[None], _scale_for(8, 256, "1x128"), "1x128"), ValueError,
         "data: expected a 2-D tensor"),
        (lambda: (_fp8(8, 256), _scale_for(8, 256, "1x128").double(), "1x128"), TypeError,
         "scale: expected dtype torch.float32"),
        (lambda: (_fp8(8, 256), torch.ones(2), "1x128"), ValueError, "scale: expected a 2-D"),
        (lambda: (_fp8(8, 256), _scale_for(8, 384, "1x128"), "1x128"), ValueError,
         r"scale: expected shape \(8, 2\)"),
        (lambda: (_fp8(8, 256), _scale_for(8, 256, "128x128"), "1x128"), ValueError,
         r"scale: expected shape \(8, 2\)"),
        (lambda: (_fp8(300, 256), torch.ones(300, 2), "1x128"), ValueError,
         "MN-major and TMA-aligned"),
        (lambda: (_fp8(300, 256), torch.ones(2, 3), "128x128"), ValueError,
         r"scale: expected shape \(3, 2\)"),
        (lambda: (_fp8(8, 256), _scale_for(8, 256, "1x128"), "1x64"), ValueError, "granularity"),
        (lambda: (_fp8(8, 256), _scale_for(8, 256, "1x128"), 128), TypeError, "granularity"),
        (lambda: (_fp8(8, 256), _scale_for(8, 256, "128x128").to("meta"), "128x128"), ValueError,
         "scale: expected the same device as data"),
    ],
    ids=["data-not-tensor", "data-dtype", "data-rank", "scale-dtype", "scale-rank", "scale-shape",
         "scale-shape-granularity", "scale-layout", "scale-shape-128", "granularity-value",
         "granularity-type", "devices"],
)
def test_fp8tensor_constructor_rejects(make_args, error, words):
    with pytest.raises(error, match=words):
        FP8Tensor(*make_args())


def test_fp8tensor_constructor_accepts_valid_parts():
    q = FP8Tensor(_fp8(8, 256), _scale_for(8, 256, "1x128"), "1x128")
    assert q.granularity == "1x128"
    q = FP8Tensor(_fp8(300, 256), _scale_for(300, 256, "128x128"), "128x128")
    assert torch.equal(q.dequantize(), torch.zeros(300, 256))


@pytest.mark.parametrize(
    "x, granularity, error, words",
    [
        (np.ones((4, 128), dtype=np.float32), "1x128", TypeError, "x: expected a torch.Tensor"),
        (torch.ones(4, 128, dtype=torch.int32), "1x128", TypeError, "x: expected dtype"),
        (torch.ones(4, 128, dtype=torch.float64), "1x128", TypeError, "got torch.float64"),
        (torch.ones(4, 128).to(torch.float8_e4m3fn), "1x128", TypeError, "x: expected dtype"),
        (torch.ones(128), "1x128", ValueError, "x: expected a 2-D tensor"),
        (torch.ones(2, 4, 128), "128x128", ValueError, "x: expected a 2-D tensor"),
        (torch.ones(4, 128), "128", ValueError, "granularity: expected one of"),
        (torch.ones(4, 128), "1X128", ValueError, "granularity: expected one of"),
        (torch.ones(4, 128), None, TypeError, "granularity: expected one of"),
    ],
    ids=["numpy", "int32", "float64", "fp8", "1-D", "3-D", "granularity-128", "granularity-case",
         "granularity-None"],
)
def test_quantize_rejects(x, granularity, error, words):
    with pytest.raises(error, match=words):
        quantize(x, granularity)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(300, 260, generator=g).t(),              # column-major, padded
        lambda g: torch.randn(256, 384, generator=g).t(),              # column-major, no padding
        lambda g: torch.randn(130, 512, generator=g)[:, ::2],          # strided columns
        lambda g: torch.randn(260, 300, generator=g)[3:200, 17:290],   # offset sub-block
    ],
    ids=["transposed-padded", "transposed-exact", "strided", "sliced"],
)
def test_quantize_accepts_non_contiguous_input(make, granularity, generator):
    x = make(generator)
    assert not x.is_contiguous()
    ref.check_quantized(x, quantize(x, granularity))


def test_public_api_exports():
    assert pyfp8gemm.quantize is quantize and pyfp8gemm.FP8Tensor is FP8Tensor
    assert pyfp8gemm.to_mn_major_tma_aligned is to_mn_major_tma_aligned
    assert isinstance(pyfp8gemm.__version__, str) and pyfp8gemm.__version__
    for name in ("FP8Tensor", "quantize", "to_mn_major_tma_aligned", "testing"):
        assert name in pyfp8gemm.__all__


@pytest.mark.parametrize("name", ["fp8_gemm_nt", "matmul", "set_num_sms", "get_num_sms"])
def test_lazy_exports(name):
    # The GEMM and device-info functions are imported on first use; once their module exists,
    # they are ordinary public names.
    module_name = pyfp8gemm._LAZY_EXPORTS[name]
    import importlib

    assert getattr(pyfp8gemm, name) is getattr(importlib.import_module(module_name), name)
    assert name in pyfp8gemm.__all__ and name in dir(pyfp8gemm)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        pyfp8gemm.no_such_name


# ------------------------------------------------------------------------------------------------
# The checks can fail: a deliberately broken quantizer must trip them
# ------------------------------------------------------------------------------------------------


def test_a_wrong_scale_constant_is_caught(monkeypatch, generator):
    x = ref.make_input((7, 130), torch.bfloat16, generator)
    monkeypatch.setattr(fp8tensor, "E4M3_MAX", 400.0)
    with pytest.raises(AssertionError, match="scales differ"):
        ref.check_scales(x, quantize(x, "1x128"))


def test_a_scale_off_by_one_ulp_is_caught(monkeypatch, generator):
    x = ref.make_input((7, 130), torch.bfloat16, generator)
    original = fp8tensor._block_scales
    monkeypatch.setattr(fp8tensor, "_block_scales",
                        lambda amax, finite: original(amax, finite) * (1 + 2**-21))
    with pytest.raises(AssertionError, match="scales differ"):
        ref.check_scales(x, quantize(x, "128x128"))


def test_biased_rounding_is_caught(monkeypatch, generator):
    x = ref.make_input((257, 300), torch.float32, generator)

    def round_down_a_little(scaled):
        return (scaled * (1 - 2**-6)).clamp(-448, 448).to(torch.float8_e4m3fn)

    monkeypatch.setattr(fp8tensor, "_to_e4m3", round_down_a_little)
    with pytest.raises(AssertionError, match="differ from round-to-nearest-even"):
        ref.check_data(x, quantize(x, "1x128"))


def test_nonzero_padding_is_caught(monkeypatch, generator):
    x = torch.randn(5, 130, generator=generator) * 1e-3   # partial last block, amax < 1
    real_pad = fp8tensor.F.pad
    monkeypatch.setattr(fp8tensor.F, "pad", lambda t, pad: real_pad(t, pad, value=1.0))
    with pytest.raises(AssertionError, match="scales differ"):
        ref.check_scales(x, quantize(x, "1x128"))


def test_ignoring_non_finite_is_caught(monkeypatch, generator):
    x = torch.randn(4, 256, generator=generator)
    x[2, 3] = math.inf
    monkeypatch.setattr(fp8tensor, "_block_scales",
                        lambda amax, finite: amax.clamp_min(1e-4) / 448)
    with pytest.raises(AssertionError):
        ref.check_scales(x, quantize(x, "1x128"))


def test_a_wrong_layout_is_caught(generator):
    q = quantize(torch.randn(6, 300, generator=generator), "1x128")
    # Bypass the constructor's validation to build what a broken quantizer could return.
    broken = object.__new__(FP8Tensor)
    broken.data, broken.scale, broken.granularity = q.data, q.scale.contiguous(), "1x128"
    with pytest.raises(AssertionError, match="strides"):
        ref.check_layout(broken)


def test_a_loose_round_trip_is_caught(monkeypatch, generator):
    x = torch.randn(64, 256, generator=generator)

    def truncate_to_two_bits(scaled):   # E4M3 with one mantissa bit dropped: errors too large
        e4m3 = scaled.clamp(-448, 448).to(torch.float8_e4m3fn)
        return (e4m3.view(torch.uint8) & 0xFE).view(torch.float8_e4m3fn)

    monkeypatch.setattr(fp8tensor, "_to_e4m3", truncate_to_two_bits)
    with pytest.raises(AssertionError, match="round-trip error"):
        ref.check_round_trip(x, quantize(x, "128x128"))


# ------------------------------------------------------------------------------------------------
# On a Hopper GPU: the same bits as on the CPU, no host sync, layouts kept by .cuda()
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cuda_quantize_matches_cpu_bitwise(shape, granularity, generator):
    x = ref.make_input(shape, torch.bfloat16, generator)
    on_cpu = quantize(x, granularity)
    on_gpu = quantize(x.cuda(), granularity)
    assert on_gpu.device.type == "cuda"
    ref.check_layout(on_gpu)
    assert torch.equal(on_gpu.data.cpu().view(torch.uint8), on_cpu.data.view(torch.uint8))
    assert torch.equal(on_gpu.scale.cpu(), on_cpu.scale)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_cuda_quantize_does_not_synchronize(granularity, generator):
    x = torch.randn(4096, 7168, generator=generator).to("cuda", torch.bfloat16)
    quantize(x, granularity)  # warm up allocator and kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        quantize(x, granularity)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_cuda_moves_keep_layouts(granularity, generator):
    q = quantize(torch.randn(7, 300, generator=generator), granularity)
    on_gpu = q.cuda()
    ref.check_layout(on_gpu)
    assert torch.equal(on_gpu.dequantize().cpu(), q.dequantize())
    back = on_gpu.cpu()
    ref.check_layout(back)
    assert torch.equal(back.dequantize(), q.dequantize())


# ------------------------------------------------------------------------------------------------
# Saving and loading; dequantize's dtype; quantize on CPU tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("transposed", [False, True])
def test_saved_fp8_tensor_loads_under_weights_only(tmp_path, granularity, transposed, generator):
    """torch.load's default (weights_only=True) loads a saved FP8Tensor: same values, layouts."""
    if transposed and granularity == "1x128":
        pytest.skip("1x128 FP8Tensors have no transpose")
    x = torch.randn(200, 300, generator=generator).to(torch.bfloat16)
    q = quantize(x, granularity)
    if transposed:
        q = q.t()
    path = tmp_path / "weights.pt"
    torch.save({"w": q, "bias": torch.randn(3, generator=generator)}, path)
    loaded = torch.load(path)                      # weights_only=True by default
    again = torch.load(path, weights_only=True)
    for r in (loaded["w"], again["w"]):
        assert type(r) is FP8Tensor and r.granularity == granularity
        assert torch.equal(r.data.view(torch.uint8), q.data.view(torch.uint8))
        assert torch.equal(r.scale, q.scale)
        assert r.scale.stride() == q.scale.stride()
        assert torch.equal(r.dequantize(), q.dequantize())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.float8_e4m3fn])
def test_dequantize_refuses_non_float_dtypes(dtype, generator):
    q = quantize(torch.randn(8, 256, generator=generator), "1x128")
    with pytest.raises(TypeError, match=r"dtype: expected a floating point dtype.*" + str(dtype)):
        q.dequantize(dtype)
    with pytest.raises(TypeError, match="dtype: expected a torch.dtype"):
        q.dequantize("float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dequantize_float_dtypes(dtype, generator):
    q = quantize(torch.randn(8, 256, generator=generator), "128x128")
    out = q.dequantize(dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out, q.dequantize(torch.float64).to(dtype))


def test_quantize_works_on_cpu_tensors(generator):
    x = torch.randn(33, 260, generator=generator).to(torch.bfloat16)
    q = quantize(x, "1x128")
    assert q.device.type == "cpu" and q.data.dtype == torch.float8_e4m3fn
    assert fp8tensor.is_mn_major_tma_aligned(q.scale)
    assert (q.dequantize() - x.float()).abs().max() <= x.float().abs().max() / 8
