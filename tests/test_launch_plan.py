"""The launcher's per-call fast path on the CPU (driver calls faked): what is built once per
plan, what per set of tensors, and that the parameter block carries the right values."""

import ctypes

import pytest
import torch
from cuda.bindings import driver as cu

import pyfp8gemm
from pyfp8gemm.device import config as gemm_config, scheduler
from pyfp8gemm.device.config import GemmConfig
from pyfp8gemm.host import device_info, driver, launch
from pyfp8gemm.host.problem import GemmProblem, KernelChoice


def choice_of(m, n, k, num_sms=132):
    """The heuristic's dense choice, flattened: config fields + split policy."""
    from pyfp8gemm.host.heuristics import choose_dense
    c = choose_dense(m, n, k, num_sms)
    return type("Choice", (), dict(c.config.__dict__, split_k=c.split_k,
                                     split_last_wave=c.split_last_wave))


def whole_and_grid(choice, m, n, num_sms=132):
    cfg = choice.config
    whole = scheduler.whole_tiles(cfg, m, n, choice.split_k, choice.split_last_wave, num_sms)
    units = scheduler.unit_count(cfg, m, n, 7168, choice.split_k, whole)
    return whole, scheduler.grid_size(cfg, units, num_sms)


class RecordingKernel:
    """A loaded kernel whose raw launch function (the ctypes cuLaunchKernelEx's place) records
    (grid, stream, params address) and returns CUDA_SUCCESS."""

    name = "fake_kernel"

    def __init__(self):
        self.launches = []
        self.parts = {}

    def launch_parts(self, grid):
        if grid not in self.parts:
            def fn(config, function, params_address, extra):
                assert function == 0xF00 and extra is None
                self.launches.append((config["grid"], config["stream"], params_address))
                return 0

            self.parts[grid] = driver.LaunchParts(
                fn, 0xF00, lambda stream: {"grid": grid, "stream": stream}, self.name)
        return self.parts[grid]


UNCACHED_PLAN = launch._plan.__wrapped__       # the real plan, before fake_gpu replaces it


@pytest.fixture
def fake_gpu(monkeypatch):
    """A plan with a recording kernel; tensor maps recorded instead of encoded."""
    encoded = []

    def fake_tensormap(*args):
        encoded.append(args)
        return cu.CUtensorMap()

    kernel = RecordingKernel()
    plans = {}

    def fake_plan(problem, device_index, num_sms, choice):
        key = (problem.m, problem.n, problem.k)
        if key not in plans:
            plans[key] = launch.Plan(KernelChoice(GemmConfig(128, 64, 8)), kernel, 33, problem)
        return plans[key]

    monkeypatch.setattr(launch, "_plan", fake_plan)
    monkeypatch.setattr(launch, "get_num_sms", lambda index: 132)
    monkeypatch.setattr(launch, "_bound", {})
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
    pointers = (ctypes.c_void_p * 11).from_address(address)
    assert ctypes.c_int64.from_address(pointers[4]).value == b.scale.data_ptr()
    # No split-K here (enough tiles): no workspace, no counters, a split count of 1.
    assert [ctypes.c_int64.from_address(pointers[i]).value for i in (5, 6)] == [0, 0]
    assert [ctypes.c_int32.from_address(pointers[i]).value for i in (7, 8, 9, 10)] == [m, n, k, 1]
    # The activation-scale map uses the MN-major stride: align(M, 4) floats per K block.
    sfa_args = encoded[2]
    assert sfa_args[1] == a.scale.data_ptr() and sfa_args[4] == 4 * ((m + 3) // 4 * 4)


def test_bound_launches_are_bounded(fake_gpu, monkeypatch):
    kernel, encoded, plans = fake_gpu
    monkeypatch.setattr(launch, "MAX_BOUND_LAUNCHES", 4)
    a, b, _ = operands()
    outs = [torch.empty(300, 576, dtype=torch.bfloat16) for _ in range(6)]
    for out in outs:
        launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    assert len(launch._bound) == 4                # the two oldest were dropped
    assert {key[4] for key in launch._bound} == {o.data_ptr() for o in outs[2:]}


def test_set_num_sms_rebinds(fake_gpu, monkeypatch):
    """The grid depends on the SM limit: a new set_num_sms value is a new bound launch."""
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    monkeypatch.setattr(device_info, "_num_sms_limit", 66)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    assert len(launch._bound) == 2
    assert {key.num_sms_limit for key in launch._bound} == {None, 66}


def test_one_launch_configuration_per_stream(fake_gpu, monkeypatch):
    """Configurations are built once per stream and never rewritten (no shared stream field
    for two threads to race on)."""
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    streams = iter([7, 8, 7, 8])
    monkeypatch.setattr(driver, "current_raw_stream", lambda index: next(streams))
    monkeypatch.setattr(launch, "_bound", {})
    for _ in range(4):
        launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    assert [stream for _, stream, _ in kernel.launches] == [7, 8, 7, 8]
    (parts,) = kernel.parts.values()
    assert set(parts.configs) == {7, 8}


def test_bind_and_with_out(fake_gpu):
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    bound = launch.bind(a.data, a.scale, b.data, b.scale, out)
    assert launch.bind(a.data, a.scale, b.data, b.scale, out) is bound
    assert kernel.launches == []                   # binding does not launch
    bound()
    out2 = torch.empty_like(out)
    other = bound.with_out(out2)
    assert other is launch.bind(a.data, a.scale, b.data, b.scale, out2)
    other()
    assert encoded[-1][1] == out2.data_ptr()
    assert kernel.launches[0][2] != kernel.launches[1][2]


def test_launch_error_names_the_kernel(fake_gpu):
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    bound = launch.bind(a.data, a.scale, b.data, b.scale, out)
    kernel.parts[33].fn = lambda *args: 1          # CUDA_ERROR_INVALID_VALUE
    bound._fn = kernel.parts[33].fn
    with pytest.raises(driver.CudaDriverError,
                       match=r"cuLaunchKernelEx for kernel fake_kernel failed: "
                             r"CUDA_ERROR_INVALID_VALUE"):
        bound()


def test_launch_retries_once_a_thread_without_context(fake_gpu, monkeypatch):
    """CUDA_ERROR_INVALID_CONTEXT with no context current: torch's context is made current
    and the launch repeated once; with a context current, the error is raised as is."""
    kernel, encoded, plans = fake_gpu
    a, b, out = operands()
    bound = launch.bind(a.data, a.scale, b.data, b.scale, out)
    bound.device_index = 0
    results = iter([201, 0])
    bound._fn = lambda *args: next(results)
    made_current = []
    monkeypatch.setattr(driver, "make_context_current_if_none",
                        lambda index: made_current.append(index) or True)
    bound()
    assert made_current == [0]
    bound._fn = lambda *args: 201
    monkeypatch.setattr(driver, "make_context_current_if_none", lambda index: False)
    with pytest.raises(driver.CudaDriverError, match="CUDA_ERROR_INVALID_CONTEXT"):
        bound()


def test_param_block_copies_tensormaps_by_value():
    tensormap = cu.CUtensorMap()
    ctypes.memset(tensormap.getPtr(), 7, 128)
    block = driver.ParamBlock((tensormap, (driver.c_int32, 5)))
    pointers = (ctypes.c_void_p * 2).from_address(block.address)
    assert bytes((ctypes.c_uint8 * 128).from_address(pointers[0])) == bytes([7]) * 128
    ctypes.memset(tensormap.getPtr(), 0, 128)        # the block keeps its own copy
    assert bytes((ctypes.c_uint8 * 128).from_address(pointers[0])) == bytes([7]) * 128
    assert ctypes.c_int32.from_address(pointers[1]).value == 5


# ---------------------------------------------------------------------------------------------
# Split-K: the split count and a per-stream workspace travel in the parameter block
# ---------------------------------------------------------------------------------------------


def test_split_k_parameters_and_a_workspace_per_stream(fake_gpu, monkeypatch):
    kernel, encoded, plans = fake_gpu
    choice = KernelChoice(GemmConfig(64, 16, 21, split_k=True), 3)
    cfg = choice.config
    m, n, k = 64, 576, 7168

    def workspace_on_cpu(self, stream):
        pair = self._workspaces.get(stream)
        if pair is None:
            tiles = -(-self.problem.m // cfg.block_m) * -(-self.problem.n // cfg.block_n)
            pair = (torch.empty(tiles * choice.split_k * cfg.block_m * cfg.block_n),
                    torch.zeros(tiles, dtype=torch.int32))
            self._workspaces[stream] = pair
        return pair

    current = {"stream": 1234}
    monkeypatch.setattr(driver, "current_raw_stream", lambda index: current["stream"])
    monkeypatch.setattr(launch.Plan, "workspace", workspace_on_cpu)
    monkeypatch.setattr(launch, "_plan", lambda *args: plans.setdefault(
        "split", launch.Plan(choice, kernel, 108, GemmProblem(m, n, k))))
    a, b, out = operands(m, n, k)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    current["stream"] = 5678
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    plan = plans["split"]
    blocks = []
    for _, stream, address in kernel.launches:
        pointers = (ctypes.c_void_p * 12).from_address(address)
        workspace, counters = plan._workspaces[stream]
        assert ctypes.c_int64.from_address(pointers[5]).value == workspace.data_ptr()
        assert ctypes.c_int64.from_address(pointers[6]).value == counters.data_ptr()
        assert ctypes.c_int32.from_address(pointers[10]).value == 3
        assert ctypes.c_int32.from_address(pointers[11]).value == 0       # every tile split
        blocks.append(address)
    assert blocks[0] == blocks[1] != blocks[2]          # built once per stream
    assert set(plan._workspaces) == {1234, 5678}
    assert plan._workspaces[1234][0].numel() == 36 * 3 * 64 * 16   # 36 tiles x 3 splits


def test_split_k_choice():
    from pyfp8gemm.host.heuristics import choose_split_k, split_k_fits

    assert choice_of(64, 576, 7168).split_k == 3                     # 36 tiles -> 108 CTAs
    assert choice_of(4096, 4096, 7168).split_k == 1
    assert choice_of(64, 2112, 7168).split_k == 1                    # 132 tiles already
    assert choose_split_k(36, 512, 132) == 1                         # 4 K blocks: keep whole
    assert split_k_fits(3, 7168) and not split_k_fits(4, 5 * 128)    # 5 blocks: 2+2+1+0
    for tiles in range(1, 70):
        for k in (128, 640, 1040, 4096, 7168, 16384):
            split_k = choose_split_k(tiles, k, 132)
            assert split_k == 1 or (split_k_fits(split_k, k) and tiles * split_k <= 132)


def test_last_wave_split_choice_and_plan():
    """1536x3072x7168: 288 tiles of 128x128 = 2 full waves + 24 tiles on 132 SMs; the 24 are
    split 4 ways (14 K blocks each) instead of idling 108 SMs for a third tile time.
    4096x2112x7168 (4 waves of 128x128 + 16 tiles, split 4 ways until session 8) now runs
    3 waves of 128x192 sharing B: 4% faster than the split tail (bench/JOURNAL.md)."""
    from pyfp8gemm.host.heuristics import choose_dense, choose_last_wave_split

    cfg = choice_of(1536, 3072, 7168)
    assert (cfg.block_m, cfg.block_n, cfg.multicast, cfg.split_k, cfg.split_last_wave) == \
        (128, 128, "none", 4, True)
    assert whole_and_grid(choose_dense(1536, 3072, 7168, 132), 1536, 3072) == (264, 132)
    cfg = choice_of(4096, 2112, 7168)
    assert (cfg.block_m, cfg.block_n, cfg.multicast, cfg.split_k) == (128, 192, "b", 1)
    tail = KernelChoice(GemmConfig(128, 128, 5, split_k=True), 4, True)   # 4 waves + 16 tiles
    assert whole_and_grid(tail, 4096, 2112) == (528, 132)
    tail = KernelChoice(GemmConfig(256, 128, 3, split_k=True), 4, True)   # 2 waves + 8 tiles
    assert whole_and_grid(tail, 4096, 2112)[0] == 264
    assert choose_last_wave_split(544, 7168, 132) == 4
    assert choose_last_wave_split(132, 7168, 132) == 1               # one full wave
    assert choose_last_wave_split(264 + 100, 7168, 132) == 1         # last wave 3/4 full
    assert choose_last_wave_split(544, 1024, 132) == 1               # 8 K blocks: too short
    assert choice_of(4096, 4096, 7168).split_k == 1                  # 3.9 waves: keep whole
    whole = KernelChoice(GemmConfig(128, 128, 5))
    assert whole_and_grid(whole, 4096, 2112)[0] == 544
    plain = KernelChoice(GemmConfig(64, 16, 21, split_k=True), 3)
    assert whole_and_grid(plain, 64, 576) == (0, 108)
    with pytest.raises(ValueError, match="split_last_wave needs split_k > 1"):
        KernelChoice(GemmConfig(128, 128, 5, split_k=True), 1, True)


def test_last_wave_split_parameters_and_workspace(fake_gpu, monkeypatch):
    kernel, encoded, plans = fake_gpu
    choice = KernelChoice(GemmConfig(128, 128, 5, split_k=True), 4, True)
    m, n, k = 4096, 2112, 7168
    monkeypatch.setattr(launch, "_plan", lambda *args: plans.setdefault(
        "tail", launch.Plan(choice, kernel, 132, GemmProblem(m, n, k))))
    a, b, out = operands(m, n, k)
    made, empty, zeros = {}, torch.empty, torch.zeros
    monkeypatch.setattr(torch, "empty", lambda size, **kw: (
        made.setdefault("workspace", size), empty(1))[1])
    monkeypatch.setattr(torch, "zeros", lambda size, **kw: (
        made.setdefault("counters", size), zeros(1))[1])
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    assert made == {"workspace": 16 * 4 * 128 * 128, "counters": 16}   # the 16 tail tiles
    _, _, address = kernel.launches[-1]
    pointers = (ctypes.c_void_p * 12).from_address(address)
    assert ctypes.c_int32.from_address(pointers[10]).value == 4
    assert ctypes.c_int32.from_address(pointers[11]).value == 528


def test_split_k_kernel_is_shared_by_every_split_count():
    """The split count and which tiles split are launch policy (KernelChoice), not kernel
    fields: every split count runs the one kernel built with split-K."""
    kernel = GemmConfig(64, 16, 21, split_k=True)
    assert KernelChoice(kernel, 5).config == KernelChoice(kernel, 2).config == kernel
    assert KernelChoice(kernel, 5).name != KernelChoice(kernel, 2).name
    with pytest.raises(ValueError, match="needs a kernel built with split-K"):
        KernelChoice(GemmConfig(64, 16, 21), 2)
    with pytest.raises(TypeError, match="split count is a launch parameter"):
        GemmConfig(64, 16, 21, split_k=3)
    with pytest.raises(ValueError, match="split_k needs multicast 'none'"):
        GemmConfig(128, 128, 5, "a", split_k=True)


def test_small_m_multicast_b_choice():
    """BLOCK_M 64 with two M tiles shares the weight tile only with BLOCK_N >= 64 and long K
    (measured: +6-13% at K = 7168, -8% at 128x4096x2048; bench/JOURNAL.md, session 4)."""
    choose_config = choice_of
    shared = choose_config(128, 4096, 7168, 132)
    assert (shared.block_m, shared.block_n, shared.multicast) == (64, 64, "b")
    assert choose_config(96, 4096, 7168, 132).multicast == "b"
    assert choose_config(128, 4096, 2048, 132).multicast == "none"    # short K
    assert choose_config(64, 4096, 7168, 132).multicast == "none"     # one M tile
    assert choose_config(128, 2112, 7168, 132).multicast == "none"    # BLOCK_N 32
    assert choose_config(128, 4096, 7168, 131).multicast == "none"    # odd SM count


def test_decode_tile_choice():
    """Decode: M <= 16 swaps A and B (64 weight rows x M tokens rounded up to 8), except where
    its weight tiles would split K in two (then 16 rows of A per slot, BLOCK_N at least 32);
    17 <= M <= 32 loads 32 rows with the 64-row pick's BLOCK_N; M = 33 keeps 64 rows; split-K
    picks stay 64 rows."""
    from pyfp8gemm.host.heuristics import all_configs, choose_dense

    for m, n, k, tile, swapped, split in (
            (1, 2112, 7168, (64, 8), True, 4), (9, 7168, 16384, (64, 16), True, 1),
            (16, 4096, 7168, (16, 32), False, 1), (17, 2112, 7168, (32, 16), False, 1),
            (24, 4096, 7168, (32, 32), False, 1), (32, 7168, 16384, (32, 64), False, 1),
            (33, 4096, 7168, (64, 32), False, 1)):
        choice = choose_dense(m, n, k, 132)
        assert (choice.config.block_m, choice.config.block_n) == tile, (m, n, k)
        assert choice.config.swap_ab == swapped and choice.split_k == split, (m, n, k)
        assert choice.config.multicast == "none" and choice.config in all_configs()
    split = choose_dense(32, 576, 7168, 132)
    assert split.config.block_m == 64 and split.split_k > 1 and not split.config.swap_ab


def test_masked_choice_shares_b_past_128_rows():
    """Masked groups of more than 128 rows (two M blocks or more) run in 2-CTA clusters sharing
    B for K >= 3072, and at K = 2048 from 512 rows a group, as DeepGEMM does, with 192-wide
    tiles on its shapes (measured 0.97x DeepGEMM against 0.84x for 128x128 alone; at K = 2048
    x1.058 over no cluster at ~1024 rows, x0.975 at ~192); up to 128 rows a group, no cluster
    (a pair would be half idle)."""
    from pyfp8gemm.host.heuristics import all_configs, choose_m_grouped

    def choice(groups, rows, n, k, num_sms=132):
        m_max = -(-rows * 13 // 10 // 64) * 64 + 64
        return choose_m_grouped(GemmProblem(m_max, n, k, "m_grouped_masked", groups, rows),
                                num_sms).config

    for groups, rows in ((32, 192), (6, 1024)):
        for n, k in ((6144, 7168), (7168, 3072), (4096, 4096), (4096, 2048)):
            cfg = choice(groups, rows, n, k)
            shared = "b" if k >= 3072 or rows >= 512 else "none"
            assert (cfg.block_m, cfg.block_n, cfg.multicast) == (128, 192, shared)
            assert cfg in all_configs()
    assert choice(8, 100, 6144, 7168).multicast == "none"
    assert choice(32, 20, 6144, 7168).block_m == 64
    assert choice(32, 192, 6144, 7168, num_sms=131).multicast == "none"


def test_grouped_kernels_are_compiled_for_their_shape(monkeypatch):
    """choose_config gives m-grouped problems the heuristic's kernel compiled for their N and
    group count, masked also for its grid (always the SMs', in whole clusters); K stays a
    run-time value, dense and 1D1D kernels are not specialized; PYFP8GEMM_SPECIALIZE_SHAPES=0
    gives the kernel that serves every shape."""
    import dataclasses

    from pyfp8gemm.host import heuristics

    masked = GemmProblem(1408, 4096, 2048, "m_grouped_masked", 6, 1228)
    contiguous = GemmProblem(8 * 4096, 6144, 7168, "m_grouped_contiguous", 8, 4096)
    monkeypatch.setenv("PYFP8GEMM_SPECIALIZE_SHAPES", "1")
    for problem, num_sms, grid in ((masked, 132, 132), (masked, 131, 131),
                                   (contiguous, 132, 0)):
        generic = heuristics.choose_m_grouped(problem, num_sms)
        choice = heuristics.choose_config(problem, num_sms)
        shape = (problem.n, problem.groups, grid)
        assert choice == dataclasses.replace(
            generic, config=dataclasses.replace(generic.config, compiled_shape=shape))
        assert choice.config.name == generic.config.name + "_shape{}x{}x{}".format(*shape)
        assert generic.config.compiled_shape == ()
    assert heuristics.choose_config(masked, 132).config.multicast == "b"
    assert heuristics.choose_config(GemmProblem(4096, 4096, 2048), 132).config.compiled_shape == ()
    wgrad = GemmProblem(4096, 4096, 2048, out_dtype="f32", accumulate=True)
    assert heuristics.choose_config(wgrad, 132).config.compiled_shape == ()
    monkeypatch.setenv("PYFP8GEMM_SPECIALIZE_SHAPES", "0")
    assert heuristics.choose_config(masked, 132) == heuristics.choose_m_grouped(masked, 132)


def test_a_shape_compiled_kernel_refuses_another_shape():
    """A kernel compiled for (N, groups, grid) is planned only for that shape: another N, group
    count or grid (a different SM count) raises, naming what differs, before anything
    compiles."""
    import dataclasses

    from pyfp8gemm.host.heuristics import make_config

    cfg = dataclasses.replace(make_config(128, 192, "b", schedule="m_grouped_masked"),
                              compiled_shape=(4096, 6, 132))
    fits = GemmProblem(1408, 4096, 2048, "m_grouped_masked", 6, 1228)
    launch.check_compiled_shape(cfg, fits, 132)
    launch.check_compiled_shape(cfg, dataclasses.replace(fits, k=7168, m=64), 132)   # K, M free
    for problem, num_sms, words in ((dataclasses.replace(fits, n=4224), 132, "N = 4096"),
                                    (dataclasses.replace(fits, groups=5), 132, "groups = 6"),
                                    (fits, 128, "grid CTAs = 132")):
        with pytest.raises(ValueError, match=words):
            launch._plan(problem, 0, num_sms, KernelChoice(cfg))
    runtime_groups = dataclasses.replace(cfg, compiled_shape=(4096, 0, 0))
    launch.check_compiled_shape(runtime_groups, dataclasses.replace(fits, groups=9), 64)


@pytest.mark.parametrize("kind", ["m_grouped_masked", "m_grouped_contiguous"])
def test_grouped_launch_runs_the_kernel_of_its_shape(fake_gpu, monkeypatch, kind):
    """Through the real plan (heuristic, shape check, grid) with the kernel load stubbed: a
    grouped launch loads the kernel compiled for its (N, groups) (masked: and the grid) and
    passes N and the group count as parameters all the same."""
    from pyfp8gemm.host.grouped import quantize_grouped, to_grouped_mn_major_tma_aligned
    from pyfp8gemm.host.fp8tensor import to_mn_major_tma_aligned

    kernel, encoded, plans = fake_gpu
    loaded = []
    monkeypatch.setattr(launch, "_plan", UNCACHED_PLAN)
    monkeypatch.setattr(launch, "loaded_kernel",
                        lambda cfg, device_index: loaded.append(cfg) or kernel)
    monkeypatch.setattr(driver, "tensormap_3d", lambda *args: encoded.append(args)
                        or cu.CUtensorMap())
    monkeypatch.setenv("PYFP8GEMM_SPECIALIZE_SHAPES", "1")
    groups, n, k = 6, 576, 1024
    b_data, b_scale = quantize_grouped(torch.randn(groups, n, k), "128x128")
    if kind == "m_grouped_masked":
        m_max = 256
        a_data, a_scale = quantize_grouped(torch.randn(groups, m_max, k), "1x128")
        layout = torch.full((groups,), 200, dtype=torch.int32)
        d = torch.empty(groups, m_max, n, dtype=torch.bfloat16)
        args, grid = (kind, a_data, to_grouped_mn_major_tma_aligned(a_scale), b_data, b_scale,
                      d, layout, groups, 200), 132
    else:
        m = 4 * 128
        a = pyfp8gemm.quantize(torch.randn(m, k), "1x128")
        layout = torch.arange(m, dtype=torch.int32) // 128
        d = torch.empty(m, n, dtype=torch.bfloat16)
        args, grid = (kind, a.data, to_mn_major_tma_aligned(a.scale), b_data, b_scale, d,
                      layout, groups, 128), 0
    launch.launch_grouped(*args)
    (cfg,) = loaded
    assert cfg.schedule == kind and cfg.compiled_shape == (n, groups, grid)
    pointers = (ctypes.c_void_p * 14).from_address(kernel.launches[-1][2])
    assert ctypes.c_int32.from_address(pointers[8]).value == n
    assert ctypes.c_int64.from_address(pointers[12]).value == layout.data_ptr()
    assert ctypes.c_int32.from_address(pointers[13]).value == groups


def test_1d1d_row_major_widths_need_a_full_last_tile():
    """136 / 152 only where their last N tile is nearly full (24576x1536: 152 pads 8.9% of the
    columns and ran x0.93 against 128 where the cost model ties)."""
    from pyfp8gemm.host.heuristics import choose_1d1d

    def width(m, n, k=4096):
        return choose_1d1d(GemmProblem(m, n, k, out_dtype="f32", accumulate=True), 132).config.block_n

    assert width(24576, 1536) == 128
    assert width(7168, 2048) == 152       # 3.9% padding: measured x1.02 against 128
    assert width(64, 1000) % 16 == 0      # 64-row tiles: the direct epilogue's widths


def test_block_m_256_multicast_choice():
    """BLOCK_M 256 shares A across two N-neighbour CTAs when the N tiles pair up (measured
    faster under sustained, power-capped load), and runs without a cluster otherwise."""
    choose_config = choice_of
    for m, n, k in ((4096, 4096, 7168), (4096, 7168, 16384), (8192, 8192, 8192),
                    (4096, 32768, 512)):
        cfg = choose_config(m, n, k, 132)
        assert (cfg.block_m, cfg.block_n, cfg.multicast, cfg.split_k) == (256, 128, "a", 1)
    odd = choose_config(4096, 3968, 7168, 132)                     # 31 N tiles
    assert (odd.block_m, odd.multicast) == (256, "none")
    assert choose_config(4096, 4096, 7168, 131).multicast == "none"  # odd SM count


@pytest.mark.parametrize("block_m, rows", [(16, 16), (32, 32), (64, 64), (128, 64)])
def test_tensor_map_boxes_follow_block_m(fake_gpu, monkeypatch, block_m, rows):
    """A's and its scales' boxes are BLOCK_M rows; D's store box is 64 rows per warpgroup wave,
    or BLOCK_M for the narrow tiles (whose wgmma rows past BLOCK_M are not data)."""
    kernel, encoded, plans = fake_gpu
    cfg = GemmConfig(block_m, 64, 4)
    monkeypatch.setattr(launch, "_plan", lambda problem, device_index, num_sms, choice:
                        launch.Plan(KernelChoice(cfg), kernel, 4, problem))
    a, b, out = operands(20, 256, 512)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    a_map, b_map, sfa_map, d_map = encoded[-4:]
    assert a_map[-2:] == (block_m, 128) and sfa_map[-2:] == (block_m, 1)    # box rows, swizzle
    assert d_map[-2] == rows and b_map[-2] == 64


@pytest.mark.parametrize("with_c", ["none", "d", "other"])
@pytest.mark.parametrize("block_n, box_columns, box_swizzle",
                         [(128, 32, 128), (152, 152, 0)])
def test_1d1d_tma_epilogue_parameters_and_c(fake_gpu, monkeypatch, with_c, block_n, box_columns,
                                            box_swizzle):
    """The 1D1D kernel's "tma" epilogue gets D's 3-D FP32 map last ({32, 64, 1} boxes with
    the 128-byte swizzle, or for BLOCK_N 8 modulo 16 one {BLOCK_N, 64, 1} box without); with C
    it adds into D, so a C other than D is first copied into D."""
    from pyfp8gemm.host.heuristics import make_config

    kernel, encoded, plans = fake_gpu
    maps3d = []
    monkeypatch.setattr(driver, "tensormap_3d", lambda *args: maps3d.append(args)
                        or cu.CUtensorMap())
    cfg = make_config(128, block_n, scaling="1d1d", accumulate=with_c != "none",
                      epilogue="tma")
    monkeypatch.setattr(launch, "_plan", lambda problem, device_index, num_sms, choice:
                        launch.Plan(KernelChoice(cfg), kernel, 4, problem))
    m, n, k = 200, 264, 256
    a = pyfp8gemm.quantize(torch.randn(m, k), "1x128")
    b = pyfp8gemm.quantize(torch.randn(n, k), "1x128")
    d = torch.full((m, n), float("nan"))
    c = {"none": None, "d": d, "other": torch.randn(m, n)}[with_c]
    launch.launch_1d1d(a.data, a.scale, b.data, b.scale, d, c)
    assert len(kernel.launches) == 1 and len(encoded) == 4          # A, B and both scales
    (dtype, address, dims, strides, box, swizzle), = maps3d
    assert (address, dims, strides, box, swizzle) == (
        d.data_ptr(), (n, m, 1), (n * 4, m * n * 4), (box_columns, 64, 1), box_swizzle)
    if with_c == "other":
        assert torch.equal(d, c)                  # C copied into D before the launch
    elif with_c == "none":
        assert d.isnan().all()                    # the kernel alone writes D


def test_1d1d_tma_epilogue_config_rules():
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, 128, scaling="1d1d", epilogue="tma")
    direct = make_config(128, 128, scaling="1d1d")
    assert cfg.name.endswith("_tmad") and cfg.d_stage_bytes == 128 * 128 * 4
    assert cfg.stages < direct.stages and cfg.smem_bytes <= gemm_config.SMEM_LIMIT
    flat = make_config(128, 152, scaling="1d1d", epilogue="tma")       # 8 modulo 16: one box
    assert flat.f32_store_box == ((152, 64), 0) and cfg.f32_store_box == ((32, 64), 128)
    assert flat.d_stage_bytes == 128 * 152 * 4 and flat.smem_bytes <= gemm_config.SMEM_LIMIT
    for bad in (dict(block_n=112, scaling="1d1d"), dict(block_n=128)):   # 1D2D has its own
        with pytest.raises(ValueError, match="epilogue 'tma'"):
            GemmConfig(128, bad["block_n"], 2, scaling=bad.get("scaling", "1d2d"),
                       epilogue="tma")
    with pytest.raises(ValueError, match="epilogue must be"):
        GemmConfig(128, 128, 2, scaling="1d1d", epilogue="smem")


def test_1d1d_choice_epilogue_follows_c(fake_gpu):
    """128-row 1D1D tiles leave through the "tma" epilogue (BLOCK_N a multiple of 32, or 136 /
    152 in one row-major box), unless C is a tensor other than D (the reduce-add would copy C into D first): then "direct".
    The launch key says which: C's pointer against D's."""
    from pyfp8gemm.host.heuristics import all_configs, choose_1d1d

    def choice(m, n, k, separate_c, kind="dense", groups=1):
        return choose_1d1d(GemmProblem(m, n, k, kind, groups, out_dtype="f32", accumulate=True,
                                       separate_c=separate_c), 132).config

    for m, n, k, kind, groups in ((4096, 7168, 4096, "dense", 1), (576, 7168, 4096, "dense", 1),
                                  (4096, 7168, 4 * 8192, "k_grouped", 4)):
        fast, with_copy = choice(m, n, k, False, kind, groups), choice(m, n, k, True, kind, groups)
        assert fast.epilogue == "tma" and fast.block_m == 128
        assert fast.block_n % 32 == 0 or fast.block_n in (136, 152)
        assert with_copy.epilogue == "direct"
        assert fast in all_configs() and with_copy in all_configs()
    assert choice(64, 7168, 4096, False).epilogue == "direct"         # 64-row tiles: not measured
    # The cost model's waves (132 SMs), as measured: 136 at 2112x7168 (7 waves of narrower tiles
    # than 152's 7, against 128's 8), 152 at 7168x16384 (46 waves against 136's 52).
    assert choice(2112, 7168, 4096, False).block_n == 136
    assert choice(7168, 16384, 4096, False).block_n == 152
    with pytest.raises(ValueError, match="separate_c"):
        GemmProblem(64, 64, 128, out_dtype="f32", separate_c=True)

    class Planned(Exception):
        pass

    def record(problem, device_index, num_sms, choice):
        raise Planned(problem)

    launch._plan = record                        # (fake_gpu's monkeypatch restores it)
    a = pyfp8gemm.quantize(torch.randn(200, 256), "1x128")
    b = pyfp8gemm.quantize(torch.randn(264, 256), "1x128")
    d = torch.zeros(200, 264)
    for c, separate in ((d, False), (torch.randn(200, 264), True), (None, False)):
        with pytest.raises(Planned) as planned:
            launch.launch_1d1d(a.data, a.scale, b.data, b.scale, d, c)
        problem, = planned.value.args
        assert problem.separate_c is separate and problem.accumulate is (c is not None)


@pytest.mark.parametrize("block_n", [8, 24])
def test_swap_ab_parameters(fake_gpu, monkeypatch, block_n):
    """Swap-AB: A's box (and its scales') is BLOCK_N token rows, B's 64 weight rows; the kernel
    takes the masked parameter list (layout 0, one group, D's address: D is stored from
    registers)."""
    from pyfp8gemm.host.heuristics import make_config

    kernel, encoded, plans = fake_gpu
    cfg = make_config(64, block_n, swap_ab=True)
    monkeypatch.setattr(launch, "_plan", lambda problem, device_index, num_sms, choice:
                        launch.Plan(KernelChoice(cfg), kernel, 4, problem))
    a, b, out = operands(5, 256, 512)
    launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out)
    a_map, b_map, sfa_map, d_map = encoded[-4:]
    assert a_map[-2:] == (block_n, 128) and b_map[-2:] == (64, 128)
    assert sfa_map[-2:] == (block_n, 1)
    pointers = (ctypes.c_void_p * 15).from_address(kernel.launches[-1][2])
    assert [ctypes.c_int32.from_address(pointers[i]).value for i in (7, 8, 9)] == [5, 256, 512]
    assert ctypes.c_int64.from_address(pointers[12]).value == 0                    # layout
    assert ctypes.c_int32.from_address(pointers[13]).value == 1                    # groups
    assert ctypes.c_int64.from_address(pointers[14]).value == out.data_ptr()       # D


def test_swap_ab_choice():
    """Tokens rounded up to 8 (at most 32) per tile, split-K where the 64-row weight tiles
    are too few for the SMs."""
    from pyfp8gemm.host.heuristics import swap_ab_choice

    for m, block_n in ((1, 8), (8, 8), (9, 16), (20, 24), (32, 32), (64, 32)):
        choice = swap_ab_choice(m, 7168, 2048, 132)
        assert choice.config.swap_ab and choice.config.block_n == block_n
    assert swap_ab_choice(1, 2112, 7168, 132).split_k == 4           # 33 weight tiles
    assert swap_ab_choice(1, 24576, 1536, 132).split_k == 1          # 384
    masked = swap_ab_choice(4, 4096, 7168, 132, "m_grouped_masked")
    assert masked.split_k == 1 and masked.config.schedule == "m_grouped_masked"
