"""Launching the fused quantization kernels (device/quantize.py).

1x128 (activations, bf16): `applies(x)` says whether the kernel takes x; `launch(...)` runs it
into buffers the caller made in the library's layouts (host/fp8tensor.py for the row-wise one,
host/quantize_training.py for the transposed one). 128x128 (weights, bf16 or float32):
`applies_128x128(w, transposed)` and `launch_128x128(...)`, for fp8tensor's `quantize` and the
nn layers' weight cache (W and W^T at once). This module knows nothing of FP8Tensor.

The kernels write exactly the bits the torch-op path computes (tests/test_quantize_fused_gpu.py),
so callers use them wherever they apply and keep the torch ops for every other input, for
tracing under torch.compile, and when PYFP8GEMM_FUSED_QUANTIZE=0.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

__all__ = ["enabled", "applies", "launch", "applies_128x128", "launch_128x128", "torch_ops_only"]

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


def _launchable(x: torch.Tensor, dtypes) -> bool:
    """Common to both kernels: a contiguous 2-D CUDA tensor of `dtypes` on a Hopper GPU, not
    empty, 16-byte aligned, its last dimension a multiple of 16 (16-byte vectors), below 2^31
    elements, not traced, the fused path enabled."""
    if not (x.is_cuda and x.dtype in dtypes and x.dim() == 2 and enabled()):
        return False
    if torch.compiler.is_compiling():
        return False
    rows, cols = x.shape
    if rows == 0 or cols == 0 or cols % 16 or not x.is_contiguous():
        return False
    if x.data_ptr() % 16 or rows * cols >= 2**31:
        return False
    from pyfp8gemm.host import device_info
    return device_info.is_hopper(x.device)


def applies(x: torch.Tensor) -> bool:
    """Whether the 1x128 kernel takes x: bf16, T x C with C % 16 == 0 (see _launchable)."""
    return _launchable(x, (torch.bfloat16,))


def applies_128x128(w: torch.Tensor, transposed: bool = False) -> bool:
    """Whether the 128x128 kernel takes w: bf16 or float32, N x K with K % 16 == 0, and
    N % 16 == 0 for W^T (16-byte rows of W^T)."""
    if transposed and w.dim() == 2 and w.shape[0] % 16:
        return False
    return _launchable(w, (torch.bfloat16, torch.float32))


def _device_index(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _loaded(variant: tuple, device_index: int):
    """The kernel of a variant: ("1x128", rowwise, transposed) or ("128x128", dtype, transposed).
    (numba, the compiler and the driver load on the first launch: `import pyfp8gemm` stays
    light, tests/test_ops.py)"""
    from pyfp8gemm.cache.compiler import compile_kernel
    from pyfp8gemm.host import driver
    from pyfp8gemm.host.kernels import quantize_128x128_kernel_spec, quantize_kernel_spec

    kind, *args = variant
    spec = quantize_kernel_spec(*args) if kind == "1x128" else quantize_128x128_kernel_spec(*args)
    compiled = compile_kernel(spec)
    return driver.LoadedKernel(spec.name, compiled.cubin, device_index, spec.threads,
                               spec.config["smem_bytes"], 1)


def _launch(kernel, grid: int, index: int, params) -> None:
    from pyfp8gemm.host import driver
    if index == torch.cuda.current_device():
        kernel.launch_parts(grid).launch(driver.current_raw_stream(index), params.address)
    else:                      # the input lives on another GPU than the current one: launch there
        with torch.cuda.device(index):
            kernel.launch_parts(grid).launch(driver.current_raw_stream(index), params.address)


def launch(x: torch.Tensor, rows=None, cols=None, t_pad: int = 0) -> None:
    """Quantize x (T, C) on the current stream into `rows` = (data (T, C), scale (T, C/128)
    MN-major aligned) and/or `cols` = (data (C, t_pad), scale (C, T/128) MN-major aligned), each
    a pair of tensors on x's device or None. The scale buffers' pad entries are left as they
    are (callers allocate them zeroed)."""
    from pyfp8gemm.device import quantize as device_quantize
    from pyfp8gemm.host import driver

    assert rows is not None or cols is not None
    tokens, channels = x.shape
    index = _device_index(x)
    kernel = _loaded(("1x128", rows is not None, cols is not None), index)
    row_data, row_scale = (rows[0].data_ptr(), rows[1].data_ptr()) if rows else (0, 0)
    col_data, col_scale = (cols[0].data_ptr(), cols[1].data_ptr()) if cols else (0, 0)
    c_int32, c_int64 = driver.c_int32, driver.c_int64
    params = driver.ParamBlock((
        (c_int64, x.data_ptr()), (c_int32, tokens), (c_int32, channels),
        (c_int64, row_data), (c_int64, row_scale), (c_int64, col_data), (c_int64, col_scale),
        (c_int32, t_pad)))
    _launch(kernel, device_quantize.grid_size(tokens, channels), index, params)


def launch_128x128(w: torch.Tensor, data: torch.Tensor, scale: torch.Tensor,
                   transposed: tuple | None = None) -> None:
    """Quantize w (N, K) on the current stream into data (N, K) E4M3 and scale
    (ceil(N/128), ceil(K/128)) float32, both contiguous on w's device, and, given `transposed` =
    (data_t (K, N), scale_t (ceil(K/128), ceil(N/128))), W^T into those."""
    from pyfp8gemm.device import quantize as device_quantize
    from pyfp8gemm.host import driver

    rows, cols = w.shape
    index = _device_index(w)
    dtype = "bf16" if w.dtype == torch.bfloat16 else "f32"
    kernel = _loaded(("128x128", dtype, transposed is not None), index)
    data_t, scale_t = (transposed[0].data_ptr(), transposed[1].data_ptr()) if transposed \
        else (0, 0)
    c_int32, c_int64 = driver.c_int32, driver.c_int64
    params = driver.ParamBlock((
        (c_int64, w.data_ptr()), (c_int32, rows), (c_int32, cols),
        (c_int64, data.data_ptr()), (c_int64, scale.data_ptr()),
        (c_int64, data_t), (c_int64, scale_t)))
    _launch(kernel, device_quantize.block_grid_size(rows, cols), index, params)
