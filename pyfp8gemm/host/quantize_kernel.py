"""Launching the fused 1x128 quantization kernel (device/quantize.py) on a bf16 input.

`applies(x)` says whether the kernel takes x; `launch(...)` runs it into buffers the caller
made in the library's layouts (host/fp8tensor.py for the row-wise one, host/quantize_training.py
for the transposed one), so this module knows nothing of FP8Tensor. The kernel writes exactly
the bits the torch-op path computes (tests/test_quantize_fused_gpu.py), so callers use it
wherever it applies and keep the torch ops for every other input, for tracing under
torch.compile, and when PYFP8GEMM_FUSED_QUANTIZE=0.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

__all__ = ["enabled", "applies", "launch", "torch_ops_only"]

ENV = "PYFP8GEMM_FUSED_QUANTIZE"


def enabled() -> bool:
    """PYFP8GEMM_FUSED_QUANTIZE=0 sends every call to the torch-op path (for comparisons)."""
    return os.environ.get(ENV, "1") != "0"


@contextlib.contextmanager
def torch_ops_only():
    """Within: PYFP8GEMM_FUSED_QUANTIZE=0 (the torch-op path), restored after (process-wide:
    for benchmarks and tests, not for threads that quantize meanwhile)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def applies(x: torch.Tensor) -> bool:
    """Whether the kernel takes x: a contiguous 2-D bf16 CUDA tensor on a Hopper GPU, C a
    multiple of 16 (16-byte vector rows), 16-byte aligned, T x C below 2^31, not traced."""
    if not (x.is_cuda and x.dtype == torch.bfloat16 and x.dim() == 2 and enabled()):
        return False
    if torch.compiler.is_compiling():
        return False
    tokens, channels = x.shape
    if tokens == 0 or channels == 0 or channels % 16 or not x.is_contiguous():
        return False
    if x.data_ptr() % 16 or tokens * channels >= 2**31:
        return False
    from pyfp8gemm.host import device_info
    return device_info.is_hopper(x.device)


@functools.lru_cache(maxsize=None)
def _loaded(rowwise: bool, transposed: bool, device_index: int):
    # (numba, the compiler and the driver load on the first launch: `import pyfp8gemm` stays
    # light, tests/test_ops.py)
    from pyfp8gemm.cache.compiler import compile_kernel
    from pyfp8gemm.device import quantize as device_quantize
    from pyfp8gemm.host import driver
    from pyfp8gemm.host.kernels import quantize_kernel_spec

    spec = quantize_kernel_spec(rowwise, transposed)
    compiled = compile_kernel(spec)
    return driver.LoadedKernel(spec.name, compiled.cubin, device_index, spec.threads,
                               device_quantize.SMEM_BYTES, 1)


def launch(x: torch.Tensor, rows=None, cols=None, t_pad: int = 0) -> None:
    """Quantize x (T, C) on the current stream into `rows` = (data (T, C), scale (T, C/128)
    MN-major aligned) and/or `cols` = (data (C, t_pad), scale (C, T/128) MN-major aligned), each
    a pair of tensors on x's device or None. The scale buffers' pad entries are left as they
    are (callers allocate them zeroed)."""
    from pyfp8gemm.device import quantize as device_quantize
    from pyfp8gemm.host import driver

    assert rows is not None or cols is not None
    tokens, channels = x.shape
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    kernel = _loaded(rows is not None, cols is not None, index)
    row_data, row_scale = (rows[0].data_ptr(), rows[1].data_ptr()) if rows else (0, 0)
    col_data, col_scale = (cols[0].data_ptr(), cols[1].data_ptr()) if cols else (0, 0)
    c_int32, c_int64 = driver.c_int32, driver.c_int64
    params = driver.ParamBlock((
        (c_int64, x.data_ptr()), (c_int32, tokens), (c_int32, channels),
        (c_int64, row_data), (c_int64, row_scale), (c_int64, col_data), (c_int64, col_scale),
        (c_int32, t_pad)))
    grid = device_quantize.grid_size(tokens, channels)
    if index == torch.cuda.current_device():
        kernel.launch_parts(grid).launch(driver.current_raw_stream(index), params.address)
    else:                      # x lives on another GPU than the current one: launch there
        with torch.cuda.device(index):
            kernel.launch_parts(grid).launch(driver.current_raw_stream(index), params.address)
