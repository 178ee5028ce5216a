"""The fused quantization kernels (device/quantize.py) against the torch-op path: the same bits
in every layout, on odd shapes, partial blocks, token padding, non-finite blocks, tiny and huge
values, one layout at a time, and under CUDA-graph capture; the 128x128 weight kernel on bf16
and float32 weights, with W^T, and in nn.Linear's weight cache. GPU only."""

import pytest
import torch

from pyfp8gemm.host import quantize_kernel, quantize_training as qt

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
from pyfp8gemm.host import device_info  # noqa: E402

if not device_info.is_hopper(torch.device("cuda")):
    pytest.skip("needs a Hopper GPU", allow_module_level=True)


def _reference(x, rowwise=True, transposed=True, pad_to=16):
    """The torch-op path (PYFP8GEMM_FUSED_QUANTIZE=0)."""
    with quantize_kernel.torch_ops_only():
        return qt.quantize_rowwise_and_transposed(x, rowwise=rowwise, transposed=transposed,
                                                  pad_to=pad_to)


def _same(got, want, what):
    """Bitwise equality of data (NaN bytes compared as NaN: 0x7F and 0xFF are both NaN) and
    scales (NaN where NaN), layouts included."""
    # (strides of size-1 dimensions are free: torch keeps a (1, C) view's stride of the padded
    # (1, 128k) buffer it came from)
    assert got.data.shape == want.data.shape and got.data.is_contiguous(), what
    assert want.data.is_contiguous(), what
    assert got.scale.shape == want.scale.shape and got.scale.stride() == want.scale.stride(), what
    gd, wd = got.data.view(torch.uint8), want.data.view(torch.uint8)
    g_nan, w_nan = (gd & 0x7F) == 0x7F, (wd & 0x7F) == 0x7F
    assert torch.equal(g_nan, w_nan), f"{what}: NaN bytes differ"
    mismatch = (gd != wd) & ~w_nan
    assert not mismatch.any(), f"{what}: {int(mismatch.sum())} data bytes differ, first at " \
        f"{mismatch.nonzero()[0].tolist()}"
    assert torch.equal(got.scale.isnan(), want.scale.isnan()), f"{what}: NaN scales differ"
    ok = got.scale.isnan() | (got.scale == want.scale)
    assert ok.all(), f"{what}: {int((~ok).sum())} scales differ"


SHAPES = [(1, 16), (5, 48), (127, 144), (128, 128), (129, 272), (300, 7168), (1000, 2064),
          (4096, 2048), (257, 16)]


@pytest.mark.parametrize("tokens, channels", SHAPES)
@pytest.mark.parametrize("pad_to", [16, 128])
def test_fused_matches_torch_ops(tokens, channels, pad_to):
    gen = torch.Generator(device="cuda").manual_seed(tokens * 7 + channels)
    x = (torch.randn(tokens, channels, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    assert quantize_kernel.applies(x)
    rows, cols_t = qt.quantize_rowwise_and_transposed(x, pad_to=pad_to)
    want_rows, want_cols = _reference(x, pad_to=pad_to)
    _same(rows, want_rows, "rows")
    _same(cols_t, want_cols, "transposed")
    # One layout at a time is the same as each half of both.
    only_rows, none = qt.quantize_rowwise_and_transposed(x, transposed=False, pad_to=pad_to)
    assert none is None
    _same(only_rows, want_rows, "rows only")
    _same(qt.quantize_transposed(x, pad_to=pad_to), want_cols, "transposed only")
    torch.cuda.synchronize()


def test_fused_special_values():
    """Whole blocks of zeros (amax clamped to 1e-4), tiny values (E4M3 subnormals), values near
    bf16's max, one NaN and one inf in different blocks (NaN scales there, and only there), and
    a NaN block whose pad tokens must stay zero."""
    tokens, channels = 200, 384
    x = torch.randn(tokens, channels, device="cuda").to(torch.bfloat16)
    x[:128, :128] = 0
    x[:, 128:256] *= 1e-6
    x[128:, 256:] = torch.finfo(torch.bfloat16).max / 2 * torch.sign(x[128:, 256:])
    x[3, 300] = float("nan")
    x[190, 10] = float("inf")
    rows, cols_t = qt.quantize_rowwise_and_transposed(x)
    want_rows, want_cols = _reference(x)
    _same(rows, want_rows, "rows")
    _same(cols_t, want_cols, "transposed")
    assert rows.scale[3, 2].isnan() and not rows.scale[3, 1].isnan()
    assert cols_t.scale[10, 1].isnan() and not cols_t.scale[10, 0].isnan()
    # Token 190 lies in the last (partial) token block; its pad columns 200..207 are zeros.
    assert (cols_t.data[10, tokens:].view(torch.uint8) == 0).all()


def test_fused_fallbacks_keep_working():
    """Inputs the kernel does not take go through the torch ops: fp32, C % 16 != 0, a
    non-contiguous view, and the environment switch."""
    x32 = torch.randn(64, 256, device="cuda")
    odd = torch.randn(64, 200, device="cuda").to(torch.bfloat16)
    view = torch.randn(256, 64, device="cuda").to(torch.bfloat16).t()
    for x in (x32, odd, view):
        assert not quantize_kernel.applies(x)
        rows, cols_t = qt.quantize_rowwise_and_transposed(x)
        want_rows, want_cols = _reference(x)
        _same(rows, want_rows, "fallback rows")
        _same(cols_t, want_cols, "fallback transposed")


def test_fused_under_cuda_graph():
    """Captured once, replayed on new values in the same input buffer: the outputs follow."""
    x = torch.randn(384, 1024, device="cuda").to(torch.bfloat16)
    qt.quantize_rowwise_and_transposed(x)            # compile and load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rows, cols_t = qt.quantize_rowwise_and_transposed(x)
    for seed in (1, 2):
        x.copy_(torch.randn(384, 1024, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(seed)).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        want_rows, want_cols = _reference(x)
        _same(rows, want_rows, f"graph rows, replay {seed}")
        _same(cols_t, want_cols, f"graph transposed, replay {seed}")


@pytest.mark.parametrize("tokens, channels", [(1, 16), (77, 7168), (4096, 2064)])
def test_quantize_1x128_of_bf16_uses_the_kernel_with_the_same_bits(tokens, channels,
                                                                   monkeypatch):
    """pyfp8gemm.quantize(x, "1x128") of bf16 on Hopper runs the row-wise kernel; the torch ops
    (PYFP8GEMM_FUSED_QUANTIZE=0) give the same bits."""
    from pyfp8gemm.host.fp8tensor import quantize

    x = (torch.randn(tokens, channels, device="cuda") * 5).to(torch.bfloat16)
    x[0, 3] = float("inf") if tokens > 1 else x[0, 3]
    assert quantize_kernel.applies(x)
    got = quantize(x, "1x128")
    monkeypatch.setenv("PYFP8GEMM_FUSED_QUANTIZE", "0")
    assert not quantize_kernel.applies(x)
    want = quantize(x, "1x128")
    _same(got, want, "quantize 1x128")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fused_on_another_gpu_than_the_current_one():
    """x on cuda:1 while cuda:0 is current: the kernel runs on x's GPU (same bits)."""
    with torch.cuda.device(0):
        x = (torch.randn(300, 1024, device="cuda:1") * 2).to(torch.bfloat16)
        rows, cols_t = qt.quantize_rowwise_and_transposed(x)
        assert rows.data.device == x.device and cols_t.scale.device == x.device
        want_rows, want_cols = _reference(x)
        _same(rows, want_rows, "rows on cuda:1")
        _same(cols_t, want_cols, "transposed on cuda:1")


# ---- 128x128 (weights) ---------------------------------------------------------------------

WEIGHT_SHAPES = [(16, 16), (128, 128), (144, 272), (300, 7168), (2112, 7168), (7168, 2064),
                 (1, 48), (129, 16)]


def _same_tensor(got, want, what):
    """Bitwise equality of E4M3 data (NaN bytes as NaN) or float32 scales (NaN where NaN)."""
    assert got.shape == want.shape and got.is_contiguous(), what
    if got.dtype == torch.float8_e4m3fn:
        g, w = got.view(torch.uint8), want.view(torch.uint8)
        g_nan, w_nan = (g & 0x7F) == 0x7F, (w & 0x7F) == 0x7F
        assert torch.equal(g_nan, w_nan), f"{what}: NaN bytes differ"
        bad = (g != w) & ~w_nan
        assert not bad.any(), f"{what}: {int(bad.sum())} bytes differ, first at " \
            f"{bad.nonzero()[0].tolist()}"
    else:
        assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN scales differ"
        assert (got.isnan() | (got == want)).all(), f"{what}: scales differ"


def _weight_reference(w):
    from pyfp8gemm.host.fp8tensor import quantize
    with quantize_kernel.torch_ops_only():
        return quantize(w, "128x128")


@pytest.mark.parametrize("rows, cols", WEIGHT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_kernel_matches_torch_ops(rows, cols, dtype):
    """quantize(w, "128x128") and W with W^T in one kernel: the torch path's bits, scales in
    both layouts, every byte written (outputs start as NaN bytes)."""
    from pyfp8gemm.host.fp8tensor import quantize

    gen = torch.Generator(device="cuda").manual_seed(rows * 31 + cols)
    w = (torch.randn(rows, cols, device="cuda", generator=gen) * 0.02).to(dtype)
    w[0, 0] = 0.5                              # one large entry: the first block's amax
    want = _weight_reference(w)
    assert quantize_kernel.applies_128x128(w)
    _same(quantize(w, "128x128"), want, "W")
    if rows % 16:
        assert not quantize_kernel.applies_128x128(w, transposed=True)
    q, (data_t, scale_t) = qt.quantize_weight_and_transposed(w)
    _same(q, want, "W with W^T")
    _same_tensor(data_t, want.data.t().contiguous(), "W^T data")
    _same_tensor(scale_t, want.scale.t().contiguous(), "W^T scale")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_kernel_writes_every_byte(dtype):
    """The launch itself into NaN-poisoned buffers: no byte or scale of W or W^T is left."""
    rows, cols = 272, 400
    w = torch.randn(rows, cols, device="cuda").to(dtype)
    data = torch.full((rows, cols), 0x7F, dtype=torch.uint8, device="cuda").view(
        torch.float8_e4m3fn)
    scale = torch.full((3, 4), float("nan"), device="cuda")
    data_t = torch.full((cols, rows), 0x7F, dtype=torch.uint8, device="cuda").view(
        torch.float8_e4m3fn)
    scale_t = torch.full((4, 3), float("nan"), device="cuda")
    quantize_kernel.launch_128x128(w, data, scale, transposed=(data_t, scale_t))
    want = _weight_reference(w)
    assert not scale.isnan().any() and not scale_t.isnan().any()
    _same_tensor(data, want.data, "W")
    _same_tensor(data_t, want.data.t().contiguous(), "W^T")
    assert torch.equal(scale, want.scale) and torch.equal(scale_t, want.scale.t())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_kernel_special_values(dtype):
    """A zero block (amax clamped to 1e-4), E4M3 subnormals, values near the dtype's max, NaN
    in one block and inf in another (NaN scales there only), a partial last block."""
    w = torch.randn(300, 400, device="cuda").to(dtype)
    w[:128, :128] = 0
    w[:, 128:256] *= 1e-6
    w[128:256, 256:384] = torch.finfo(dtype).max / 2 * torch.sign(w[128:256, 256:384])
    w[5, 300] = float("nan")
    w[290, 390] = float("-inf")
    q, (data_t, scale_t) = qt.quantize_weight_and_transposed(w)
    want = _weight_reference(w)
    _same(q, want, "W")
    _same_tensor(data_t, want.data.t().contiguous(), "W^T")
    _same_tensor(scale_t, want.scale.t().contiguous(), "W^T scale")
    assert q.scale[0, 2].isnan() and q.scale[2, 3].isnan() and not q.scale[1, 2].isnan()
    assert int(q.scale.isnan().sum()) == 2


def test_weight_kernel_under_cuda_graph():
    w = torch.randn(512, 1024, device="cuda").to(torch.bfloat16)
    qt.quantize_weight_and_transposed(w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, (data_t, scale_t) = qt.quantize_weight_and_transposed(w)
    for seed in (3, 4):
        w.copy_(torch.randn(512, 1024, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(seed)))
        graph.replay()
        torch.cuda.synchronize()
        want = _weight_reference(w)
        _same(q, want, f"graph W, replay {seed}")
        _same_tensor(data_t, want.data.t().contiguous(), f"graph W^T, replay {seed}")


def test_linear_weight_cache_holds_the_fused_transpose():
    """nn.Linear's forward with an input that needs a gradient quantizes W and W^T in one
    kernel; the backward's dgrad uses that W^T (no copy), and an optimizer step makes a new
    entry."""
    from pyfp8gemm.nn import functional as fn

    fn.clear_weight_cache()
    weight = torch.nn.Parameter(torch.randn(384, 256, device="cuda") * 0.05)
    x = torch.randn(64, 256, device="cuda", requires_grad=True)     # float32, as the weight
    y = fn.linear(x, weight)
    entry = fn.quantized_weight(weight)
    assert entry.wt is not None                       # made with W in the forward
    want = _weight_reference(weight.detach())
    _same_tensor(entry.wt[0], want.data.t().contiguous(), "cached W^T")
    y.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        weight.mul_(0.5)
    assert fn.quantized_weight(weight) is not entry
    fn.clear_weight_cache()
