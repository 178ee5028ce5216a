"""The CPU reference backend (pyfp8gemm.host.cpu_backend.blockwise_gemm) against float64
references: per-block promotion, both B granularities, partial last K block, chunking, errors."""

from __future__ import annotations

import pytest
import torch

from pyfp8gemm.host import cpu_backend
from pyfp8gemm.host.cpu_backend import blockwise_gemm
from pyfp8gemm.testing import calc_diff

E4M3 = torch.float8_e4m3fn


def _ceil(a, b):
    return (a + b - 1) // b


def _operands(generator, m, n, k, granularity):
    a = (torch.randn(m, k, generator=generator) * 4).to(E4M3)
    b = (torch.randn(n, k, generator=generator) * 4).to(E4M3)
    kb = _ceil(k, 128)
    a_scale = torch.rand(m, kb, generator=generator) + 0.25
    rows = n if granularity == "1x128" else _ceil(n, 128)
    b_scale = torch.rand(rows, kb, generator=generator) + 0.25
    return a, a_scale, b, b_scale


def _reference(a, a_scale, b, b_scale, granularity):
    k = a.shape[1]
    n = b.shape[0]
    a64 = a.double() * a_scale.double().repeat_interleave(128, 1)[:, :k]
    sb = b_scale.double()
    if granularity == "128x128":
        sb = sb.repeat_interleave(128, 0)[:n]
    b64 = b.double() * sb.repeat_interleave(128, 1)[:, :k]
    return a64 @ b64.t()


@pytest.mark.parametrize("granularity", ["128x128", "1x128"])
@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (37, 200, 384), (130, 136, 300), (64, 256, 1000)])
def test_matches_float64_reference(generator, granularity, m, n, k):
    a, sa, b, sb = _operands(generator, m, n, k, granularity)
    out = blockwise_gemm(a, sa, b, sb, b_granularity=granularity)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    ref = _reference(a, sa, b, sb, granularity)
    assert calc_diff(out, ref) < 1e-10
    # fp32 accumulation only: the error is that of a few fp32 roundings per block.
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6


def test_scales_applied_per_block_not_globally(generator):
    """Each K block's partial product gets its own scales: change one block's scale and only
    that block's contribution changes (a kernel that scaled after summing all of K would not
    match this)."""
    m, n, k = 8, 128, 256
    a, sa, b, sb = _operands(generator, m, n, k, "128x128")
    base = blockwise_gemm(a, sa, b, sb, b_granularity="128x128")
    sa2 = sa.clone()
    sa2[:, 1] *= 2
    doubled = blockwise_gemm(a, sa2, b, sb, b_granularity="128x128")
    second_block = blockwise_gemm(a[:, 128:].contiguous(), sa[:, 1:].contiguous(),
                                  b[:, 128:].contiguous(), sb[:, 1:].contiguous(),
                                  b_granularity="128x128")
    torch.testing.assert_close(doubled, base + second_block, rtol=1e-5, atol=1e-3)


def test_any_scale_strides(generator):
    m, n, k = 33, 64, 512
    a, sa, b, sb = _operands(generator, m, n, k, "1x128")
    mn_major = sa.t().contiguous().t()  # strides (1, M)
    assert mn_major.stride() != sa.stride()
    torch.testing.assert_close(blockwise_gemm(a, mn_major, b, sb.t().contiguous().t(),
                                              b_granularity="1x128"),
                               blockwise_gemm(a, sa, b, sb, b_granularity="1x128"))


def test_chunking_gives_the_same_result(generator, monkeypatch):
    m, n, k = 16, 64, 1280
    a, sa, b, sb = _operands(generator, m, n, k, "128x128")
    whole = blockwise_gemm(a, sa, b, sb, b_granularity="128x128")
    monkeypatch.setattr(cpu_backend, "CHUNK_ELEMENTS", m * n * 3)  # 3 blocks per chunk
    chunked = blockwise_gemm(a, sa, b, sb, b_granularity="128x128")
    assert torch.equal(whole, chunked)


def test_empty_sizes(generator):
    a = torch.empty(0, 128, dtype=E4M3)
    b = (torch.randn(16, 128, generator=generator)).to(E4M3)
    out = blockwise_gemm(a, torch.empty(0, 1), b, torch.rand(1, 1, generator=generator),
                         b_granularity="128x128")
    assert out.shape == (0, 16)


@pytest.mark.parametrize("bad,match", [
    (dict(b_granularity="per_tensor"), "b_granularity"),
    (dict(a_scale_shape=(8, 2)), "a_scale"),
    (dict(b_scale_shape=(8, 1)), "b_scale"),
    (dict(b_k=144), "b_data"),
])
def test_bad_input_is_refused(generator, bad, match):
    a = torch.randn(8, 128, generator=generator).to(E4M3)
    b = torch.randn(16, bad.get("b_k", 128), generator=generator).to(E4M3)
    sa = torch.rand(bad.get("a_scale_shape", (8, 1)), generator=generator)
    sb = torch.rand(bad.get("b_scale_shape", (1, 1)), generator=generator)
    with pytest.raises(ValueError, match=match):
        blockwise_gemm(a, sa, b, sb, b_granularity=bad.get("b_granularity", "128x128"))
