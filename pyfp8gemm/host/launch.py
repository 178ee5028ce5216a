"""Launching the dense FP8 GEMM kernel on validated torch tensors.

`fp8_gemm_nt_launch` is the one function between the public API (host/gemm.py, which validates
and converts inputs) and the GPU. Per call it: looks up the plan for (M, N, K, device) (config,
loaded kernel, grid: built once), looks up the parameter block for the tensors' pointers (four
tensor maps encoded once, by value), and issues one cuLaunchKernelEx on torch's current stream.
No device synchronization, no allocation: the call is CUDA-graph capturable.
"""

from __future__ import annotations

import functools

import torch

from ..cache.compiler import KernelSpec, compile_kernel
from ..device.gemm_1d2d import (
    BLOCK_K, KERNEL_SIGNATURE, TENSORMAP_PARAMS, GemmConfig, check_register_budget,
    make_fp8_gemm_1d2d,
)
from . import driver
from .device_info import get_num_sms
from .heuristics import choose_config

def kernel_spec(cfg: GemmConfig) -> KernelSpec:
    """How to build the kernel of one configuration (for the compile cache and `inspect`)."""
    return KernelSpec(name=cfg.name, make_kernel=functools.partial(make_fp8_gemm_1d2d, cfg),
                      signature=KERNEL_SIGNATURE, threads=cfg.threads,
                      tensormap_params=TENSORMAP_PARAMS, config=cfg.__dict__.copy())


@functools.lru_cache(maxsize=None)
def loaded_kernel(cfg: GemmConfig, device_index: int) -> driver.LoadedKernel:
    """Compile (or fetch from cache) and load the kernel of `cfg` on a device."""
    compiled = compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, compiled.meta["registers"])
    return driver.LoadedKernel(cfg.name, compiled.cubin, device_index, cfg.threads,
                               cfg.smem_bytes, cfg.cluster_size)


def grid_size(cfg: GemmConfig, m: int, n: int, num_sms: int) -> int:
    """Persistent grid: one CTA per SM, but no more clusters than there are tile units."""
    cluster_m = 2 if cfg.multicast == "b" else 1
    cluster_n = 2 if cfg.multicast == "a" else 1
    units = (-(-m // (cfg.block_m * cluster_m))) * (-(-n // (cfg.block_n * cluster_n)))
    return min(units, num_sms // cfg.cluster_size) * cfg.cluster_size


class Plan:
    """Everything about one (M, N, K, device, config) that does not change between calls:
    the config, the loaded kernel, the grid, and parameter blocks per set of tensor pointers."""

    MAX_PARAM_BLOCKS = 256

    def __init__(self, cfg: GemmConfig, kernel: driver.LoadedKernel, grid: int, m, n, k):
        self.cfg, self.kernel, self.grid = cfg, kernel, grid
        self.m, self.n, self.k = m, n, k
        self.param_blocks: dict[tuple, driver.ParamBlock] = {}

    def params_for(self, key, a_data, a_scale, b_data, b_scale, out) -> driver.ParamBlock:
        """The parameter block for these tensors (by pointer): tensor maps encoded once."""
        block = self.param_blocks.get(key)
        if block is None:
            cfg, m, n, k = self.cfg, self.m, self.n, self.k
            tensormap = driver.tensormap_2d
            block = driver.ParamBlock((
                tensormap(driver.DTYPE_FP8, a_data.data_ptr(), k, m, k, BLOCK_K, cfg.block_m,
                          128),
                tensormap(driver.DTYPE_FP8, b_data.data_ptr(), k, n, k, BLOCK_K, cfg.block_n,
                          128),
                tensormap(driver.DTYPE_F32, a_scale.data_ptr(), m, a_scale.shape[1],
                          a_scale.stride(1) * 4, cfg.block_m, 1),
                tensormap(driver.DTYPE_BF16, out.data_ptr(), n, m, n * 2, cfg.swizzle_d // 2,
                          cfg.block_m, cfg.swizzle_d),
                (driver.c_int64, b_scale.data_ptr()),
                (driver.c_int32, m), (driver.c_int32, n), (driver.c_int32, k),
            ))
            if len(self.param_blocks) >= self.MAX_PARAM_BLOCKS:
                self.param_blocks.pop(next(iter(self.param_blocks)))   # drop the oldest
            self.param_blocks[key] = block
        return block


@functools.lru_cache(maxsize=1024)
def _plan(m: int, n: int, k: int, device_index: int, num_sms: int,
          cfg: GemmConfig | None) -> Plan:
    cfg = cfg or choose_config(m, n, k, num_sms)
    if cfg.multicast == "a" and -(-n // cfg.block_n) % 2:
        raise ValueError(f"{cfg.name}: multicast 'a' needs an even number of N tiles")
    if cfg.multicast == "b" and -(-m // cfg.block_m) % 2:
        raise ValueError(f"{cfg.name}: multicast 'b' needs an even number of M tiles")
    return Plan(cfg, loaded_kernel(cfg, device_index), grid_size(cfg, m, n, num_sms), m, n, k)


def fp8_gemm_nt_launch(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                       b_scale: torch.Tensor, out: torch.Tensor,
                       config: GemmConfig | None = None) -> torch.Tensor:
    """out[M, N] (bf16) = (a_data * a_scale) @ (b_data * b_scale)^T on the GPU.

    Inputs must already be validated (host/gemm.py does it): a_data e4m3 (M, K) and b_data e4m3
    (N, K) contiguous; a_scale the MN-major TMA-aligned (M, ceil(K/128)) view with strides
    (1, align(M, 4)); b_scale float32 (ceil(N/128), ceil(K/128)) contiguous; out bf16 (M, N)
    contiguous; K % 16 == 0, N % 8 == 0. `config` forces a configuration (tests, tuning).

    A repeated call (same shape, same tensors) costs two dictionary lookups and the launch.
    """
    m, k = a_data.shape
    n = b_data.shape[0]
    device_index = a_data.device.index
    plan = _plan(m, n, k, device_index, get_num_sms(device_index), config)
    key = (a_data.data_ptr(), a_scale.data_ptr(), a_scale.stride(1), b_data.data_ptr(),
           b_scale.data_ptr(), out.data_ptr())
    params = plan.params_for(key, a_data, a_scale, b_data, b_scale, out)
    plan.kernel.launch_packed(plan.grid, driver.current_raw_stream(device_index), params.address)
    return out
