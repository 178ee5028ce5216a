"""The routing-layout helpers (pyfp8gemm/moe.py) against plain Python loops."""

from __future__ import annotations

import pytest
import torch

import pyfp8gemm
from pyfp8gemm import moe
from pyfp8gemm.host import grouped
from pyfp8gemm.testing import calc_diff, reference_m_grouped_contiguous


def _align(x, a):
    return (x + a - 1) // a * a


def random_routing(generator, tokens, top_k, experts, *, invalid=True):
    """Distinct experts per token (as a router's topk gives), some slots -1 or out of range."""
    ids = torch.rand(tokens, experts, generator=generator).argsort(dim=1)[:, :top_k]
    if invalid and tokens:
        mask = torch.rand(tokens, top_k, generator=generator) < 0.15
        ids[mask] = -1
        ids[0, 0] = experts + 3            # out of range: not routed either
    weights = torch.rand(tokens, top_k, generator=generator)
    return ids.to(torch.int32), weights


def loop_contiguous(ids, experts, alignment):
    tokens, top_k = ids.shape
    pairs = [[] for _ in range(experts)]
    for t in range(tokens):
        for j in range(top_k):
            e = int(ids[t, j])
            if 0 <= e < experts:
                pairs[e].append((t, j))
    m_indices, token_of_row = [], []
    row_of_slot = [[-1] * top_k for _ in range(tokens)]
    psum = []
    for e in range(experts):
        for i, (t, j) in enumerate(pairs[e]):
            row_of_slot[t][j] = len(m_indices) + i
        m_indices += [e] * len(pairs[e])
        token_of_row += [t for t, _ in pairs[e]]
        psum.append(len(m_indices))
        pad = _align(len(pairs[e]), alignment) - len(pairs[e])
        m_indices += [-1] * pad
        token_of_row += [-1] * pad
    return m_indices, token_of_row, row_of_slot, psum, [len(p) for p in pairs]


def loop_masked(ids, experts, m_max):
    tokens, top_k = ids.shape
    token_of_row = [[-1] * m_max for _ in range(experts)]
    row_of_slot = [[-1] * top_k for _ in range(tokens)]
    counts = [0] * experts
    for t in range(tokens):
        for j in range(top_k):
            e = int(ids[t, j])
            if 0 <= e < experts:
                if counts[e] < m_max:
                    token_of_row[e][counts[e]] = t
                    row_of_slot[t][j] = e * m_max + counts[e]
                counts[e] += 1
    return token_of_row, row_of_slot, counts


@pytest.mark.parametrize("alignment", [64, 128])
@pytest.mark.parametrize("tokens,top_k,experts", [(50, 2, 4), (300, 4, 8), (1, 1, 3), (0, 2, 4)])
def test_contiguous_layout_matches_loop(generator, alignment, tokens, top_k, experts):
    ids, _ = random_routing(generator, tokens, top_k, experts)
    layout = moe.contiguous_layout(ids, experts, alignment=alignment)
    m_indices, token_of_row, row_of_slot, psum, counts = loop_contiguous(ids, experts, alignment)
    bound = (tokens * top_k + experts * (alignment - 1)) // alignment * alignment
    assert layout.num_rows == bound >= len(m_indices)
    assert layout.num_rows % alignment == 0
    extra = layout.num_rows - len(m_indices)
    assert layout.m_indices.dtype == torch.int32
    assert layout.m_indices.tolist() == m_indices + [-1] * extra
    assert layout.token_of_row.tolist() == token_of_row + [-1] * extra
    assert layout.row_of_slot.tolist() == row_of_slot
    assert layout.psum.tolist() == psum
    assert layout.tokens_per_expert.tolist() == counts
    # the layout is one the GEMM accepts (and validate_contiguous_layout agrees)
    moe.validate_contiguous_layout(layout.m_indices, experts, alignment)
    exact = moe.contiguous_layout(ids, experts, alignment=alignment, exact_size=True)
    assert exact.num_rows == len(m_indices)
    assert exact.m_indices.tolist() == m_indices


def test_contiguous_layout_default_alignment_follows_setting(generator):
    ids, _ = random_routing(generator, 20, 2, 4, invalid=False)
    saved = grouped.get_mk_alignment_for_contiguous_layout()
    try:
        grouped.set_mk_alignment_for_contiguous_layout(64)
        assert moe.contiguous_layout(ids, 4).alignment == 64
    finally:
        grouped.set_mk_alignment_for_contiguous_layout(saved)
    assert moe.contiguous_layout(ids, 4).alignment == saved


@pytest.mark.parametrize("m_max", [1, 5, 64])
def test_masked_layout_matches_loop_and_counts_drops(generator, m_max):
    experts = 4
    ids, _ = random_routing(generator, 40, 2, experts)
    layout = moe.masked_layout(ids, experts, m_max)
    token_of_row, row_of_slot, counts = loop_masked(ids, experts, m_max)
    assert layout.token_of_row.tolist() == token_of_row
    assert layout.row_of_slot.tolist() == row_of_slot
    assert layout.tokens_per_expert.tolist() == counts
    assert layout.masked_m.dtype == torch.int32
    assert layout.masked_m.tolist() == [min(c, m_max) for c in counts]
    assert int(layout.num_dropped) == sum(max(c - m_max, 0) for c in counts)
    assert 1 <= layout.expected_m <= m_max


def test_masked_layout_overflow_error(generator):
    ids = torch.zeros(10, 1, dtype=torch.int64)          # every token to expert 0
    with pytest.raises(ValueError, match="max_tokens_per_expert: 6 .* pairs do not fit"):
        moe.masked_layout(ids, 2, 4, on_overflow="error")
    layout = moe.masked_layout(ids, 2, 16, on_overflow="error")
    assert layout.masked_m.tolist() == [10, 0] and int(layout.num_dropped) == 0


def test_permute_and_combine(generator):
    tokens, top_k, experts, hidden = 30, 3, 5, 24
    ids, weights = random_routing(generator, tokens, top_k, experts)
    x = torch.randn(tokens, hidden, generator=generator)
    for layout in (moe.contiguous_layout(ids, experts, alignment=64),
                   moe.masked_layout(ids, experts, 4)):
        permuted = moe.permute(x, layout)
        rows = layout.token_of_row
        assert permuted.shape == tuple(rows.shape) + (hidden,)
        flat_rows, flat = rows.reshape(-1), permuted.reshape(-1, hidden)
        for r in range(flat_rows.numel()):
            t = int(flat_rows[r])
            assert torch.equal(flat[r], x[t] if t >= 0 else torch.zeros(hidden))
        # an "expert" that doubles its input, then the weighted sum over the routed slots
        y = permuted * 2
        if isinstance(layout, moe.MaskedLayout):
            y = y.clone()
            y.view(-1, hidden)[flat_rows < 0] = float("nan")   # unused rows never leak in
        out = moe.combine(y, layout, weights)
        expected = torch.zeros(tokens, hidden)
        for t in range(tokens):
            for j in range(top_k):
                if int(layout.row_of_slot[t, j]) >= 0:
                    expected[t] += weights[t, j] * 2 * x[t]
        torch.testing.assert_close(out, expected)


def test_permute_fp8_and_quantized(generator):
    tokens, experts = 20, 3
    ids, _ = random_routing(generator, tokens, 2, experts, invalid=False)
    x = torch.randn(tokens, 256, generator=generator)
    q = pyfp8gemm.quantize(x, "1x128")
    layout = moe.contiguous_layout(ids, experts, alignment=64)
    data, scale = moe.permute_quantized(q, layout)
    # the same as quantizing the permuted rows, bit for bit (padding rows: zero data, zero scale)
    direct = pyfp8gemm.quantize(moe.permute(x, layout), "1x128")
    real = layout.token_of_row >= 0
    assert torch.equal(data.view(torch.uint8), direct.data.view(torch.uint8))
    assert torch.equal(scale[real], direct.scale[real])
    assert scale[~real].abs().sum() == 0
    assert scale.stride() == (1, _align(layout.num_rows, 4))
    masked = moe.masked_layout(ids, experts, 8)
    data, scale = moe.permute_quantized((q.data, q.scale), masked)
    assert data.shape == (experts, 8, 256) and scale.shape == (experts, 8, 2)
    assert scale.stride() == (2 * 8, 1, 8)


def test_layouts_feed_the_grouped_gemms(generator):
    """Routed tokens through both layouts and both GEMMs (CPU backend) give the same per-token
    result as the float64 reference of each expert."""
    tokens, top_k, experts, hidden, n = 24, 2, 3, 128, 32
    ids, weights = random_routing(generator, tokens, top_k, experts)
    x = torch.randn(tokens, hidden, generator=generator)
    w = grouped.quantize_grouped(torch.randn(experts, n, hidden, generator=generator), "128x128")
    q = pyfp8gemm.quantize(x, "1x128")

    layout = moe.contiguous_layout(ids, experts, alignment=64)
    d = torch.full((layout.num_rows, n), float("nan"), dtype=torch.bfloat16)
    a = moe.permute_quantized(q, layout)
    saved = grouped.get_mk_alignment_for_contiguous_layout()
    grouped.set_mk_alignment_for_contiguous_layout(64)
    try:
        grouped.m_grouped_fp8_gemm_nt_contiguous(a, w, d, layout.m_indices,
                                                 expected_m=layout.expected_m)
        ref = reference_m_grouped_contiguous(a, w, layout.m_indices)
        d_psum = torch.full_like(d, float("nan"))
        grouped.m_grouped_fp8_gemm_nt_contiguous(a, w, d_psum, layout.psum, use_psum_layout=True)
    finally:
        grouped.set_mk_alignment_for_contiguous_layout(saved)
    assert calc_diff(d.float(), ref) < 1e-5
    assert torch.equal(d, d_psum)
    out_contiguous = moe.combine(d, layout, weights, out_dtype=torch.float32)

    masked = moe.masked_layout(ids, experts, tokens)
    dm = torch.full((experts, tokens, n), float("nan"), dtype=torch.bfloat16)
    grouped.m_grouped_fp8_gemm_nt_masked(moe.permute_quantized(q, masked), w, dm,
                                         masked.masked_m, masked.expected_m)
    out_masked = moe.combine(dm, masked, weights, out_dtype=torch.float32)
    assert torch.equal(out_contiguous, out_masked)
    assert not out_masked.isnan().any()


def test_helper_errors(generator):
    ids, weights = random_routing(generator, 4, 2, 3)
    with pytest.raises(TypeError, match="topk_ids: expected dtype"):
        moe.contiguous_layout(ids.float(), 3)
    with pytest.raises(ValueError, match="topk_ids: expected a 2-D"):
        moe.contiguous_layout(ids.reshape(-1), 3)
    with pytest.raises(ValueError, match="num_experts: expected a positive int"):
        moe.contiguous_layout(ids, 0)
    with pytest.raises(ValueError, match="alignment: expected one of"):
        moe.contiguous_layout(ids, 3, alignment=32)
    with pytest.raises(ValueError, match="max_tokens_per_expert: expected a positive int"):
        moe.masked_layout(ids, 3, 0)
    with pytest.raises(ValueError, match="on_overflow"):
        moe.masked_layout(ids, 3, 4, on_overflow="clip")
    layout = moe.contiguous_layout(ids, 3, alignment=64)
    with pytest.raises(ValueError, match="x: expected 4 rows"):
        moe.permute(torch.randn(5, 8), layout)
    with pytest.raises(TypeError, match="layout: expected a ContiguousLayout or MaskedLayout"):
        moe.permute(torch.randn(4, 8), ids)
    with pytest.raises(ValueError, match=r"topk_weights: expected shape \(4, 2\)"):
        moe.combine(torch.randn(layout.num_rows, 8), layout, weights[:, :1])
    with pytest.raises(ValueError, match=r"y: expected shape"):
        moe.combine(torch.randn(3, 8), layout, weights)
    bad = torch.zeros(128, dtype=torch.int32)
    bad[5] = 1
    with pytest.raises(ValueError, match="m_indices: row 5 has group 1"):
        moe.validate_contiguous_layout(bad, 2, 128)
    bad[5] = 9
    with pytest.raises(ValueError, match=r"row 5 holds group 9, outside \[-1, 2\)"):
        moe.validate_contiguous_layout(bad, 2, 128)
