"""The launch core: from kernel-ready torch tensors to one cuLaunchKernelEx.

Every GEMM goes through `bind(LaunchKey) -> BoundLaunch`. A `LaunchKey` names everything a
launch depends on (pointers, sizes, the layout tensor and group count of grouped GEMMs, device,
forced choice, SM limit); the BoundLaunch built for it holds the plan (problem, kernel choice,
loaded kernel, grid: `Plan`) and a parameter block (tensor maps encoded once, by value).
Calling a BoundLaunch reads torch's current stream and makes one cuLaunchKernelEx through
ctypes (driver.LaunchParts): no device synchronization, no allocation, CUDA-graph capturable.

A kernel family declares its parameters (device module), its tensor maps and its grid
(`Plan.param_block`, scheduler.py's host twin); today's family is the 1D2D kernel with its three
schedules (dense, m-grouped contiguous, m-grouped masked).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ..cache.compiler import compile_kernel
from ..device import scheduler
from ..device.config import BLOCK_K, GemmConfig, check_register_budget
from . import device_info, driver
from .device_info import get_num_sms
from .heuristics import choose_config, split_k_fits
from .kernels import kernel_spec
from .problem import GemmProblem, KernelChoice


class LaunchKey(NamedTuple):
    """Everything one launch depends on (a BoundLaunch is built once per key)."""
    a: int                      # pointers: A's data, A's scales, B's data, B's scales, D
    a_scale: int
    b: int
    b_scale: int
    out: int
    m: int                      # M (M_sum for contiguous, M_max for masked), N, K
    n: int
    k: int
    a_scale_stride: int         # A's scales: floats between K blocks (align(M, 4))
    device: int
    choice: KernelChoice | None  # forced (tests, tuning), else the heuristic's
    num_sms_limit: int | None   # set_num_sms
    kind: str = "dense"         # GemmProblem.kind
    layout: int = 0             # grouped: the m_indices / masked_m tensor's pointer
    groups: int = 1
    expected_m: int | None = None
    m_alignment: int = 128
    out_dtype: str = "bf16"     # "f32": the 1D1D family (B's scales 1x128 too)
    c: int = 0                  # 1D1D: C's pointer (D = C + A @ B^T), 0 without
    b_scale_stride: int = 0     # 1D1D: B's scales' floats between K blocks (align(N, 4))
    ks: tuple = ()              # k_grouped: every group's K (host values)

    @property
    def problem(self) -> GemmProblem:
        return GemmProblem(self.m, self.n, self.k, self.kind, self.groups, self.expected_m,
                           self.out_dtype, self.c != 0, m_alignment=self.m_alignment,
                           separate_c=self.c not in (0, self.out))


@functools.lru_cache(maxsize=None)
def loaded_kernel(cfg: GemmConfig, device_index: int) -> driver.LoadedKernel:
    """Compile (or fetch from cache) and load the kernel of `cfg` on a device."""
    compiled = compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, compiled.meta["registers"])
    return driver.LoadedKernel(cfg.name, compiled.cubin, device_index, cfg.threads,
                               cfg.smem_bytes, cfg.cluster_size)


class Plan:
    """Everything about one (problem, device, kernel choice) that does not change between
    calls: the choice, the loaded kernel, the grid and the split-K schedule."""

    def __init__(self, choice: KernelChoice, kernel: driver.LoadedKernel, grid: int,
                 problem: GemmProblem, device_index: int = 0):
        self.choice, self.cfg, self.kernel, self.grid = choice, choice.config, kernel, grid
        self.problem = problem
        # With split_last_wave the grid is every SM, so the full waves are these.
        self.whole_tiles = scheduler.whole_tiles(self.cfg, problem.m, problem.n,
                                                 choice.split_k, choice.split_last_wave, grid)
        self.device_index = device_index
        # The 1D1D "tma" epilogue adds the tile into D: a C other than D is copied into D first.
        self.copies_c_into_d = problem.separate_c and self.cfg.epilogue == "tma"
        self._workspaces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def workspace(self, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Split-K scratch for launches on `stream`: FP32 partial tiles (split_k per split tile)
        and one int32 arrival counter per split tile, zeroed once (each launch's last CTA per
        tile puts its counter back to 0). One per stream, so GEMMs on two streams never share
        it."""
        pair = self._workspaces.get(stream)
        if pair is None:
            cfg, p = self.cfg, self.problem
            split_tiles = scheduler.tiles(cfg, p.m, p.n) - self.whole_tiles
            device = torch.device("cuda", self.device_index)
            pair = (torch.empty(split_tiles * self.choice.split_k * cfg.block_m * cfg.block_n,
                                dtype=torch.float32, device=device),
                    torch.zeros(split_tiles, dtype=torch.int32, device=device))
            self._workspaces[stream] = pair
        return pair

    def param_block(self, key: LaunchKey, workspace_ptr: int = 0,
                    counters_ptr: int = 0) -> driver.ParamBlock:
        """The kernel's parameters for the tensors of `key`, tensor maps by value (the
        family's own list: the 1D2D kernel's or the 1D1D kernel's).
        `workspace_ptr`/`counters_ptr`: the split-K scratch (Plan.workspace), 0 without."""
        if self.cfg.scaling == "1d1d":
            return self._params_1d1d(key)
        cfg, p = self.cfg, self.problem
        m, n, k, g = p.m, p.n, p.k, p.groups
        kb = -(-k // BLOCK_K)
        tensormap = driver.tensormap_2d
        a_rows = m * g if p.kind == "m_grouped_masked" else m
        b_rows = n * g if p.kind != "dense" else n
        tile_rows, tile_columns = cfg.d_tile        # A's and B's rows per tile (swap_ab too)
        a = tensormap(driver.DTYPE_FP8, key.a, k, a_rows, k, BLOCK_K, tile_rows, 128)
        b = tensormap(driver.DTYPE_FP8, key.b, k, b_rows, k, BLOCK_K, tile_columns, 128)
        if p.kind == "m_grouped_masked":
            # A's scales (groups, K blocks, align(M_max, 4)): a 3-D map, so that no box reaches
            # into the next group's rows. (D's 2-D map over all groups' rows serves the tiles
            # whose rows are all valid: the masked epilogue stores the rest from registers.)
            pad = key.a_scale_stride
            sfa = driver.tensormap_3d(driver.DTYPE_F32, key.a_scale, (m, kb, g),
                                      (pad * 4, pad * kb * 4), (tile_rows, 1, 1))
        else:
            sfa = tensormap(driver.DTYPE_F32, key.a_scale, m, kb, key.a_scale_stride * 4,
                            tile_rows, 1)
        d = tensormap(driver.DTYPE_BF16, key.out, n, a_rows, n * 2, cfg.swizzle_d // 2,
                      cfg.store_rows, cfg.swizzle_d)
        params = [
            a, b, sfa, d,
            (driver.c_int64, key.b_scale),
            (driver.c_int64, workspace_ptr), (driver.c_int64, counters_ptr),
            (driver.c_int32, m), (driver.c_int32, n), (driver.c_int32, k),
            (driver.c_int32, self.choice.split_k), (driver.c_int32, self.whole_tiles),
        ]
        if p.kind != "dense" or cfg.swap_ab:
            params += [(driver.c_int64, key.layout), (driver.c_int32, g)]
        if p.kind == "m_grouped_masked" or cfg.swap_ab:    # D stored from registers
            params += [(driver.c_int64, key.out)]
        return driver.ParamBlock(tuple(params))

    def _params_1d1d(self, key: LaunchKey) -> driver.ParamBlock:
        """The 1D1D kernel's parameters (device/gemm_1d1d.py). k_grouped: each group's A_g
        (M, k_g) and B_g (N, k_g) get tensor maps of their own, in a table in device memory
        built here once per bound launch (kept alive by its parameter block), and the
        cumulative K blocks per group go with it (the schedule's layout)."""
        cfg, p = self.cfg, self.problem
        m, n, k = p.m, p.n, p.k
        tensormap = driver.tensormap_2d
        kb = -(-k // BLOCK_K)
        sfa = tensormap(driver.DTYPE_F32, key.a_scale, m, kb, key.a_scale_stride * 4,
                        cfg.block_m, 1)
        sfb = tensormap(driver.DTYPE_F32, key.b_scale, n, kb, key.b_scale_stride * 4,
                        cfg.block_n, 1)
        keep = []
        if p.kind == "k_grouped":
            maps, cum, a_at, b_at = [], [0], key.a, key.b
            for k_g in key.ks:
                rows = max(k_g, BLOCK_K)     # an empty group's maps are never used
                maps += [tensormap(driver.DTYPE_FP8, a_at, rows, m, rows, BLOCK_K, cfg.block_m,
                                   128),
                         tensormap(driver.DTYPE_FP8, b_at, rows, n, rows, BLOCK_K, cfg.block_n,
                                   128)]
                a_at, b_at = a_at + m * k_g, b_at + n * k_g
                cum.append(cum[-1] + k_g // BLOCK_K)
            device = torch.device("cuda", self.device_index)
            table = torch.frombuffer(bytearray(b"".join(driver.tensormap_bytes(t) for t in maps)),
                                     dtype=torch.uint8).to(device)
            layout = torch.tensor(cum, dtype=torch.int32).to(device)
            keep = [table, layout]
            a = b = maps[0] if maps else None
            layout_ptr, tmaps_ptr = layout.data_ptr(), table.data_ptr()
        else:
            a = tensormap(driver.DTYPE_FP8, key.a, k, m, k, BLOCK_K, cfg.block_m, 128)
            b = tensormap(driver.DTYPE_FP8, key.b, k, n, k, BLOCK_K, cfg.block_n, 128)
            layout_ptr = tmaps_ptr = 0
        params = [
            a, b, sfa, sfb, (driver.c_int64, key.out), (driver.c_int64, key.c or key.out),
            (driver.c_int32, m), (driver.c_int32, n), (driver.c_int32, k),
            (driver.c_int64, layout_ptr), (driver.c_int32, p.groups),
            (driver.c_int64, tmaps_ptr)]
        if cfg.epilogue == "tma":      # D (groups, M, N) FP32, in the epilogue's boxes
            (box_columns, box_rows), swizzle = cfg.f32_store_box
            params.append(driver.tensormap_3d(driver.DTYPE_F32, key.out, (n, m, p.groups),
                                              (n * 4, m * n * 4), (box_columns, box_rows, 1),
                                              swizzle))
        block = driver.ParamBlock(tuple(params))
        block.keep = keep
        return block


class BoundLaunch:
    """One GEMM ready to launch: a plan's kernel and grid with the parameter block of one set
    of tensor pointers. `bound()` launches it on torch's current stream of its device: a
    stream read, a dictionary lookup (the launch configuration of that stream, built once) and
    one foreign call. Holds no tensor, only pointers (the caller keeps the tensors alive).
    """

    __slots__ = ("plan", "key", "device_index", "params", "_stream_of", "_fn", "_function",
                 "_params_address", "_configs", "_parts", "_split_k", "_stream_params")

    def __init__(self, plan: Plan, key: LaunchKey, params: driver.ParamBlock):
        self.plan, self.key, self.device_index, self.params = plan, key, key.device, params
        parts = plan.kernel.launch_parts(plan.grid)
        self._parts, self._fn, self._function = parts, parts.fn, parts.function
        self._configs = parts.configs
        self._params_address = params.address
        self._stream_of = driver.current_raw_stream
        self._split_k = plan.choice.split_k > 1
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
        workspace, counters = self.plan.workspace(stream)
        block = self.plan.param_block(self.key, workspace.data_ptr(), counters.data_ptr())
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
        """The same GEMM writing into another output of the same shape and device."""
        key = self.key._replace(out=out.data_ptr())
        bound = _bound.get(key)
        return bound if bound is not None else _bind(key)


#: BoundLaunch per LaunchKey: what a repeated call finds. Bounded: the oldest goes first.
_bound: dict[LaunchKey, BoundLaunch] = {}
MAX_BOUND_LAUNCHES = 1024


def _bind(key: LaunchKey) -> BoundLaunch:
    plan = _plan(key.problem, key.device, get_num_sms(key.device), key.choice)
    bound = BoundLaunch(plan, key, plan.param_block(key))
    if len(_bound) >= MAX_BOUND_LAUNCHES:
        driver.evict_oldest(_bound)
    _bound[key] = bound
    return bound


def as_choice(config: KernelChoice | GemmConfig | None) -> KernelChoice | None:
    """A forced configuration: a KernelChoice, or a GemmConfig launched without a split."""
    return KernelChoice(config) if isinstance(config, GemmConfig) else config


@functools.lru_cache(maxsize=1024)
def _plan(problem: GemmProblem, device_index: int, num_sms: int,
          choice: KernelChoice | None) -> Plan:
    choice = choice or choose_config(problem, num_sms)
    cfg = choice.config
    if cfg.schedule != problem.kind or (cfg.scaling == "1d1d") != (problem.out_dtype == "f32") \
            or cfg.accumulate != problem.accumulate:
        raise ValueError(f"{cfg.name} cannot run {problem}")
    if cfg.multicast == "a" and -(-problem.n // cfg.block_n) % 2:
        raise ValueError(f"{cfg.name}: multicast 'a' needs an even number of N tiles")
    # (The m-grouped schedules pair M blocks themselves: masked within each group, contiguous
    # taking a partner past M as padding.)
    if (cfg.multicast == "b" and problem.kind in ("dense", "k_grouped")
            and -(-problem.m // cfg.block_m) % 2):
        raise ValueError(f"{cfg.name}: multicast 'b' needs an even number of M tiles")
    if not split_k_fits(choice.split_k, problem.k):
        raise ValueError(f"{choice.name}: split_k={choice.split_k} leaves a split without K "
                         f"blocks (K={problem.k} has {-(-problem.k // BLOCK_K)} blocks of "
                         f"{BLOCK_K})")
    if problem.kind == "m_grouped_contiguous" and problem.m_alignment % cfg.block_m:
        raise ValueError(f"{cfg.name}: BLOCK_M {cfg.block_m} does not divide the contiguous "
                         f"layout's alignment {problem.m_alignment}")
    if problem.kind == "m_grouped_masked":
        grid = scheduler.masked_grid_size(cfg, num_sms)
    elif problem.kind == "k_grouped":
        units = problem.groups * scheduler.tiles(cfg, problem.m, problem.n)
        grid = scheduler.grid_size(cfg, units, num_sms)
    else:
        whole = scheduler.whole_tiles(cfg, problem.m, problem.n, choice.split_k,
                                      choice.split_last_wave, num_sms)
        units = scheduler.unit_count(cfg, problem.m, problem.n, problem.k, choice.split_k,
                                     whole)
        grid = scheduler.grid_size(cfg, units, num_sms)
    check_compiled_shape(cfg, problem, grid)
    return Plan(choice, loaded_kernel(cfg, device_index), grid, problem, device_index)


def check_compiled_shape(cfg, problem: GemmProblem, grid: int) -> None:
    """Raise unless a kernel compiled for one shape (cfg.compiled_shape) runs that shape."""
    if not cfg.compiled_shape:
        return
    launched = (problem.n, problem.groups, grid)
    for name, compiled, actual in zip(("N", "groups", "grid CTAs"), cfg.compiled_shape,
                                      launched):
        if compiled and compiled != actual:
            raise ValueError(f"{cfg.name} is compiled for {name} = {compiled}, this launch has "
                             f"{name} = {actual}")


def dense_key(a_data, a_scale, b_data, b_scale, out, config=None) -> LaunchKey:
    return LaunchKey(a_data.data_ptr(), a_scale.data_ptr(), b_data.data_ptr(),
                     b_scale.data_ptr(), out.data_ptr(), a_data.shape[0], b_data.shape[0],
                     a_data.shape[1], a_scale.stride(-1), a_data.get_device(),
                     as_choice(config), device_info._num_sms_limit)


def bind(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
         b_scale: torch.Tensor, out: torch.Tensor,
         config: KernelChoice | GemmConfig | None = None) -> BoundLaunch:
    """The BoundLaunch of `fp8_gemm_nt_launch(a_data, a_scale, b_data, b_scale, out, config)`
    (same contract): calling it launches the GEMM on torch's current stream."""
    key = dense_key(a_data, a_scale, b_data, b_scale, out, config)
    bound = _bound.get(key)
    return bound if bound is not None else _bind(key)


def fp8_gemm_nt_launch(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                       b_scale: torch.Tensor, out: torch.Tensor,
                       config: KernelChoice | GemmConfig | None = None) -> torch.Tensor:
    """out[M, N] (bf16) = (a_data * a_scale) @ (b_data * b_scale)^T on the GPU.

    Inputs must already be validated (host/gemm.py does it): a_data e4m3 (M, K) and b_data e4m3
    (N, K) contiguous; a_scale the MN-major TMA-aligned (M, ceil(K/128)) view with strides
    (1, align(M, 4)); b_scale float32 (ceil(N/128), ceil(K/128)) contiguous; out bf16 (M, N)
    contiguous; K % 16 == 0, N % 8 == 0. `config` forces a configuration (tests, tuning).
    """
    bind(a_data, a_scale, b_data, b_scale, out, config)()
    return out


def grouped_key(kind: str, a_data, a_scale, b_data, b_scale, out, layout: torch.Tensor,
                groups: int, expected_m: int | None, m_alignment: int = 128,
                config: KernelChoice | GemmConfig | None = None) -> LaunchKey:
    """An m-grouped launch's key (`.problem`: what the heuristic sees)."""
    m = a_data.shape[1] if kind == "m_grouped_masked" else a_data.shape[0]
    return LaunchKey(a_data.data_ptr(), a_scale.data_ptr(), b_data.data_ptr(),
                     b_scale.data_ptr(), out.data_ptr(), m, b_data.shape[1], a_data.shape[-1],
                     a_scale.stride(-1), a_data.get_device(), as_choice(config),
                     device_info._num_sms_limit, kind, layout.data_ptr(), groups,
                     expected_m, m_alignment)


def launch_grouped(kind: str, a_data, a_scale, b_data, b_scale, out, layout: torch.Tensor,
                   groups: int, expected_m: int | None, m_alignment: int = 128,
                   config: KernelChoice | GemmConfig | None = None) -> None:
    """Launch an m-grouped GEMM (`kind` m_grouped_contiguous / m_grouped_masked) on
    kernel-ready tensors (host/launchers.py states the layouts)."""
    key = grouped_key(kind, a_data, a_scale, b_data, b_scale, out, layout, groups, expected_m,
                      m_alignment, config)
    bound = _bound.get(key)
    (bound if bound is not None else _bind(key))()


def launch_1d1d(a_data, a_scale, b_data, b_scale, d, c, kind="dense", ks=(),
                config: KernelChoice | GemmConfig | None = None) -> None:
    """Launch the 1D1D GEMM (D = C + A @ B^T in FP32; `kind` dense or k_grouped) on
    kernel-ready tensors (host/launchers.py states the layouts)."""
    if kind == "k_grouped":
        groups, m, n = d.shape
        k = sum(ks)
    else:
        (m, k), n, groups = a_data.shape, b_data.shape[0], 1
    key = LaunchKey(a_data.data_ptr(), a_scale.data_ptr(), b_data.data_ptr(),
                    b_scale.data_ptr(), d.data_ptr(), m, n, k, a_scale.stride(-1),
                    d.get_device(), as_choice(config), device_info._num_sms_limit, kind,
                    groups=groups, out_dtype="f32", c=0 if c is None else c.data_ptr(),
                    b_scale_stride=b_scale.stride(-1), ks=tuple(ks))
    bound = _bound.get(key) or _bind(key)
    if bound.plan.copies_c_into_d:
        d.copy_(c)
    bound()
