"""CPU tests of the m-grouped GEMMs (pyfp8gemm/host/grouped.py): checks, layout conversions,
the CPU backend against the float64 references, the references themselves, the custom ops."""

from __future__ import annotations

import math

import pytest
import torch

import pyfp8gemm
from pyfp8gemm.host import grouped
from pyfp8gemm.host.grouped import (
    m_grouped_fp8_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nt_masked,
    psum_to_m_indices,
    quantize_grouped,
    to_grouped_mn_major_tma_aligned,
)
from pyfp8gemm.testing import (
    calc_diff,
    reference_gemm,
    reference_m_grouped_contiguous,
    reference_m_grouped_masked,
)

E4M3 = torch.float8_e4m3fn


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def make_contiguous(generator, group_rows, n, k, alignment, *, zero_padding=True):
    """DeepGEMM's test layout: group g's rows then -1 rows up to the alignment, A's padding rows
    zero. Returns (a FP8Tensor, b pair, m_indices, x, w)."""
    m_sum = sum(_align(m, alignment) for m in group_rows)
    x = torch.randn(m_sum, k, generator=generator)
    m_indices = torch.full((m_sum,), -1, dtype=torch.int32)
    start = 0
    for g, rows in enumerate(group_rows):
        m_indices[start:start + rows] = g
        if zero_padding:
            x[start + rows:start + _align(rows, alignment)] = 0
        start += _align(rows, alignment)
    w = torch.randn(len(group_rows), n, k, generator=generator)
    return pyfp8gemm.quantize(x, "1x128"), quantize_grouped(w, "128x128"), m_indices, x, w


def make_masked(generator, groups, m_max, n, k):
    x = torch.randn(groups, m_max, k, generator=generator)
    w = torch.randn(groups, n, k, generator=generator)
    return quantize_grouped(x, "1x128"), quantize_grouped(w, "128x128"), x, w


def nan_bf16(*shape):
    return torch.full(shape, float("nan"), dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------


def test_alignment_default_set_and_errors():
    assert grouped.get_mk_alignment_for_contiguous_layout() == 128
    grouped.set_mk_alignment_for_contiguous_layout(64)
    assert grouped.get_mk_alignment_for_contiguous_layout() == 64
    assert grouped.get_m_alignment_for_contiguous_layout() == 64
    with pytest.raises(ValueError, match="alignment: expected one of"):
        grouped.set_mk_alignment_for_contiguous_layout(32)
    with pytest.raises(TypeError, match="alignment"):
        grouped.set_mk_alignment_for_contiguous_layout(True)
    with pytest.raises(TypeError, match="alignment"):
        grouped.set_mk_alignment_for_contiguous_layout(128.0)
    assert grouped.get_mk_alignment_for_contiguous_layout() == 64


# ---------------------------------------------------------------------------------------------
# layouts: quantize_grouped, per-group MN-major scales, PSUM -> per-row ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [128, 200, 40])
def test_quantize_grouped_weights_match_per_group_quantize(generator, rows):
    w = torch.randn(3, rows, 272, generator=generator).to(torch.bfloat16)
    w[1, 5, 7] = float("nan")
    data, scale = quantize_grouped(w, "128x128")
    assert data.shape == (3, rows, 272) and data.is_contiguous() and data.dtype == E4M3
    assert scale.shape == (3, math.ceil(rows / 128), 3) and scale.is_contiguous()
    for g in range(3):
        q = pyfp8gemm.quantize(w[g], "128x128")
        assert torch.equal(data[g].view(torch.uint8), q.data.view(torch.uint8))
        assert torch.allclose(scale[g], q.scale, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(scale[g].isnan(), q.scale.isnan())
    assert scale[1, 0, 0].isnan() and not scale[0].isnan().any()


@pytest.mark.parametrize("rows", [8, 7, 1])
def test_quantize_grouped_activations_layout(generator, rows):
    x = torch.randn(4, rows, 384, generator=generator)
    data, scale = quantize_grouped(x, "1x128")
    padded = _align(rows, 4)
    assert scale.shape == (4, rows, 3)
    assert scale.stride() == (3 * padded, 1, padded)
    for g in range(4):
        q = pyfp8gemm.quantize(x[g], "1x128")
        assert torch.equal(data[g].view(torch.uint8), q.data.view(torch.uint8))
        assert torch.equal(scale[g], q.scale)


def test_to_grouped_mn_major_tma_aligned(generator):
    scale = torch.rand(3, 5, 2, generator=generator) + 0.5
    out = to_grouped_mn_major_tma_aligned(scale)
    assert out.stride() == (2 * 8, 1, 8) and torch.equal(out, scale)
    assert out.untyped_storage().nbytes() == 3 * 2 * 8 * 4
    # pad entries are zero
    storage = torch.as_strided(out, (3, 2, 8), (16, 8, 1))
    assert storage[:, :, 5:].abs().sum() == 0
    assert to_grouped_mn_major_tma_aligned(out) is out      # already laid out: no copy
    with pytest.raises(TypeError, match="scale: expected dtype torch.float32"):
        to_grouped_mn_major_tma_aligned(scale.double())
    with pytest.raises(ValueError, match="scale: expected a 3-D"):
        to_grouped_mn_major_tma_aligned(scale[0])


def _psum_rows_loop(psum, num_rows, alignment):
    ids = [-1] * num_rows
    end = 0
    for g, group_end in enumerate(psum):
        start = _align(end, alignment)
        for r in range(start, min(group_end, num_rows)):
            ids[r] = g
        end = group_end
    return ids


@pytest.mark.parametrize("alignment", [64, 128])
def test_psum_to_m_indices_matches_loop(generator, alignment):
    for _ in range(5):
        sizes = torch.randint(0, 300, (6,), generator=generator).tolist()
        sizes[2] = 0                                     # an empty group
        psum, end = [], 0
        for m in sizes:
            end = _align(end, alignment) + m
            psum.append(end)
        num_rows = _align(end, alignment) + 64          # rows past the last group
        got = psum_to_m_indices(torch.tensor(psum, dtype=torch.int32), num_rows, alignment)
        assert got.dtype == torch.int32
        assert got.tolist() == _psum_rows_loop(psum, num_rows, alignment)
    # ends past the rows are clipped; out-of-order ends never give ids outside [-1, G)
    got = psum_to_m_indices(torch.tensor([500, 100, 900], dtype=torch.int32), 256, alignment)
    assert got.min() >= -1 and got.max() < 3


# ---------------------------------------------------------------------------------------------
# The references against independent computations
# ---------------------------------------------------------------------------------------------


def test_reference_contiguous_matches_per_group_reference_gemm(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [100, 0, 130], 48, 256, 128)
    ref = reference_m_grouped_contiguous(a, b, m_indices, out_dtype=torch.float64)
    data, scale = a.data, a.scale
    start = 0
    for g, rows in enumerate([100, 0, 130]):
        aligned = _align(rows, 128)
        if aligned:
            expected = reference_gemm(
                (data[start:start + aligned], scale[start:start + aligned].contiguous()),
                (b[0][g], b[1][g]), out_dtype=torch.float64)
            assert torch.equal(ref[start:start + aligned], expected)
        start += aligned
    assert ref[100:128].abs().sum() == 0               # A's padding rows are zero


def test_reference_masked_matches_per_group_reference_gemm(generator):
    a, b, _, _ = make_masked(generator, 3, 10, 32, 256)
    masked_m = torch.tensor([4, 0, 99], dtype=torch.int32)
    ref = reference_m_grouped_masked(a, b, masked_m, out_dtype=torch.float64)
    for g, rows in enumerate([4, 0, 10]):
        if rows:
            expected = reference_gemm((a[0][g, :rows], a[1][g, :rows]), (b[0][g], b[1][g]),
                                      out_dtype=torch.float64)
            assert torch.equal(ref[g, :rows], expected)
        assert ref[g, rows:].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# The GEMMs on CPU tensors (the reference backend) against the references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [128, 64])
@pytest.mark.parametrize("psum", [False, True])
def test_contiguous_cpu_matches_reference(generator, alignment, psum):
    grouped.set_mk_alignment_for_contiguous_layout(alignment)
    group_rows = [70, 0, 150, 1]
    a, b, m_indices, x, w = make_contiguous(generator, group_rows, 64, 272, alignment)
    m_sum = m_indices.numel()
    layout = m_indices
    if psum:
        ends, end = [], 0
        for rows in group_rows:
            end = _align(end, alignment) + rows
            ends.append(end)
        layout = torch.tensor(ends, dtype=torch.int32)
    d = nan_bf16(m_sum, 64)
    out = m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout, use_psum_layout=psum)
    assert out is d
    assert not d.isnan().any()                          # every row is written
    ref = reference_m_grouped_contiguous(a, b, layout, use_psum_layout=psum)
    assert calc_diff(d.float(), ref) < 1e-5
    # against the unquantized product: FP8's own error
    fp32 = torch.zeros(m_sum, 64)
    for r in range(m_sum):
        if m_indices[r] >= 0:
            fp32[r] = x[r] @ w[m_indices[r]].t()
    assert calc_diff(d.float(), fp32) < 1e-3
    # padding rows of A are zero, so their output rows are zero
    assert d[m_indices == -1].abs().sum() == 0


def test_contiguous_padding_blocks_are_zero_and_block_takes_first_id(generator):
    """A whole -1 block is written as zeros even when A's rows there are not zero; -1 rows
    inside a group's block get that group's product (DeepGEMM's rule)."""
    a, b, m_indices, x, w = make_contiguous(generator, [100, 40], 32, 128, 128,
                                            zero_padding=False)
    m_indices = torch.cat([m_indices, torch.full((128,), -1, dtype=torch.int32)])
    x = torch.cat([x, torch.randn(128, 128, generator=generator)])
    a = pyfp8gemm.quantize(x, "1x128")
    d = nan_bf16(m_indices.numel(), 32)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
    assert torch.equal(d[256:], torch.zeros(128, 32, dtype=torch.bfloat16))
    ref_rows = reference_gemm((a.data[100:128], a.scale[100:128].contiguous()),
                              (b[0][0], b[1][0]))
    assert calc_diff(d[100:128].float(), ref_rows) < 1e-5   # -1 rows of group 0's block
    assert d[100:128].abs().sum() > 0


def test_contiguous_out_of_range_ids_are_padding(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [128, 128, 128], 16, 128, 128)
    m_indices[128:256] = 7          # >= G
    m_indices[256:384] = -5         # < -1
    d = nan_bf16(384, 16)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)
    assert torch.equal(d[128:], torch.zeros(256, 16, dtype=torch.bfloat16))
    ref = reference_m_grouped_contiguous(a, b, m_indices)
    assert calc_diff(d.float(), ref) < 1e-5


def test_contiguous_unaligned_segment_raises_on_cpu(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [100, 100], 16, 128, 128)
    m_indices[100:128] = 1          # group 1 starts at row 100: not a multiple of 128
    with pytest.raises(ValueError, match=r"m_indices: row 100 has group 1 .* starts with group 0"):
        m_grouped_fp8_gemm_nt_contiguous(a, b, nan_bf16(256, 16), m_indices)


def test_contiguous_bad_psum_raises_on_cpu(generator):
    a, b, _, _, _ = make_contiguous(generator, [100, 100], 16, 128, 128)
    with pytest.raises(ValueError, match=r"psum\[1\] = 90 is smaller than psum\[0\] = 100"):
        m_grouped_fp8_gemm_nt_contiguous(a, b, nan_bf16(256, 16),
                                         torch.tensor([100, 90], dtype=torch.int32),
                                         use_psum_layout=True)
    with pytest.raises(ValueError, match="past a's 256 rows"):
        m_grouped_fp8_gemm_nt_contiguous(a, b, nan_bf16(256, 16),
                                         torch.tensor([100, 300], dtype=torch.int32),
                                         use_psum_layout=True)


def test_contiguous_psum_rows_after_last_group(generator):
    """PSUM: a may have more rows than the groups; whole blocks past them are zeros."""
    a, b, _, _, _ = make_contiguous(generator, [128, 128, 128], 16, 128, 128)
    d = nan_bf16(384, 16)
    psum = torch.tensor([100, 228, 228], dtype=torch.int32)   # group 2 empty, rows 256.. free
    m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True)
    assert torch.equal(d[256:], torch.zeros(128, 16, dtype=torch.bfloat16))
    ref = reference_m_grouped_contiguous(a, b, psum, use_psum_layout=True)
    assert calc_diff(d.float(), ref) < 1e-5


def test_contiguous_expected_m_is_a_hint(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [60, 130], 16, 128, 128)
    d1, d2 = nan_bf16(384, 16), nan_bf16(384, 16)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d1, m_indices)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d2, m_indices, expected_m=3)
    assert torch.equal(d1, d2)


def test_contiguous_accepts_pairs_and_row_major_scales(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [128, 50], 24, 256, 128)
    d1, d2 = nan_bf16(256, 24), nan_bf16(256, 24)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d1, m_indices)
    m_grouped_fp8_gemm_nt_contiguous((a.data, a.scale.contiguous()), list(b), d2, m_indices)
    assert torch.equal(d1, d2)


def test_contiguous_empty(generator):
    b = quantize_grouped(torch.randn(2, 16, 128, generator=generator), "128x128")
    a = (torch.empty(0, 128, dtype=E4M3), torch.empty(0, 1))
    d = torch.empty(0, 16, dtype=torch.bfloat16)
    assert m_grouped_fp8_gemm_nt_contiguous(a, b, d, torch.empty(0, dtype=torch.int32)) is d


@pytest.mark.parametrize("m_max", [1, 13, 64])
def test_masked_cpu_matches_reference_and_leaves_rows_untouched(generator, m_max):
    groups, n = 4, 256
    a, b, x, w = make_masked(generator, groups, m_max, n, 272)
    masked_m = torch.randint(0, m_max + 1, (groups,), generator=generator, dtype=torch.int32)
    masked_m[0] = 0                           # an empty group
    masked_m[1] = m_max                       # a full one
    d = nan_bf16(groups, m_max, n)
    out = m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=max(1, m_max // 2))
    assert out is d
    ref = reference_m_grouped_masked(a, b, masked_m)
    written, expected, fp32 = [], [], []
    for g, rows in enumerate(masked_m.tolist()):
        assert not d[g, :rows].isnan().any()              # written
        assert d[g, rows:].isnan().all()                  # untouched
        written.append(d[g, :rows].float())
        expected.append(ref[g, :rows])
        fp32.append(x[g, :rows] @ w[g].t())
    written, expected, fp32 = torch.cat(written), torch.cat(expected), torch.cat(fp32)
    assert calc_diff(written, expected) < 1e-5
    # FP8's own error (~7e-4; a statistic over >= 256 elements here)
    assert calc_diff(written, fp32) < 1.5e-3


def test_masked_counts_are_clamped(generator):
    a, b, _, _ = make_masked(generator, 2, 8, 16, 128)
    d = nan_bf16(2, 8, 16)
    m_grouped_fp8_gemm_nt_masked(a, b, d, torch.tensor([-3, 100], dtype=torch.int32), 4)
    assert d[0].isnan().all()
    assert not d[1].isnan().any()
    ref = reference_m_grouped_masked(a, b, torch.tensor([0, 8], dtype=torch.int32))
    assert calc_diff(d[1].float(), ref[1]) < 1e-5


def test_masked_row_major_scales_converted(generator):
    a, b, _, _ = make_masked(generator, 2, 6, 16, 256)
    masked_m = torch.tensor([3, 6], dtype=torch.int32)
    d1, d2 = nan_bf16(2, 6, 16), nan_bf16(2, 6, 16)
    m_grouped_fp8_gemm_nt_masked(a, b, d1, masked_m, 4)
    m_grouped_fp8_gemm_nt_masked((a[0], a[1].contiguous()), b, d2, masked_m, 4)
    assert torch.equal(d1[0, :3], d2[0, :3]) and torch.equal(d1[1], d2[1])


def test_legacy_masked_alias():
    assert grouped.fp8_m_grouped_gemm_nt_masked is m_grouped_fp8_gemm_nt_masked


# ---------------------------------------------------------------------------------------------
# Errors: each names the argument and the rule
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def contiguous_args(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [100, 28], 16, 128, 128)
    return a, b, nan_bf16(256, 16), m_indices


def test_contiguous_errors(contiguous_args):
    a, b, d, m_indices = contiguous_args
    call = m_grouped_fp8_gemm_nt_contiguous
    with pytest.raises(TypeError, match=r"a: expected a \(data, scale\) pair"):
        call(a.data, b, d, m_indices)
    with pytest.raises(ValueError, match="a: expected an FP8Tensor with granularity '1x128'"):
        call(pyfp8gemm.quantize(torch.randn(256, 128), "128x128"), b, d, m_indices)
    with pytest.raises(TypeError, match=r"a\[0\] \(data\): expected dtype torch.float8_e4m3fn"):
        call((a.data.float(), a.scale), b, d, m_indices)
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape \(256, 1\)"):
        call((a.data, a.scale[:128]), b, d, m_indices)
    with pytest.raises(TypeError, match=r"b: expected a \(data, scale\) pair"):
        call(a, b[0], d, m_indices)
    with pytest.raises(ValueError, match=r"b\[0\] \(data\): expected a 3-D"):
        call(a, (b[0][0], b[1][0]), d, m_indices)
    with pytest.raises(ValueError, match=r"b: expected the experts' weights as a \(G, N, K\)"):
        call(a, pyfp8gemm.quantize(torch.randn(16, 128), "128x128"), d, m_indices)
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\): expected shape \(2, 1, 1\).*1x128"):
        call(a, (b[0], torch.ones(2, 16, 1)), d, m_indices)
    with pytest.raises(ValueError, match="K must match"):
        call(a, quantize_grouped(torch.randn(2, 16, 256), "128x128"), d, m_indices)
    with pytest.raises(TypeError, match="d: expected dtype torch.bfloat16"):
        call(a, b, d.float(), m_indices)
    with pytest.raises(ValueError, match=r"d: expected shape \(256, 16\)"):
        call(a, b, d[:128], m_indices)
    with pytest.raises(ValueError, match="d: expected a contiguous tensor"):
        call(a, b, torch.empty(16, 256, dtype=torch.bfloat16).t(), m_indices)
    with pytest.raises(TypeError, match="m_indices: expected dtype torch.int32"):
        call(a, b, d, m_indices.long())
    with pytest.raises(ValueError, match=r"m_indices: expected shape \(256,\)"):
        call(a, b, d, m_indices[:128])
    with pytest.raises(ValueError, match=r"m_indices: expected shape \(2,\).*use_psum_layout"):
        call(a, b, d, m_indices, use_psum_layout=True)
    with pytest.raises(ValueError, match="m_indices: expected a contiguous tensor"):
        call(a, b, d, torch.stack([m_indices, m_indices], 1)[:, 0])
    with pytest.raises(ValueError, match="expected_m: expected a positive int"):
        call(a, b, d, m_indices, expected_m=0)
    with pytest.raises(TypeError, match="expected_m: .*do not pass a tensor"):
        call(a, b, d, m_indices, expected_m=torch.tensor(3))
    with pytest.raises(TypeError, match="use_psum_layout: expected a bool"):
        call(a, b, d, m_indices, use_psum_layout=1)


def test_contiguous_alignment_rules(generator):
    a = pyfp8gemm.quantize(torch.randn(128, 136, generator=generator), "1x128")
    b = quantize_grouped(torch.randn(2, 16, 136, generator=generator), "128x128")
    m_indices = torch.zeros(128, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"K \(= a.data.shape\[1\]\): expected a positive "
                                         r"multiple of 16"):
        m_grouped_fp8_gemm_nt_contiguous(a, b, nan_bf16(128, 16), m_indices)
    a = pyfp8gemm.quantize(torch.randn(128, 128, generator=generator), "1x128")
    b = quantize_grouped(torch.randn(2, 12, 128, generator=generator), "128x128")
    with pytest.raises(ValueError, match=r"N \(= b\[0\].shape\[1\]\): expected a positive "
                                         r"multiple of 8"):
        m_grouped_fp8_gemm_nt_contiguous(a, b, nan_bf16(128, 12), m_indices)


def test_masked_errors(generator):
    a, b, _, _ = make_masked(generator, 2, 8, 16, 128)
    d = nan_bf16(2, 8, 16)
    masked_m = torch.tensor([3, 5], dtype=torch.int32)
    call = m_grouped_fp8_gemm_nt_masked
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected a 3-D"):
        call((a[0][0], a[1][0]), b, d, masked_m, 4)
    with pytest.raises(ValueError, match="a: expected a 3-D operand, got an FP8Tensor"):
        call(pyfp8gemm.quantize(torch.randn(8, 128), "1x128"), b, d, masked_m, 4)
    with pytest.raises(ValueError, match="the group count G must match"):
        call(a, quantize_grouped(torch.randn(3, 16, 128), "128x128"), d, masked_m, 4)
    with pytest.raises(ValueError, match=r"d: expected shape \(2, 8, 16\)"):
        call(a, b, nan_bf16(2, 7, 16), masked_m, 4)
    with pytest.raises(TypeError, match="masked_m: expected dtype torch.int32"):
        call(a, b, d, masked_m.long(), 4)
    with pytest.raises(ValueError, match=r"masked_m: expected shape \(2,\)"):
        call(a, b, d, torch.tensor([1, 2, 3], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match=r"masked_m: expected a 1-D"):
        call(a, b, d, masked_m.view(1, 2), 4)
    with pytest.raises(ValueError, match="expected_m: expected a positive int"):
        call(a, b, d, masked_m, -1)
    with pytest.raises(TypeError, match="expected_m"):
        call(a, b, d, masked_m, None)
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape \(2, 8, 1\)"):
        call((a[0], a[1][:, :4]), b, d, masked_m, 4)


def test_b_must_be_k_major(generator):
    a, b, _, _ = make_masked(generator, 2, 8, 16, 128)
    b_mn_major = (b[0].transpose(1, 2).contiguous().transpose(1, 2), b[1])
    with pytest.raises(ValueError, match=r"b\[0\] \(data\): expected a contiguous tensor.*K-major"):
        m_grouped_fp8_gemm_nt_masked(a, b_mn_major, nan_bf16(2, 8, 16),
                                     torch.tensor([1, 1], dtype=torch.int32), 4)


def test_devices_must_match_and_not_meta(generator):
    a, b, _, _ = make_masked(generator, 2, 8, 16, 128)
    d = nan_bf16(2, 8, 16)
    with pytest.raises(ValueError, match="masked_m: expected the same device"):
        m_grouped_fp8_gemm_nt_masked(a, b, d, torch.ones(2, dtype=torch.int32, device="meta"), 4)
    meta = lambda t: torch.empty_like(t, device="meta")  # noqa: E731
    with pytest.raises(ValueError, match="expected CUDA tensors .* or CPU tensors"):
        m_grouped_fp8_gemm_nt_masked((meta(a[0]), meta(a[1])), (meta(b[0]), meta(b[1])),
                                     meta(d), torch.ones(2, dtype=torch.int32, device="meta"), 4)


def test_int32_size_checks():
    """Sizes the kernel takes as int32 are refused before anything is allocated (meta tensors:
    no memory)."""
    def t(*shape, dtype=E4M3):
        return torch.empty(shape, dtype=dtype, device="meta")

    big = 2**31
    with pytest.raises(ValueError, match=r"M_sum \(a's rows\) = 2147483648 is too large"):
        m_grouped_fp8_gemm_nt_contiguous(
            (t(big, 16), t(big, 1, dtype=torch.float32)),
            (t(1, 16, 16), t(1, 1, 1, dtype=torch.float32)),
            t(big, 16, dtype=torch.bfloat16), t(big, dtype=torch.int32))
    groups, n = 2**12, 2**19
    with pytest.raises(ValueError, match=r"G \* N \(b's rows\) = 2147483648 is too large"):
        m_grouped_fp8_gemm_nt_contiguous(
            (t(128, 16), t(128, 1, dtype=torch.float32)),
            (t(groups, n, 16), t(groups, n // 128, 1, dtype=torch.float32)),
            t(128, n, dtype=torch.bfloat16), t(128, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"G \* M_max \(a's rows\) = 2147483648 is too large"):
        m_grouped_fp8_gemm_nt_masked(
            (t(2, 2**30, 16), t(2, 2**30, 1, dtype=torch.float32)),
            (t(2, 16, 16), t(2, 1, 1, dtype=torch.float32)),
            t(2, 2**30, 16, dtype=torch.bfloat16), t(2, dtype=torch.int32), 1)


# ---------------------------------------------------------------------------------------------
# torch custom ops
# ---------------------------------------------------------------------------------------------


def test_custom_ops_match_functions(generator):
    a, b, m_indices, _, _ = make_contiguous(generator, [40, 128], 16, 128, 128)
    d1, d2 = nan_bf16(256, 16), nan_bf16(256, 16)
    m_grouped_fp8_gemm_nt_contiguous(a, b, d1, m_indices)
    torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(a.data, a.scale, b[0], b[1], d2,
                                                         m_indices, False, None)
    assert torch.equal(d1, d2)

    am, bm, _, _ = make_masked(generator, 2, 8, 16, 128)
    masked_m = torch.tensor([2, 8], dtype=torch.int32)
    e1, e2 = nan_bf16(2, 8, 16), nan_bf16(2, 8, 16)
    m_grouped_fp8_gemm_nt_masked(am, bm, e1, masked_m, 4)
    torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_masked(am[0], am[1], bm[0], bm[1], e2, masked_m, 4)
    assert torch.equal(e1.nan_to_num(7.0), e2.nan_to_num(7.0))


def test_custom_ops_fake_impl(generator):
    """Under FakeTensorMode (what torch.compile traces with) the ops run their fake impl."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = (torch.empty(256, 128, dtype=E4M3), torch.empty(256, 1))
        b = (torch.empty(2, 16, 128, dtype=E4M3), torch.empty(2, 1, 1))
        d = torch.empty(256, 16, dtype=torch.bfloat16)
        result = torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(
            a[0], a[1], b[0], b[1], d, torch.empty(256, dtype=torch.int32), False, None)
        assert result is None
        torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_masked(
            torch.empty(2, 8, 128, dtype=E4M3), torch.empty(2, 8, 1), b[0], b[1],
            torch.empty(2, 8, 16, dtype=torch.bfloat16), torch.empty(2, dtype=torch.int32), 4)


def test_custom_op_schema_mutates_d():
    schema = torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous.default._schema
    mutated = [arg.name for arg in schema.arguments if arg.alias_info and arg.alias_info.is_write]
    assert mutated == ["d"]
    schema = torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_masked.default._schema
    mutated = [arg.name for arg in schema.arguments if arg.alias_info and arg.alias_info.is_write]
    assert mutated == ["d"]


def test_torch_compile_fullgraph_traces_both_gemms(generator):
    """torch.compile(fullgraph=True) traces the public functions without a graph break (the
    custom ops are opaque nodes that mutate d) and matches eager."""
    am, bm, _, _ = make_masked(generator, 2, 8, 16, 128)
    masked_m = torch.tensor([3, 8], dtype=torch.int32)

    def masked(a0, a1, b0, b1, counts):
        d = torch.zeros(2, 8, 16, dtype=torch.bfloat16)
        m_grouped_fp8_gemm_nt_masked((a0, a1), (b0, b1), d, counts, 4)
        return d.float() * 2

    compiled = torch.compile(masked, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(*am, *bm, masked_m), masked(*am, *bm, masked_m))

    a, b, m_indices, _, _ = make_contiguous(generator, [128, 60], 16, 128, 128)

    def contiguous(a0, a1, b0, b1, ids):
        d = torch.empty(256, 16, dtype=torch.bfloat16)
        m_grouped_fp8_gemm_nt_contiguous((a0, a1), (b0, b1), d, ids)
        return d

    compiled = torch.compile(contiguous, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(a.data, a.scale, *b, m_indices),
                       contiguous(a.data, a.scale, *b, m_indices))


# ---------------------------------------------------------------------------------------------
# bench/grouped.py: the cases and the report (pure Python)
# ---------------------------------------------------------------------------------------------


def test_bench_grouped_cases_and_report():
    from bench import grouped as bench_grouped

    contiguous = bench_grouped.make_cases("m-grouped-contiguous", seed=3)
    masked = bench_grouped.make_cases("m-grouped-masked", seed=3)
    assert len(contiguous) == 8 and len(masked) == 24
    assert contiguous == bench_grouped.make_cases("m-grouped-contiguous", seed=3)
    half_empty = [case for case in masked if 0 in case.group_m]
    assert len(half_empty) == 8       # the last 8: G=32 m~192 and G=6 m~1024, odd groups empty
    for case in half_empty:
        assert case.group_m[1::2] == (0,) * (case.groups // 2)
        assert f"({case.groups // 2} empty)" in case.label
    for case in contiguous + masked:
        assert len(case.group_m) == case.groups
        present = case.group_m[::2] if case in half_empty else case.group_m
        assert all(0.7 * case.expected_m - 1 <= m <= 1.3 * case.expected_m for m in present)
        assert case.flops() == 2 * sum(case.group_m) * case.n * case.k
    case = masked[15]                  # G=6 m~20: small enough for GB/s
    assert case.m_max % 128 == 0 and case.m_max > max(case.group_m)
    kb, nb = case.k // 128, case.n // 128
    rows = sum(case.group_m)
    assert case.bytes() == (rows * case.k + case.groups * case.n * case.k + 2 * rows * case.n
                            + 4 * rows * kb + 4 * case.groups * nb * kb)
    assert contiguous[0].m_sum % 128 == 0 and contiguous[0].m_sum >= sum(contiguous[0].group_m)
    with pytest.raises(ValueError, match="kind: expected one of"):
        bench_grouped.make_cases("dense")
    with pytest.raises(ValueError, match="unknown grouped provider"):
        bench_grouped.select_providers(["cublas-blockwise"])

    Cell, CaseResult = bench_grouped.Cell, bench_grouped.CaseResult
    result = CaseResult(case, {"pyfp8gemm": Cell("pyfp8gemm", 0.5, 7e-4),
                               "cublas-loop": Cell("cublas-loop", 1.0, 7e-4),
                               "deepgemm": Cell("deepgemm", note="import deep_gemm failed")})
    text = bench_grouped.format_report([result], ["pyfp8gemm", "deepgemm", "cublas-loop"])
    assert "x2.00" in text and "GB/s" in text and "import deep_gemm failed" in text
    assert "vs DeepGEMM x" not in text.splitlines()[2]     # no DeepGEMM time: no ratio to it
    result.cells["deepgemm"] = Cell("deepgemm", 0.6, 7e-4)
    assert "vs DeepGEMM x1.20" in bench_grouped.format_report(
        [result], ["pyfp8gemm", "deepgemm", "cublas-loop"])
    tflops = case.flops() / 0.5 / 1e9
    assert f"{tflops:.0f}TF" in text
    assert bench_grouped.results_to_json([result])[0]["cells"]["pyfp8gemm"]["time_ms"] == 0.5


def test_bench_cli_grouped_kind_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this checks the no-GPU exit")
    from bench.cli import main

    assert main(["--kind", "m-grouped-masked"]) == 2


def test_opcheck_grouped_ops(fp8_allclose, generator):
    """torch.library.opcheck of both m-grouped ops (schema, fake tensor, autograd
    registration, AOT dispatch) on CPU tensors."""
    a, b, m_indices, _, _ = make_contiguous(generator, [128, 60], 16, 128, 128)
    d = torch.empty(a.data.shape[0], 16, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous,
                          (a.data, a.scale, *b, d, m_indices, False, None))
    am, bm, _, _ = make_masked(generator, 2, 8, 16, 128)
    d = torch.zeros(2, 8, 16, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_masked,
                          (*am, *bm, d, torch.tensor([3, 8], dtype=torch.int32), 4))
