"""Launching the dense FP8 GEMM kernel on validated torch tensors.

`fp8_gemm_nt_launch` is the one function between the public API (host/gemm.py, which validates
and converts inputs) and the GPU. Per call it: looks up the plan for (M, N, K, device) (config,
loaded kernel, grid: built once), looks up four tensor maps (memoized by pointer and shape),
and issues one cuLaunchKernelEx on torch's current stream. No device synchronization, no
allocation: the call is CUDA-graph capturable.
"""

from __future__ import annotations

import functools

import torch

from ..cache.compiler import KernelSpec, compile_kernel
from ..device.gemm_1d2d import (
    BLOCK_K, KERNEL_SIGNATURE, TENSORMAP_PARAMS, GemmConfig, make_fp8_gemm_1d2d,
)
from . import driver
from .device_info import get_num_sms
from .heuristics import choose_config

_PARAM_TYPES = (None, None, None, None, driver.c_int64, driver.c_int32, driver.c_int32,
                driver.c_int32)


def kernel_spec(cfg: GemmConfig) -> KernelSpec:
    """How to build the kernel of one configuration (for the compile cache and `inspect`)."""
    return KernelSpec(name=cfg.name, make_kernel=functools.partial(make_fp8_gemm_1d2d, cfg),
                      signature=KERNEL_SIGNATURE, threads=cfg.threads,
                      tensormap_params=TENSORMAP_PARAMS, config=cfg.__dict__.copy())


@functools.lru_cache(maxsize=None)
def loaded_kernel(cfg: GemmConfig, device_index: int) -> driver.LoadedKernel:
    """Compile (or fetch from cache) and load the kernel of `cfg` on a device."""
    compiled = compile_kernel(kernel_spec(cfg))
    return driver.LoadedKernel(cfg.name, compiled.cubin, device_index, cfg.threads,
                               cfg.smem_bytes, cfg.cluster_size)


def grid_size(cfg: GemmConfig, m: int, n: int, num_sms: int) -> int:
    """Persistent grid: one CTA per SM, but no more clusters than there are tile units."""
    cluster_m = 2 if cfg.multicast == "b" else 1
    cluster_n = 2 if cfg.multicast == "a" else 1
    units = (-(-m // (cfg.block_m * cluster_m))) * (-(-n // (cfg.block_n * cluster_n)))
    return min(units, num_sms // cfg.cluster_size) * cfg.cluster_size


@functools.lru_cache(maxsize=1024)
def _plan(m: int, n: int, k: int, device_index: int, num_sms: int, cfg: GemmConfig | None):
    cfg = cfg or choose_config(m, n, k, num_sms)
    if cfg.multicast == "a" and -(-n // cfg.block_n) % 2:
        raise ValueError(f"{cfg.name}: multicast 'a' needs an even number of N tiles")
    if cfg.multicast == "b" and -(-m // cfg.block_m) % 2:
        raise ValueError(f"{cfg.name}: multicast 'b' needs an even number of M tiles")
    return cfg, loaded_kernel(cfg, device_index), grid_size(cfg, m, n, num_sms)


def fp8_gemm_nt_launch(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                       b_scale: torch.Tensor, out: torch.Tensor,
                       config: GemmConfig | None = None) -> torch.Tensor:
    """out[M, N] (bf16) = (a_data * a_scale) @ (b_data * b_scale)^T on the GPU.

    Inputs must already be validated (host/gemm.py does it): a_data e4m3 (M, K) and b_data e4m3
    (N, K) contiguous; a_scale the MN-major TMA-aligned (M, ceil(K/128)) view with strides
    (1, align(M, 4)); b_scale float32 (ceil(N/128), ceil(K/128)) contiguous; out bf16 (M, N)
    contiguous; K % 16 == 0, N % 8 == 0. `config` forces a configuration (tests, tuning).
    """
    m, k = a_data.shape
    n = b_data.shape[0]
    device_index = a_data.device.index
    cfg, kernel, grid = _plan(m, n, k, device_index, get_num_sms(device_index), config)

    tensormap = driver.tensormap_2d
    tmap_a = tensormap(driver.DTYPE_FP8, a_data.data_ptr(), k, m, k, BLOCK_K, cfg.block_m, 128)
    tmap_b = tensormap(driver.DTYPE_FP8, b_data.data_ptr(), k, n, k, BLOCK_K, cfg.block_n, 128)
    tmap_sfa = tensormap(driver.DTYPE_F32, a_scale.data_ptr(), m, a_scale.shape[1],
                         a_scale.stride(1) * 4, cfg.block_m, 1)
    tmap_d = tensormap(driver.DTYPE_BF16, out.data_ptr(), n, m, n * 2, cfg.swizzle_d // 2,
                       cfg.block_m, cfg.swizzle_d)
    stream = torch.cuda.current_stream(a_data.device).cuda_stream
    kernel.launch(grid, stream, (tmap_a, tmap_b, tmap_sfa, tmap_d, b_scale.data_ptr(), m, n, k),
                  _PARAM_TYPES)
    return out
