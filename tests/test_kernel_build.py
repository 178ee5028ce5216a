"""The GEMM kernel as ptxas builds it (CPU, no GPU): the properties that decide whether it can
run at all, checked before any launch."""

import os

import pytest

import pyfp8gemm.device.config as gemm
from pyfp8gemm.device.gemm_1d2d import TENSORMAP_PARAMS
from pyfp8gemm.cache import compiler, store, toolchain
from pyfp8gemm.device.config import GemmConfig, check_register_budget
from pyfp8gemm.host.kernels import kernel_spec


@pytest.fixture(scope="module")
def two_warpgroup_kernel():
    cfg = GemmConfig(128, 128, 5, "a")
    return cfg, compiler.compile_kernel(kernel_spec(cfg))


def test_the_kernel_comes_from_the_test_cache_with_the_cubins_own_registers(
        two_warpgroup_kernel, private_kernel_cache):
    """Compiled into the session's temporary cache (conftest), never the user's real one; and
    the registers the launcher's budget check reads are the cubin's, whatever the metadata says
    (a forged entry claimed fewer, issue 17)."""
    cfg, kernel = two_warpgroup_kernel
    spec = kernel_spec(cfg)
    key = store.key_of(compiler.cache_key(spec))
    disk = store.disk_store()
    assert disk is not None and str(disk.root) == os.path.realpath(private_kernel_cache)
    entry = disk.read(key)
    assert entry is not None and entry.name == cfg.name and entry.payload == kernel.cubin
    cubin_registers = toolchain.resource_usage(kernel.cubin)[cfg.name]["registers"]
    assert kernel.meta["registers"] == cubin_registers
    disk.put(key, entry.payload, {**entry.meta, "registers": 8}, parts=entry.parts)
    compiler._compiled.clear()
    store.kernel_memory.clear()
    reloaded = compiler.compile_kernel(spec)
    assert reloaded.cubin == kernel.cubin and reloaded.meta["registers"] == cubin_registers


def test_setmaxnreg_budgets_fit_the_launch_pool(two_warpgroup_kernel):
    cfg, kernel = two_warpgroup_kernel
    check_register_budget(cfg, kernel.meta["registers"])          # no exception
    assert kernel.meta["registers"] * cfg.threads >= 128 * gemm.PRODUCER_REGISTERS + \
        cfg.math_threads * gemm.MATH_REGISTERS[2]


def test_a_budget_beyond_the_pool_is_refused(two_warpgroup_kernel, monkeypatch):
    """A producer budget beyond the pool (48 next to 232 for the math warpgroups) hung every
    two-warpgroup kernel on the H200 (bench/JOURNAL.md): the launcher must refuse it instead."""
    cfg, kernel = two_warpgroup_kernel
    monkeypatch.setattr(gemm, "PRODUCER_REGISTERS", 64)
    with pytest.raises(RuntimeError, match="would hang"):
        check_register_budget(cfg, kernel.meta["registers"])


def _ptxas_info(cfg) -> str:
    """ptxas's verbose output (warnings included) for the kernel of cfg."""
    spec = kernel_spec(cfg)
    ptx = compiler.kernel_to_ptx(spec.make_kernel(), spec.signature, cfg.threads)
    ptx = compiler.tensormaps_by_value(compiler.rename_entry(ptx, cfg.name), cfg.name,
                                       TENSORMAP_PARAMS)
    return toolchain.ptxas_verbose(ptx)[1]


def test_overlapped_kernel_is_not_serialized_and_does_not_spill(two_warpgroup_kernel):
    """ptxas serializes wgmma (warning C7514) when an in-flight fragment crosses a branch merge;
    the kernel is written so that it never does. Two fragments in flight: 16 QGMMA in the SASS."""
    cfg, kernel = two_warpgroup_kernel
    assert cfg.overlap_promotion
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    sass = toolchain.sass(kernel.cubin)
    counts = toolchain.count_opcodes(sass)
    assert counts["QGMMA"] == 16 and counts["USETMAXREG"] == 2
    info = _ptxas_info(cfg)
    assert "C7514" not in info and "serialized" not in info


@pytest.mark.parametrize("block_n, multicast", [(128, "a"), (64, "b")])
def test_block_m_256_builds_two_waves_without_spills(block_n, multicast):
    cfg = GemmConfig(256, block_n, 3, multicast)
    assert cfg.waves == 2 and cfg.math_warpgroups == 2 and not cfg.overlap_promotion
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, kernel.meta["registers"])
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin))
    assert counts["QGMMA"] == 8            # 4 k32 steps for each of the two waves


def test_block_m_256_needs_block_n_at_most_128():
    with pytest.raises(ValueError, match="block_m=256 needs block_n <= 128"):
        GemmConfig(256, 144, 3)


@pytest.mark.parametrize("cfg, loops", [(GemmConfig(128, 192, 4, "b"), 2),
                                        (GemmConfig(64, 192, 6), 2)])
def test_straddling_tiles_get_a_k_loop_per_scale_split(cfg, loops):
    """A tile that straddles two B-scale blocks promotes its first n_first 8-column groups with
    the first block's scale. Where its offset in the block takes few values (BLOCK_N 192: 0 or
    64, i.e. 16 or 8 groups) and the promotion is not overlapped, the K loop is compiled once
    per split with the split a constant: no compare and select per group in the promotion
    (DeepGEMM's num_former_iters). (BLOCK_N 160 at BLOCK_M 128: test above, 4 loops.)"""
    assert not cfg.overlap_promotion and cfg.split_promotion
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin), ("QGMMA", "FSEL"))
    assert counts["QGMMA"] == loops * 8        # 4 k32 steps for each half (split promotion)
    assert counts["FSEL"] == 0


@pytest.mark.parametrize("cfg", [GemmConfig(128, 136, 5), GemmConfig(128, 96, 7)])
def test_other_straddling_tiles_select_scales_at_run_time(cfg):
    """BLOCK_N 136 tiles start at any multiple of 8 in a B-scale block (16 splits), and an
    overlapped loop (BLOCK_N 96) hides the selects behind the next wgmmas: one K loop, whose
    promotion selects each group's scale."""
    assert not cfg.split_promotion
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin), ("QGMMA", "FSEL"))
    assert counts["QGMMA"] == 4 * (4 if cfg.overlap_promotion else 1)
    assert counts["FSEL"] > 0


@pytest.mark.parametrize("cfg, halves", [
    (GemmConfig(128, 192, 4, "b", schedule="m_grouped_contiguous"), 1),   # 2 static splits
    (GemmConfig(128, 144, 5), 1),                # 8 splits: scales selected at run time
    (GemmConfig(32, 160, 8), 1),                 # a narrow tile
    (GemmConfig(128, 136, 5), 0),                # 68-column halves: not whole 8-column groups
    (GemmConfig(256, 128, 3, "a"), 0),           # two waves
    (GemmConfig(128, 128, 5, "a"), 0),           # overlapped promotion
    (GemmConfig(128, 128, 4, scaling="1d1d"), 0),   # per-column scales
])
def test_split_promotion_issues_each_wave_as_two_half_wide_wgmmas(cfg, halves):
    """cfg.split_promotion: the one-fragment K loop issues its 4 k32 steps as two halves of
    BLOCK_N / 2 columns in two commit groups (the low half is promoted while the high half
    runs): m64n{BLOCK_N/2} wgmmas only, a wgmma wait for one pending group, no spills."""
    assert cfg.split_promotion == bool(halves)
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    sass = toolchain.sass(kernel.cubin)
    if halves:
        assert f"QGMMA.64x{cfg.block_n // 2}x32" in sass
        assert f"QGMMA.64x{cfg.block_n}x32" not in sass
        assert "WARPGROUP.DEPBAR.LE gsb0, 0x1" in sass
    else:
        assert f"QGMMA.64x{cfg.block_n // 2}x32" not in sass


# ---------------------------------------------------------------------------------------------
# Narrow A tiles (BLOCK_M 16 / 32): config rules, layout, build
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_m", [16, 32])
def test_narrow_tiles_layout(block_m):
    """One math warpgroup, one wave, BLOCK_M rows stored; A's slots BLOCK_M x 128 bytes and
    1024-aligned after a D staging tile rounded up to 1024 bytes; more slots than BLOCK_M 64."""
    cfg = GemmConfig(block_m, 48, 8)
    assert cfg.math_warpgroups == 1 and cfg.waves == 1 and cfg.store_rows == block_m
    assert cfg.a_stage_bytes == block_m * 128 and cfg.sfa_stage_bytes == 128
    off = cfg.smem_offsets
    assert off["a"] % 1024 == 0 and off["b"] % 1024 == 0 and off["a"] >= block_m * 48 * 2
    assert GemmConfig.max_stages(block_m, 16) > GemmConfig.max_stages(64, 16)
    # every other configuration keeps its layout: D staging was already 1024-aligned
    for bm, bn in ((64, 16), (64, 24), (128, 136), (256, 72)):
        assert GemmConfig(bm, bn, 2).d_stage_bytes == bm * bn * 2
        assert GemmConfig(bm, bn, 2).store_rows == 64


@pytest.mark.parametrize("kwargs", [dict(multicast="a"), dict(split_k=True),
                                    dict(schedule="m_grouped_masked"),
                                    dict(scaling="1d1d")])
def test_narrow_tiles_run_only_the_plain_dense_kernel(kwargs):
    with pytest.raises(ValueError, match="narrow A tiles"):
        GemmConfig(16, 64, 8, **kwargs)
    with pytest.raises(ValueError, match="block_m must be 16, 32, 64, 128 or 256"):
        GemmConfig(48, 64, 8)


@pytest.mark.parametrize("block_m, block_n", [(16, 16), (32, 48)])
def test_narrow_tiles_build_with_guarded_stores(block_m, block_n):
    """0 spills, and the epilogue stores only the warps of the BLOCK_M real rows: one stmatrix
    per 8 columns for each such warp is still in the SASS (as for BLOCK_M 64), behind a
    branch on the warp index."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(block_m, block_n)
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, kernel.meta["registers"])
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    wide = compiler.compile_kernel(kernel_spec(make_config(64, block_n)))
    narrow_sass, wide_sass = toolchain.sass(kernel.cubin), toolchain.sass(wide.cubin)
    assert narrow_sass.count("STSM") == wide_sass.count("STSM") > 0
    assert (toolchain.count_opcodes(narrow_sass)["QGMMA"]
            == toolchain.count_opcodes(wide_sass)["QGMMA"])


@pytest.mark.parametrize("schedule", ["dense", "k_grouped"])
def test_accumulating_1d1d_epilogue_loads_all_of_c_before_storing(schedule):
    """D = C + A @ B^T in FP32: every thread's loads of C are in flight together, then the
    adds and stores (a load, add, store per column pair waited out a DRAM round trip each:
    32 per 128 x 128 tile, the tensor cores idle meanwhile; bench/JOURNAL.md, session 11)."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, 128, schedule=schedule, scaling="1d1d", accumulate=True)
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    opcodes = [op for _, _, op in toolchain._sass_instructions(toolchain.sass(kernel.cubin))]
    c_loads = [i for i, op in enumerate(opcodes) if op.startswith("LDG.E.64")]
    d_stores = [i for i, op in enumerate(opcodes) if op.startswith("STG.E.64")]
    pairs = cfg.block_n // 4             # BLOCK_N / 2 accumulators per thread, two per pair
    assert len(c_loads) == len(d_stores) == pairs
    assert max(c_loads) < min(d_stores)


@pytest.mark.parametrize("schedule, accumulate, block_n", [
    ("dense", True, 128), ("dense", False, 128), ("k_grouped", True, 128),
    ("dense", True, 152), ("k_grouped", True, 136)])
def test_1d1d_tma_epilogue_stores_through_shared_memory(schedule, accumulate, block_n):
    """The "tma" epilogue: the tile goes to shared memory (st.shared.v2.f32, BLOCK_N / 4 per
    thread) and leaves by TMA (per 32-column panel, or one row-major box at BLOCK_N 8 modulo
    16), a reduce-add with C: no global load or store of D on the SM, 0 spills, the ring
    shortened to 4 stages by the staging tile."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, block_n, schedule=schedule, scaling="1d1d", accumulate=accumulate,
                      epilogue="tma")
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, kernel.meta["registers"])
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin),
                                     ("UTMAREDG", "UTMASTG", "STS.64", "STG", "LDG.E.64"))
    assert counts["STS.64"] == cfg.block_n // 4 and counts["STG"] == counts["LDG.E.64"] == 0
    assert (counts["UTMAREDG"], counts["UTMASTG"]) == ((1, 0) if accumulate else (0, 1))
    assert cfg.stages == 4 and cfg.smem_bytes <= gemm.SMEM_LIMIT


@pytest.mark.parametrize("multicast, schedule", [("a", "dense"), ("b", "dense"),
                                                 ("b", "k_grouped")])
def test_1d1d_in_a_cluster_multicasts_the_shared_operand(multicast, schedule):
    """1D1D in a 2-CTA cluster: rank 0 multicasts the shared operand and its scales, the
    cluster synchronizes once, after the barriers' init (at exit the TMA thread drains the ring
    instead: `pipeline.Ring.drain`), 0 spills."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, 128, multicast, schedule=schedule, scaling="1d1d", accumulate=True,
                      epilogue="tma")
    assert cfg.cluster_size == 2
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin),
                                     ("UTMALDG.2D.MULTICAST", "UCGABAR_ARV", "UCGABAR_WAIT"))
    assert counts["UTMALDG.2D.MULTICAST"] >= 2
    assert counts["UCGABAR_ARV"] == 1 and counts["UCGABAR_WAIT"] == 1


def test_bf16_staging_tile_gives_each_slab_its_own_aligned_bytes():
    """Each 64-row slab of the bf16 staging tile has its own bytes (the math warpgroups stage
    and store without a barrier between them), 1024-aligned where there are several (TMA's
    swizzle); a masked slab also holds 64 row-major rows, an odd number of 16-byte chunks
    apart (stmatrix without bank conflicts)."""
    from pyfp8gemm.host.heuristics import all_configs

    checked = 0
    for cfg in all_configs():
        if cfg.scaling != "1d2d" or cfg.swap_ab:
            continue
        slabs = cfg.block_m // cfg.store_rows
        assert cfg.d_stage_bytes >= slabs * cfg.d_slab_bytes
        assert cfg.d_slab_bytes >= cfg.store_rows * cfg.block_n * 2
        if slabs > 1:
            assert cfg.d_slab_bytes % 1024 == 0, cfg.name
        if cfg.schedule == "m_grouped_masked":
            assert cfg.d_slab_bytes >= 64 * cfg.d_row_pitch and cfg.d_row_pitch // 16 % 2 == 1
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("block_n", [128, 112])
def test_masked_kernel_stores_full_slabs_by_tma_and_the_last_rows_by_row(block_n):
    """m_grouped_masked: a warpgroup's 64-row slab whose rows are all below masked_m leaves by
    TMA (stmatrix into the swizzled staging tile, UTMASTG); the slab with the group's last rows
    is staged row-major (a second stmatrix path) and leaves by one 1-D bulk copy per row
    (UBLKCP): no global store from registers is left in the kernel. 112 (a 32-byte swizzle)
    spilled in an earlier copy whose loop-invariant indices ptxas kept live across the K
    loop."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, block_n, schedule="m_grouped_masked")
    assert cfg.d_row_pitch // 16 % 2 == 1 and cfg.d_row_pitch >= 2 * block_n
    assert cfg.d_stage_bytes >= 128 * cfg.d_row_pitch
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    counts = toolchain.count_opcodes(toolchain.sass(kernel.cubin),
                                     ("UTMASTG", "UBLKCP", "STSM", "STG"))
    assert counts["UTMASTG"] >= 1 and counts["UBLKCP"] >= 1
    assert counts["STSM"] >= 2 * (cfg.block_n // 8)
    assert counts["STG"] == 0


def test_shape_compiled_masked_kernel_folds_its_divisions():
    """A masked kernel compiled for its (N, groups, grid): the divisions by N's tile count and
    by the grid's clusters (each role's schedule has them) become multiplications, leaving
    only the division by a group's run-time M blocks (one reciprocal per role instead of
    three); same wgmmas, no spills."""
    import dataclasses

    from pyfp8gemm.host.heuristics import make_config

    generic = make_config(128, 192, "b", schedule="m_grouped_masked")
    compiled = dataclasses.replace(generic, compiled_shape=(4096, 6, 132))
    counts = {}
    for cfg in (generic, compiled):
        kernel = compiler.compile_kernel(kernel_spec(cfg))
        assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
        counts[cfg] = toolchain.count_opcodes(toolchain.sass(kernel.cubin), ("MUFU", "QGMMA"))
    assert counts[compiled]["QGMMA"] == counts[generic]["QGMMA"] == 16
    assert counts[compiled]["MUFU"] * 3 == counts[generic]["MUFU"]


@pytest.mark.parametrize("shape, words", [((4096, 6), "compiled_shape"),
                                          ((4096, -1, 132), "compiled_shape"),
                                          ((4096, 6, 131), "multiple of the cluster")])
def test_compiled_shape_is_checked(shape, words):
    with pytest.raises(ValueError, match=words):
        GemmConfig(128, 192, 4, "b", schedule="m_grouped_masked", compiled_shape=shape)
    with pytest.raises(ValueError, match="1D2D"):
        GemmConfig(128, 128, 4, schedule="k_grouped", scaling="1d1d", epilogue="tma",
                   compiled_shape=(4096, 6, 132))


def test_masked_kernel_with_the_dead_warpgroup_branch_is_not_serialized():
    """The masked kernel's branch around the K loop (a warpgroup past masked_m only takes its
    turn on the ring) must not make ptxas serialize the overlapped wgmmas (C7514)."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(128, 128, schedule="m_grouped_masked")
    assert cfg.overlap_promotion
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    assert toolchain.count_opcodes(toolchain.sass(kernel.cubin))["QGMMA"] == 16
    info = _ptxas_info(cfg)
    assert "C7514" not in info and "serialized" not in info


# ---------------------------------------------------------------------------------------------
# Swap-AB: D^T = B A^T (64 weight rows x 8-32 tokens per tile), stored transposed from registers
# ---------------------------------------------------------------------------------------------


def test_swap_ab_layout():
    """D's view of a tile is (tokens, weight rows); A's scales are per token (column) and no
    D staging tile is needed (stored from registers); tiles never straddle a scale block."""
    cfg = GemmConfig(64, 8, 24, swap_ab=True)
    assert cfg.d_tile == (8, 64) and GemmConfig(64, 8 * 2, 4).d_tile == (64, 16)
    assert cfg.a_stage_bytes == 64 * 128 and cfg.b_stage_bytes == 8 * 128
    assert cfg.sfa_stage_bytes == 128 and cfg.d_stage_bytes == 0
    assert not cfg.straddles and cfg.overlap_promotion and cfg.math_warpgroups == 1
    off = cfg.smem_offsets
    assert off["a"] % 1024 == 0 and off["b"] % 1024 == 0
    assert cfg.name.endswith("_swapab") and cfg.name != GemmConfig(64, 8 * 2, 4).name
    assert GemmConfig.max_stages(64, 8, swap_ab=True) > GemmConfig.max_stages(64, 16)


@pytest.mark.parametrize("kwargs, block_m, block_n", [
    (dict(multicast="b"), 64, 16), (dict(schedule="m_grouped_contiguous"), 64, 16),
    (dict(scaling="1d1d"), 64, 16), ({}, 128, 16), ({}, 64, 12), ({}, 64, 40)])
def test_swap_ab_runs_dense_or_masked_1d2d_with_64_weight_rows(kwargs, block_m, block_n):
    with pytest.raises(ValueError, match="swap_ab runs"):
        GemmConfig(block_m, block_n, 4, swap_ab=True, **kwargs)


@pytest.mark.parametrize("block_n, split_k, schedule", [
    (8, False, "dense"), (24, True, "dense"), (16, False, "m_grouped_masked")])
def test_swap_ab_builds_m64nN_wgmmas_and_transposed_stores(block_n, split_k, schedule):
    """0 spills; the wgmma is m64 x BLOCK_N tokens; D leaves as one predicated 2-byte store per
    fragment element (no stmatrix, no TMA store)."""
    from pyfp8gemm.host.heuristics import make_config

    cfg = make_config(64, block_n, split_k=split_k, schedule=schedule, swap_ab=True)
    kernel = compiler.compile_kernel(kernel_spec(cfg))
    check_register_budget(cfg, kernel.meta["registers"])
    assert kernel.meta["spill_store_bytes"] == 0 and kernel.meta["spill_load_bytes"] == 0
    sass = toolchain.sass(kernel.cubin)
    ops = toolchain.count_opcodes(sass)
    assert ops["QGMMA"] > 0 and f"QGMMA.64x{block_n}x32" in sass
    assert "STSM" not in sass and ops["UTMASTG"] == 0
    assert sass.count("STG.E.U16") == block_n // 2
