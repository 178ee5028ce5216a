"""The FP8 GEMM kernel with 1D1D scaling: D[M, N] (FP32) = C + (A * sa) @ (B * sb)^T.

Both operands carry one FP32 scale per row per 128 K ("1x128"): the weight-gradient recipe,
where A and B are activations and gradients (dW = dY^T X with both transposed operands quantized
per 128 tokens). The output is FP32, optionally accumulated into (C may be D itself, as a
gradient accumulates over micro-batches). Composed of the same parts as the 1D2D kernel
(gemm_1d2d.py): the ring (pipeline.py), the schedule (scheduler.py: dense, or k_grouped for MoE
weight gradients), the K loop with the 1D1D scaling part (k_loop.py: a scale per output
column), and an FP32 epilogue that stores from registers, bounded by M and N.

  producer warpgroup   one thread streams A, B and both operands' scales (TMA) through the ring.
  math warpgroups      per tile: the K loop, then D = C + tile: straight to global memory
                       ("direct" epilogue), or through shared memory as TMA stores, with C a
                       TMA reduce-add into D ("tma": C must be D, the host copies C first).

Optionally in 2-CTA clusters (cfg.multicast): "b" pairs vertically adjacent tiles that share B
and its scales, "a" horizontal ones sharing A; the cluster's rank 0 loads the shared operand
into both CTAs.

k_grouped (DeepGEMM's k_grouped_fp8_gemm_nt_contiguous): group g multiplies A_g (M, k_g) by
B_g (N, k_g), each K-major and concatenated in memory, so each group has its own A and B tensor
maps (a table of 2 x groups CUtensorMaps in global memory, built by the host); the scales of all
groups are concatenated along K (MN-major), so one map each serves every group at K block
offsets cum[g].

Reading order: `load_k_block` (the producer's slot filler), `math_loop`, the kernel entry.
"""

from numba import cuda
from numba.cuda import types

from .config import BLOCK_K, MATH_REGISTERS, PRODUCER_REGISTERS
from .epilogue import make_f32_tma_epilogue
from .k_loop import fragments, make_math_setup, make_scaling_1d1d, make_tile_k_loop
from .pipeline import make_ring, make_ring_loader
from .ptx import (
    elect_one, ld_global_nc_s32, mbarrier_arrive_expect_tx, prefetch_tensormap,
    setmaxnreg_dec, setmaxnreg_inc, smem_base, tma_load_2d, tma_load_2d_multicast,
)
from .scheduler import make_schedule
from .tile import fragment_store_f32_global

# Kernel parameters: A's, B's, A's scales' and B's scales' tensor maps (by value), D and C
# (C = D to accumulate in place; unused without accumulate), M, N, K (K of all groups together
# for k_grouped), the layout (k_grouped: cumulative K blocks per group, int32 groups + 1; 0
# dense), the number of groups, and the table of per-group A and B tensor maps (k_grouped).
PARAMS = (("tmap_a", types.int64), ("tmap_b", types.int64), ("tmap_sfa", types.int64),
          ("tmap_sfb", types.int64), ("d", types.int64), ("c", types.int64),
          ("m", types.int32), ("n", types.int32), ("k", types.int32),
          ("layout", types.int64), ("groups", types.int32), ("tmaps", types.int64))
TENSORMAP_PARAMS = (0, 1, 2, 3)
TENSORMAP_BYTES = 128


def params_of(cfg):
    """The kernel's parameters: PARAMS, and with the "tma" epilogue D's tensor map (by value,
    last): a 3-D map (N, M, groups) of FP32 D in the boxes of cfg.f32_store_box."""
    return PARAMS + ((("tmap_d", types.int64),) if cfg.epilogue == "tma" else ())


def tensormap_params_of(cfg):
    return TENSORMAP_PARAMS + ((len(PARAMS),) if cfg.epilogue == "tma" else ())


def make_fp8_gemm_1d1d(cfg):
    """Return the kernel's Python function, specialized for `cfg` (compile with numba-cuda)."""
    BM, BN = cfg.block_m, cfg.block_n
    MATH_THREADS = cfg.math_threads
    off = cfg.smem_offsets
    SMEM_A, SMEM_B, SMEM_SFA, SMEM_SFB = off["a"], off["b"], off["sfa"], off["sfb"]
    FULL_BARS = off["full"]
    A_BYTES, B_BYTES = cfg.a_stage_bytes, cfg.b_stage_bytes
    SFA_BYTES, SFB_BYTES = cfg.sfa_stage_bytes, cfg.sfb_stage_bytes
    STAGE_TX_BYTES = A_BYTES + B_BYTES + BM * 4 + BN * 4     # what TMA delivers per stage
    K_GROUPED = cfg.schedule == "k_grouped"
    ACCUMULATE = cfg.accumulate
    CLUSTER = cfg.cluster_size
    CLUSTER_M, CLUSTER_N = cfg.cluster_shape
    MULTICAST_A, MULTICAST_B = cfg.multicast == "a", cfg.multicast == "b"
    CTA_MASK = (1 << CLUSTER) - 1

    ring = make_ring(cfg.stages, FULL_BARS, off["empty"], full_arrivals=1,
                     empty_arrivals=CLUSTER * MATH_THREADS // 32, cluster=CLUSTER)
    publish_ring, await_ring = ring.publish, ring.await_published
    schedule = make_schedule(cfg.schedule, BM, BN, CLUSTER_M, CLUSTER_N, cfg.group_m, False)
    begin, count, start, tile, _, next_unit = schedule
    tile_k_loop = make_tile_k_loop(cfg, ring, make_scaling_1d1d)
    TMA_D = cfg.epilogue == "tma"
    if TMA_D:
        store_tile_tma, drain_stores = make_f32_tma_epilogue(cfg)
    else:
        store_tile = fragment_store_f32_global(BN // 2, ACCUMULATE)
    zeros, final_zeros = fragments(cfg)
    math_setup = make_math_setup(cfg)
    producer_registers = setmaxnreg_dec(PRODUCER_REGISTERS)
    math_registers = setmaxnreg_inc(MATH_REGISTERS[cfg.math_warpgroups])
    inline = cuda.jit(device=True, inline="always")

    # ---- producer: one K block of one tile into a ring slot ------------------------------

    @inline
    def load_operand(dst, scale_dst, tmap, tmap_scale, full, local_kb, row, kb, shared, rank):
        """One operand's tile (rows `row`.., K block local_kb of its tensor map) and its row
        scales (K block kb) into a slot; `shared` (multicast): rank 0 loads them into both CTAs
        of the cluster."""
        if shared:
            if rank == 0:
                tma_load_2d_multicast(dst, tmap, full, local_kb * BLOCK_K, row, CTA_MASK)
                tma_load_2d_multicast(scale_dst, tmap_scale, full, row, kb, CTA_MASK)
        else:
            tma_load_2d(dst, tmap, full, local_kb * BLOCK_K, row)
            tma_load_2d(scale_dst, tmap_scale, full, row, kb)

    @inline
    def load_k_block(base, operands, rank, stage, group, b_share, m_block, n_block, kb):
        """TMA thread: A's and B's tiles and both scale vectors of K block kb (a global K block
        index: the scales' coordinate) into slot `stage` (a cluster sharing B always shares
        it here: both CTAs are in one group; b_share is unused)."""
        tmap_a, tmap_b, tmap_sfa, tmap_sfb, layout, tmaps = operands
        full = base + FULL_BARS + 8 * stage
        mbarrier_arrive_expect_tx(full, STAGE_TX_BYTES)
        local_kb = kb
        if K_GROUPED:             # group g's own A_g and B_g maps, K blocks from its start
            tmap_a = tmaps + 2 * TENSORMAP_BYTES * group
            tmap_b = tmap_a + TENSORMAP_BYTES
            local_kb = kb - ld_global_nc_s32(layout + 4 * group)
        load_operand(base + SMEM_A + A_BYTES * stage, base + SMEM_SFA + SFA_BYTES * stage,
                     tmap_a, tmap_sfa, full, local_kb, m_block * BM, kb, MULTICAST_A, rank)
        load_operand(base + SMEM_B + B_BYTES * stage, base + SMEM_SFB + SFB_BYTES * stage,
                     tmap_b, tmap_sfb, full, local_kb, n_block * BN, kb, MULTICAST_B, rank)

    loader_loop = make_ring_loader(ring, schedule, load_k_block, drain=True)

    # ---- math warpgroups: tiles -> K loop -> D = C + tile ------------------------------------

    @inline
    def math_loop(base, d, c, m, n, work, tid, tmap_d):
        unit = work[3]
        cursor = start(work)
        lane, row, sfa_row, warpgroup, descs = math_setup(base, tid)
        acc = zeros()
        acc_next = zeros()
        stage = types.int32(0)
        phase = types.int32(0)
        num_units = count(work)
        while unit < num_units:
            group, m_block, n_block, _, _, kb_begin, kb_end, _, cursor = tile(unit, work,
                                                                              cursor)
            final = final_zeros()
            if not K_GROUPED or kb_begin < kb_end:     # an empty group: D = C (or zeros)
                final, acc, acc_next, stage, phase = tile_k_loop(
                    BN // 8, base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                    0, kb_begin, kb_end)
            unit = next_unit(unit, work)
            if TMA_D:
                store_tile_tma(base, tmap_d, final, m_block, n_block, group, tid, warpgroup)
            else:
                # This thread's first element of the tile, in group g's (M, N) slice of D, C.
                r = m_block * BM + row
                col = n_block * BN + 2 * (lane % 4)
                at = 4 * (group * m * n + r * n + col)
                store_tile(d + at, c + at, final, 4 * n, m - r, n - col)
        if TMA_D:
            drain_stores(tid)

    # ---- the kernel (its entry below: with D's tensor map for the "tma" epilogue) ------------

    @inline
    def kernel(tmap_a, tmap_b, tmap_sfa, tmap_sfb, d, c, m, n, k, layout, groups, tmaps,
               tmap_d):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        base = smem_base(smem)
        tid = cuda.threadIdx.x
        # The producer's first thread sets up the ring's barriers; the cluster barrier's wait
        # comes after the schedule's setup (and its loads), which needs no barrier.
        publish_ring(base, tid == MATH_THREADS)
        work = begin(m, n, k, 1, 0, layout, groups, 0)
        if tid == MATH_THREADS:
            prefetch_tensormap(tmap_sfa)
            prefetch_tensormap(tmap_sfb)
            if not K_GROUPED:
                prefetch_tensormap(tmap_a)
                prefetch_tensormap(tmap_b)
        await_ring()

        if tid >= MATH_THREADS:
            producer_registers()
            if tid < MATH_THREADS + 32:             # warp 0: the TMA thread
                if elect_one():
                    loader_loop(base, (tmap_a, tmap_b, tmap_sfa, tmap_sfb, layout, tmaps),
                                work)
                cuda.syncwarp()
        else:
            math_registers()
            math_loop(base, d, c, m, n, work, tid, tmap_d)

    if TMA_D:
        def fp8_gemm_1d1d(tmap_a, tmap_b, tmap_sfa, tmap_sfb, d, c, m, n, k, layout, groups,
                          tmaps, tmap_d):
            kernel(tmap_a, tmap_b, tmap_sfa, tmap_sfb, d, c, m, n, k, layout, groups, tmaps,
                   tmap_d)
    else:
        def fp8_gemm_1d1d(tmap_a, tmap_b, tmap_sfa, tmap_sfb, d, c, m, n, k, layout, groups,
                          tmaps):
            kernel(tmap_a, tmap_b, tmap_sfa, tmap_sfb, d, c, m, n, k, layout, groups, tmaps, 0)

    fp8_gemm_1d1d.__name__ = fp8_gemm_1d1d.__qualname__ = cfg.name
    return fp8_gemm_1d1d
