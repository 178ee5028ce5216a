"""fp8_gemm_nt_1d1d (the wgrad GEMM, both operands 1x128, FP32 out, d = c + A @ B^T) on the CPU:
numbers through the reference backend, the checks, and what the kernel launcher receives
(a fake launcher stands in for the GPU kernel)."""

from __future__ import annotations

import pytest
import torch

import pyfp8gemm
from pyfp8gemm import quantize
from pyfp8gemm.host import device_info, launchers
from pyfp8gemm.host import gemm_1d1d as gemm_1d1d_module
from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d
from pyfp8gemm.testing import calc_diff, reference_gemm_1d1d

E4M3 = torch.float8_e4m3fn


def ceil_div(a, b):
    return (a + b - 1) // b


def operands(generator, m, n, k):
    x = torch.randn(m, k, generator=generator)
    y = torch.randn(n, k, generator=generator)
    return x, y, quantize(x, "1x128"), quantize(y, "1x128")


@pytest.mark.parametrize("m,n,k", [(1, 4, 16), (37, 52, 272), (128, 128, 256), (200, 96, 400)])
@pytest.mark.parametrize("c_mode", ["none", "d", "separate"])
def test_matches_reference(generator, m, n, k, c_mode):
    x, y, a, b = operands(generator, m, n, k)
    d = torch.randn(m, n, generator=generator) * 32
    c = {"none": None, "d": d, "separate": torch.randn(m, n, generator=generator) * 32}[c_mode]
    c_before = None if c is None else c.clone()
    out = fp8_gemm_nt_1d1d(a, b, d, c)
    assert out is d
    ref = reference_gemm_1d1d(a, b, c_before)
    assert calc_diff(d, ref) < 1e-10
    # And the FP8 error against the unquantized product is the usual one (statistical: only
    # where enough elements average it; a 1x4 output drew 2e-3).
    if m * n >= 256:
        base = 0 if c_before is None else c_before
        assert calc_diff(d - base, x @ y.t()) < 1e-3
    if c_mode == "separate":
        assert torch.equal(c, c_before)   # c is read only


def test_pairs_and_row_major_scales(generator):
    """(data, scale) pairs with plain row-major (M, kb) scales give the same numbers."""
    _, _, a, b = operands(generator, 24, 40, 384)
    d1 = torch.empty(24, 40)
    d2 = torch.empty(24, 40)
    fp8_gemm_nt_1d1d(a, b, d1)
    fp8_gemm_nt_1d1d((a.data, a.scale.contiguous()), (b.data, b.scale.contiguous()), d2)
    assert torch.equal(d1, d2)


def test_through_fp8_gemm_nt(generator):
    """pyfp8gemm.fp8_gemm_nt delegates to the 1D1D GEMM for a float32 d, a c, or per-row b."""
    _, _, a, b = operands(generator, 16, 32, 256)
    d = torch.randn(16, 32, generator=generator)
    c = d.clone()
    pyfp8gemm.fp8_gemm_nt(a, b, d, c=d)
    assert calc_diff(d, reference_gemm_1d1d(a, b, c)) < 1e-10


def test_accumulation_over_micro_batches(generator):
    """c = d accumulates: two calls add both products (a weight gradient over 2 micro-batches)."""
    _, _, a1, b1 = operands(generator, 32, 48, 256)
    _, _, a2, b2 = operands(generator, 32, 48, 256)
    d = torch.zeros(32, 48)
    fp8_gemm_nt_1d1d(a1, b1, d, d)
    fp8_gemm_nt_1d1d(a2, b2, d, d)
    ref = reference_gemm_1d1d(a1, b1) + reference_gemm_1d1d(a2, b2)
    assert calc_diff(d, ref) < 1e-10


def test_empty_sizes(generator):
    a = (torch.empty(0, 32, dtype=E4M3), torch.empty(0, 1))
    _, _, _, b = operands(generator, 1, 8, 32)
    d = torch.empty(0, 8)
    assert fp8_gemm_nt_1d1d(a, b, d) is d
    # K = 0: d = c (or zeros), as in DeepGEMM.
    a0 = (torch.empty(4, 0, dtype=E4M3), torch.empty(4, 0))
    b0 = (torch.empty(8, 0, dtype=E4M3), torch.empty(8, 0))
    c = torch.randn(4, 8, generator=generator)
    d = torch.full((4, 8), float("nan"))
    fp8_gemm_nt_1d1d(a0, b0, d, c)
    assert torch.equal(d, c)
    fp8_gemm_nt_1d1d(a0, b0, d)
    assert torch.equal(d, torch.zeros(4, 8))


def test_nan_poisoning(generator):
    """A NaN in one 1x128 block of A makes exactly its row of d NaN; d's prior NaNs are
    overwritten everywhere else."""
    x = torch.randn(8, 256, generator=generator)
    y = torch.randn(12, 256, generator=generator)
    x[3, 200] = float("nan")
    d = torch.full((8, 12), float("nan"))
    fp8_gemm_nt_1d1d(quantize(x, "1x128"), quantize(y, "1x128"), d)
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[3] = True
    assert torch.equal(d.isnan(), expected)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors(generator):
    _, _, a, b = operands(generator, 16, 32, 256)
    d = torch.empty(16, 32)
    with pytest.raises(ValueError, match=r"b: expected an FP8Tensor with granularity '1x128'"):
        fp8_gemm_nt_1d1d(a, quantize(torch.randn(32, 256), "128x128"), d)
    blocks = quantize(torch.randn(256, 256), "128x128")
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\).*128x128 block scales"):
        fp8_gemm_nt_1d1d(a, (blocks.data, blocks.scale), torch.empty(16, 256))
    with pytest.raises(TypeError, match=r"d: expected dtype torch.float32"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(16, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"d: expected shape \(16, 32\)"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(32, 16))
    with pytest.raises(TypeError, match=r"c: expected dtype torch.float32"):
        fp8_gemm_nt_1d1d(a, b, d, torch.empty(16, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"c: expected shape \(16, 32\)"):
        fp8_gemm_nt_1d1d(a, b, d, torch.empty(16, 33))
    big = torch.empty(32, 32)
    with pytest.raises(ValueError, match=r"c: overlaps d"):
        fp8_gemm_nt_1d1d(a, b, big[:16], big[8:24])
    with pytest.raises(ValueError, match=r"K must match"):
        fp8_gemm_nt_1d1d(a, operands(generator, 1, 32, 384)[3], d)
    with pytest.raises(TypeError, match=r"a\[0\] \(data\): expected dtype torch.float8_e4m3fn"):
        fp8_gemm_nt_1d1d((torch.randn(16, 256), a.scale), b, d)
    with pytest.raises(TypeError, match=r"a: expected a \(data, scale\) pair"):
        fp8_gemm_nt_1d1d(torch.randn(16, 256), b, d)
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape \(16, 2\)"):
        fp8_gemm_nt_1d1d((a.data, torch.ones(16, 3)), b, d)


def test_alignment_errors(generator):
    _, _, a, b = operands(generator, 8, 32, 40)     # K = 40: not a multiple of 16
    with pytest.raises(ValueError, match=r"K \(= a.data.shape\[1\]\).*multiple of 16.*TMA"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(8, 32))
    _, _, a, b = operands(generator, 8, 30, 64)     # N = 30: not a multiple of 4
    with pytest.raises(ValueError, match=r"N \(= b.data.shape\[0\]\).*multiple of 4.*float32"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(8, 30))


def test_layout_and_device_errors(generator):
    _, _, a, b = operands(generator, 16, 32, 256)
    d = torch.empty(16, 32)
    with pytest.raises(ValueError, match=r"d: expected a contiguous"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(32, 16).t())
    wide = torch.empty(16, 512, dtype=E4M3)
    wide[:, :256] = a.data
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected a contiguous"):
        fp8_gemm_nt_1d1d((wide[:, :256], a.scale), b, d)
    with pytest.raises(ValueError, match=r"d: expected the same device as a.data"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(16, 32, device="meta"))


def test_int32_sizes():
    """Sizes past int32 are refused before anything runs (meta tensors: nothing allocated)."""
    m, k = 2**16, 2**15 + 16    # M * K > 2^31
    a = (torch.empty(m, k, dtype=E4M3, device="meta"), torch.empty(m, ceil_div(k, 128),
                                                                   device="meta"))
    b = (torch.empty(16, k, dtype=E4M3, device="meta"), torch.empty(16, ceil_div(k, 128),
                                                                    device="meta"))
    with pytest.raises(ValueError, match=r"M \* K = \d+ is too large.*int32"):
        fp8_gemm_nt_1d1d(a, b, torch.empty(m, 16, device="meta"))


# ---------------------------------------------------------------------------------------------
# The kernel path: what the launcher receives
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_kernel(monkeypatch):
    """CPU tensors take the kernel path; the launcher records its arguments and computes the
    reference into d."""
    calls = []

    def fake_gemm_1d1d(a_data, a_scale, b_data, b_scale, d, c):
        calls.append(dict(a_data=a_data, a_scale=a_scale, b_data=b_data, b_scale=b_scale, d=d,
                          c=c))
        d.copy_(reference_gemm_1d1d((a_data, a_scale), (b_data, b_scale), c))

    monkeypatch.setattr(gemm_1d1d_module, "_runs_on_cpu_backend", lambda device: False)
    monkeypatch.setattr(device_info, "require_hopper", lambda device, argname: None)
    monkeypatch.setattr(launchers, "gemm_1d1d", fake_gemm_1d1d)
    return calls


def test_launcher_gets_kernel_ready_layouts(generator, fake_kernel):
    m, n, k = 37, 52, 272
    _, _, a, b = operands(generator, m, n, k)
    d = torch.randn(m, n, generator=generator)
    c = d.clone()
    # Row-major scales: converted to MN-major TMA-aligned before the launch.
    fp8_gemm_nt_1d1d((a.data, a.scale.contiguous()), (b.data, b.scale.contiguous()), d, d)
    (call,) = fake_kernel
    kb = ceil_div(k, 128)
    assert call["a_scale"].shape == (m, kb) and call["a_scale"].stride() == (1, 40)
    assert call["b_scale"].shape == (n, kb) and call["b_scale"].stride() == (1, 52)
    for t in (call["a_data"], call["b_data"], call["d"]):
        assert t.stride() == (t.shape[1], 1) and t.data_ptr() % 16 == 0
    assert call["d"].data_ptr() == d.data_ptr()
    assert call["c"] is d                 # in-place accumulation reaches the kernel as c = d
    assert calc_diff(d, reference_gemm_1d1d(a, b, c)) < 1e-10


def test_launcher_not_called_for_empty(generator, fake_kernel):
    a = (torch.empty(0, 32, dtype=E4M3), torch.empty(0, 1))
    _, _, _, b = operands(generator, 1, 8, 32)
    fp8_gemm_nt_1d1d(a, b, torch.empty(0, 8))
    assert fake_kernel == []



def test_ops_registered_and_traced(fp8_allclose, generator):
    """The 1D1D and k-grouped GEMMs are custom ops too: opcheck, and torch.compile(fullgraph)
    of a function that accumulates into d (c is d) gives eager's result."""
    _, _, a, b = operands(generator, 64, 32, 256)
    d = torch.randn(64, 32, generator=generator)
    torch.library.opcheck(torch.ops.pyfp8gemm.fp8_gemm_nt_1d1d,
                          (a.data, a.scale, b.data, b.scale, d.clone(), None, True))

    def step(d):
        return fp8_gemm_nt_1d1d(a, b, d, d)

    eager = step(d.clone())
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(d.clone())
    assert torch.equal(eager, compiled)
    assert calc_diff(eager - d, reference_gemm_1d1d(a, b)) < 1e-10
