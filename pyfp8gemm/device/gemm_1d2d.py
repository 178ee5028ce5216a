"""The FP8 GEMM kernel with 1D2D scaling: D[M, N] (bf16) = (A * sa) @ (B * sb)^T.

A (M, K) e4m3 with one FP32 scale per row per 128 K ("1x128"); B (N, K) e4m3 with one scale
per 128x128 block. Both K-major. The kernel is persistent and warp-specialized, and composed of
the parts in this package:

  producer warpgroup   one thread streams A, B and A's scales through the ring of `stages`
                       shared-memory slots (pipeline.py) with TMA, a second thread B's scales
                       with cp.async; both walk the work schedule (scheduler.py).
  math warpgroups      per tile: the K loop (k_loop.py: wgmma + promotion with the 1D2D
                       scaling part), then the epilogue (epilogue.py: bf16 -> stmatrix -> TMA
                       store, after the split-K reduction where K is split).

With a 2-CTA cluster, one operand tile is loaded once and multicast to both CTAs: A when the two
CTAs take neighbouring N tiles (multicast="a"), B when they take neighbouring M tiles (where
the schedule's b_share says so: for m_grouped_contiguous only where both M blocks are one
group's; for m_grouped_masked not on an odd block count's last block, whose two CTAs take two
of its weight tiles).

The same kernel serves the MoE grouped GEMMs (GemmConfig.schedule): B is then (groups * N, K)
and the schedule says which group a tile belongs to: for m_grouped_contiguous a per-row group
index (padding blocks have no K blocks and store zeros), for m_grouped_masked A is
(groups * M_max, K), D (groups, M_max, N), A's scales (groups, K blocks, align(M_max, 4)),
group g has masked_m[g] rows: a warpgroup's 64-row slab whose rows are all below that count is
stored by TMA, as in a dense tile; the slab holding the group's last rows is staged row-major
and copied out by one 1-D bulk copy per row below the count (rows past it stay untouched).

Swap-AB (cfg.swap_ab, for decode batches of 1-32 tokens): the tile is computed as D^T = B A^T,
64 weight rows (the wgmma's M side: B's tile is its A operand) by BLOCK_N tokens (its N side,
as few as 8, instead of a 64-row wgmma with at most 32 real rows). The schedule still walks D's
tiles (cfg.d_tile: tokens x weight rows); A's scales become per-column (k_loop's swap-AB
scaling part), B's block scale one per tile, and the epilogue stores the tile transposed from
registers, bounded by M (or a masked group's count) and N.

Reading order: the producer's slot fillers `load_tiles` and `load_b_scales_into_slot`, then
`math_loop` (tiles -> K loop -> epilogue), then the kernel entry.
"""

from numba import cuda
from numba.cuda import types

from .config import BLOCK_K, MATH_REGISTERS, PRODUCER_REGISTERS, SFB_STAGE_BYTES
from .epilogue import (
    make_bf16_epilogue, make_row_copy_bf16_store, make_split_k_reduction,
    make_transposed_bf16_store,
)
from .k_loop import fragments, make_math_setup, make_scaling_for, make_tile_k_loop
from .pipeline import make_ring, make_ring_loader, make_ring_skipper
from .ptx import (
    cp_async_4, cp_async_mbarrier_arrive_noinc, elect_one,
    mbarrier_arrive_expect_tx, prefetch_tensormap, setmaxnreg_dec, setmaxnreg_inc, smem_base,
    tma_load_2d, tma_load_2d_multicast, tma_load_3d,
)
from .scheduler import make_schedule

# Kernel parameters: four tensor maps (by value after the PTX post-edit), B's scales, the split-K
# workspace and its per-tile counters (0 without split-K), M, N, K, the split count (1 without)
# and the number of leading tiles that are not split (0: all are; see scheduler.py); grouped
# schedules add the layout tensor (m_indices or masked_m) and the number of groups, masked the
# output's address (its epilogue stores from registers, bounded by each group's row count).
PARAMS = (("tmap_a", types.int64), ("tmap_b", types.int64), ("tmap_sfa", types.int64),
          ("tmap_d", types.int64), ("sfb", types.int64), ("workspace", types.int64),
          ("counters", types.int64), ("m", types.int32), ("n", types.int32),
          ("k", types.int32), ("split_k", types.int32), ("whole_tiles", types.int32))
GROUPED_PARAMS = PARAMS + (("layout", types.int64), ("groups", types.int32))
MASKED_PARAMS = GROUPED_PARAMS + (("d", types.int64),)
TENSORMAP_PARAMS = (0, 1, 2, 3)


def params_of(cfg):
    """The kernel's (name, numba type) parameters (swap_ab: the masked list, as it stores D
    from registers; dense: layout 0, 1 group)."""
    if cfg.swap_ab:
        return MASKED_PARAMS
    return {"dense": PARAMS, "m_grouped_contiguous": GROUPED_PARAMS,
            "m_grouped_masked": MASKED_PARAMS}[cfg.schedule]


def make_fp8_gemm_1d2d(cfg):
    """Return the kernel's Python function, specialized for `cfg` (compile with numba-cuda)."""
    BM, BN, STAGES = cfg.block_m, cfg.block_n, cfg.stages
    MATH_THREADS, CLUSTER = cfg.math_threads, cfg.cluster_size
    CLUSTER_M, CLUSTER_N = cfg.cluster_shape
    MULTICAST_A, MULTICAST_B = cfg.multicast == "a", cfg.multicast == "b"
    CTA_MASK = (1 << CLUSTER) - 1
    off = cfg.smem_offsets
    SMEM_A, SMEM_B, SMEM_SFA, SMEM_SFB = off["a"], off["b"], off["sfa"], off["sfb"]
    FULL_BARS = off["full"]
    A_BYTES, B_BYTES, SFA_BYTES = cfg.a_stage_bytes, cfg.b_stage_bytes, cfg.sfa_stage_bytes
    # Swap-AB: the wgmma's A operand is B's tile (weights) and its B operand A's (tokens), so
    # the schedule, the loads and the epilogue see D's view of the tile: ROWS x COLUMNS.
    SWAP = cfg.swap_ab
    ROWS, COLUMNS = cfg.d_tile
    # Where A's and B's tiles land in a slot: the wgmma's A and B operand slots, swapped.
    A_TILE, A_TILE_BYTES = (SMEM_B, B_BYTES) if SWAP else (SMEM_A, A_BYTES)
    B_TILE, B_TILE_BYTES = (SMEM_A, A_BYTES) if SWAP else (SMEM_B, B_BYTES)
    STAGE_TX_BYTES = A_BYTES + B_BYTES + ROWS * 4    # what TMA delivers per stage
    STRADDLE = cfg.straddles          # a BLOCK_N tile may cross two 128-column B-scale blocks
    N_GROUPS = BN // 8                # 8-column groups of a tile
    SPLIT_K = cfg.split_k             # split-K code in (the split count is a kernel parameter)
    GROUPED = cfg.schedule != "dense"
    MASKED = cfg.schedule == "m_grouped_masked"
    PADDING_BLOCKS = cfg.schedule == "m_grouped_contiguous"   # tiles with no K blocks
    # Contiguous in a cluster sharing B: a pair's blocks may be two groups or one padding
    PAIRED_GROUPS = PADDING_BLOCKS and MULTICAST_B
    # ... and where each CTA may load its own B tile (b_share < 0): those, and masked (an odd
    # block count's last block: the pair takes two of its weight tiles)
    B_MAY_BE_OWN = MULTICAST_B and (PADDING_BLOCKS or MASKED)

    ring = make_ring(STAGES, FULL_BARS, off["empty"],
                     full_arrivals=2,                      # the TMA and B-scale threads
                     empty_arrivals=CLUSTER * MATH_THREADS // 32,   # each math warp of each CTA
                     cluster=CLUSTER)
    FIXED_N, FIXED_GROUPS, FIXED_GRID = cfg.compiled_shape or (0, 0, 0)
    schedule = make_schedule(cfg.schedule, ROWS, COLUMNS, CLUSTER_M, CLUSTER_N, cfg.group_m,
                             SPLIT_K, grid_ctas=FIXED_GRID)
    # (numba inlines only functions it finds under plain names: parts are unpacked here)
    publish_ring, await_ring = ring.publish, ring.await_published
    begin, count, start, tile, group_rows, next_unit = schedule
    tile_k_loop = make_tile_k_loop(cfg, ring, make_scaling_for(cfg))
    skip_k_blocks = (make_ring_skipper(ring) if (MASKED and not SWAP) or PAIRED_GROUPS
                     else None)
    store_tile, drain_stores = make_bf16_epilogue(cfg) if not SWAP else (None, None)
    store_slab = make_row_copy_bf16_store(cfg) if MASKED and not SWAP else None
    store_transposed = make_transposed_bf16_store(cfg) if SWAP else None
    reduce_split_k = make_split_k_reduction(cfg)
    zeros, final_zeros = fragments(cfg)
    math_setup = make_math_setup(cfg)
    producer_registers = setmaxnreg_dec(PRODUCER_REGISTERS)
    math_registers = setmaxnreg_inc(MATH_REGISTERS[cfg.math_warpgroups])
    inline = cuda.jit(device=True, inline="always")

    # ---- producer: what one K block of one tile puts into a ring slot ----------------------

    @inline
    def load_tiles(base, operands, rank, stage, group, b_share, m_block, n_block, kb):
        """TMA thread: A's and B's tiles and A's scales of K block kb into slot `stage`; in a
        cluster sharing B, rank 0 loads group b_share's B tile for both CTAs (b_share < 0:
        the pair's tiles need two B tiles, each CTA loads its own). Swap-AB: A's tile goes
        to the wgmma's B operand, B's to its A operand."""
        tmap_a, tmap_b, tmap_sfa, m, n = operands
        full = base + FULL_BARS + 8 * stage
        mbarrier_arrive_expect_tx(full, STAGE_TX_BYTES)
        a_dst = base + A_TILE + A_TILE_BYTES * stage
        b_dst = base + B_TILE + B_TILE_BYTES * stage
        sfa_dst = base + SMEM_SFA + SFA_BYTES * stage
        a_row = m_block * ROWS
        if MASKED:
            a_row += group * m            # A is (groups * M_max, K)
        b_row = n_block * COLUMNS
        if GROUPED:                       # B is (groups * N, K)
            b_row += (b_share if b_share >= 0 else group) * n
        if MULTICAST_A:           # rank 0 loads A (and its scales) for both CTAs
            if rank == 0:
                tma_load_2d_multicast(a_dst, tmap_a, full, kb * BLOCK_K, a_row, CTA_MASK)
                tma_load_2d_multicast(sfa_dst, tmap_sfa, full, a_row, kb, CTA_MASK)
        elif MASKED:              # A's scales are (groups, K blocks, align(M_max, 4))
            tma_load_2d(a_dst, tmap_a, full, kb * BLOCK_K, a_row)
            tma_load_3d(sfa_dst, tmap_sfa, full, m_block * ROWS, kb, group)
        else:
            tma_load_2d(a_dst, tmap_a, full, kb * BLOCK_K, a_row)
            tma_load_2d(sfa_dst, tmap_sfa, full, a_row, kb)
        if MULTICAST_B and (not B_MAY_BE_OWN or b_share >= 0):     # rank 0, for both CTAs
            if rank == 0:
                tma_load_2d_multicast(b_dst, tmap_b, full, kb * BLOCK_K, b_row, CTA_MASK)
        else:
            tma_load_2d(b_dst, tmap_b, full, kb * BLOCK_K, b_row)

    @inline
    def load_b_scales_into_slot(base, operands, rank, stage, group, b_share, m_block, n_block,
                                kb):
        """B-scale thread: the one or two B scales of K block kb into slot `stage`, by
        cp.async (a TMA box is at least 16 bytes); the slot's full barrier expects this
        thread's arrival too, which cp.async makes once the copies have landed."""
        sfb, n, num_kb = operands
        n0 = n_block * COLUMNS
        first = sfb + 4 * (num_kb * (n0 // 128) + kb)
        if GROUPED:               # B's scales are (groups, ceil(N / 128), K blocks)
            first += 4 * num_kb * ((n + 127) // 128) * (b_share if b_share >= 0 else group)
        dst = base + SMEM_SFB + SFB_STAGE_BYTES * stage
        cp_async_4(dst, first)
        if STRADDLE:
            second_row = min((n0 + COLUMNS - 1) // 128, (n + 127) // 128 - 1)
            cp_async_4(dst + 4, first + 4 * num_kb * (second_row - n0 // 128))
        cp_async_mbarrier_arrive_noinc(base + FULL_BARS + 8 * stage)

    tma_loader_loop = make_ring_loader(ring, schedule, load_tiles, drain=True)
    b_scale_loader_loop = make_ring_loader(ring, schedule, load_b_scales_into_slot)

    # ---- math warpgroups: tiles -> K loop -> epilogue ------------------------------------

    @inline
    def reduce_if_split(base, final, workspace, counters, work, tile_unit, split, tid):
        """Split-K: (the tile's sum, 1) in the last of a split tile's CTAs, (final, 0) in the
        others; (final, 1) for a whole tile."""
        reduces = 1
        if SPLIT_K:
            split_k, whole_tiles = work[1]
            if tile_unit >= whole_tiles:
                final, reduces = reduce_split_k(base, final, workspace, counters, split_k,
                                                tile_unit - whole_tiles, split, tid)
        return final, reduces

    @inline
    def math_loop(base, tmap_d, workspace, counters, work, m, n, d, tid):
        unit = work[3]
        cursor = start(work)
        lane, row, sfa_row, warpgroup, descs = math_setup(base, tid)
        acc = zeros()
        acc_next = zeros()
        stage = types.int32(0)
        phase = types.int32(0)
        num_units = count(work)
        while unit < num_units:
            (group, m_block, n_block, tile_unit, split, kb_begin, kb_end, _,
             cursor) = tile(unit, work, cursor)
            n0 = n_block * COLUMNS
            n_first = (128 - n0 % 128) // 8       # 8-column groups left of the block boundary
            final = final_zeros()
            row0 = m_block * ROWS
            if ((MASKED and not SWAP and row0 + 64 * warpgroup >= group_rows(work, group))
                    or (PAIRED_GROUPS and group < 0)):
                # Nothing to compute (this warpgroup's rows all lie past a masked group's count,
                # or padding beside a cluster partner that computes): no MMA, only its turn on
                # each slot (the other warpgroup, or the partner, needs them); zeros stored.
                stage, phase = skip_k_blocks(base, stage, phase, lane, kb_begin, kb_end)
            elif not PADDING_BLOCKS or kb_begin < kb_end:
                final, acc, acc_next, stage, phase = tile_k_loop(
                    min(n_first, N_GROUPS), base, final, acc, acc_next, descs, stage, phase,
                    sfa_row, lane, n_first, kb_begin, kb_end)
            unit = next_unit(unit, work)
            if SWAP:              # D^T in registers: stored transposed, rows bounded
                final, reduces = reduce_if_split(base, final, workspace, counters, work,
                                                 tile_unit, split, tid)
                if reduces:
                    if MASKED:    # D (groups, M_max, N): rows past the group's count untouched
                        store_transposed(d + 2 * (group * m) * n, final, row0,
                                         group_rows(work, group), n0, n, tid)
                    else:
                        store_transposed(d, final, row0, m, n0, n, tid)
            elif MASKED:          # D (groups, M_max, N): rows past the group's count untouched
                rows = group_rows(work, group)
                slab0 = row0 + 64 * warpgroup     # this warpgroup's first row
                if slab0 + 64 <= rows:        # all of its rows are the group's: TMA
                    store_tile(base, tmap_d, final, group * m + row0, n_block, tid, warpgroup)
                elif slab0 < rows:            # the group's last rows: bounded
                    store_slab(base, d + 2 * (group * m) * n, final, row0, rows, n_block, n,
                               tid, warpgroup)
            else:
                final, reduces = reduce_if_split(base, final, workspace, counters, work,
                                                 tile_unit, split, tid)
                if reduces:     # a whole tile, or the last of a split tile's CTAs: store
                    store_tile(base, tmap_d, final, row0, n_block, tid, warpgroup)
        if not SWAP:
            drain_stores(tid)

    # ---- the kernel ------------------------------------------------------------------------

    @inline
    def gemm(smem, tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
             split_k, whole_tiles, layout, groups, d):
        base = smem_base(smem)
        tid = cuda.threadIdx.x
        # A shape compiled in (cfg.compiled_shape): what is derived from it folds away
        n = types.int32(FIXED_N) if FIXED_N else n
        groups = types.int32(FIXED_GROUPS) if FIXED_GROUPS else groups
        # The producer's first thread sets up the ring's barriers; the cluster barrier's wait
        # comes after the schedule's setup (and its loads), which needs no barrier.
        publish_ring(base, tid == MATH_THREADS)
        work = begin(m, n, k, split_k, whole_tiles, layout, groups, 0)
        if tid == MATH_THREADS:
            prefetch_tensormap(tmap_a)
            prefetch_tensormap(tmap_b)
            prefetch_tensormap(tmap_sfa)
            if not SWAP:
                prefetch_tensormap(tmap_d)
        await_ring()

        if tid >= MATH_THREADS:
            producer_registers()
            if tid < MATH_THREADS + 32:             # warp 0: the TMA thread
                if elect_one():
                    tma_loader_loop(base, (tmap_a, tmap_b, tmap_sfa, m, n), work)
                cuda.syncwarp()
            elif tid < MATH_THREADS + 64:           # warp 1: the B-scale thread
                if elect_one():
                    b_scale_loader_loop(base, (sfb, n, work[0]), work)
                cuda.syncwarp()
        else:
            math_registers()
            math_loop(base, tmap_d, workspace, counters, work, m, n, d, tid)

    if MASKED or SWAP:
        def fp8_gemm_1d2d(tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                          split_k, whole_tiles, layout, groups, d):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            gemm(smem, tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                 split_k, whole_tiles, layout, groups, d)
    elif GROUPED:
        def fp8_gemm_1d2d(tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                          split_k, whole_tiles, layout, groups):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            gemm(smem, tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                 split_k, whole_tiles, layout, groups, 0)
    else:
        def fp8_gemm_1d2d(tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                          split_k, whole_tiles):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            gemm(smem, tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                 split_k, whole_tiles, 0, 1, 0)

    fp8_gemm_1d2d.__name__ = fp8_gemm_1d2d.__qualname__ = cfg.name
    return fp8_gemm_1d2d
