"""The host fast path on a Hopper GPU: the ctypes cuLaunchKernelEx, one launch configuration
per stream, repeated calls (no checks) still correct, the cuda-bindings fallback, a thread
that never touched CUDA.

Marked `gpu`: skipped (with the reason) without a Hopper GPU, see conftest.py. The CPU side of
the same machinery is in test_raw_launch.py, test_launch_plan.py and test_gemm_api.py.
"""

from __future__ import annotations

import threading

import pytest
import torch

from pyfp8gemm import quantize
from pyfp8gemm.host import driver, gemm, launch
from pyfp8gemm.testing import calc_diff, reference_gemm

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
M, N, K = 129, 2112, 7168


@pytest.fixture(autouse=True)
def seeded(seed):
    torch.manual_seed(seed)


def operands():
    a = quantize(torch.randn(M, K, dtype=BF16, device="cuda"), "1x128")
    b = quantize(torch.randn(N, K, dtype=BF16, device="cuda"), "128x128")
    return a, b, torch.full((M, N), float("nan"), dtype=BF16, device="cuda")


def refill(a, b):
    """New values in the same buffers: a repeated call (fast path) must see them."""
    a_new = quantize(torch.randn(M, K, dtype=BF16, device="cuda"), "1x128")
    b_new = quantize(torch.randn(N, K, dtype=BF16, device="cuda"), "128x128")
    for old, new in ((a.data, a_new.data), (a.scale, a_new.scale), (b.data, b_new.data),
                     (b.scale, b_new.scale)):
        old.copy_(new)


def assert_exact(out, a, b):
    """Every output written, and equal to the exact product up to bf16 rounding (the bar of
    test_gemm_gpu.py)."""
    assert not out.isnan().any()
    diff = calc_diff(out, reference_gemm(a, b))
    assert diff < 1e-5, diff


def test_the_ctypes_launch_is_in_use():
    a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)
    assert driver.raw_launch_function() is not None, "cuGetProcAddress gave no cuLaunchKernelEx"
    bound = launch.bind(a.data, a.scale, b.data, b.scale, out)
    assert bound._fn is driver.raw_launch_function()
    torch.cuda.synchronize()
    assert_exact(out, a, b)


def test_repeated_calls_take_the_fast_path_and_stay_correct(monkeypatch):
    a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)
    remembered = len(gemm._fast_nt)
    # A fast-path miss goes through the checked path (which would remember the same key again,
    # leaving the count unchanged): count those calls instead.
    checked_calls = []
    checked = gemm._fp8_gemm_nt_checked
    monkeypatch.setattr(gemm, "_fp8_gemm_nt_checked",
                        lambda *args: checked_calls.append(1) or checked(*args))
    for _ in range(3):
        refill(a, b)
        out.fill_(float("nan"))
        assert gemm.fp8_gemm_nt(a, b, out) is out
        torch.cuda.synchronize()
        assert_exact(out, a, b)
    assert checked_calls == []                       # every repeat was a fast-path hit
    assert len(gemm._fast_nt) == remembered          # and nothing new was remembered
    monkeypatch.undo()
    y = gemm.matmul(a, b.t())
    y2 = gemm.matmul(a, b.t())                        # fast path with out=None
    torch.cuda.synchronize()
    assert torch.equal(y, out) and torch.equal(y2, out)


def test_fast_path_launches_on_the_current_stream():
    """Remembered on the default stream, repeated on a side stream behind a ~20 ms spin and a
    NaN fill: launched anywhere but the side stream, the late fill would wipe the result."""
    a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(40_000_000)
        out.fill_(float("nan"))
        gemm.fp8_gemm_nt(a, b, out)
    side.synchronize()
    assert_exact(out, a, b)
    # And back on the default stream, whose configuration was built first.
    out.fill_(float("nan"))
    gemm.fp8_gemm_nt(a, b, out)
    torch.cuda.synchronize()
    assert_exact(out, a, b)


def test_cuda_bindings_fallback_gives_the_same_bits(monkeypatch):
    a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)
    torch.cuda.synchronize()
    raw = out.clone()
    kernel = launch.bind(a.data, a.scale, b.data, b.scale, out).plan.kernel

    def fresh():
        kernel._launch_parts.clear()
        launch._bound.clear()
        gemm.clear_fast_path()

    fresh()
    monkeypatch.setattr(driver, "_raw_launch_function", None)
    try:
        out.fill_(float("nan"))
        gemm.fp8_gemm_nt(a, b, out)
        assert launch.bind(a.data, a.scale, b.data, b.scale, out)._fn is driver._bindings_launch
        torch.cuda.synchronize()
        assert torch.equal(out.view(torch.int16), raw.view(torch.int16))
    finally:
        fresh()                       # later tests rebuild their launches with the ctypes call


def test_a_new_thread_can_call():
    """A thread that never used CUDA before (no current context on it): the call works."""
    a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)                       # remembered on this thread
    torch.cuda.synchronize()
    out.fill_(float("nan"))
    torch.cuda.synchronize()
    errors = []

    def worker():
        try:
            gemm.fp8_gemm_nt(a, b, out)
            torch.cuda.synchronize()
        except Exception as error:   # reported below with the thread's exception
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
    assert_exact(out, a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fast_path_on_another_device_than_the_current_one():
    with torch.cuda.device(1):
        if torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("cuda:1 is not a Hopper GPU")
        a, b, out = operands()
    gemm.fp8_gemm_nt(a, b, out)                       # current device 0, tensors on 1
    out.fill_(float("nan"))
    gemm.fp8_gemm_nt(a, b, out)                       # fast path, switches to cuda:1
    torch.cuda.synchronize(1)
    assert_exact(out, a, b)
