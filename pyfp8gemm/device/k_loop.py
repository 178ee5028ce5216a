"""The K loop of one tile: wgmmas over the ring's K blocks, with DeepSeek-V3's promotion.

Per 128-wide K block, each math warpgroup issues 4 wgmma m64nNk32 into a fresh FP32 fragment
(its own 64-row wave of the tile; two waves for BLOCK_M 256), then "promotes" it on the CUDA
cores: final += fragment * scale (the tensor core's FP8 accumulator keeps ~14 bits; summing each
K block separately in FP32 is DeepSeek-V3's fix). The scales are the promotion part:

* `make_scaling_1d2d(cfg)`: A's per-row scale x B's per-128x128-block scale (one or two B-scale
  blocks per tile: a tile may straddle a 128-column boundary), the forward/dgrad recipe.
* `make_scaling_1d1d(cfg)`: A's per-row scale x B's per-row scale, i.e. a scale per output
  column (the weight-gradient recipe: both operands are activations or gradients).
* `make_scaling_swap_ab(cfg)`: the 1D2D recipe on a swapped tile (D^T: B's rows x A's rows):
  B's block scale per tile x A's scale per output column.

A part is a `Scaling` of device functions the loop calls at fixed points: `block_scales` once
per K block (before the slot is released), `row_scales` per wave before its wgmmas, `combine`
after them, and `promote_first_wave` / `promote_last_wave`, which fold a finished fragment into
`final` (`promote_halves`: the same for the low and high half of a fragment, where the wave's
wgmmas run as two halves, cfg.split_promotion).

`make_k_loop(cfg, ring, scaling)` returns `k_loop(base, final, acc, acc_next,
descs, stage, phase, sfa_row, lane, n_first, kb_begin, kb_end) -> (final, acc, acc_next, stage,
phase)`; `make_tile_k_loop` picks, per tile, the copy compiled for its scale split.
"""

from typing import Callable, NamedTuple

from numba import cuda
from numba.cuda import types

from .config import BLOCK_K, SFB_STAGE_BYTES
from .ptx import (
    ld_shared_f32, smem_descriptor_words, warp_uniform, wgmma_commit, wgmma_fence, wgmma_fp8,
    wgmma_wait,
)
from .tile import (
    fragment_column_scales, fragment_fence, fragment_halves, fragment_promote,
    fragment_promote_per_column, fragment_zeros,
)


class Scaling(NamedTuple):
    block_scales: Callable         # block_scales(base, stage) -> this K block's B-side scales
    row_scales: Callable           # row_scales(sfa_row, stage, wave) -> A-side scales
    combine: Callable              # combine(row_scales, block_scales) -> promotion scales
    promote_first_wave: Callable   # promote(final, acc, scales, n_first) -> final
    promote_last_wave: Callable
    promote_halves: tuple = None   # (low, high): promote(final, half, scales, n_first)


def make_row_scales(cfg):
    """`row_scales(sfa_row, stage, wave)`: this thread's two rows' A scales (`sfa_row`: its
    row's address in slot 0); both recipes scale A per row."""
    sfa_bytes = cfg.sfa_stage_bytes

    @cuda.jit(device=True, inline="always")
    def row_scales(sfa_row, stage, wave):
        sfa = sfa_row + sfa_bytes * stage + 4 * 128 * wave
        return ld_shared_f32(sfa), ld_shared_f32(sfa + 32)
    return row_scales


def make_scaling_1d2d(cfg, first_groups=None):
    """A 1x128 x B 128x128: a thread's rows r, r + 8 take sa[r] * sb; a straddling tile's
    8-column groups left of the B-scale boundary take the first block's sb, the rest the
    second's (split at `n_first` at run time, or at the constant `first_groups` where the K loop
    is compiled per split)."""
    inline = cuda.jit(device=True, inline="always")
    n_acc, waves = cfg.block_n // 2, cfg.waves
    final_acc = waves * n_acc
    straddle = cfg.straddles
    sfb_base = cfg.smem_offsets["sfb"]
    static = cfg.static_scale_splits

    @inline
    def block_scales(base, stage):
        """The B scales of the K block in slot `stage`: its first and second 128-column block's
        (the same value unless tiles straddle)."""
        sfb = base + sfb_base + SFB_STAGE_BYTES * stage
        sb = ld_shared_f32(sfb)
        return sb, (ld_shared_f32(sfb + 4) if straddle else sb)

    @inline
    def combine(rows, b_scales):
        sa_row0, sa_row8 = rows
        sb, sb_second = b_scales
        return sa_row0 * sb, sa_row8 * sb, sa_row0 * sb_second, sa_row8 * sb_second

    def promotion(wave, half=None):
        """Promote wave `wave`'s fragment, or (`half` 0 / 1) its low / high half: its first
        8-column group is group `first` of the tile."""
        size, first = (n_acc, 0) if half is None else (n_acc // 2, half * cfg.block_n // 16)
        offset = wave * n_acc + 4 * first           # 4 floats per 8-column group
        if static:      # the split inside this part, a constant
            split = min(max(first_groups - first, 0), size // 4)
            promote = fragment_promote(size, True, final_acc, offset, split)
        else:
            promote = fragment_promote(size, straddle, final_acc, offset)

        @inline
        def promote_scaled(final, acc, scales, n_first):
            s_row0, s_row8, s_row0_second, s_row8_second = scales
            if straddle and static:
                return promote(final, acc, s_row0, s_row8, s_row0_second, s_row8_second)
            if straddle:
                return promote(final, acc, s_row0, s_row8, s_row0_second, s_row8_second,
                               n_first - first)
            return promote(final, acc, s_row0, s_row8)
        return promote_scaled

    halves = (promotion(0, 0), promotion(0, 1)) if cfg.split_promotion else None
    return Scaling(block_scales, make_row_scales(cfg), combine, promotion(0),
                   promotion(waves - 1), halves)


def make_scaling_1d1d(cfg, first_groups=None):
    """A 1x128 x B 1x128: element (r, c) takes sa[r] * sb[c]; the slot holds the K block's
    BLOCK_N column scales (TMA-loaded), a thread reads those of its columns before the slot is
    released (BLOCK_N / 4 floats)."""
    inline = cuda.jit(device=True, inline="always")
    n_acc, waves = cfg.block_n // 2, cfg.waves
    sfb_base, sfb_bytes = cfg.smem_offsets["sfb"], cfg.sfb_stage_bytes
    load_columns = fragment_column_scales(n_acc)

    @inline
    def block_scales(base, stage):
        return load_columns(base + sfb_base + sfb_bytes * stage + 8 * (cuda.threadIdx.x % 4))

    @inline
    def combine(rows, columns):
        sa_row0, sa_row8 = rows
        return sa_row0, sa_row8, columns

    def promotion(wave):
        promote = fragment_promote_per_column(n_acc, waves * n_acc, wave * n_acc)

        @inline
        def promote_scaled(final, acc, scales, n_first):
            sa_row0, sa_row8, columns = scales
            return promote(final, acc, sa_row0, sa_row8, columns)
        return promote_scaled

    return Scaling(block_scales, make_row_scales(cfg), combine, promotion(0),
                   promotion(waves - 1))


def make_scaling_swap_ab(cfg, first_groups=None):
    """Swap-AB (D^T = B A^T, the tile's rows are B's): element (r, c) takes sb * sa[c], B's
    one 128x128 block scale (a 64-row tile lies in one block) times A's scale of column c (a
    token), read from the slot as the 1D1D part reads its column scales."""
    inline = cuda.jit(device=True, inline="always")
    n_acc = cfg.block_n // 2
    off = cfg.smem_offsets
    sfa_base, sfa_bytes, sfb_base = off["sfa"], cfg.sfa_stage_bytes, off["sfb"]
    load_columns = fragment_column_scales(n_acc)
    promote = fragment_promote_per_column(n_acc)

    @inline
    def block_scales(base, stage):
        sb = ld_shared_f32(base + sfb_base + SFB_STAGE_BYTES * stage)
        return sb, load_columns(base + sfa_base + sfa_bytes * stage + 8 * (cuda.threadIdx.x % 4))

    @inline
    def row_scales(sfa_row, stage, wave):
        return 0                # (no per-row scale: B's is one per tile)

    @inline
    def combine(rows, scales):
        sb, columns = scales
        return sb, columns

    @inline
    def promote_scaled(final, acc, scales, n_first):
        sb, columns = scales
        return promote(final, acc, sb, sb, columns)

    return Scaling(block_scales, row_scales, combine, promote_scaled, promote_scaled)


def make_scaling_for(cfg):
    """The scaling part of a 1D2D kernel: per row of A, or swapped."""
    return make_scaling_swap_ab if cfg.swap_ab else make_scaling_1d2d


def make_k_loop(cfg, ring, scaling):
    """The K-block loop of one tile (see the module docstring). Every wgmma has completed when
    it returns, so a branch between loops never makes ptxas copy an in-flight fragment."""
    inline = cuda.jit(device=True, inline="always")
    BN, WAVES = cfg.block_n, cfg.waves
    A_BYTES, B_BYTES = cfg.a_stage_bytes, cfg.b_stage_bytes
    OVERLAP_PROMOTION = cfg.overlap_promotion
    mma = wgmma_fp8(BN)
    _, desc = smem_descriptor_words(128)
    wait_mma = wgmma_wait(0)
    wait_mma_one = wgmma_wait(1)
    fence = fragment_fence(BN // 2)
    next_slot, wait_slot, slot_ready, release_slot = (
        ring.next_slot, ring.wait_full, ring.test_full, ring.release)
    load_b_scales, row_scales, combine = (
        scaling.block_scales, scaling.row_scales, scaling.combine)
    promote_first_wave, promote_last_wave = scaling.promote_first_wave, scaling.promote_last_wave
    SPLIT_PROMOTION = cfg.split_promotion
    if SPLIT_PROMOTION:
        half_mma = wgmma_fp8(BN // 2)
        half_fence = fragment_fence(BN // 4)
        split_halves, join_halves = fragment_halves(BN // 2)
        B_HALF = BN // 2 * BLOCK_K // 16      # descriptor units from B's row 0 to row BN / 2
        promote_low_half, promote_high_half = scaling.promote_halves

    @inline
    def k_steps(wgmma, a, b, acc):
        """One K block's 4 k32 wgmmas from descriptor low words a, b into a fresh `acc`, one
        commit group."""
        acc = wgmma(desc(a), desc(b), acc, 0)               # fresh fragment
        acc = wgmma(desc(a + 2), desc(b + 2), acc, 1)       # +32 bytes along K
        acc = wgmma(desc(a + 4), desc(b + 4), acc, 1)
        acc = wgmma(desc(a + 6), desc(b + 6), acc, 1)
        wgmma_commit()
        return acc

    @inline
    def slot_operands(descs, stage, sfa_row, wave):
        """Wave `wave`'s A scales in slot `stage` and the descriptor low words of its A rows
        and of B in that slot."""
        rows = row_scales(sfa_row, stage, wave)
        a = descs[0] + A_BYTES // 16 * stage + 128 * BLOCK_K // 16 * wave
        return rows, a, descs[1] + B_BYTES // 16 * stage

    @inline
    def issue_wave(base, acc, descs, stage, sfa_row, wave, b_scales):
        """Start the 4 wgmmas of one 64-row wave of the K block in slot `stage`, into a fresh
        `acc`. Returns acc (valid after a wgmma wait) and the wave's promotion scales. Every
        smem read of the slot happens here or in `block_scales`, before the slot is
        released."""
        rows, a, b = slot_operands(descs, stage, sfa_row, wave)
        wgmma_fence()
        acc = k_steps(mma, a, b, fence(acc))
        return acc, combine(rows, b_scales)

    @inline
    def issue_halves(base, acc, descs, stage, sfa_row, b_scales):
        """issue_wave with the wave's wgmmas as two halves of BLOCK_N / 2 columns, each its own
        commit group (cfg.split_promotion): returns both halves (the low one valid after
        wgmma_wait(1), the high one after wgmma_wait(0)) and the promotion scales."""
        rows, a, b = slot_operands(descs, stage, sfa_row, 0)
        low, high = split_halves(fence(acc))
        wgmma_fence()
        low = k_steps(half_mma, a, b, low)
        high = k_steps(half_mma, a, b + B_HALF, high)
        return low, high, combine(rows, b_scales)

    @inline
    def issue_k_block(base, acc, descs, stage, phase, sfa_row, ready):
        """Wait for the K block in slot `stage` (unless an earlier test found it `ready`) and
        start its (only) wave. Returns acc and the promotion scales."""
        if not ready:
            wait_slot(base, stage, phase)
        return issue_wave(base, acc, descs, stage, sfa_row, 0, load_b_scales(base, stage))

    @inline
    def retire_k_block(base, final, acc, scales, stage, lane, n_first):
        """Release slot `stage` and promote a finished fragment into `final` (FP32, CUDA
        cores)."""
        acc = fence(acc)
        release_slot(base, stage, lane)
        return promote_last_wave(final, acc, scales, n_first)

    @inline
    def retire_and_look_ahead(base, final, acc, scales, stage, next_stage, next_phase, lane,
                              n_first):
        """retire_k_block, with a test of whether the K block of slot `next_stage` has landed
        between the release and the promotion: returns (final, ready). When it has, the next
        wgmmas issue right after the FFMAs instead of after a try_wait (NVCC schedules
        DeepGEMM's wait the same way)."""
        acc = fence(acc)
        release_slot(base, stage, lane)
        ready = slot_ready(base, next_stage, next_phase)
        return promote_last_wave(final, acc, scales, n_first), ready

    @inline
    def issue_and_retire(base, final, acc_new, acc_done, scales_done, stage_done, descs, stage,
                         phase, ready, sfa_row, lane, n_first):
        """One step of the overlapped pipeline: start the K block in slot `stage` into
        `acc_new`, then wait for the block before it (`acc_done`, in slot `stage_done`),
        release its slot, test whether the block after `stage` has landed (`ready`) and
        promote."""
        acc_new, scales_new = issue_k_block(base, acc_new, descs, stage, phase, sfa_row, ready)
        new_stage = stage
        stage, phase = next_slot(stage, phase)
        wait_mma_one()
        final, ready = retire_and_look_ahead(base, final, acc_done, scales_done, stage_done,
                                             stage, phase, lane, n_first)
        return final, acc_new, scales_new, new_stage, stage, phase, ready

    @inline
    def k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane, n_first,
               kb_begin, kb_end):
        if OVERLAP_PROMOTION:
            # Two fragments in flight: while K block kb is promoted on the CUDA cores, the
            # tensor cores already run kb + 1. Unrolled by two with the tail peeled, so that no
            # fragment whose wgmma is still running passes a branch merge (ptxas would copy its
            # registers and serialize every wgmma, warning C7514).
            acc, scales = issue_k_block(base, acc, descs, stage, phase, sfa_row, 0)
            acc_stage = stage
            stage, phase = next_slot(stage, phase)
            ready = types.int32(0)
            kb = kb_begin
            while kb + 2 < kb_end:
                (final, acc_next, scales_next, next_stage, stage, phase,
                 ready) = issue_and_retire(base, final, acc_next, acc, scales, acc_stage,
                                           descs, stage, phase, ready, sfa_row, lane, n_first)
                (final, acc, scales, acc_stage, stage, phase,
                 ready) = issue_and_retire(base, final, acc, acc_next, scales_next,
                                           next_stage, descs, stage, phase, ready, sfa_row,
                                           lane, n_first)
                kb = types.int32(kb + 2)
            # Tail: block kb is in flight, and maybe one more block is left.
            if kb + 1 < kb_end:
                (final, acc_next, scales_next, next_stage, stage, phase,
                 ready) = issue_and_retire(base, final, acc_next, acc, scales, acc_stage,
                                           descs, stage, phase, ready, sfa_row, lane, n_first)
                wait_mma()
                final = retire_k_block(base, final, acc_next, scales_next, next_stage,
                                       lane, n_first)
            else:
                wait_mma()
                final = retire_k_block(base, final, acc, scales, acc_stage, lane, n_first)
        else:
            # One fragment: issue, wait, promote. The other math warpgroup's wgmmas keep the
            # tensor cores busy meanwhile. With split promotion the wave's wgmmas run as two
            # halves: the low half is promoted while the high half's wgmmas run, and only the
            # high half's FFMAs wait for the tensor cores.
            ready = types.int32(0)
            kb = kb_begin
            while kb < kb_end:
                kb = types.int32(kb + 1)
                if not ready:
                    wait_slot(base, stage, phase)
                b_scales = load_b_scales(base, stage)
                if SPLIT_PROMOTION:
                    low, high, scales = issue_halves(base, acc, descs, stage, sfa_row, b_scales)
                    wait_mma_one()
                    final = promote_low_half(final, half_fence(low), scales, n_first)
                    wait_mma()
                    acc = join_halves(low, high)
                else:
                    acc, scales = issue_wave(base, acc, descs, stage, sfa_row, 0, b_scales)
                    wait_mma()
                if WAVES == 2:
                    # BLOCK_M 256: two 64-row waves per warpgroup share the slot's B tile.
                    final = promote_first_wave(final, fence(acc), scales, n_first)
                    acc, scales = issue_wave(base, acc, descs, stage, sfa_row, 1, b_scales)
                    wait_mma()
                next_stage, phase = next_slot(stage, phase)
                if SPLIT_PROMOTION:
                    low, high = split_halves(fence(acc))
                    release_slot(base, stage, lane)
                    ready = slot_ready(base, next_stage, phase)
                    final = promote_high_half(final, high, scales, n_first)
                    acc = join_halves(low, high)
                else:
                    final, ready = retire_and_look_ahead(base, final, acc, scales, stage,
                                                         next_stage, phase, lane, n_first)
                stage = next_stage
        return final, acc, acc_next, stage, phase
    return k_loop


def make_tile_k_loop(cfg, ring, make_scaling):
    """`tile_k_loop(split, ...k_loop's arguments)`: the K loop compiled for the tile's scale
    split (a chain of uniform branches over the splits, the last one untested). Where the
    promotion is on the critical path (no overlap: BLOCK_N > 128 or BLOCK_M 256) and the splits
    are few, each split gets its own copy with the split a constant (DeepGEMM's
    num_former_iters); otherwise one loop selects each group's scale at run time (an overlapped
    loop hides that behind the next wgmmas, and three copies of it, unrolled by two, took 21 s
    instead of 5 to compile)."""
    inline = cuda.jit(device=True, inline="always")
    splits = cfg.scale_splits if cfg.static_scale_splits else (cfg.block_n // 8,)

    def chain(splits):
        k_loop = make_k_loop(cfg, ring, make_scaling(cfg, splits[0]))
        if len(splits) == 1:
            @inline
            def only(split, base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                     n_first, kb_begin, kb_end):
                return k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                              n_first, kb_begin, kb_end)
            return only
        SPLIT = splits[0]
        others = chain(splits[1:])

        @inline
        def dispatch(split, base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                     n_first, kb_begin, kb_end):
            if split == SPLIT:
                return k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                              n_first, kb_begin, kb_end)
            return others(split, base, final, acc, acc_next, descs, stage, phase, sfa_row,
                          lane, n_first, kb_begin, kb_end)
        return dispatch

    return chain(splits)


def make_math_setup(cfg):
    """`setup(base, tid) -> (lane, row, sfa_row, warpgroup, descs)`: what a math thread
    computes once per kernel for every K loop: its lane, its first fragment row in the tile,
    that row's A scale in ring slot 0, its warpgroup, and the wgmma descriptors of slot 0 (the
    warpgroup's 64-row slice of A, and B). The descriptors come from a warp-uniform index, so
    they live in uniform registers (no per-wgmma moves)."""
    off = cfg.smem_offsets
    smem_a, smem_b, smem_sfa = off["a"], off["b"], off["sfa"]
    desc_low, _ = smem_descriptor_words(128)

    @cuda.jit(device=True, inline="always")
    def setup(base, tid):
        lane = types.int32(tid % 32)
        row = 16 * (tid // 32) + lane // 4
        sfa_row = base + smem_sfa + 4 * row
        warpgroup = warp_uniform(tid // 128)
        descs = (desc_low(base + smem_a + warpgroup * (64 * BLOCK_K)), desc_low(base + smem_b))
        return lane, row, sfa_row, warpgroup, descs
    return setup


def fragments(cfg):
    """(zeros, final_zeros): a fresh MMA fragment and a fresh tile accumulator."""
    return fragment_zeros(cfg.block_n // 2), fragment_zeros(cfg.waves * cfg.block_n // 2)
