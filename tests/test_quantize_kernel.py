"""The fused quantization kernels as ptxas builds them, and the host's choice of path (CPU, no
GPU): the GPU tests (test_quantize_fused_gpu.py) check their bits against the torch ops."""

import pytest
import torch

from pyfp8gemm.cache import compiler, toolchain
from pyfp8gemm.device import quantize as device_quantize
from pyfp8gemm.host import quantize_kernel, quantize_training as qt
from pyfp8gemm.host.kernels import (
    QUANTIZE_128X128_VARIANTS,
    QUANTIZE_VARIANTS,
    all_kernel_specs,
    quantize_128x128_kernel_spec,
    quantize_kernel_spec,
)


def _built_without_local_memory(spec, max_registers):
    """Compile `spec`: no spills, no local memory, at most `max_registers`; its SASS text and
    opcodes in order."""
    kernel = compiler.compile_kernel(spec)
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    assert kernel.meta["registers"] <= max_registers
    sass = toolchain.sass(kernel.cubin)
    assert "LDL" not in sass and "STL" not in sass
    return sass, [opcode for _, _, opcode in toolchain._sass_instructions(sass)]


@pytest.mark.parametrize("rowwise, transposed", QUANTIZE_VARIANTS)
def test_quantize_kernel_builds_without_local_memory(rowwise, transposed):
    """Vector loads and stores as written (16-byte loads of x; 8-byte row stores, 16-byte
    transposed stores), loads issued LOADS_IN_FLIGHT at a time before their values are used,
    E4M3 pairs converted in one instruction, nothing in local memory, and few enough registers
    for three CTAs per SM."""
    sass, opcodes = _built_without_local_memory(quantize_kernel_spec(rowwise, transposed), 80)
    assert "LDG.E.128.CONSTANT" in sass             # ld.global.nc.v4: x read once, 16 B a lane
    first_use = next(i for i, op in enumerate(opcodes) if op.startswith(("STS", "SHFL")))
    loads = [op for op in opcodes[:first_use] if op.startswith("LDG.E.128.CONSTANT")]
    assert len(loads) >= device_quantize.LOADS_IN_FLIGHT   # issued before any is used
    assert ("STG.E.64" in sass) == rowwise          # 8 E4M3 bytes per lane and row
    assert ("STG.E.128" in sass) == transposed      # 16 tokens of x^T per store
    assert "F2FP.SATFINITE.E4M3.F32.PACK_AB" in sass  # cvt.rn.satfinite.e4m3x2: two at a time
    assert device_quantize.SMEM_BYTES <= 48 * 1024  # no opt-in needed; 4+ CTAs per SM


def test_quantize_kernels_are_listed_for_warmup_and_inspect():
    from pyfp8gemm.inspect import _launch_shape

    names = {spec.name for spec in all_kernel_specs()}
    assert {quantize_kernel_spec(*v).name for v in QUANTIZE_VARIANTS} <= names
    assert len({quantize_kernel_spec(*v).name for v in QUANTIZE_VARIANTS}) == 3
    # inspect reports the shared memory the launcher asks for
    assert _launch_shape(quantize_kernel_spec(True, True)) == (device_quantize.SMEM_BYTES, 1)


def test_grid_covers_every_tile():
    assert device_quantize.grid_size(1, 16) == 1
    assert device_quantize.grid_size(128, 128) == 1
    assert device_quantize.grid_size(129, 128) == 2
    assert device_quantize.grid_size(16384, 7168) == 128 * 56


def test_cpu_and_other_inputs_take_the_torch_ops(monkeypatch):
    """The kernel takes only contiguous bf16 CUDA input with C % 16 == 0; everything else (here:
    CPU tensors) goes through the torch ops, with the same results as quantize()."""
    x = torch.randn(130, 48).to(torch.bfloat16)
    assert not quantize_kernel.applies(x)
    rows, cols_t = qt.quantize_rowwise_and_transposed(x)
    assert rows.data.shape == (130, 48) and cols_t.data.shape == (48, 144)
    monkeypatch.setenv("PYFP8GEMM_FUSED_QUANTIZE", "0")
    assert not quantize_kernel.enabled()
    monkeypatch.setenv("PYFP8GEMM_FUSED_QUANTIZE", "1")
    assert quantize_kernel.enabled()


def test_torch_ops_only_switches_and_restores(monkeypatch):
    from pyfp8gemm.host import quantize_kernel

    monkeypatch.delenv("PYFP8GEMM_FUSED_QUANTIZE", raising=False)
    with quantize_kernel.torch_ops_only():
        assert not quantize_kernel.enabled()
    assert quantize_kernel.enabled() and "PYFP8GEMM_FUSED_QUANTIZE" not in __import__("os").environ
    monkeypatch.setenv("PYFP8GEMM_FUSED_QUANTIZE", "1")
    with pytest.raises(RuntimeError):
        with quantize_kernel.torch_ops_only():
            raise RuntimeError("inside")
    assert quantize_kernel.enabled()


@pytest.mark.parametrize("dtype, transposed", QUANTIZE_128X128_VARIANTS)
def test_quantize_128x128_kernel_builds_without_local_memory(dtype, transposed):
    """The weight kernel: 16-byte loads of w issued four at a time before their values are
    parked, W's rows stored 8 (bf16) or 4 (float32) bytes a lane, W^T 16 bytes a lane, nothing
    in local memory, and shared memory for at least two CTAs per SM."""
    sass, opcodes = _built_without_local_memory(
        quantize_128x128_kernel_spec(dtype, transposed), 96)
    loads = [i for i, op in enumerate(opcodes) if op.startswith("LDG.E.128.CONSTANT")]
    first_park = next(i for i, op in enumerate(opcodes) if op.startswith("STS.128"))
    assert len([i for i in loads if i < first_park]) == device_quantize.LOADS_IN_FLIGHT
    # W's rows: 8 E4M3 bytes of 8 bf16 per store, or 4 of 4 float32 (plain STG.E, as the scale)
    assert ("STG.E.64" in opcodes) == (dtype == "bf16")
    assert ("STG.E.128" in sass) == transposed
    assert "F2FP.SATFINITE.E4M3.F32.PACK_AB" in sass
    assert 2 * (device_quantize.block_smem_bytes(dtype, transposed) + 1024) <= 227 * 1024


def test_quantize_128x128_kernels_are_listed_for_warmup_and_inspect():
    from pyfp8gemm.inspect import _launch_shape

    names = {spec.name for spec in all_kernel_specs()}
    variants = {quantize_128x128_kernel_spec(*v).name for v in QUANTIZE_128X128_VARIANTS}
    assert len(variants) == 4 and variants <= names
    assert _launch_shape(quantize_128x128_kernel_spec("f32", True)) == (
        device_quantize.block_smem_bytes("f32", True), 1)


def test_block_grid_covers_every_block():
    assert device_quantize.block_grid_size(1, 16) == 1
    assert device_quantize.block_grid_size(129, 128) == 2
    assert device_quantize.block_grid_size(18432, 7168) == 144 * 56


def test_weight_kernel_never_takes_cpu_tensors():
    w = torch.randn(256, 384)
    assert not quantize_kernel.applies_128x128(w)
    assert not quantize_kernel.applies_128x128(w, transposed=True)


def test_weight_and_transposed_on_cpu_match_quantize():
    """Off the kernel, W^T is W's quantization transposed: same bytes, same scales."""
    from pyfp8gemm.host.fp8tensor import quantize

    w = torch.randn(300, 200) * 4
    q, (data_t, scale_t) = qt.quantize_weight_and_transposed(w)
    want = quantize(w, "128x128")
    assert torch.equal(q.data.view(torch.uint8), want.data.view(torch.uint8))
    assert torch.equal(q.scale, want.scale)
    assert data_t.shape == (200, 300) and data_t.is_contiguous()
    assert torch.equal(data_t.view(torch.uint8), want.data.view(torch.uint8).t())
    assert scale_t.shape == (2, 3) and scale_t.is_contiguous()
    assert torch.equal(scale_t, want.scale.t())
    with pytest.raises(ValueError, match="w"):
        qt.quantize_weight_and_transposed(torch.randn(4, 4, 4))
