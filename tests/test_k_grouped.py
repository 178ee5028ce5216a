"""k_grouped_fp8_gemm_nt_contiguous (MoE weight gradients, DeepGEMM's contiguous k-grouped
layout) on the CPU: numbers vs the float64 reference, K = 0 groups, the checks, and what the
kernel launcher receives."""

from __future__ import annotations

import pytest
import torch

import pyfp8gemm
from pyfp8gemm.host import device_info, launchers
from pyfp8gemm.host import gemm_1d1d as gemm_1d1d_module
from pyfp8gemm.host.gemm_1d1d import k_grouped_fp8_gemm_nt_contiguous
from pyfp8gemm.host.quantize_training import quantize_transposed
from pyfp8gemm.testing import calc_diff, reference_k_grouped

E4M3 = torch.float8_e4m3fn


def k_grouped_inputs(generator, ks, m, n):
    """DeepGEMM's test inputs: bf16 token-major slices a (sum k, M), b (sum k, N); each group
    quantized per channel per 128 tokens and laid out K-major (M, k_g), concatenated.
    Returns (a, b, plain) with plain[g] = a_g^T @ b_g of the unquantized slices."""
    total = sum(ks)
    a_tokens = torch.randn(total, m, generator=generator, dtype=torch.bfloat16)
    b_tokens = torch.randn(total, n, generator=generator, dtype=torch.bfloat16)
    a_parts, a_scales, b_parts, b_scales, plain = [], [], [], [], []
    start = 0
    for k in ks:
        a_g, b_g = a_tokens[start:start + k], b_tokens[start:start + k]
        qa, qb = quantize_transposed(a_g), quantize_transposed(b_g)
        assert qa.shape == (m, k)
        a_parts.append(qa.data.flatten())
        b_parts.append(qb.data.flatten())
        a_scales.append(qa.scale)
        b_scales.append(qb.scale)
        plain.append(a_g.float().t() @ b_g.float())
        start += k
    a = (torch.cat(a_parts), pyfp8gemm.to_mn_major_tma_aligned(torch.cat(a_scales, dim=1)))
    b = (torch.cat(b_parts), pyfp8gemm.to_mn_major_tma_aligned(torch.cat(b_scales, dim=1)))
    return a, b, torch.stack(plain)


@pytest.mark.parametrize("ks,m,n", [([128, 256, 384], 40, 24), ([256, 0, 128, 0], 16, 36),
                                    ([0], 8, 8), ([128], 1, 4)])
@pytest.mark.parametrize("c_mode", ["none", "d", "separate"])
def test_matches_reference(generator, ks, m, n, c_mode):
    a, b, plain = k_grouped_inputs(generator, ks, m, n)
    g = len(ks)
    d = torch.randn(g, m, n, generator=generator) * 32
    c = {"none": None, "d": d, "separate": torch.randn(g, m, n, generator=generator) * 32}[c_mode]
    c_before = None if c is None else c.clone()
    ks_tensor = torch.tensor(ks, dtype=torch.int32)
    assert k_grouped_fp8_gemm_nt_contiguous(a, b, d, ks, ks_tensor, c) is d
    assert calc_diff(d, reference_k_grouped(a, b, ks, c_before)) < 1e-10
    base = torch.zeros_like(d) if c_before is None else c_before
    if (d - base).abs().sum() > 0 and d.numel() >= 256:
        # vs the unquantized product: the quantization error is statistical (calc_diff ~7e-4
        # in expectation), so only where enough elements average it (a 1x4 output drew 2e-3)
        assert calc_diff(d - base, plain) < 1e-3
    for group, k in enumerate(ks):
        if k == 0:   # an empty group: d[g] = c[g] exactly (or zeros)
            assert torch.equal(d[group], base[group])


def test_public_name(generator):
    a, b, _ = k_grouped_inputs(generator, [128, 128], 8, 8)
    d = torch.empty(2, 8, 8)
    pyfp8gemm.k_grouped_fp8_gemm_nt_contiguous(a, b, d, [128, 128],
                                               torch.tensor([128, 128], dtype=torch.int32))
    assert calc_diff(d, reference_k_grouped(a, b, [128, 128])) < 1e-10


def test_errors(generator):
    ks = [128, 256]
    a, b, _ = k_grouped_inputs(generator, ks, 16, 24)
    d = torch.empty(2, 16, 24)
    kt = torch.tensor(ks, dtype=torch.int32)
    call = k_grouped_fp8_gemm_nt_contiguous
    with pytest.raises(ValueError, match=r"ks\[1\]: expected a non-negative multiple of 128"):
        call(a, b, d, [128, 200], torch.tensor([128, 200], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"ks\[0\]: expected a non-negative multiple of 128"):
        call(a, b, d, [-128, 512], kt)
    with pytest.raises(ValueError, match=r"ks: expected 2 entries"):
        call(a, b, d, [384], kt)
    with pytest.raises(TypeError, match=r"ks: expected a list of Python ints"):
        call(a, b, d, kt, kt)
    with pytest.raises(TypeError, match=r"ks_tensor: expected dtype torch.int32"):
        call(a, b, d, ks, kt.long())
    with pytest.raises(ValueError, match=r"ks_tensor: expected the values of ks"):
        call(a, b, d, ks, torch.tensor([256, 128], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"ks_tensor: expected shape \(2,\)"):
        call(a, b, d, ks, torch.tensor([128, 256, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected shape \(6144,\)"):
        call((a[0][:-16], a[1]), b, d, ks, kt)
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\): expected shape \(24, 3\)"):
        call(a, (b[0], b[1][:, :2]), d, ks, kt)
    with pytest.raises(TypeError, match=r"d: expected dtype torch.float32"):
        call(a, b, d.bfloat16(), ks, kt)
    with pytest.raises(ValueError, match=r"d: expected a 3-D tensor"):
        call(a, b, d[0], ks, kt)
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 16, 24\)"):
        call(a, b, d, ks, kt, torch.empty(2, 16, 20))
    with pytest.raises(TypeError, match=r"a\[0\] \(data\): expected dtype torch.float8_e4m3fn"):
        call((a[0].view(torch.uint8), a[1]), b, d, ks, kt)
    with pytest.raises(TypeError, match=r"a: expected a \(data, scale\) pair"):
        call(a[0], b, d, ks, kt)


def test_n_alignment(generator):
    ks = [128]
    a, b, _ = k_grouped_inputs(generator, ks, 8, 6)
    with pytest.raises(ValueError, match=r"N \(= d.shape\[2\]\).*multiple of 4"):
        k_grouped_fp8_gemm_nt_contiguous(a, b, torch.empty(1, 8, 6), ks,
                                         torch.tensor(ks, dtype=torch.int32))


@pytest.fixture
def fake_kernel(monkeypatch):
    calls = []

    def fake_k_grouped(a_data, a_scale, b_data, b_scale, d, c, ks, ks_tensor):
        calls.append(dict(a_data=a_data, a_scale=a_scale, b_data=b_data, b_scale=b_scale, d=d,
                          c=c, ks=ks, ks_tensor=ks_tensor))
        d.copy_(reference_k_grouped((a_data, a_scale), (b_data, b_scale), ks, c))

    monkeypatch.setattr(gemm_1d1d_module, "_runs_on_cpu_backend", lambda device: False)
    monkeypatch.setattr(device_info, "require_hopper", lambda device, argname: None)
    monkeypatch.setattr(launchers, "k_grouped", fake_k_grouped)
    return calls


def test_launcher_gets_kernel_ready_layouts(generator, fake_kernel):
    ks = [256, 0, 128]
    m, n = 37, 20
    a, b, _ = k_grouped_inputs(generator, ks, m, n)
    d = torch.randn(3, m, n, generator=generator)
    c = d.clone()
    kt = torch.tensor(ks, dtype=torch.int32)
    # Row-major scales: converted before the launch.
    k_grouped_fp8_gemm_nt_contiguous((a[0], a[1].contiguous()), (b[0], b[1].contiguous()), d,
                                     ks, kt, d)
    (call,) = fake_kernel
    assert call["a_scale"].shape == (m, 3) and call["a_scale"].stride() == (1, 40)
    assert call["b_scale"].shape == (n, 3) and call["b_scale"].stride() == (1, 20)
    assert call["ks"] == ks and call["ks_tensor"] is kt and call["c"] is d
    assert call["a_data"].is_contiguous() and call["a_data"].data_ptr() % 16 == 0
    assert calc_diff(d, reference_k_grouped(a, b, ks, c)) < 1e-10


def test_opcheck_k_grouped_op(fp8_allclose, generator):
    a, b, _ = k_grouped_inputs(generator, [128, 0, 256], 16, 24)
    d = torch.randn(3, 16, 24, generator=generator)
    torch.library.opcheck(torch.ops.pyfp8gemm.k_grouped_fp8_gemm_nt_contiguous,
                          (*a, *b, d, [128, 0, 256],
                           torch.tensor([128, 0, 256], dtype=torch.int32), None, True))
