"""Launching the dense FP8 GEMM kernel on validated torch tensors.

`fp8_gemm_nt_launch` is the one function between the public API (host/gemm.py, which validates
and converts inputs) and the GPU; `bind` is the same without the launch, for callers that keep
the result (host/gemm.py's fast path). A call reads the tensors' pointers and sizes and looks
up the `BoundLaunch` for them: built once per (pointers, M, N, K, device, config, SM limit)
from the plan (config, loaded kernel, grid) and a parameter block (four tensor maps encoded
once, by value). Calling a BoundLaunch reads torch's current stream and makes one
cuLaunchKernelEx through ctypes (driver.LaunchParts). No device synchronization, no
allocation: the call is CUDA-graph capturable.
"""

from __future__ import annotations

import functools

import torch

from ..cache.compiler import KernelSpec, compile_kernel
from ..device.gemm_1d2d import (
    BLOCK_K, D_STORE_ROWS, KERNEL_SIGNATURE, TENSORMAP_PARAMS, GemmConfig, check_register_budget,
    make_fp8_gemm_1d2d,
)
from . import device_info, driver
from .device_info import get_num_sms
from .heuristics import choose_config, split_k_fits

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


def whole_tiles(cfg: GemmConfig, m: int, n: int, num_sms: int) -> int:
    """How many tiles (the first, in scheduling order) run unsplit: all without split-K,
    none with plain split-K, the full waves' with `split_last_wave`."""
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    if cfg.split_k == 1:
        return tiles
    if cfg.split_last_wave:
        return tiles - tiles % num_sms
    return 0


def grid_size(cfg: GemmConfig, m: int, n: int, num_sms: int) -> int:
    """Persistent grid: one CTA per SM, but no more clusters than there are work units."""
    cluster_m = 2 if cfg.multicast == "b" else 1
    cluster_n = 2 if cfg.multicast == "a" else 1
    tiles = (-(-m // (cfg.block_m * cluster_m))) * (-(-n // (cfg.block_n * cluster_n)))
    whole = whole_tiles(cfg, m, n, num_sms)
    units = whole + (tiles - whole) * cfg.split_k
    return min(units, num_sms // cfg.cluster_size) * cfg.cluster_size


class Plan:
    """Everything about one (M, N, K, device, config) that does not change between calls:
    the config, the loaded kernel, the grid."""

    def __init__(self, cfg: GemmConfig, kernel: driver.LoadedKernel, grid: int, m, n, k,
                 device_index: int = 0):
        self.cfg, self.kernel, self.grid = cfg, kernel, grid
        self.m, self.n, self.k = m, n, k
        # With split_last_wave the grid is every SM (grid_size), so the full waves are these.
        self.whole_tiles = whole_tiles(cfg, m, n, grid)
        self.device_index = device_index
        self._workspaces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def workspace(self, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Split-K scratch for launches on `stream`: FP32 partial tiles (split_k per split tile)
        and one int32 arrival counter per split tile, zeroed once (each launch's last CTA per
        tile puts its counter back to 0). One per stream, so GEMMs on two streams never share
        it."""
        pair = self._workspaces.get(stream)
        if pair is None:
            cfg = self.cfg
            tiles = -(-self.m // cfg.block_m) * -(-self.n // cfg.block_n) - self.whole_tiles
            device = torch.device("cuda", self.device_index)
            pair = (torch.empty(tiles * cfg.split_k * cfg.block_m * cfg.block_n,
                                dtype=torch.float32, device=device),
                    torch.zeros(tiles, dtype=torch.int32, device=device))
            self._workspaces[stream] = pair
        return pair

    def param_block(self, a_ptr: int, a_scale_ptr: int, a_scale_stride: int, b_ptr: int,
                    b_scale_ptr: int, out_ptr: int, workspace_ptr: int = 0,
                    counters_ptr: int = 0) -> driver.ParamBlock:
        """The kernel's parameters for these tensors (by pointer), tensor maps by value.
        `a_scale_stride` is the activation scales' K-block stride in floats: align(M, 4).
        `workspace_ptr`/`counters_ptr`: the split-K scratch (Plan.workspace), 0 without."""
        cfg, m, n, k = self.cfg, self.m, self.n, self.k
        tensormap = driver.tensormap_2d
        return driver.ParamBlock((
            tensormap(driver.DTYPE_FP8, a_ptr, k, m, k, BLOCK_K, cfg.block_m, 128),
            tensormap(driver.DTYPE_FP8, b_ptr, k, n, k, BLOCK_K, cfg.block_n, 128),
            tensormap(driver.DTYPE_F32, a_scale_ptr, m, -(-k // BLOCK_K), a_scale_stride * 4,
                      cfg.block_m, 1),
            tensormap(driver.DTYPE_BF16, out_ptr, n, m, n * 2, cfg.swizzle_d // 2, D_STORE_ROWS,
                      cfg.swizzle_d),
            (driver.c_int64, b_scale_ptr),
            (driver.c_int64, workspace_ptr), (driver.c_int64, counters_ptr),
            (driver.c_int32, m), (driver.c_int32, n), (driver.c_int32, k),
            (driver.c_int32, cfg.split_k), (driver.c_int32, self.whole_tiles),
        ))


class BoundLaunch:
    """One GEMM ready to launch: a plan's kernel and grid with the parameter block of one set
    of tensor pointers. `bound()` launches it on torch's current stream of its device: a
    stream read, a dictionary lookup (the launch configuration of that stream, built once) and
    one foreign call. Holds no tensor, only pointers (the caller keeps the tensors alive).
    """

    __slots__ = ("plan", "key", "device_index", "params", "_stream_of", "_fn", "_function",
                 "_params_address", "_configs", "_parts", "_split_k", "_stream_params")

    def __init__(self, plan: Plan, key: tuple, device_index: int, params: driver.ParamBlock):
        self.plan, self.key, self.device_index, self.params = plan, key, device_index, params
        parts = plan.kernel.launch_parts(plan.grid)
        self._parts, self._fn, self._function = parts, parts.fn, parts.function
        self._configs = parts.configs
        self._params_address = params.address
        self._stream_of = driver.current_raw_stream
        self._split_k = plan.cfg.split_k > 1
        self._stream_params: dict[int, driver.ParamBlock] = {}

    def __call__(self) -> None:
        stream = self._stream_of(self.device_index)
        config = self._configs.get(stream)
        if config is None:
            config = self._parts.config_for(stream)
        params = self._params_address
        if self._split_k:
            block = self._stream_params.get(stream)
            params = (block or self._split_k_params(stream)).address
        err = self._fn(config, self._function, params, None)
        if err:
            self._failed(err, config, params)

    def _split_k_params(self, stream: int) -> driver.ParamBlock:
        """The parameter block with the split-K workspace of `stream` (built once per stream)."""
        a_ptr, sa_ptr, b_ptr, sb_ptr, out_ptr, _, _, _, sa_stride = self.key[:9]
        workspace, counters = self.plan.workspace(stream)
        block = self.plan.param_block(a_ptr, sa_ptr, sa_stride, b_ptr, sb_ptr, out_ptr,
                                      workspace.data_ptr(), counters.data_ptr())
        self._stream_params[stream] = block
        return block

    def _failed(self, err, config, params) -> None:
        if (err == driver.CUDA_ERROR_INVALID_CONTEXT and self.device_index >= 0
                and driver.make_context_current_if_none(self.device_index)):
            # A thread with no CUDA context yet: now it has torch's; launch once more.
            err = self._fn(config, self._function, params, None)
            if not err:
                return
        self._parts.failed(err)

    def with_out(self, out: torch.Tensor) -> BoundLaunch:
        """The same GEMM writing into another (M, N) bf16 output of the same device."""
        key = self.key[:4] + (out.data_ptr(),) + self.key[5:]
        bound = _bound.get(key)
        return bound if bound is not None else _bind(key)


#: BoundLaunch per (a, a_scale, b, b_scale, out pointers, M, N, K, a_scale stride, device,
#: config, set_num_sms value): what a repeated call finds. Bounded: the oldest goes first.
_bound: dict[tuple, BoundLaunch] = {}
MAX_BOUND_LAUNCHES = 1024


def _bind(key: tuple) -> BoundLaunch:
    a_ptr, sa_ptr, b_ptr, sb_ptr, out_ptr, m, n, k, sa_stride, device_index, config, _ = key
    plan = _plan(m, n, k, device_index, get_num_sms(device_index), config)
    bound = BoundLaunch(plan, key, device_index,
                        plan.param_block(a_ptr, sa_ptr, sa_stride, b_ptr, sb_ptr, out_ptr))
    if len(_bound) >= MAX_BOUND_LAUNCHES:
        driver.evict_oldest(_bound)
    _bound[key] = bound
    return bound


@functools.lru_cache(maxsize=1024)
def _plan(m: int, n: int, k: int, device_index: int, num_sms: int,
          cfg: GemmConfig | None) -> Plan:
    cfg = cfg or choose_config(m, n, k, num_sms)
    if cfg.multicast == "a" and -(-n // cfg.block_n) % 2:
        raise ValueError(f"{cfg.name}: multicast 'a' needs an even number of N tiles")
    if cfg.multicast == "b" and -(-m // cfg.block_m) % 2:
        raise ValueError(f"{cfg.name}: multicast 'b' needs an even number of M tiles")
    if not split_k_fits(cfg.split_k, k):
        raise ValueError(f"{cfg.name}: split_k={cfg.split_k} leaves a split without K blocks "
                         f"(K={k} has {-(-k // BLOCK_K)} blocks of {BLOCK_K})")
    kernel = loaded_kernel(cfg.kernel_config, device_index)
    return Plan(cfg, kernel, grid_size(cfg, m, n, num_sms), m, n, k, device_index)


def bind(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
         b_scale: torch.Tensor, out: torch.Tensor,
         config: GemmConfig | None = None) -> BoundLaunch:
    """The BoundLaunch of `fp8_gemm_nt_launch(a_data, a_scale, b_data, b_scale, out, config)`
    (same contract): calling it launches the GEMM on torch's current stream."""
    m, k = a_data.shape
    key = (a_data.data_ptr(), a_scale.data_ptr(), b_data.data_ptr(), b_scale.data_ptr(),
           out.data_ptr(), m, b_data.shape[0], k, a_scale.stride(1), a_data.get_device(), config,
           device_info._num_sms_limit)
    bound = _bound.get(key)
    return bound if bound is not None else _bind(key)


def fp8_gemm_nt_launch(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                       b_scale: torch.Tensor, out: torch.Tensor,
                       config: GemmConfig | None = None) -> torch.Tensor:
    """out[M, N] (bf16) = (a_data * a_scale) @ (b_data * b_scale)^T on the GPU.

    Inputs must already be validated (host/gemm.py does it): a_data e4m3 (M, K) and b_data e4m3
    (N, K) contiguous; a_scale the MN-major TMA-aligned (M, ceil(K/128)) view with strides
    (1, align(M, 4)); b_scale float32 (ceil(N/128), ceil(K/128)) contiguous; out bf16 (M, N)
    contiguous; K % 16 == 0, N % 8 == 0. `config` forces a configuration (tests, tuning).

    A repeated call (same pointers and sizes) costs the metadata reads, one dictionary lookup
    and the launch (`bind(...)()`, inlined).
    """
    m, k = a_data.shape
    key = (a_data.data_ptr(), a_scale.data_ptr(), b_data.data_ptr(), b_scale.data_ptr(),
           out.data_ptr(), m, b_data.shape[0], k, a_scale.stride(1), a_data.get_device(), config,
           device_info._num_sms_limit)
    bound = _bound.get(key)
    if bound is None:
        bound = _bind(key)
    bound()
    return out
