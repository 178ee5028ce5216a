"""Epilogues: what happens to a tile's FP32 accumulators once its K loop is done.

* `make_bf16_epilogue(cfg)`: bf16 via stmatrix into swizzled shared memory, then one TMA store
  per swizzle panel, which drains while the next tile's K loop runs. Each math warpgroup stores
  its own 64-row slabs on its own: no barrier across warpgroups, so one can start the next
  tile's wgmmas while the other is still here (the tensor cores idled during a tile-wide
  epilogue).
* `make_row_copy_bf16_store(cfg)`: one warpgroup's slab staged row-major, then one 1-D bulk
  copy per row, only rows below a bound (the masked grouped GEMM's last rows of a group: rows
  past its count stay untouched); it drains like the TMA stores.
* `make_f32_tma_epilogue(cfg)`: FP32 (the 1D1D kernel's "tma" epilogue) into shared memory
  (32-column swizzled panels, or row-major for BLOCK_N 8 modulo 16), then per box one TMA
  store, or with C a TMA reduce-add (D += tile, the addition done in L2): C is never read on
  the SM, and the stores drain while the next tile's K loop runs.
* `make_transposed_bf16_store(cfg)`: a swap-AB tile (D^T in registers) to D, bounded.
* `make_split_k_reduction(cfg)`: split-K's FP32 partial tiles through a global workspace; the
  last CTA of a tile to finish adds them up (in split order: bitwise reproducible) and stores.
"""

from typing import Callable, NamedTuple

from numba import cuda
from numba.cuda import types

from .config import D_STORE_ROWS
from .ptx import (
    atom_add_global_u32, bulk_store_1d, fence_acq_rel_gpu, fence_proxy_async_smem, ld_shared_u32,
    named_barrier_sync, st_global_u32, st_shared_u32, tma_reduce_add_3d, tma_store_2d,
    tma_store_3d, tma_store_commit, tma_store_wait, tma_store_wait_read,
)
from .tile import (
    fragment_add_global_v4, fragment_store_bf16, fragment_store_bf16_rows,
    fragment_store_bf16_transposed_global, fragment_store_f32_staged, fragment_store_global_v4,
    fragment_zeros,
)

EPILOGUE_BARRIER = 2            # named barriers 2, 3: one per math warpgroup (0 is syncthreads)
SPLIT_K_BARRIER = 4             # all math threads, around the split-K counter


class Epilogue(NamedTuple):
    store: Callable    # store(base, tmap_d, final, row0, n_block, group, tid, warpgroup)
    drain: Callable    # drain(tid): the last stores must finish before the CTA exits


def _make_drain(issuers):
    """`drain(tid)`: the first `issuers` threads of each math warpgroup (those that issue its
    bulk stores) wait until their stores have completed (before the CTA exits)."""
    @cuda.jit(device=True, inline="always")
    def drain(tid):
        if tid % 128 < issuers:
            tma_store_wait()
    return drain


def _store_issuers(cfg):
    """How many of a math warpgroup's first threads issue its bulk stores: one per swizzle
    panel (TMA stores), or 64 where a slab may also go out row by row (one thread a row)."""
    if cfg.schedule == "m_grouped_masked":
        return D_STORE_ROWS
    return cfg.block_n * 2 // cfg.swizzle_d


def _make_slab_wait(issuers):
    """`wait(tid, warpgroup)`: the group's previous bulk stores (each of its first `issuers`
    threads waits for its own) have finished reading its staging slabs; then the group syncs."""
    @cuda.jit(device=True, inline="always")
    def wait(tid, warpgroup):
        if tid % 128 < issuers:
            tma_store_wait_read()
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
    return wait


def make_bf16_epilogue(cfg):
    inline = cuda.jit(device=True, inline="always")
    BM, BN, WAVES = cfg.block_m, cfg.block_n, cfg.waves
    SWIZZLE_D = cfg.swizzle_d
    D_PANELS = BN * 2 // SWIZZLE_D    # TMA stores per output tile (one per swizzle panel)
    SMEM_D = cfg.smem_offsets["d"]
    SLAB, PANEL = cfg.d_slab_bytes, cfg.store_rows * SWIZZLE_D
    n_acc, final_acc = BN // 2, WAVES * BN // 2
    layout = (cfg.store_rows, SLAB, SWIZZLE_D)           # slab-major, swizzled panels
    store_first = fragment_store_bf16(n_acc, *layout, final_acc, 0)
    store_last = fragment_store_bf16(n_acc, *layout, final_acc, (WAVES - 1) * n_acc)
    NARROW = BM < D_STORE_ROWS            # BLOCK_M 16 / 32: rows past BLOCK_M are not data
    assert D_STORE_ROWS == 64
    wait_slab_free = _make_slab_wait(_store_issuers(cfg))

    @inline
    def store(base, tmap_d, final, row0, n_block, tid, warpgroup):
        """Store the tile whose first output row is `row0`."""
        lane_in_group = tid % 128
        wait_slab_free(tid, warpgroup)
        if NARROW:                                # only the warps of the BLOCK_M real rows
            if 16 * (lane_in_group // 32) < BM:
                store_first(base + SMEM_D, final, 16 * (tid // 32), tid % 32)
        else:
            store_first(base + SMEM_D, final, 16 * (tid // 32), tid % 32)
        if WAVES == 2:
            store_last(base + SMEM_D, final, 128 + 16 * (tid // 32), tid % 32)
        fence_proxy_async_smem()                  # stmatrix writes -> visible to TMA
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
        if lane_in_group < D_PANELS:              # one thread per swizzle panel
            panel = base + SMEM_D + SLAB * warpgroup + PANEL * lane_in_group
            column = n_block * BN + lane_in_group * (SWIZZLE_D // 2)
            row = row0 + 64 * warpgroup
            tma_store_2d(tmap_d, panel, column, row)
            if WAVES == 2:                        # the second wave's slab: rows 128..
                tma_store_2d(tmap_d, panel + 2 * SLAB, column, row + 128)
            tma_store_commit()

    return Epilogue(store, _make_drain(_store_issuers(cfg)))


def make_row_copy_bf16_store(cfg):
    """`store(base, d, final, row0, rows, n_block, n, tid, warpgroup)`: one math warpgroup's
    64-row slab of the tile (rows row0 + 64 * warpgroup..) to global memory, only rows < `rows`
    and columns < `n` (`d`: the output's row 0, row stride n, n a multiple of 8). The slab goes
    into shared memory row-major (cfg.d_row_pitch apart: stmatrix without bank conflicts),
    then each of the group's first 64 threads copies its row out with one 1-D bulk copy: the
    TMA unit writes whole lines, as the slab's TMA store would, and rows past `rows` stay
    untouched. The copies drain with the TMA stores (same bulk groups, same issuers)."""
    inline = cuda.jit(device=True, inline="always")
    BN = cfg.block_n
    PITCH, SLAB = cfg.d_row_pitch, cfg.d_slab_bytes
    SMEM_D = cfg.smem_offsets["d"]
    assert cfg.waves == 1 and cfg.block_m >= 64 and _store_issuers(cfg) == D_STORE_ROWS
    write_rows = fragment_store_bf16_rows(BN // 2, PITCH)
    wait_slab_free = _make_slab_wait(_store_issuers(cfg))

    @inline
    def store(base, d, final, row0, rows, n_block, n, tid, warpgroup):
        lane_in_group = tid % 128
        wait_slab_free(tid, warpgroup)
        slab = base + SMEM_D + SLAB * warpgroup          # this group's own staging bytes
        write_rows(slab, final, 16 * (lane_in_group // 32), tid % 32)   # row r at r * PITCH
        fence_proxy_async_smem()                  # stmatrix writes -> visible to the bulk copy
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
        row = row0 + 64 * warpgroup + lane_in_group       # this thread's row
        column = n_block * BN
        if lane_in_group < 64 and row < rows:
            smem_row = slab + PITCH * lane_in_group
            width = min(BN, n - column)                   # the last N block may be narrower
            bulk_store_1d(d + 2 * (types.int64(row) * n + column), smem_row, 2 * width)
            tma_store_commit()

    return store


def make_f32_tma_epilogue(cfg):
    """`store(base, tmap_d, final, m_block, n_block, group, tid, warpgroup)`: each math
    warpgroup its own 64 rows, as the bf16 epilogue: wait until its previous TMA operations
    have read the slab, write the fragment (fragment_store_f32_staged), then one thread per
    box (cfg.f32_store_box: 32-column swizzled panels, or one box of the whole width) issues
    the store, or with cfg.accumulate the reduce-add, into D's 3-D map (N, M, groups;
    out-of-bounds parts are dropped)."""
    inline = cuda.jit(device=True, inline="always")
    BM, BN = cfg.block_m, cfg.block_n
    (BOX_COLUMNS, BOX_ROWS), swizzle = cfg.f32_store_box
    BOXES = BN // BOX_COLUMNS
    BOX_BYTES = BOX_ROWS * BOX_COLUMNS * 4
    SLAB = 64 * BN * 4                     # one warpgroup's 64 rows
    SMEM_D = cfg.smem_offsets["d"]
    ACCUMULATE = cfg.accumulate
    assert cfg.waves == 1 and BOX_ROWS == 64 and BN % BOX_COLUMNS == 0
    write = fragment_store_f32_staged(BN // 2, swizzle == 128)
    wait_slab_free = _make_slab_wait(BOXES)

    @inline
    def store(base, tmap_d, final, m_block, n_block, group, tid, warpgroup):
        lane_in_group = tid % 128
        slab = base + SMEM_D + SLAB * warpgroup
        wait_slab_free(tid, warpgroup)     # its previous boxes have left the slab
        write(slab, final, 16 * (lane_in_group // 32) + (tid % 32) // 4, tid % 32)
        fence_proxy_async_smem()           # st.shared -> visible to the TMA unit
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
        if lane_in_group < BOXES:          # one thread per box
            box = slab + lane_in_group * BOX_BYTES
            column = n_block * BN + BOX_COLUMNS * lane_in_group
            row = m_block * BM + 64 * warpgroup
            if ACCUMULATE:
                tma_reduce_add_3d(tmap_d, box, column, row, group)
            else:
                tma_store_3d(tmap_d, box, column, row, group)
            tma_store_commit()

    return Epilogue(store, _make_drain(BOXES))


def make_transposed_bf16_store(cfg):
    """`store(d, final, row0, rows, col0, n, tid)`: a swap-AB tile (its fragment rows are D's
    columns col0.., its fragment columns D's rows row0..) as bf16 from registers to D (row
    stride n), writing only D rows < `rows` and columns < `n`. D's tile is a few rows of
    BLOCK_M columns: too thin for a TMA store box to pay, and rows past `rows` (a masked
    group's count) stay untouched."""
    inline = cuda.jit(device=True, inline="always")
    assert cfg.swap_ab and cfg.math_warpgroups == 1
    store_fragment = fragment_store_bf16_transposed_global(cfg.block_n // 2)

    @inline
    def store(d, final, row0, rows, col0, n, tid):
        lane = tid % 32
        column = col0 + 16 * (tid // 32) + lane // 4        # this thread's first fragment row
        row = row0 + 2 * (lane % 4)                          # and first fragment column
        at = d + 2 * (types.int64(row) * n + column)          # (64-bit: M x N may pass 2^31)
        store_fragment(at, final, 2 * n, n - column, rows - row)

    return store


def make_split_k_reduction(cfg):
    """`reduce(base, final, workspace, counters, split_k, tile_unit, split, tid) -> (final,
    stores)`: publish this CTA's FP32 partial tile; the last of the tile's split_k CTAs to get
    here adds the others' partials to its own and is the one to store the tile (returns (sum,
    1) there, (final, 0) elsewhere). The classic threadfence reduction: write, fence, count;
    the tile's counter is reset by its last CTA for the next launch. `tile_unit` counts split
    tiles only (the workspace has slots for those)."""
    inline = cuda.jit(device=True, inline="always")
    BM, BN, MATH_THREADS = cfg.block_m, cfg.block_n, cfg.math_threads
    FLAG = cfg.smem_offsets["flag"]
    final_acc = cfg.waves * BN // 2
    store_partial = fragment_store_global_v4(final_acc)
    add_partial = fragment_add_global_v4(final_acc)
    final_zeros = fragment_zeros(final_acc)

    @inline
    def reduce(base, final, workspace, counters, split_k, tile_unit, split, tid):
        slots = workspace + 4 * (BM * BN) * (tile_unit * split_k)
        lane_offset = 16 * tid                   # float4 group g of thread t: (g * threads + t)
        store_partial(slots + 4 * (BM * BN) * split + lane_offset, final, 16 * MATH_THREADS)
        fence_acq_rel_gpu()
        named_barrier_sync(SPLIT_K_BARRIER, MATH_THREADS)
        if tid == 0:
            arrived = atom_add_global_u32(counters + 4 * tile_unit, 1)
            last = 1 if arrived == split_k - 1 else 0
            if last:
                st_global_u32(counters + 4 * tile_unit, 0)
            st_shared_u32(base + FLAG, last)
        named_barrier_sync(SPLIT_K_BARRIER, MATH_THREADS)
        reduces = ld_shared_u32(base + FLAG)
        if reduces:
            # Sum every split's partial (own included) in split order: the same additions in
            # the same order whichever CTA comes last, so results are bitwise reproducible.
            fence_acq_rel_gpu()
            final = final_zeros()
            for other in range(split_k):
                final = add_partial(final, slots + 4 * (BM * BN) * other + lane_offset,
                                    16 * MATH_THREADS)
        return final, reduces

    return reduce
