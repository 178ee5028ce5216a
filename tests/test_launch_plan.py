"""The launcher's per-call fast path on the CPU (driver calls faked): what is built once per
plan, what per set of tensors, and that the parameter block carries the right values."""

import ctypes

import pytest
import torch
from cuda.bindings import driver as cu

import pyfp8gemm
from pyfp8gemm.device.gemm_1d2d import GemmConfig
from pyfp8gemm.host import driver, launch


class RecordingKernel:
    def __init__(self):
        self.launches = []

    def launch_packed(self, grid, stream, params_address):
        self.launches.append((grid, stream, params_address))


@pytest.fixture
def fake_gpu(monkeypatch):
    """A plan with a recording kernel; tensor maps recorded instead of encoded."""
    encoded = []

    def fake_tensormap(*args):
        encoded.append(args)
        return cu.CUtensorMap()

    kernel = RecordingKernel()
    plans = {}

    def fake_plan(m, n, k, device_index, num_sms, cfg):
        key = (m, n, k)
        if key not in plans:
            plans[key] = launch.Plan(GemmConfig(128, 64, 8), kernel, 33, m, n, k)
        return plans[key]

    monkeypatch.setattr(launch, "_plan", fake_plan)
    monkeypatch.setattr(launch, "get_num_sms", lambda index: 132)
    monkeypatch.setattr(driver, "tensormap_2d", fake_tensormap)
    monkeypatch.setattr(driver, "current_raw_stream", lambda index: 1234)
    return kernel, encoded, plans


def operands(m=300, n=576, k=1024):
    a = pyfp8gemm.quantize(torch.randn(m, k), "1x128")
    b = pyfp8gemm.quantize(torch.randn(n, k), "128x128")
    return a, b, torch.empty(m, n, dtype=torch.bfloat16)


def test_repeated_call_reuses_the_parameter_block(fake_gpu):
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    for _ in range(3):
        launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    assert len(encoded) == 4                      # four tensor maps, encoded once
    assert len({address for _, _, address in kernel.launches}) == 1
    assert all(grid == 33 and stream == 1234 for grid, stream, _ in kernel.launches)


def test_new_tensors_get_their_own_block(fake_gpu):
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    out2 = torch.empty_like(out)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out2)
    assert len(encoded) == 8
    assert kernel.launches[0][2] != kernel.launches[1][2]
    # The output tensor map of the second block points at out2.
    assert encoded[7][1] == out2.data_ptr()


def test_parameter_block_holds_pointers_and_sizes(fake_gpu):
    kernel, encoded, plans = fake_gpu
    m, n, k = 300, 576, 1040
    a, b, out = operands(m, n, k)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    address = kernel.launches[-1][2]
    pointers = (ctypes.c_void_p * 8).from_address(address)
    assert ctypes.c_int64.from_address(pointers[4]).value == b.scale.data_ptr()
    assert [ctypes.c_int32.from_address(pointers[i]).value for i in (5, 6, 7)] == [m, n, k]
    # The activation-scale map uses the MN-major stride: align(M, 4) floats per K block.
    sfa_args = encoded[2]
    assert sfa_args[1] == a.scale.data_ptr() and sfa_args[4] == 4 * ((m + 3) // 4 * 4)


def test_parameter_blocks_are_bounded(fake_gpu, monkeypatch):
    kernel, encoded, plans = fake_gpu
    monkeypatch.setattr(launch.Plan, "MAX_PARAM_BLOCKS", 4)
    a, b, _ = operands()
    outs = [torch.empty(300, 576, dtype=torch.bfloat16) for _ in range(6)]
    for out in outs:
        launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    (plan,) = plans.values()
    assert len(plan.param_blocks) == 4            # the two oldest were dropped
    assert {key[-1] for key in plan.param_blocks} == {o.data_ptr() for o in outs[2:]}


def test_param_block_copies_tensormaps_by_value():
    tensormap = cu.CUtensorMap()
    ctypes.memset(tensormap.getPtr(), 7, 128)
    block = driver.ParamBlock((tensormap, (driver.c_int32, 5)))
    pointers = (ctypes.c_void_p * 2).from_address(block.address)
    assert bytes((ctypes.c_uint8 * 128).from_address(pointers[0])) == bytes([7]) * 128
    ctypes.memset(tensormap.getPtr(), 0, 128)        # the block keeps its own copy
    assert bytes((ctypes.c_uint8 * 128).from_address(pointers[0])) == bytes([7]) * 128
    assert ctypes.c_int32.from_address(pointers[1]).value == 5
