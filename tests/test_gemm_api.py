"""The public GEMM API on the CPU: input checks, and the shape/layout logic in front of the kernel.

No GPU is needed (this runs in CI). Two stand-ins make the host code testable here:

* `cpu_as_hopper` lets CPU tensors through the "is this a Hopper GPU?" gate, so that every other
  check and the layout logic run on CPU tensors;
* `fake_launcher` replaces the kernel binder (`launch.bind`) with one that checks the launch
  contract of docs/INTERFACES.md (dtypes, shapes, strides, alignment) and returns a bound
  launch that records its arguments and writes the exact product of the FP8 operands into
  `out`. So these tests see what the kernel would get and that the numbers reaching it mean
  what they should. A repeated call takes the fast path (no checks) to the same bound launch.
"""

from __future__ import annotations

import pytest
import torch

from pyfp8gemm import quantize
from pyfp8gemm.host import device_info, gemm
from pyfp8gemm.testing import calc_diff, reference_gemm

E4M3 = torch.float8_e4m3fn
BF16 = torch.bfloat16


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def align(n: int, alignment: int) -> int:
    return ceil_div(n, alignment) * alignment


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


class FakeLauncher:
    """Stands in for pyfp8gemm.host.launch.bind (and what it returns)."""

    def __init__(self):
        self.calls = []
        self.binds = 0

    def bind(self, a_data, a_scale, b_data, b_scale, out):
        m, k = a_data.shape
        n = b_data.shape[0]
        # The contract of docs/INTERFACES.md, checked on every bind (every call that is not a
        # fast-path repeat).
        assert a_data.dtype == E4M3 and b_data.dtype == E4M3
        assert a_scale.dtype == torch.float32 and b_scale.dtype == torch.float32
        assert out.dtype == BF16
        assert b_data.shape == (n, k) and out.shape == (m, n)
        assert a_scale.shape == (m, ceil_div(k, 128))
        assert a_scale.stride() == (1, align(m, 4)), a_scale.stride()
        assert b_scale.shape == (ceil_div(n, 128), ceil_div(k, 128))
        assert b_scale.is_contiguous()
        for t in (a_data, b_data, out):
            assert t.stride() == (t.shape[1], 1), t.stride()
            assert t.data_ptr() % 16 == 0
        assert a_scale.data_ptr() % 16 == 0
        assert k % 16 == 0 and n % 8 == 0 and m >= 1
        self.binds += 1
        return FakeBound(self, dict(a_data=a_data, a_scale=a_scale, b_data=b_data,
                                    b_scale=b_scale, out=out))

    @property
    def last(self) -> dict:
        return self.calls[-1]


class FakeBound:
    """A bound launch: computes the exact product into its `out` whenever it is called."""

    def __init__(self, launcher: FakeLauncher, tensors: dict):
        self.launcher, self.tensors = launcher, tensors

    def __call__(self):
        t = self.tensors
        self.launcher.calls.append(t)
        t["out"].copy_(reference_gemm((t["a_data"], t["a_scale"]), (t["b_data"], t["b_scale"])))

    def with_out(self, out):
        return FakeBound(self.launcher, dict(self.tensors, out=out.view(self.tensors["out"].shape)))


@pytest.fixture
def cpu_as_hopper(monkeypatch):
    """Let CPU tensors pass the Hopper gate."""
    monkeypatch.setattr(device_info, "require_hopper", lambda device, argname: None)


@pytest.fixture
def fake_launcher(monkeypatch, cpu_as_hopper) -> FakeLauncher:
    launcher = FakeLauncher()
    monkeypatch.setattr(gemm, "_kernel_binder", lambda: launcher.bind)
    # CPU tensors normally go to the reference backend: here they reach the fake binder.
    monkeypatch.setattr(gemm, "_cpu_binder", lambda: launcher.bind)
    return launcher


@pytest.fixture(autouse=True)
def fresh_device_info(monkeypatch):
    """Each test starts with no set_num_sms value, no device already accepted by
    require_hopper (on a GPU machine, GPU tests in the same process fill that cache) and no
    remembered call (fast path), and leaves none of them behind."""
    monkeypatch.setattr(device_info, "_num_sms_limit", None)
    monkeypatch.setattr(device_info, "_verified_hopper_devices", set())
    monkeypatch.setattr(gemm, "_fast_nt", {})
    monkeypatch.setattr(gemm, "_fast_matmul", {})


def randn(*shape, dtype=BF16):
    return torch.randn(*shape, dtype=dtype)


def fp8_operands(m: int, n: int, k: int):
    """DeepGEMM-style inputs of a valid (M, N, K) GEMM: a 1x128, b 128x128, out bf16."""
    a = quantize(randn(m, k), "1x128")
    b = quantize(randn(n, k), "128x128")
    out = torch.empty(m, n, dtype=BF16)
    return a, b, out


# ---------------------------------------------------------------------------------------------
# Devices: CUDA and Hopper only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k", [(64, 128, 256), (7, 136, 208), (130, 264, 1040)])
def test_fp8_gemm_nt_computes_cpu_tensors_with_the_reference_backend(m, n, k):
    """CPU tensors run the CPU backend: the kernel's numbers (exact product up to bf16)."""
    a, b, out = fp8_operands(m, n, k)
    assert gemm.fp8_gemm_nt(a, b, out) is out
    ref = reference_gemm(a, b)
    assert calc_diff(out, ref) < 1e-5
    torch.testing.assert_close(out, ref.to(BF16), rtol=1e-2, atol=1e-2)
    out2 = torch.empty_like(out)
    gemm.fp8_gemm_nt((a.data, a.scale.contiguous()), (b.data, b.scale), out2)
    assert torch.equal(out, out2)
    assert not gemm._fast_nt   # CPU calls are never remembered


def test_matmul_computes_cpu_tensors_with_the_reference_backend():
    x, w = randn(3, 5, 256), randn(136, 256)
    out = gemm.matmul(x, w.t())
    assert out.shape == (3, 5, 136) and out.dtype == BF16 and out.device.type == "cpu"
    assert calc_diff(out, x.float() @ w.float().t()) < 1e-3
    ref = reference_gemm(quantize(x.reshape(15, 256), "1x128"), quantize(w, "128x128"))
    assert calc_diff(out.reshape(15, 136), ref) < 1e-5
    fp8_out = gemm.matmul(quantize(x.reshape(15, 256), "1x128"), quantize(w, "128x128").t())
    assert torch.equal(fp8_out, out.reshape(15, 136))


def test_cpu_tensors_of_a_shape_the_gpu_refuses_are_refused_the_same_way():
    a, b, out = fp8_operands(64, 128, 200)   # K % 16 != 0
    with pytest.raises(ValueError, match=r"K .*multiple of 16"):
        gemm.fp8_gemm_nt(a, b, out)
    a, b, out = fp8_operands(64, 132, 256)   # N % 8 != 0
    with pytest.raises(ValueError, match=r"N .*multiple of 8"):
        gemm.fp8_gemm_nt(a, b, out)
    with pytest.raises(ValueError, match=r"N .*multiple of 8"):
        gemm.matmul(randn(4, 256), randn(256, 12))
    a, b, out = fp8_operands(64, 128, 256)
    with pytest.raises(ValueError, match=r"16-byte aligned start"):
        gemm.fp8_gemm_nt((a.data.view(-1)[8:-248].view(63, 256), a.scale[1:]), b, out[1:])


def test_cuda_tensors_on_a_non_hopper_gpu_are_still_an_error(monkeypatch):
    """No silent CPU fallback: a CUDA tensor on another GPU raises (the gate is consulted)."""
    seen = []

    def not_hopper(device, argname):
        seen.append((device, argname))
        raise RuntimeError(f"{argname} is on {device} (NVIDIA A100, compute capability 8.0)")

    monkeypatch.setattr(device_info, "require_hopper", not_hopper)
    a = torch.empty(64, 256, dtype=E4M3, device="meta")
    b = torch.empty(128, 256, dtype=E4M3, device="meta")
    out = torch.empty(64, 128, dtype=BF16, device="meta")
    with pytest.raises(RuntimeError, match="compute capability 8.0"):
        gemm.fp8_gemm_nt((a, torch.empty(64, 2, device="meta")),
                         (b, torch.empty(1, 2, device="meta")), out)
    with pytest.raises(RuntimeError, match="compute capability 8.0"):
        gemm.matmul(torch.empty(64, 256, dtype=BF16, device="meta"),
                    torch.empty(256, 128, dtype=BF16, device="meta"))
    assert len(seen) == 2


def test_mixed_devices_are_refused(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    # The "meta" device stands in for a second device: same metadata, no memory.
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\).*same device"):
        gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale.to("meta")), out)
    with pytest.raises(ValueError, match=r"out.*same device"):
        gemm.fp8_gemm_nt(a, b, out.to("meta"))
    with pytest.raises(ValueError, match=r"b: .*same device"):
        gemm.matmul(randn(64, 256), randn(256, 128, dtype=torch.float32).to("meta"))
    with pytest.raises(ValueError, match=r"out: .*same device"):
        gemm.matmul(randn(64, 256), randn(256, 128), out=torch.empty(64, 128, dtype=BF16,
                                                                      device="meta"))


@pytest.mark.parametrize(
    "name, capability",
    [("NVIDIA A100-SXM4-80GB", (8, 0)), ("NVIDIA GeForce RTX 4090", (8, 9)),
     ("NVIDIA B200", (10, 0))],
)
def test_require_hopper_names_the_gpu(monkeypatch, name, capability):
    monkeypatch.setattr(device_info, "_name_and_capability", lambda index: (name, capability))
    message = rf"a is on cuda:0 \({name}, compute capability {capability[0]}\.{capability[1]}\)"
    with pytest.raises(RuntimeError, match=message):
        device_info.require_hopper(torch.device("cuda", 0), "a")


def test_require_hopper_accepts_hopper(monkeypatch):
    monkeypatch.setattr(device_info, "_name_and_capability", lambda index: ("NVIDIA H200", (9, 0)))
    device_info.require_hopper(torch.device("cuda", 0), "a")  # no exception
    # Accepted once, the device is remembered: later calls are a set lookup.
    assert torch.device("cuda", 0) in device_info._verified_hopper_devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_info.is_hopper(torch.device("cuda", 0))
    assert not device_info.is_hopper(torch.device("cpu"))


def test_require_hopper_rejects_cpu():
    with pytest.raises(ValueError, match=r"weights is on cpu; .*CUDA"):
        device_info.require_hopper(torch.device("cpu"), "weights")


# ---------------------------------------------------------------------------------------------
# set_num_sms / get_num_sms
# ---------------------------------------------------------------------------------------------


def test_num_sms_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device_info.get_num_sms()
    device_info.set_num_sms(100)
    assert device_info.get_num_sms() == 100


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (1.5, TypeError),
                                        ("132", TypeError), (True, TypeError)])
def test_set_num_sms_validates(bad, error):
    with pytest.raises(error, match="num_sms"):
        device_info.set_num_sms(bad)


def test_set_num_sms_is_capped_by_the_device(monkeypatch):
    # A pretend 132-SM H200 as device 0.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_info, "_sm_count_by_device", {0: 132})
    monkeypatch.setattr(device_info, "_name_and_capability_by_device",
                        {0: ("NVIDIA H200", (9, 0))})
    assert device_info.get_num_sms() == 132
    with pytest.raises(ValueError, match=r"<= the 132 SMs of cuda:0 \(NVIDIA H200\), got 133"):
        device_info.set_num_sms(133)
    device_info.set_num_sms(100)
    assert device_info.get_num_sms() == 100
    assert device_info.device_sm_count() == 132
    # "At most n": a smaller device (pretend device 1 with 78 SMs) uses all of its own.
    device_info._sm_count_by_device[1] = 78
    assert device_info.get_num_sms(1) == 78


# ---------------------------------------------------------------------------------------------
# fp8_gemm_nt: bad inputs
# ---------------------------------------------------------------------------------------------


def test_fp8_gemm_nt_wrong_kinds_of_objects(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    with pytest.raises(TypeError, match=r"^a: expected a \(data, scale\) pair"):
        gemm.fp8_gemm_nt(a.data, b, out)
    with pytest.raises(TypeError, match=r"^b: expected a \(data, scale\) pair"):
        gemm.fp8_gemm_nt(a, (b.data, b.scale, b.scale), out)
    with pytest.raises(TypeError, match=r"^out: expected a torch\.Tensor"):
        gemm.fp8_gemm_nt(a, b, None)


def test_fp8_gemm_nt_wrong_dtypes(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    with pytest.raises(TypeError, match=r"a\[0\] \(data\): expected dtype torch\.float8_e4m3fn"):
        gemm.fp8_gemm_nt((a.data.to(BF16), a.scale), b, out)
    with pytest.raises(TypeError, match=r"b\[0\] \(data\): expected dtype torch\.float8_e4m3fn, "
                                        r"got torch\.float8_e5m2"):
        gemm.fp8_gemm_nt(a, (b.data.to(torch.float8_e5m2), b.scale), out)
    with pytest.raises(TypeError, match=r"a\[1\] \(scale\): expected dtype torch\.float32"):
        gemm.fp8_gemm_nt((a.data, a.scale.to(BF16)), b, out)
    with pytest.raises(TypeError, match=r"b\[1\] \(scale\): expected dtype torch\.float32"):
        gemm.fp8_gemm_nt(a, (b.data, b.scale.double()), out)
    with pytest.raises(TypeError, match=r"out: expected dtype torch\.bfloat16, got torch\.float32"):
        gemm.fp8_gemm_nt(a, b, out.float())


def test_fp8_gemm_nt_wrong_ranks(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected a 2-D tensor"):
        gemm.fp8_gemm_nt((a.data.unsqueeze(0), a.scale), b, out)
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\): expected a 2-D tensor"):
        gemm.fp8_gemm_nt(a, (b.data, b.scale.flatten()), out)
    with pytest.raises(ValueError, match=r"out: expected a 2-D tensor"):
        gemm.fp8_gemm_nt(a, b, out.unsqueeze(0))


def test_fp8_gemm_nt_shape_mismatches(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    b_short = quantize(randn(128, 384), "128x128")
    with pytest.raises(ValueError, match=r"a\.data\.shape\[1\] and b\.data\.shape\[1\]: K must "
                                         r"match, got 256 and 384"):
        gemm.fp8_gemm_nt(a, b_short, out)
    with pytest.raises(ValueError, match=r"out: expected shape \(64, 128\)"):
        gemm.fp8_gemm_nt(a, b, torch.empty(64, 136, dtype=BF16))
    with pytest.raises(ValueError, match=r"out: expected shape \(64, 128\)"):
        gemm.fp8_gemm_nt(a, b, torch.empty(128, 64, dtype=BF16))


def test_fp8_gemm_nt_alignment_rules(cpu_as_hopper):
    # K % 16: 120 E4M3 bytes is no 16-byte row.
    a, b, out = fp8_operands(64, 128, 120)
    with pytest.raises(ValueError, match=r"K \(= a\.data\.shape\[1\]\): expected a positive "
                                         r"multiple of 16 \(K % 16 == 0: TMA"):
        gemm.fp8_gemm_nt(a, b, out)
    # N % 8: 100 bf16 outputs are 200 bytes, no 16-byte row.
    a, b, out = fp8_operands(64, 100, 256)
    with pytest.raises(ValueError, match=r"N \(= b\.data\.shape\[0\]\): expected a positive "
                                         r"multiple of 8 \(N % 8 == 0: TMA"):
        gemm.fp8_gemm_nt(a, b, out)


def test_fp8_gemm_nt_wrong_scale_shapes(cpu_as_hopper):
    a, b, out = fp8_operands(256, 384, 512)  # a scales (256, 4), b scales (3, 4)
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape \(256, 4\)"):
        gemm.fp8_gemm_nt((a.data, torch.ones(256, 5)), b, out)
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\): expected shape \(3, 4\)"):
        gemm.fp8_gemm_nt(a, (b.data, torch.ones(4, 4)), out)


def test_fp8_gemm_nt_granularity_mixups(cpu_as_hopper):
    a, b, out = fp8_operands(256, 384, 512)
    # Pairs: block scales given for a, per-row scales given for b.
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape \(256, 4\).*"
                                         r"shape of 128x128 scales"):
        gemm.fp8_gemm_nt((a.data, torch.ones(2, 4)), b, out)
    with pytest.raises(ValueError, match=r"b\[1\] \(scale\): expected shape \(3, 4\).*"
                                         r"shape of 1x128 scales"):
        gemm.fp8_gemm_nt(a, (b.data, torch.ones(384, 4)), out)
    # FP8Tensors of the wrong granularity.
    a_blocks = quantize(randn(256, 512), "128x128")
    b_rows = quantize(randn(384, 512), "1x128")
    with pytest.raises(ValueError, match=r"^a: expected an FP8Tensor with granularity '1x128'"):
        gemm.fp8_gemm_nt(a_blocks, b, out)
    with pytest.raises(ValueError, match=r"^b: expected an FP8Tensor with granularity '128x128'"):
        gemm.fp8_gemm_nt(a, b_rows, out)


def test_fp8_gemm_nt_non_contiguous(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    wide = quantize(randn(64, 512), "1x128").data
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected a contiguous"):
        gemm.fp8_gemm_nt((wide[:, :256], a.scale), b, out)
    # b given as a transposed (K, N)-view of an (N, K) = (256, 256) weight: K-major is required.
    square = quantize(randn(256, 256), "128x128")
    a2, _, out2 = fp8_operands(64, 256, 256)
    with pytest.raises(ValueError, match=r"b\.data: expected a contiguous.*matmul\(\) takes the "
                                         r"transposed"):
        gemm.fp8_gemm_nt(a2, square.t(), out2)
    with pytest.raises(ValueError, match=r"out: expected a contiguous"):
        gemm.fp8_gemm_nt(a, b, torch.empty(128, 64, dtype=BF16).t())


def test_fp8_gemm_nt_misaligned_start(cpu_as_hopper):
    a, b, out = fp8_operands(64, 128, 256)
    # A view starting 8 bytes into a buffer: contiguous, but TMA needs a 16-byte aligned start.
    buffer = torch.empty(64 * 256 + 16, dtype=E4M3)
    shifted = buffer[8:8 + 64 * 256].view(64, 256)
    shifted.copy_(a.data)
    with pytest.raises(ValueError, match=r"a\[0\] \(data\): expected a 16-byte aligned start"):
        gemm.fp8_gemm_nt((shifted, a.scale), b, out)
    out_buffer = torch.empty(64 * 128 + 8, dtype=BF16)
    with pytest.raises(ValueError, match=r"out: expected a 16-byte aligned start"):
        gemm.fp8_gemm_nt(a, b, out_buffer[1:1 + 64 * 128].view(64, 128))


# ---------------------------------------------------------------------------------------------
# fp8_gemm_nt: what reaches the kernel
# ---------------------------------------------------------------------------------------------


def test_fp8_gemm_nt_fp8_tensors_pass_through_without_copies(fake_launcher):
    a, b, out = fp8_operands(200, 136, 640)
    result = gemm.fp8_gemm_nt(a, b, out)
    assert result is out
    call = fake_launcher.last
    for name, original in [("a_data", a.data), ("a_scale", a.scale), ("b_data", b.data),
                           ("b_scale", b.scale), ("out", out)]:
        assert call[name].data_ptr() == original.data_ptr(), name
    assert torch.equal(out, reference_gemm(a, b).to(BF16))


@pytest.mark.parametrize("m", [1, 3, 4, 130])
def test_fp8_gemm_nt_converts_row_major_activation_scales(fake_launcher, m):
    """Row-major (M, ceil(K/128)) scales, as a naive quantizer returns them, are re-laid out
    (MN-major, TMA-aligned), never read with the wrong strides."""
    a, b, out = fp8_operands(m, 128, 384)
    row_major = a.scale.contiguous()
    assert row_major.stride() == (3, 1)
    gemm.fp8_gemm_nt((a.data, row_major), (b.data, b.scale), out)
    passed = fake_launcher.last["a_scale"]
    assert passed.stride() == (1, align(m, 4))
    assert torch.equal(passed, row_major)
    expected = torch.empty_like(out)
    gemm.fp8_gemm_nt(a, b, expected)
    assert torch.equal(out, expected)


def test_fp8_gemm_nt_keeps_aligned_scales(fake_launcher):
    a, b, out = fp8_operands(96, 128, 384)
    gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale), out)
    assert fake_launcher.last["a_scale"].data_ptr() == a.scale.data_ptr()


def test_fp8_gemm_nt_makes_weight_scales_contiguous(fake_launcher):
    a, b, out = fp8_operands(64, 384, 512)
    column_major = b.scale.t().contiguous().t()  # same values, strides (1, 3)
    assert not column_major.is_contiguous()
    gemm.fp8_gemm_nt(a, (b.data, column_major), out)
    assert torch.equal(fake_launcher.last["b_scale"], b.scale)
    assert torch.equal(out, reference_gemm(a, b).to(BF16))


def test_fp8_gemm_nt_empty_m_launches_nothing(fake_launcher):
    a, b, out = fp8_operands(0, 128, 256)
    assert gemm.fp8_gemm_nt(a, b, out) is out
    assert fake_launcher.calls == []


def test_fp8_gemm_nt_restrides_size_one_rows(fake_launcher):
    """A (1, N) output that torch calls contiguous but whose unused row stride is odd (a view of
    a column) reaches the kernel with canonical strides, writing the same memory."""
    a, b, _ = fp8_operands(1, 128, 256)
    column = torch.empty(128, 1, dtype=BF16)
    out = column.t()
    assert out.is_contiguous() and out.stride() == (1, 1)
    gemm.fp8_gemm_nt(a, b, out)
    assert fake_launcher.last["out"].stride() == (128, 1)
    assert torch.equal(out, reference_gemm(a, b).to(BF16))


# ---------------------------------------------------------------------------------------------
# matmul: bad inputs
# ---------------------------------------------------------------------------------------------


def test_matmul_wrong_kinds_and_dtypes(cpu_as_hopper):
    x, w = randn(64, 256), randn(256, 128)
    with pytest.raises(TypeError, match=r"^a: expected a torch\.Tensor or a pyfp8gemm\.FP8Tensor"):
        gemm.matmul([[1.0]], w)
    with pytest.raises(TypeError, match=r"^b: expected a torch\.Tensor or a pyfp8gemm\.FP8Tensor"):
        gemm.matmul(x, (w, w))
    with pytest.raises(TypeError, match=r"^a: expected dtype .*bfloat16.*got torch\.int32"):
        gemm.matmul(x.to(torch.int32), w)
    with pytest.raises(TypeError, match=r"^b: expected dtype .*got torch\.float64"):
        gemm.matmul(x, w.double())
    with pytest.raises(TypeError, match=r"^a: a bare torch\.float8_e4m3fn tensor has no scales"):
        gemm.matmul(x.to(E4M3), w)
    with pytest.raises(TypeError, match=r"^b: a bare torch\.float8_e5m2 tensor has no scales"):
        gemm.matmul(x, w.to(torch.float8_e5m2))


def test_matmul_out_dtype(cpu_as_hopper):
    x, w = randn(64, 256), randn(256, 128)
    for dtype in (torch.float32, torch.float16, E4M3):
        with pytest.raises(NotImplementedError, match=r"out_dtype: only torch\.bfloat16"):
            gemm.matmul(x, w, out_dtype=dtype)
    with pytest.raises(TypeError, match=r"out_dtype: expected a torch\.dtype"):
        gemm.matmul(x, w, out_dtype="bfloat16")


def test_matmul_shapes_and_alignment(cpu_as_hopper):
    x = randn(64, 256)
    with pytest.raises(ValueError, match=r"a\.shape\[-1\] and b\.shape\[0\]: K must match, "
                                         r"got 256 and 128"):
        gemm.matmul(x, randn(128, 256))
    with pytest.raises(ValueError, match=r"^b: expected a 2-D \(K, N\) tensor"):
        gemm.matmul(x, randn(2, 256, 128))
    with pytest.raises(ValueError, match=r"^b: expected a 2-D \(K, N\) tensor"):
        gemm.matmul(x, randn(256))
    with pytest.raises(ValueError, match=r"^a: expected a tensor of shape \(K,\)"):
        gemm.matmul(torch.tensor(1.0), randn(256, 128))
    with pytest.raises(ValueError, match=r"K \(= a\.shape\[-1\] = b\.shape\[0\]\): expected a "
                                         r"positive multiple of 16"):
        gemm.matmul(randn(64, 200), randn(200, 128))
    with pytest.raises(ValueError, match=r"N \(= b\.shape\[1\]\): expected a positive multiple "
                                         r"of 8"):
        gemm.matmul(x, randn(256, 129))


def test_matmul_bad_out(cpu_as_hopper):
    x, w = randn(2, 32, 256), randn(256, 128)
    with pytest.raises(TypeError, match=r"^out: expected dtype torch\.bfloat16"):
        gemm.matmul(x, w, out=torch.empty(2, 32, 128))
    with pytest.raises(ValueError, match=r"^out: expected shape \(2, 32, 128\)"):
        gemm.matmul(x, w, out=torch.empty(64, 128, dtype=BF16))
    with pytest.raises(ValueError, match=r"^out: expected a contiguous"):
        gemm.matmul(x, w, out=torch.empty(2, 128, 32, dtype=BF16).transpose(1, 2))


def test_matmul_granularity_mixups(cpu_as_hopper):
    x, w = randn(256, 256), randn(256, 128)
    with pytest.raises(ValueError, match=r"^a: expected an FP8Tensor with granularity '1x128'"):
        gemm.matmul(quantize(x, "128x128"), w)
    with pytest.raises(ValueError, match=r"^b: expected an FP8Tensor with granularity '128x128'"):
        gemm.matmul(x, quantize(w, "1x128"))  # a weight quantized like an activation


# ---------------------------------------------------------------------------------------------
# matmul: shape and layout logic
# ---------------------------------------------------------------------------------------------


def test_matmul_folds_leading_dims(fake_launcher):
    x, w = randn(2, 3, 5, 256), randn(136, 256)
    y = gemm.matmul(x, w.t())
    assert y.shape == (2, 3, 5, 136) and y.dtype == BF16
    assert fake_launcher.last["a_data"].shape == (30, 256)
    flat = gemm.matmul(x.reshape(30, 256), w.t())
    assert torch.equal(y.reshape(30, 136), flat)
    assert calc_diff(y.float(), x.float() @ w.float().t()) < 1e-3


def test_matmul_one_dimensional_a(fake_launcher):
    x, w = randn(256), randn(136, 256)
    y = gemm.matmul(x, w.t())
    assert y.shape == (136,)
    assert fake_launcher.last["a_data"].shape == (1, 256)
    assert torch.equal(y, gemm.matmul(x.unsqueeze(0), w.t())[0])


def test_matmul_transposed_fp8_weight_costs_no_copy(fake_launcher):
    """w.t() of a 128x128 FP8Tensor: the kernel reads the original (N, K) weight memory."""
    x = randn(64, 512)
    w = quantize(randn(384, 512), "128x128")
    y = gemm.matmul(x, w.t())
    call = fake_launcher.last
    assert call["b_data"].data_ptr() == w.data.data_ptr()
    assert call["b_scale"].data_ptr() == w.scale.data_ptr()
    assert torch.equal(y, reference_gemm(quantize(x, "1x128"), w).to(BF16))


def test_matmul_transposed_plain_weight_is_quantized_as_is(fake_launcher):
    x, w = randn(64, 512), randn(384, 512)
    gemm.matmul(x, w.t())
    expected = quantize(w, "128x128")
    assert torch.equal(fake_launcher.last["b_data"], expected.data)
    assert torch.equal(fake_launcher.last["b_scale"], expected.scale)


def test_matmul_contiguous_kn_weight_gives_the_same_operand(fake_launcher):
    """A contiguous (K, N) b is quantized in its own layout and then transposed as E4M3: bit for
    bit what quantizing the (N, K) transpose gives."""
    x, w_nk = randn(64, 640), randn(264, 640)  # partial blocks in both dimensions
    w_kn = w_nk.t().contiguous()
    y_kn = gemm.matmul(x, w_kn)
    from_kn = fake_launcher.last
    y_nk = gemm.matmul(x, w_nk.t())
    from_nk = fake_launcher.last
    assert torch.equal(from_kn["b_data"].view(torch.uint8), from_nk["b_data"].view(torch.uint8))
    assert torch.equal(from_kn["b_scale"], from_nk["b_scale"])
    assert torch.equal(y_kn, y_nk)


def test_matmul_fp8_weight_stored_kn(fake_launcher):
    """A 128x128 FP8Tensor that is itself (K, N): transposed exactly (no requantization)."""
    x, w_kn = randn(64, 512), randn(512, 256)
    q_kn = quantize(w_kn, "128x128")
    gemm.matmul(x, q_kn)
    call = fake_launcher.last
    assert torch.equal(call["b_data"].view(torch.uint8), q_kn.data.t().view(torch.uint8))
    assert torch.equal(call["b_scale"], q_kn.scale.t())


def test_matmul_fp8_activations_pass_through(fake_launcher):
    a = quantize(randn(129, 256), "1x128")
    w = quantize(randn(128, 256), "128x128")
    y = gemm.matmul(a, w.t())
    assert y.shape == (129, 128)
    assert fake_launcher.last["a_data"].data_ptr() == a.data.data_ptr()
    assert fake_launcher.last["a_scale"].data_ptr() == a.scale.data_ptr()
    assert torch.equal(y, reference_gemm(a, w).to(BF16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matmul_quantizes_float_inputs(fake_launcher, dtype):
    x, w = randn(100, 1024, dtype=dtype), randn(200, 1024, dtype=dtype)
    y = gemm.matmul(x, w.t())
    assert calc_diff(y.float(), x.float() @ w.float().t()) < 1e-3
    expected = reference_gemm(quantize(x, "1x128"), quantize(w, "128x128")).to(BF16)
    assert torch.equal(y, expected)


def test_matmul_non_contiguous_activations(fake_launcher):
    x, w = randn(256, 64).t(), randn(128, 256)  # a (64, 256) transposed view
    assert not x.is_contiguous()
    y = gemm.matmul(x, w.t())
    assert torch.equal(y, gemm.matmul(x.contiguous(), w.t()))


def test_matmul_writes_into_out(fake_launcher):
    x, w = randn(2, 16, 256), randn(128, 256)
    out = torch.full((2, 16, 128), float("nan"), dtype=BF16)
    assert gemm.matmul(x, w.t(), out=out) is out
    assert fake_launcher.last["out"].data_ptr() == out.data_ptr()
    assert not out.isnan().any()


def test_matmul_empty_m_launches_nothing(fake_launcher):
    y = gemm.matmul(randn(0, 256), randn(128, 256).t())
    assert y.shape == (0, 128)
    y = gemm.matmul(randn(3, 0, 256), randn(128, 256).t())
    assert y.shape == (3, 0, 128)
    assert fake_launcher.calls == []


# ---------------------------------------------------------------------------------------------
# The fast path of a repeated call: same tensors -> no checks; anything else -> full checks
# ---------------------------------------------------------------------------------------------


def refill(a, b, m, n, k):
    """New values in the same buffers (pointers and layouts unchanged)."""
    a_new, b_new = quantize(randn(m, k), "1x128"), quantize(randn(n, k), "128x128")
    a.data.copy_(a_new.data)
    a.scale.copy_(a_new.scale)
    b.data.copy_(b_new.data)
    b.scale.copy_(b_new.scale)


@pytest.mark.parametrize("as_pairs", [False, True])
def test_repeated_fp8_gemm_nt_skips_the_checks_and_computes(fake_launcher, monkeypatch, as_pairs):
    a, b, out = fp8_operands(96, 256, 384)
    args = ((a.data, a.scale), (b.data, b.scale)) if as_pairs else (a, b)
    gemm.fp8_gemm_nt(*args, out)
    assert fake_launcher.binds == 1 and len(gemm._fast_nt) == 1

    # Repeats: the checked path does not run (it would raise now), the same bound launch does.
    def no_checks(*args, **kwargs):
        raise AssertionError("the checks ran on the fast path")

    for _ in range(3):
        refill(a, b, 96, 256, 384)
        with monkeypatch.context() as patch:
            for name in ("_fp8_gemm_nt_checked", "_unpack_operand", "_tma_ready"):
                patch.setattr(gemm, name, no_checks)
            patch.setattr(device_info, "require_hopper", no_checks)
            assert gemm.fp8_gemm_nt(*args, out) is out
        assert torch.equal(out, reference_gemm(a, b).to(BF16))
    assert fake_launcher.binds == 1 and len(fake_launcher.calls) == 4


def test_pairs_and_fp8_tensors_are_remembered_apart(fake_launcher):
    a, b, out = fp8_operands(64, 128, 256)
    gemm.fp8_gemm_nt(a, b, out)
    gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale), out)   # pairs are checked in full
    assert fake_launcher.binds == 2 and len(gemm._fast_nt) == 2
    gemm.fp8_gemm_nt([a.data, a.scale], [b.data, b.scale], out)   # a list is a pair too
    assert fake_launcher.binds == 2


def test_fast_path_then_bad_calls_with_the_same_pointers_still_raise(fake_launcher):
    m, n, k = 64, 128, 256
    a, b, out = fp8_operands(m, n, k)
    pair_a, pair_b = (a.data, a.scale), (b.data, b.scale)
    gemm.fp8_gemm_nt(pair_a, pair_b, out)
    gemm.fp8_gemm_nt(pair_a, pair_b, out)                          # a fast-path hit
    gemm.fp8_gemm_nt(a, b, out)
    gemm.fp8_gemm_nt(a, b, out)
    assert fake_launcher.binds == 2

    # Same pointers, another dtype.
    with pytest.raises(TypeError, match=r"a\[0\] \(data\): expected dtype torch.float8_e4m3fn"):
        gemm.fp8_gemm_nt((a.data.view(torch.uint8), a.scale), pair_b, out)
    with pytest.raises(TypeError, match=r"b\[1\] \(scale\): expected dtype torch.float32"):
        gemm.fp8_gemm_nt(pair_a, (b.data, b.scale.view(torch.int32)), out)
    with pytest.raises(TypeError, match=r"out: expected dtype torch.bfloat16"):
        gemm.fp8_gemm_nt(a, b, out.view(torch.float16))
    # Same pointers, another stride (transposed views of square tensors: same memory).
    a2, b2, out2 = fp8_operands(k, k, k)
    gemm.fp8_gemm_nt(a2, b2, out2)
    gemm.fp8_gemm_nt(a2, b2, out2)
    with pytest.raises(ValueError, match=r"out: expected a contiguous \(row-major\) tensor"):
        gemm.fp8_gemm_nt(a2, b2, out2.t())
    with pytest.raises(ValueError, match=r"a\.data: expected a contiguous"):
        gemm.fp8_gemm_nt(FP8Tensor_unchecked(a2.data.t(), a2.scale, "1x128"), b2, out2)
    with pytest.raises(ValueError, match=r"b\[0\] \(data\): expected a contiguous"):
        gemm.fp8_gemm_nt((a2.data, a2.scale), (b2.data.t(), b2.scale), out2)
    # Same pointers, another shape.
    with pytest.raises(ValueError, match=r"out: expected shape \(64, 128\)"):
        gemm.fp8_gemm_nt(a, b, out[:32])
    with pytest.raises(ValueError, match=r"a\[1\] \(scale\): expected shape"):
        gemm.fp8_gemm_nt((a.data, a.scale[:, :1]), pair_b, out)
    # Same pointers, another device ("meta" stands in for a second device).
    with pytest.raises(ValueError, match=r"out.*same device"):
        gemm.fp8_gemm_nt(a, b, out.to("meta"))
    # Another granularity on the same tensors.
    with pytest.raises(ValueError, match=r"a: expected an FP8Tensor with granularity '1x128'"):
        gemm.fp8_gemm_nt(FP8Tensor_unchecked(a.data, a.scale, "128x128"), b, out)
    assert fake_launcher.binds == 3   # only the square call bound anything new


def FP8Tensor_unchecked(data, scale, granularity):
    """An FP8Tensor built without the constructor's checks (as if its parts had been changed
    after construction)."""
    from pyfp8gemm import FP8Tensor

    t = FP8Tensor.__new__(FP8Tensor)
    t.data, t.scale, t.granularity = data, scale, granularity
    return t


def test_in_place_metadata_change_is_seen(fake_launcher):
    """The same tensor object, its shape changed in place: a new key, the full checks."""
    a, b, out = fp8_operands(64, 128, 256)
    gemm.fp8_gemm_nt(a, b, out)
    gemm.fp8_gemm_nt(a, b, out)
    out.resize_(32, 128)                       # same storage, same pointer, another shape
    with pytest.raises(ValueError, match=r"out: expected shape \(64, 128\)"):
        gemm.fp8_gemm_nt(a, b, out)
    a.granularity = "128x128"
    with pytest.raises(ValueError, match="granularity '1x128'"):
        gemm.fp8_gemm_nt(a, b, torch.empty(64, 128, dtype=BF16))


def test_converted_scales_are_not_remembered(fake_launcher):
    """Row-major activation scales are converted (a copy) on every call: no fast path."""
    m, n, k = 64, 128, 256
    a, b, out = fp8_operands(m, n, k)
    row_major = a.scale.contiguous()
    for _ in range(3):
        gemm.fp8_gemm_nt((a.data, row_major), (b.data, b.scale), out)
    assert fake_launcher.binds == 3 and gemm._fast_nt == {}
    assert torch.equal(out, reference_gemm(a, b).to(BF16))


def test_set_num_sms_is_part_of_the_key(fake_launcher):
    a, b, out = fp8_operands(64, 128, 256)
    gemm.fp8_gemm_nt(a, b, out)
    device_info.set_num_sms(66)
    gemm.fp8_gemm_nt(a, b, out)
    assert fake_launcher.binds == 2


def test_empty_m_is_not_remembered(fake_launcher):
    a, b, out = fp8_operands(0, 128, 256)
    gemm.fp8_gemm_nt(a, b, out)
    assert gemm._fast_nt == {} and fake_launcher.calls == []


def test_fast_path_is_bounded(fake_launcher, monkeypatch):
    monkeypatch.setattr(gemm, "_FAST_PATH_SIZE", 3)
    a, b, _ = fp8_operands(64, 128, 256)
    outs = [torch.empty(64, 128, dtype=BF16) for _ in range(5)]
    for out in outs:
        gemm.fp8_gemm_nt(a, b, out)
    assert len(gemm._fast_nt) == 3
    gemm.clear_fast_path()
    assert gemm._fast_nt == {}


def test_repeated_matmul_with_fp8_tensors(fake_launcher):
    m, n, k = 96, 256, 384
    a, w, _ = fp8_operands(m, n, k)
    out = torch.empty(m, n, dtype=BF16)
    gemm.matmul(a, w.t(), out=out)
    for _ in range(2):
        refill(a, w, m, n, k)
        assert gemm.matmul(a, w.t(), out=out) is out
        assert torch.equal(out, reference_gemm(a, w).to(BF16))
    assert fake_launcher.binds == 1 and len(gemm._fast_matmul) == 1
    # out=None: a fresh output each call, bound to the remembered launch.
    first = gemm.matmul(a, w.t())
    second = gemm.matmul(a, w.t())
    assert torch.equal(first, out) and torch.equal(second, out)
    assert fake_launcher.binds == 2 and len(gemm._fast_matmul) == 2
    assert fake_launcher.last["out"].data_ptr() == second.data_ptr()
    # Bad calls with the same tensors still raise.
    with pytest.raises(TypeError, match="out: expected dtype torch.bfloat16"):
        gemm.matmul(a, w.t(), out=out.view(torch.float16))
    with pytest.raises(NotImplementedError, match="out_dtype"):
        gemm.matmul(a, w.t(), out_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"out: expected a contiguous tensor"):
        gemm.matmul(a, w.t(), out=torch.empty(n, m, dtype=BF16).t())


def test_matmul_copied_weight_is_not_remembered(fake_launcher):
    """A (K, N) FP8Tensor stored row-major is transposed (a copy) every call: no fast path."""
    a, _, _ = fp8_operands(64, 128, 256)
    w_kn = quantize(randn(256, 128), "128x128")
    for _ in range(2):
        gemm.matmul(a, w_kn)
    assert fake_launcher.binds == 2 and gemm._fast_matmul == {}


def test_fast_path_switches_device_only_when_needed(monkeypatch):
    """A remembered launch on cuda:1 runs directly when cuda:1 is current, under
    torch.cuda.device(1) otherwise; device None (one GPU) never asks."""
    import contextlib

    ran, switched = [], []

    @contextlib.contextmanager
    def fake_device(index):
        switched.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    current = [1]
    monkeypatch.setattr(gemm, "_current_device", lambda: current[0])
    gemm._run(lambda: ran.append(1), 1)
    current[0] = 0
    gemm._run(lambda: ran.append(1), 1)
    monkeypatch.setattr(gemm, "_current_device", lambda: pytest.fail("asked"))
    gemm._run(lambda: ran.append(1), None)
    assert ran == [1, 1, 1] and switched == [1]


# ---------------------------------------------------------------------------------------------
# int32 sizes (issue 17), b's orientation, c and the 1D1D kernel, set_num_sms without a GPU
# ---------------------------------------------------------------------------------------------

BIG = 2**31   # one more than the kernels' int32 parameters hold (and a multiple of 16)


def _meta(*shape, dtype=E4M3):
    return torch.empty(*shape, dtype=dtype, device="meta")


@pytest.mark.parametrize("which", ["M", "N", "K"])
def test_fp8_gemm_nt_sizes_beyond_int32_are_refused(which):
    """Meta tensors (no memory): the size check comes before anything reads memory."""
    m, n, k = {"M": (BIG, 16, 16), "N": (16, BIG, 16), "K": (16, 16, BIG)}[which]
    a = (_meta(m, k), _meta(m, ceil_div(k, 128), dtype=torch.float32))
    b = (_meta(n, k), _meta(ceil_div(n, 128), ceil_div(k, 128), dtype=torch.float32))
    with pytest.raises(ValueError, match=rf"^{which} \(= .*\) = {BIG} is too large.*int32"):
        gemm.fp8_gemm_nt(a, b, _meta(m, n, dtype=BF16))


def test_fp8_gemm_nt_int32_check_on_expanded_cpu_views():
    """Expanded CPU views (no memory either) take the same checks as CUDA tensors."""
    a = torch.empty(1, 16, dtype=E4M3).expand(BIG, 16)
    a_scale = torch.empty(1, 1).expand(BIG, 1)
    b = (torch.randn(16, 16).to(E4M3), torch.rand(1, 1))
    out = torch.empty(1, 16, dtype=BF16).expand(BIG, 16)
    with pytest.raises(ValueError, match=r"^M \(= a\[0\] \(data\)\.shape\[0\]\) = 2147483648 is "
                                         r"too large"):
        gemm.fp8_gemm_nt((a, a_scale), b, out)


def test_matmul_sizes_beyond_int32_are_refused():
    x = torch.empty(1, 1, 16, dtype=BF16).expand(2, 2**30, 16)   # M = 2 * 2^30 from two dims
    with pytest.raises(ValueError, match=r"^M \(= the product of a\.shape\[:-1\]\) = 2147483648"):
        gemm.matmul(x, torch.randn(16, 16, dtype=BF16))
    with pytest.raises(ValueError, match=r"^N \(= b\.shape\[1\]\) = 2147483648"):
        gemm.matmul(_meta(4, 16, dtype=BF16), _meta(16, BIG, dtype=BF16))


def test_transposed_weight_gets_a_hint():
    """fp8_gemm_nt(a, b.t(), out): say that b is the (N, K) weight and what to pass."""
    a, b, out = fp8_operands(64, 256, 128)   # b is (256, 128): b.t() is (128, 256) = (K, N)
    with pytest.raises(ValueError, match=r"K must match, got 128 and 256.*\(N, K\) weight, "
                                         r"K-major.*looks transposed.*pass w.*matmul"):
        gemm.fp8_gemm_nt(a, b.t(), torch.empty(64, 128, dtype=BF16))
    # Any other K mismatch still says what b is, without the transposition guess.
    b_other = quantize(randn(256, 384), "128x128")
    with pytest.raises(ValueError, match=r"got 128 and 384; b\.data is the \(N, K\) weight") as e:
        gemm.fp8_gemm_nt(a, b_other, out)
    assert "transposed" not in str(e.value)


def test_c_and_float32_out_need_per_row_weight_scales():
    """The 1D2D kernel (b with 128x128 scales) takes no c and writes bf16, as in DeepGEMM."""
    a, b, out = fp8_operands(64, 128, 256)
    with pytest.raises(ValueError, match=r"^c: expected None: the 1D2D kernel .*1x128"):
        gemm.fp8_gemm_nt(a, b, out, c=out)
    with pytest.raises(TypeError, match=r"^out: expected dtype torch.bfloat16, got torch.float32: "
                                        r"the 1D2D kernel"):
        gemm.fp8_gemm_nt(a, b, torch.empty(64, 128))


def test_per_row_weight_scales_go_to_the_1d1d_kernel(monkeypatch):
    from pyfp8gemm.host import gemm_1d1d

    a = quantize(randn(64, 256), "1x128")
    b = quantize(randn(128, 256), "1x128")
    c = torch.randn(64, 128)
    calls = []
    real = gemm_1d1d.fp8_gemm_nt_1d1d
    monkeypatch.setattr(gemm_1d1d, "fp8_gemm_nt_1d1d",
                        lambda *args: calls.append(args) or real(*args))
    d = torch.empty(64, 128)
    assert gemm.fp8_gemm_nt(a, b, d, c=c) is d
    assert len(calls) == 1 and calls[0][3] is c
    torch.testing.assert_close(d, c + reference_gemm(a, b), rtol=1e-5, atol=1e-3)
    # A pair whose scale has the (N, ceil(K/128)) shape, float32 d, no c: 1D1D as well.
    d2 = torch.empty(64, 128)
    gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale.contiguous()), d2)
    assert len(calls) == 2
    torch.testing.assert_close(d2, reference_gemm(a, b), rtol=1e-5, atol=1e-3)
    # Per-row b with a bf16 out is the usual mix-up: the 1D2D message, with the 1D1D hint.
    with pytest.raises(ValueError, match=r"granularity '128x128'.*1D1D kernel's: pass a float32"):
        gemm.fp8_gemm_nt(a, b, torch.empty(64, 128, dtype=BF16))


def test_set_num_sms_beyond_any_hopper_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    with pytest.raises(ValueError, match=r"<= 132, the most SMs any Hopper GPU has.*no CUDA "
                                         r"device.*got 1000000"):
        device_info.set_num_sms(10**6)
    device_info.set_num_sms(132)
    assert device_info.get_num_sms() == 132
