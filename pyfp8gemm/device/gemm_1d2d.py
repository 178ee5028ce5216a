"""The dense FP8 GEMM kernel (1D2D scaling): D[M, N] (bf16) = (A * sa) @ (B * sb)^T.

A (M, K) e4m3 with one FP32 scale per row per 128 K ("1x128"); B (N, K) e4m3 with one scale
per 128x128 block. Both K-major. The kernel is persistent and warp-specialized:

  producer warpgroup   one thread streams A, B and A's scales through a ring of `stages`
                       shared-memory buffers with TMA, a second thread B's scales with cp.async;
                       `full[s]` says buffer s landed (both threads arrive on it), `empty[s]`
                       says every math warp (of every CTA it was sent to) is done.
  math warpgroups      per 128-wide K block: 4 wgmma m64nNk32 into a fresh FP32 fragment, then
                       "promotion" on CUDA cores: final += fragment * sa[row] * sb[block] (the
                       tensor core's FP8 accumulator keeps ~14 bits; this is DeepSeek-V3's fix).
  epilogue             per math warpgroup, its own rows: final -> bf16 -> stmatrix into
                       swizzled smem -> TMA store, which drains while the next tile runs.

With a 2-CTA cluster, one operand tile is loaded once and multicast to both CTAs: A when the
two CTAs take neighbouring N tiles (multicast="a"), B when they take neighbouring M tiles.
With split-K, several CTAs share one tile's K blocks and the last to finish sums their FP32
partials before the epilogue (for GEMMs with fewer tiles than SMs).

Reading order: `ring_loader` with its two slot fillers `load_tiles` and
`load_b_scales_into_slot`, then `math_loop`, which walks the tiles and runs each one's K loop
(`make_k_loop`: `issue_wave` / `retire_k_block`, the two halves of a K block), then `epilogue`;
the kernel entry `fp8_gemm_1d2d` is at the end.

Everything BLOCK_M/BLOCK_N/stages-dependent is a closure constant of `make_fp8_gemm_1d2d`, so
numba folds it and each config compiles to its own specialized kernel.
"""

import dataclasses
import math
from dataclasses import dataclass

from numba import cuda
from numba.cuda import types

from .ptx import (
    atom_add_global_u32, cluster_ctarank, cluster_sync, cp_async_4, cp_async_mbarrier_arrive_noinc,
    elect_one,
    fence_acq_rel_gpu, fence_mbarrier_init, fence_proxy_async_smem,
    ld_shared_f32, ld_shared_u32, mbarrier_arrive, mbarrier_arrive_cluster,
    mbarrier_arrive_expect_tx, mbarrier_init, mbarrier_test_wait, mbarrier_wait,
    named_barrier_arrive,
    named_barrier_sync,
    prefetch_tensormap, setmaxnreg_dec, setmaxnreg_inc, smem_base, smem_descriptor_words,
    st_global_u32, st_shared_u32, tma_load_2d, tma_load_2d_multicast, tma_store_2d,
    tma_store_commit, tma_store_wait, tma_store_wait_read, udiv32, warp_uniform, wgmma_commit,
    wgmma_fence, wgmma_fp8, wgmma_wait,
)
from .scheduler import make_tile_scheduler
from .tile import (
    fragment_add_global_v4, fragment_fence, fragment_promote, fragment_store_bf16,
    fragment_store_global_v4, fragment_zeros,
)

BLOCK_K = 128                   # one K block = one scale block = 4 wgmma k32 steps
D_STORE_ROWS = 64               # the output is TMA-stored in 64-row slabs (one per warpgroup wave)
EPILOGUE_BARRIER = 2            # named barriers 2, 3: one per math warpgroup (0 is syncthreads)
SPLIT_K_BARRIER = 4             # all math threads, around the split-K counter
MMA_TURN_BARRIER = 5            # 5, 6: "math warpgroup 0 / 1 has issued its wgmmas" (mma_turns)
SMEM_LIMIT = 232448             # dynamic shared memory per CTA on sm_90 (227 KB)
# setmaxnreg budgets: the producer warpgroup (a TMA thread and a B-scale thread) needs few
# registers, the math warpgroups hold the fragments. setmaxnreg moves registers inside the CTA's
# pool, which is what it got at launch (ptxas's count x threads: 168 x 384 = 64512 with two math
# warpgroups), NOT the SM's 65536: 56 * 128 + 224 * 256 = 64512 fits exactly (a budget beyond
# the pool leaves a setmaxnreg.inc waiting forever: a hang seen on the H200, which
# check_register_budget refuses). With two loader threads, 40 producer registers spilled; at 224
# the math warpgroups hold every configuration the heuristic picks without spilling (BLOCK_M 128
# x BLOCK_N 192, no longer picked, spills a few epilogue addresses).
PRODUCER_REGISTERS = 56
MATH_REGISTERS = {1: 248, 2: 224}
# BLOCK_M 256 keeps two final fragments and one MMA fragment per thread: 1.5 * BLOCK_N floats.
BLOCK_M_256_MAX_N = 128
MAX_SPLIT_K = 16
SFB_STAGE_BYTES = 16            # a ring slot's B scales: the tile's one or two 128-column blocks
# Straddling BLOCK_N with at most this many scale splits get one K loop per split (constant
# split, see make_fp8_gemm_1d2d); the others select scales per 8-column group at run time.
MAX_K_LOOP_COPIES = 4


def _align(x, a):
    return (x + a - 1) // a * a


def check_register_budget(cfg: "GemmConfig", launch_registers: int):
    """Raise unless the setmaxnreg budgets fit the CTA's register pool.

    setmaxnreg only moves registers inside what the CTA got at launch (ptxas's register count x
    threads). If the warpgroups ask for more in total, a setmaxnreg.inc waits forever: the GPU
    hangs. Checked on the host before the first launch of every kernel.
    """
    pool = launch_registers * cfg.threads
    wanted = 128 * PRODUCER_REGISTERS + cfg.math_threads * MATH_REGISTERS[cfg.math_warpgroups]
    if wanted > pool:
        raise RuntimeError(
            f"{cfg.name}: setmaxnreg budgets need {wanted} registers but the CTA gets {pool} "
            f"({launch_registers} x {cfg.threads} threads); launching would hang the GPU")


@dataclass(frozen=True)
class GemmConfig:
    """One kernel specialization. Everything derived from it is a compile-time constant."""
    block_m: int                # 64 (one math warpgroup), 128 (two), 256 (two, 2 waves each)
    block_n: int                # multiple of 8, 16..256 (register budget permitting)
    stages: int                 # depth of the TMA ring
    multicast: str = "none"     # "none", "a" (2 CTAs along N share A), "b" (along M share B)
    group_m: int = 16           # rasterization group height, in cluster units
    overlap_promotion: bool = True  # two fragments in flight (only where registers allow)
    split_k: int = 1            # K split over this many CTAs per tile (partials reduced in FP32)
    split_last_wave: bool = False  # split only the tiles of the last, partial wave (host only)
    mma_turns: bool | None = None  # two math warpgroups without overlap issue wgmmas in
                                # turns; None: where measured faster (nowhere any more)

    def __post_init__(self):
        if self.block_m not in (64, 128, 256):
            raise ValueError(f"block_m must be 64, 128 or 256, got {self.block_m}")
        if self.block_m == 256 and self.block_n > BLOCK_M_256_MAX_N:
            raise ValueError(f"block_m=256 needs block_n <= {BLOCK_M_256_MAX_N} (two final "
                             f"fragments per warpgroup must fit in registers), got {self.block_n}")
        if self.block_n % 8 or not 16 <= self.block_n <= 256:
            raise ValueError(f"block_n must be a multiple of 8 in [16, 256], got {self.block_n}")
        if self.max_scale_offset + self.block_n > 256:
            raise ValueError(f"block_n={self.block_n}: a tile could span three 128-column B-scale "
                             "blocks (the kernel promotes with at most two)")
        if self.overlap_promotion and (self.block_n > 128 or self.waves > 1):
            object.__setattr__(self, "overlap_promotion", False)   # registers won't allow
        if self.mma_turns is None:
            # Turns were +10% for BLOCK_M 128 x BLOCK_N > 128 when B scales came from global
            # memory; with the ring and per-split K loops they cost 0-3% there (BLOCK_M 256:
            # no better either), so they are only taken when asked for (bench/JOURNAL.md).
            object.__setattr__(self, "mma_turns", False)
        if self.mma_turns and (self.overlap_promotion or self.math_warpgroups == 1):
            object.__setattr__(self, "mma_turns", False)     # nothing to take turns on
        if self.multicast not in ("none", "a", "b"):
            raise ValueError(f"multicast must be 'none', 'a' or 'b', got {self.multicast!r}")
        if not 1 <= self.split_k <= MAX_SPLIT_K:
            raise ValueError(f"split_k must be in [1, {MAX_SPLIT_K}], got {self.split_k}")
        if self.split_k > 1 and self.multicast != "none":
            raise ValueError("split_k > 1 needs multicast 'none'")
        if self.split_last_wave and self.split_k == 1:
            raise ValueError("split_last_wave needs split_k > 1")
        if self.stages < 1 or self.smem_bytes > SMEM_LIMIT:
            raise ValueError(f"{self}: {self.smem_bytes} B of shared memory > {SMEM_LIMIT}")

    @property
    def scale_splits(self):
        """The scale splits tiles can have: a tile's offset in its first B-scale block (a
        multiple of gcd(BLOCK_N, 128)) decides how many of its 8-column groups take that
        block's scale (all of them, one split, where tiles never straddle)."""
        groups = self.block_n // 8
        return tuple(sorted({min(groups, (128 - offset) // 8)
                             for offset in range(0, 128, math.gcd(self.block_n, 128))}))

    @property
    def straddles(self):
        """Whether a tile can cross a 128-column B-scale block boundary."""
        return 128 % self.block_n != 0

    @property
    def static_scale_splits(self):
        """Straddling tiles get one K loop per scale split, each promotion with its split a
        constant (no per-group select), where the promotion is on the critical path (not
        overlapped) and the splits are few; otherwise one loop selects at run time."""
        return (self.straddles and not self.overlap_promotion
                and len(self.scale_splits) <= MAX_K_LOOP_COPIES)

    @property
    def max_scale_offset(self):
        """Largest column offset of a tile inside its first 128-column B-scale block."""
        return 128 - math.gcd(self.block_n, 128)

    # --- shape of the CTA ---
    @property
    def math_warpgroups(self):
        return 1 if self.block_m == 64 else 2

    @property
    def waves(self):
        """64-row wgmma waves per math warpgroup per K block (2 for BLOCK_M 256)."""
        return self.block_m // (64 * self.math_warpgroups)

    @property
    def math_threads(self):
        return 128 * self.math_warpgroups

    @property
    def threads(self):
        return self.math_threads + 128          # + the producer warpgroup

    @property
    def cluster_size(self):
        return 1 if self.multicast == "none" else 2

    # --- the output tile in shared memory ---
    @property
    def swizzle_d(self):
        """Widest TMA swizzle (bytes) whose panels tile a BLOCK_N row of bf16 exactly; 16 means
        no swizzle, in panels of 8 columns (e.g. BLOCK_N 136 = 17 panels), which stmatrix also
        writes without bank conflicts (8 rows x 16 bytes = 128 contiguous bytes)."""
        return next(s for s in (128, 64, 32, 16) if (self.block_n * 2) % s == 0)

    # --- shared-memory layout (byte offsets from the 1024-aligned base) ---
    @property
    def a_stage_bytes(self):
        return self.block_m * BLOCK_K

    @property
    def b_stage_bytes(self):
        return self.block_n * BLOCK_K

    @property
    def sfa_stage_bytes(self):
        return _align(self.block_m * 4, 128)

    @property
    def smem_offsets(self):
        d = 0
        a = d + self.block_m * self.block_n * 2
        b = a + self.stages * self.a_stage_bytes
        sfa = b + self.stages * self.b_stage_bytes
        sfb = sfa + self.stages * self.sfa_stage_bytes
        full = sfb + self.stages * SFB_STAGE_BYTES
        empty = full + 8 * self.stages
        flag = empty + 8 * self.stages                  # split-K: "this CTA reduces the tile"
        end = flag + (16 if self.split_k > 1 else 0)
        return dict(d=d, a=a, b=b, sfa=sfa, sfb=sfb, full=full, empty=empty, flag=flag,
                    end=end)

    @property
    def smem_bytes(self):
        return self.smem_offsets["end"]

    @property
    def name(self):
        mc = "" if self.multicast == "none" else f"_mc{self.multicast}2"
        overlap = "_ovl" if self.overlap_promotion else ""
        split = "_splitk" if self.split_k > 1 else ""
        turns = "_turns" if self.mma_turns else ""
        return (f"fp8_gemm_1d2d_m{self.block_m}_n{self.block_n}_k{BLOCK_K}"
                f"_s{self.stages}{mc}_g{self.group_m}{overlap}{turns}{split}")

    @property
    def kernel_config(self) -> "GemmConfig":
        """The configuration the kernel is compiled for: the split count and which tiles are
        split are kernel parameters, so every split_k > 1 shares one kernel (compiled with
        split_k = 2)."""
        if self.split_k > 2 or self.split_last_wave:
            return dataclasses.replace(self, split_k=2, split_last_wave=False)
        return self

    @staticmethod
    def max_stages(block_m, block_n):
        per_stage = (block_m * BLOCK_K + block_n * BLOCK_K + _align(block_m * 4, 128)
                     + SFB_STAGE_BYTES + 16)
        return (SMEM_LIMIT - block_m * block_n * 2) // per_stage


# Kernel parameters: four tensor maps (by value after the PTX post-edit), B's scales, the split-K
# workspace and its per-tile counters (0 without split-K), M, N, K, the split count (1 without)
# and the number of leading tiles that are not split (0: all are; see `unit_work`).
KERNEL_SIGNATURE = (types.int64,) * 7 + (types.int32,) * 5
TENSORMAP_PARAMS = (0, 1, 2, 3)


def make_fp8_gemm_1d2d(cfg: GemmConfig):
    """Return the kernel's Python function, specialized for `cfg` (compile with numba-cuda)."""
    BM, BN, STAGES = cfg.block_m, cfg.block_n, cfg.stages
    MATH_THREADS, CLUSTER = cfg.math_threads, cfg.cluster_size
    MULTICAST_A, MULTICAST_B = cfg.multicast == "a", cfg.multicast == "b"
    CLUSTER_M, CLUSTER_N = (2 if MULTICAST_B else 1), (2 if MULTICAST_A else 1)
    CTA_MASK = (1 << CLUSTER) - 1
    off = cfg.smem_offsets
    SMEM_D, SMEM_A, SMEM_B = off["d"], off["a"], off["b"]
    SMEM_SFA, SMEM_SFB = off["sfa"], off["sfb"]
    FULL_BARS, EMPTY_BARS = off["full"], off["empty"]
    A_BYTES, B_BYTES, SFA_BYTES = cfg.a_stage_bytes, cfg.b_stage_bytes, cfg.sfa_stage_bytes
    STAGE_TX_BYTES = A_BYTES + B_BYTES + BM * 4      # what TMA delivers per stage
    EMPTY_ARRIVALS = CLUSTER * MATH_THREADS // 32    # one per math warp of each reading CTA
    FULL_ARRIVALS = 2                                # the TMA thread and the B-scale thread
    STRADDLE = cfg.straddles          # a BLOCK_N tile may cross two 128-column B-scale blocks
    SWIZZLE_D = cfg.swizzle_d
    D_PANELS = BN * 2 // SWIZZLE_D    # TMA stores per output tile (one per swizzle panel)
    N_ACC = BN // 2                   # fragment floats per thread
    WAVES = cfg.waves                 # 64-row waves per math warpgroup (2 for BLOCK_M 256)
    FINAL_ACC = WAVES * N_ACC         # the FP32 accumulators a thread keeps for its tile
    # Promote K block i while block i+1's wgmmas run: needs a second fragment in registers.
    OVERLAP_PROMOTION = cfg.overlap_promotion
    # Without overlap, each math warpgroup has one batch of wgmmas in flight and promotes
    # while the other's runs, but only if they do not issue together: woken by the same full
    # barrier, both batches would interleave, finish together and leave the tensor cores idle
    # during both promotions. So they take turns (named barriers 5 and 6).
    MMA_TURNS = cfg.mma_turns
    SPLIT_K = cfg.split_k > 1         # split-K code in (the split count is a kernel parameter)
    FLAG = off["flag"]

    mma = wgmma_fp8(BN)
    desc_low, desc = smem_descriptor_words(128)
    wait_mma = wgmma_wait(0)
    wait_mma_one = wgmma_wait(1)
    zeros = fragment_zeros(N_ACC)
    final_zeros = fragment_zeros(FINAL_ACC)
    fence = fragment_fence(N_ACC)
    # Promotion and epilogue per wave: wave w owns final[w * N_ACC:(w + 1) * N_ACC].
    # A straddling tile starts at a column offset n0 % 128 (a multiple of gcd(BN, 128)) of its
    # first B-scale block, so its first min(n_first, N_GROUPS) 8-column groups take the first
    # block's scale: one of SCALE_SPLITS. Where the promotion is on the critical path (no
    # overlap: BLOCK_N > 128 or BLOCK_M 256) and the splits are few (BLOCK_N a multiple of 32),
    # the K loop is compiled once per split, each promotion with its split as a constant
    # (DeepGEMM's num_former_iters), and a tile picks its loop. Otherwise one loop selects each
    # group's scale at run time: an overlapped loop hides that behind the next wgmmas, and
    # three copies of it (unrolled by two) took 21 s instead of 5 to compile.
    N_GROUPS = N_ACC // 4
    SCALE_SPLITS = cfg.scale_splits
    STATIC_SPLITS = cfg.static_scale_splits
    store_first = fragment_store_bf16(N_ACC, BM, SWIZZLE_D, FINAL_ACC, 0)
    store_last = fragment_store_bf16(N_ACC, BM, SWIZZLE_D, FINAL_ACC, (WAVES - 1) * N_ACC)
    producer_registers = setmaxnreg_dec(PRODUCER_REGISTERS)
    math_registers = setmaxnreg_inc(MATH_REGISTERS[cfg.math_warpgroups])
    tile_of = make_tile_scheduler(CLUSTER_M, CLUSTER_N, cfg.group_m)
    store_partial = fragment_store_global_v4(FINAL_ACC)
    add_partial = fragment_add_global_v4(FINAL_ACC)
    inline = cuda.jit(device=True, inline="always")

    @inline
    def unit_work(unit, num_kb, splitting):
        """What a unit is: (tile unit, split, first K block, end K block). With split-K,
        `splitting` = (split_k, whole_tiles): the first whole_tiles units are whole tiles (all
        of K; the host sets whole_tiles to the tiles of the full waves when only the last,
        partial wave is split), then each later tile is split_k consecutive units (run by
        neighbouring CTAs at the same time), each a contiguous share of its K blocks (the host
        makes every share non-empty)."""
        if not SPLIT_K:
            return unit, 0, types.int32(0), num_kb
        split_k, whole_tiles = splitting
        if unit < whole_tiles:
            return unit, 0, types.int32(0), num_kb
        tail_tile = udiv32(unit - whole_tiles, split_k)
        split = unit - whole_tiles - tail_tile * split_k
        per_split = udiv32(num_kb + split_k - 1, split_k)
        kb_begin = split * per_split
        return (whole_tiles + tail_tile, split, types.int32(kb_begin),
                types.int32(min(num_kb, kb_begin + per_split)))

    @inline
    def count_units(num_m_units, num_n_units, splitting):
        tiles = num_m_units * num_n_units
        if not SPLIT_K:
            return tiles
        split_k, whole_tiles = splitting
        return whole_tiles + (tiles - whole_tiles) * split_k

    @inline
    def next_slot(stage, phase):
        """Advance around the ring; the parity flips each time it wraps."""
        if stage + 1 == STAGES:
            return types.int32(0), types.int32(phase ^ 1)
        return types.int32(stage + 1), phase

    def ring_loader(load_slot):
        """A loader thread's loop: walk this CTA's tiles and K blocks in the order the math
        warpgroups consume them; for each, wait until ring slot `stage` is free and call
        `load_slot(base, operands, rank, stage, m_block, n_block, kb)` to fill it."""
        @inline
        def loader_loop(base, operands, work):
            num_kb, splitting, rank, first_unit, unit_step, num_m_units, num_n_units = work
            stage = types.int32(0)
            phase = types.int32(0)
            unit = first_unit
            # (The bound is recomputed per tile: one register less to keep live.)
            while unit < count_units(num_m_units, num_n_units, splitting):
                tile_unit, _, kb_begin, kb_end = unit_work(unit, num_kb, splitting)
                m_block, n_block = tile_of(tile_unit, rank, num_m_units, num_n_units)
                for kb in range(kb_begin, kb_end):
                    mbarrier_wait(base + EMPTY_BARS + 8 * stage, phase ^ 1)  # slot free?
                    load_slot(base, operands, rank, stage, m_block, n_block, kb)
                    stage, phase = next_slot(stage, phase)
                unit += unit_step
        return loader_loop

    @inline
    def load_tiles(base, operands, rank, stage, m_block, n_block, kb):
        """TMA thread: A's and B's tiles and A's scales of K block kb into slot `stage`."""
        tmap_a, tmap_b, tmap_sfa = operands
        full = base + FULL_BARS + 8 * stage
        mbarrier_arrive_expect_tx(full, STAGE_TX_BYTES)
        a_dst = base + SMEM_A + A_BYTES * stage
        b_dst = base + SMEM_B + B_BYTES * stage
        sfa_dst = base + SMEM_SFA + SFA_BYTES * stage
        if MULTICAST_A:           # rank 0 loads A (and its scales) for both CTAs
            if rank == 0:
                tma_load_2d_multicast(a_dst, tmap_a, full, kb * BLOCK_K, m_block * BM, CTA_MASK)
                tma_load_2d_multicast(sfa_dst, tmap_sfa, full, m_block * BM, kb, CTA_MASK)
        else:
            tma_load_2d(a_dst, tmap_a, full, kb * BLOCK_K, m_block * BM)
            tma_load_2d(sfa_dst, tmap_sfa, full, m_block * BM, kb)
        if MULTICAST_B:           # rank 0 loads B for both CTAs
            if rank == 0:
                tma_load_2d_multicast(b_dst, tmap_b, full, kb * BLOCK_K, n_block * BN, CTA_MASK)
        else:
            tma_load_2d(b_dst, tmap_b, full, kb * BLOCK_K, n_block * BN)

    @inline
    def load_b_scales_into_slot(base, operands, rank, stage, m_block, n_block, kb):
        """B-scale thread: the one or two B scales of K block kb into slot `stage`, by
        cp.async (a TMA box is at least 16 bytes); the slot's full barrier expects this
        thread's arrival too, which cp.async makes once the copies have landed."""
        sfb, n, num_kb = operands
        n0 = n_block * BN
        first = sfb + 4 * (num_kb * (n0 // 128) + kb)
        dst = base + SMEM_SFB + SFB_STAGE_BYTES * stage
        cp_async_4(dst, first)
        if STRADDLE:
            second_row = min((n0 + BN - 1) // 128, (n + 127) // 128 - 1)
            cp_async_4(dst + 4, first + 4 * num_kb * (second_row - n0 // 128))
        cp_async_mbarrier_arrive_noinc(base + FULL_BARS + 8 * stage)

    tma_loader_loop = ring_loader(load_tiles)
    b_scale_loader_loop = ring_loader(load_b_scales_into_slot)

    @inline
    def epilogue(base, tmap_d, final, m_block, n_block, tid, warpgroup):
        """Each math warpgroup stores its own 64-row slabs of the tile on its own: no barrier
        across warpgroups, so one can start the next tile's wgmmas while the other is still
        here (the tensor cores idled during a tile-wide epilogue)."""
        lane_in_group = tid % 128
        slab_rows = base + SMEM_D + 64 * SWIZZLE_D * warpgroup   # this group's rows, panel 0
        # The group's previous TMA stores must have finished reading its slabs.
        if lane_in_group < D_PANELS:
            tma_store_wait_read()
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
        store_first(base + SMEM_D, final, 16 * (tid // 32), tid % 32)
        if WAVES == 2:
            store_last(base + SMEM_D, final, 128 + 16 * (tid // 32), tid % 32)
        fence_proxy_async_smem()                  # stmatrix writes -> visible to TMA
        named_barrier_sync(EPILOGUE_BARRIER + warpgroup, 128)
        if lane_in_group < D_PANELS:              # one thread per swizzle panel
            panel = slab_rows + lane_in_group * (BM * SWIZZLE_D)
            column = n_block * BN + lane_in_group * (SWIZZLE_D // 2)
            row = m_block * BM + 64 * warpgroup
            tma_store_2d(tmap_d, panel, column, row)
            if WAVES == 2:
                tma_store_2d(tmap_d, panel + 128 * SWIZZLE_D, column, row + 128)
            tma_store_commit()

    @inline
    def wait_slot(base, stage, phase):
        """Wait until ring slot `stage` holds its K block (tiles and scales landed)."""
        mbarrier_wait(base + FULL_BARS + 8 * stage, phase)

    @inline
    def slot_ready(base, stage, phase):
        """Whether ring slot `stage` holds its K block already (a test, no waiting)."""
        return mbarrier_test_wait(base + FULL_BARS + 8 * stage, phase)

    @inline
    def wait_turn(warpgroup):
        """mma_turns: wait until the other math warpgroup has issued its latest batch."""
        if MMA_TURNS:
            named_barrier_sync(MMA_TURN_BARRIER + 1 - warpgroup, MATH_THREADS)

    @inline
    def pass_turn(warpgroup):
        """mma_turns: let the other math warpgroup issue its next batch."""
        if MMA_TURNS:
            named_barrier_arrive(MMA_TURN_BARRIER + warpgroup, MATH_THREADS)

    @inline
    def load_b_scales(base, stage):
        """The B scales of the K block in slot `stage`: its first and second 128-column block's
        (the same value unless tiles straddle)."""
        sfb = base + SMEM_SFB + SFB_STAGE_BYTES * stage
        sb = ld_shared_f32(sfb)
        return sb, (ld_shared_f32(sfb + 4) if STRADDLE else sb)

    @inline
    def issue_wave(base, acc, descs, stage, sfa_row, wave, warpgroup, b_scales):
        """Start the 4 wgmmas of one 64-row wave of the K block in slot `stage`, into a fresh
        `acc`. Returns acc (valid after a wgmma wait) and the wave's promotion scales
        sa[row] * sb, sa[row + 8] * sb (for the first and the second B-scale block).
        `sfa_row` is this thread's A-scale address in slot 0. Every smem read of the slot
        happens here or in `load_b_scales`, before the slot is released."""
        sfa = sfa_row + SFA_BYTES * stage + 4 * 128 * wave
        sa_row0 = ld_shared_f32(sfa)
        sa_row8 = ld_shared_f32(sfa + 32)
        sb, sb_second = b_scales
        a = descs[0] + A_BYTES // 16 * stage + 128 * BLOCK_K // 16 * wave  # descriptor low words
        b = descs[1] + B_BYTES // 16 * stage
        acc = fence(acc)
        wait_turn(warpgroup)
        wgmma_fence()
        acc = mma(desc(a), desc(b), acc, 0)                 # fresh fragment
        acc = mma(desc(a + 2), desc(b + 2), acc, 1)         # +32 bytes along K
        acc = mma(desc(a + 4), desc(b + 4), acc, 1)
        acc = mma(desc(a + 6), desc(b + 6), acc, 1)
        wgmma_commit()
        pass_turn(warpgroup)
        return acc, (sa_row0 * sb, sa_row8 * sb, sa_row0 * sb_second, sa_row8 * sb_second)

    @inline
    def issue_k_block(base, acc, descs, stage, phase, sfa_row, warpgroup, ready):
        """Wait for the K block in slot `stage` (unless an earlier test found it `ready`) and
        start its (only) wave. Returns acc and the promotion scales."""
        if not ready:
            wait_slot(base, stage, phase)
        return issue_wave(base, acc, descs, stage, sfa_row, 0, warpgroup,
                          load_b_scales(base, stage))

    @inline
    def release_slot(base, stage, lane):
        """Tell the producer(s) that this warp is done reading ring slot `stage`."""
        empty = base + EMPTY_BARS + 8 * stage
        if CLUSTER > 1:         # one arrival per warp at each CTA that loaded into the slot
            if lane < CLUSTER:
                mbarrier_arrive_cluster(empty, lane)
        elif lane == 0:
            mbarrier_arrive(empty)

    def make_promotion(promote, static_split):
        """`promote_scaled(final, acc, scales, n_first)`: promote a finished (fenced) fragment
        with one wave's promote intrinsic (uniform, or straddling B scales split at n_first, or
        at the intrinsic's own constant split)."""
        @inline
        def promote_scaled(final, acc, scales, n_first):
            s_row0, s_row8, s_row0_second, s_row8_second = scales
            if STRADDLE and static_split:
                return promote(final, acc, s_row0, s_row8, s_row0_second, s_row8_second)
            if STRADDLE:
                return promote(final, acc, s_row0, s_row8, s_row0_second, s_row8_second,
                               n_first)
            return promote(final, acc, s_row0, s_row8)
        return promote_scaled

    def make_k_loop(first_groups):
        """The K-block loop of one tile, `k_loop(base, final, acc, acc_next, descs, stage,
        phase, sfa_row, lane, warpgroup, n_first, kb_begin, kb_end) -> (final, acc, acc_next,
        stage, phase)`, for tiles whose first `first_groups` 8-column groups take the first
        B-scale block's scale (with STATIC_SPLITS; any tile otherwise). Every wgmma has
        completed when it returns, so a branch between loops never makes ptxas copy an in-flight
        fragment."""
        if STATIC_SPLITS:
            promote_first = fragment_promote(N_ACC, True, FINAL_ACC, 0, first_groups)
            promote_last = fragment_promote(N_ACC, True, FINAL_ACC, (WAVES - 1) * N_ACC,
                                            first_groups)
        else:
            promote_first = fragment_promote(N_ACC, STRADDLE, FINAL_ACC, 0)
            promote_last = fragment_promote(N_ACC, STRADDLE, FINAL_ACC, (WAVES - 1) * N_ACC)
        promote_first_wave = make_promotion(promote_first, STATIC_SPLITS)  # BLOCK_M 256
        promote_last_wave = make_promotion(promote_last, STATIC_SPLITS)

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
            promote. (Overlapped kernels never take turns,
            so the warpgroup passed on is a placeholder 0.)"""
            acc_new, scales_new = issue_k_block(base, acc_new, descs, stage, phase, sfa_row, 0,
                                                ready)
            new_stage = stage
            stage, phase = next_slot(stage, phase)
            wait_mma_one()
            final, ready = retire_and_look_ahead(base, final, acc_done, scales_done, stage_done,
                                                 stage, phase, lane, n_first)
            return final, acc_new, scales_new, new_stage, stage, phase, ready

        @inline
        def k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane, warpgroup,
                   n_first, kb_begin, kb_end):
            if OVERLAP_PROMOTION:
                # Two fragments in flight: while K block kb is promoted on the CUDA cores, the
                # tensor cores already run kb + 1. Unrolled by two with the tail peeled, so
                # that no fragment whose wgmma is still running passes a branch merge (ptxas
                # would copy its registers and serialize every wgmma, warning C7514).
                acc, scales = issue_k_block(base, acc, descs, stage, phase, sfa_row, 0, 0)
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
                # One fragment: issue, wait, promote. The other math warpgroup's wgmmas keep
                # the tensor cores busy meanwhile.
                ready = types.int32(0)
                kb = kb_begin
                while kb < kb_end:
                    kb = types.int32(kb + 1)
                    if not ready:
                        wait_slot(base, stage, phase)
                    b_scales = load_b_scales(base, stage)
                    acc, scales = issue_wave(base, acc, descs, stage, sfa_row, 0, warpgroup,
                                             b_scales)
                    wait_mma()
                    if WAVES == 2:
                        # BLOCK_M 256: two 64-row waves per warpgroup share the slot's B tile.
                        final = promote_first_wave(final, fence(acc), scales, n_first)
                        acc, scales = issue_wave(base, acc, descs, stage, sfa_row, 1, warpgroup,
                                                 b_scales)
                        wait_mma()
                    next_stage, phase = next_slot(stage, phase)
                    final, ready = retire_and_look_ahead(base, final, acc, scales, stage,
                                                         next_stage, phase, lane, n_first)
                    stage = next_stage
            return final, acc, acc_next, stage, phase
        return k_loop

    def make_tile_k_loop(splits):
        """`tile_k_loop(split, ...k_loop's arguments)`: the K loop compiled for the tile's
        scale split (a chain of uniform branches over `splits`, the last one untested)."""
        k_loop = make_k_loop(splits[0])
        if len(splits) == 1:
            @inline
            def only(split, base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                     warpgroup, n_first, kb_begin, kb_end):
                return k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                              warpgroup, n_first, kb_begin, kb_end)
            return only
        SPLIT = splits[0]
        others = make_tile_k_loop(splits[1:])

        @inline
        def dispatch(split, base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                     warpgroup, n_first, kb_begin, kb_end):
            if split == SPLIT:
                return k_loop(base, final, acc, acc_next, descs, stage, phase, sfa_row, lane,
                              warpgroup, n_first, kb_begin, kb_end)
            return others(split, base, final, acc, acc_next, descs, stage, phase, sfa_row,
                          lane, warpgroup, n_first, kb_begin, kb_end)
        return dispatch

    tile_k_loop = make_tile_k_loop(SCALE_SPLITS if STATIC_SPLITS else (N_GROUPS,))

    @inline
    def reduce_split_k(base, final, workspace, counters, split_k, tile_unit, split, tid):
        """Split-K: publish this CTA's FP32 partial tile; the last of the tile's split_k CTAs
        to get here adds the others' partials to its own and is the one to store the tile
        (returns (sum, 1) there, (final, 0) elsewhere). The classic threadfence reduction:
        write, fence, count; the tile's counter is reset by its last CTA for the next launch.
        `tile_unit` counts split tiles only (the workspace has slots for those)."""
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

    @inline
    def math_loop(base, tmap_d, workspace, counters, work, tid):
        num_kb, splitting, rank, first_unit, unit_step, num_m_units, num_n_units = work
        lane = types.int32(tid % 32)
        row = 16 * (tid // 32) + lane // 4        # this thread's first fragment row in the tile
        sfa_row = base + SMEM_SFA + 4 * row       # its A scale in ring slot 0
        # wgmma descriptors of ring slot 0: this warpgroup's 64-row slice of A, and B. Built
        # from a warp-uniform index, so they live in uniform registers (no per-wgmma moves).
        warpgroup = warp_uniform(tid // 128)
        descs = (desc_low(base + SMEM_A + warpgroup * (64 * BLOCK_K)), desc_low(base + SMEM_B))
        acc = zeros()
        acc_next = zeros()
        stage = types.int32(0)
        phase = types.int32(0)
        num_units = count_units(num_m_units, num_n_units, splitting)
        unit = first_unit
        if warpgroup == 1:
            pass_turn(1)              # mma_turns: warpgroup 0 issues first
        while unit < num_units:
            tile_unit, split, kb_begin, kb_end = unit_work(unit, num_kb, splitting)
            m_block, n_block = tile_of(tile_unit, rank, num_m_units, num_n_units)
            n0 = n_block * BN
            n_first = (128 - n0 % 128) // 8       # 8-column groups left of the block boundary
            final = final_zeros()
            final, acc, acc_next, stage, phase = tile_k_loop(
                min(n_first, N_GROUPS), base, final, acc, acc_next, descs, stage, phase, sfa_row,
                lane, warpgroup, n_first, kb_begin, kb_end)
            unit += unit_step
            if not SPLIT_K:
                epilogue(base, tmap_d, final, m_block, n_block, tid, warpgroup)
            else:
                split_k, whole_tiles = splitting
                reduces = 1
                if tile_unit >= whole_tiles:
                    final, reduces = reduce_split_k(base, final, workspace, counters, split_k,
                                                    tile_unit - whole_tiles, split, tid)
                if reduces:     # a whole tile, or the last of a split tile's CTAs: store
                    epilogue(base, tmap_d, final, m_block, n_block, tid, warpgroup)
        if warpgroup == 0:
            wait_turn(0)              # mma_turns: take warpgroup 1's last pass (balanced barrier)
        if tid % 128 < D_PANELS:
            tma_store_wait()          # the last stores must drain before the CTA exits

    @inline
    def this_ctas_work(m, n, k, split_k, whole_tiles):
        """What this CTA walks: (K blocks per tile, (split_k, whole_tiles), cluster rank, first
        unit, unit stride, M and N units), computed once at the kernel's entry for all roles.
        (The int32 casts narrow numba's int64; no configuration spilled without them either.)"""
        num_kb = types.int32((k + BLOCK_K - 1) // BLOCK_K)
        if not SPLIT_K:
            split_k = 1         # constants, so the unit arithmetic folds away
            whole_tiles = 0
        num_m_units = types.int32((m + BM * CLUSTER_M - 1) // (BM * CLUSTER_M))
        num_n_units = types.int32((n + BN * CLUSTER_N - 1) // (BN * CLUSTER_N))
        rank = cluster_ctarank() if CLUSTER > 1 else 0
        return (num_kb, (split_k, whole_tiles), rank, types.int32(cuda.blockIdx.x // CLUSTER),
                types.int32(cuda.gridDim.x // CLUSTER), num_m_units, num_n_units)

    def fp8_gemm_1d2d(tmap_a, tmap_b, tmap_sfa, tmap_d, sfb, workspace, counters, m, n, k,
                      split_k, whole_tiles):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        base = smem_base(smem)
        tid = cuda.threadIdx.x
        work = this_ctas_work(m, n, k, split_k, whole_tiles)

        if tid == MATH_THREADS:                   # producer's first thread: set up barriers
            prefetch_tensormap(tmap_a)
            prefetch_tensormap(tmap_b)
            prefetch_tensormap(tmap_sfa)
            prefetch_tensormap(tmap_d)
            for s in range(STAGES):
                mbarrier_init(base + FULL_BARS + 8 * s, FULL_ARRIVALS)
                mbarrier_init(base + EMPTY_BARS + 8 * s, EMPTY_ARRIVALS)
            fence_mbarrier_init()
        if CLUSTER > 1:
            cluster_sync()
        else:
            cuda.syncthreads()

        if tid >= MATH_THREADS:
            producer_registers()
            if tid < MATH_THREADS + 32:             # warp 0: the TMA thread
                if elect_one():
                    tma_loader_loop(base, (tmap_a, tmap_b, tmap_sfa), work)
                cuda.syncwarp()
            elif tid < MATH_THREADS + 64:           # warp 1: the B-scale thread
                if elect_one():
                    b_scale_loader_loop(base, (sfb, n, work[0]), work)
                cuda.syncwarp()
        else:
            math_registers()
            math_loop(base, tmap_d, workspace, counters, work, tid)

        if CLUSTER > 1:           # no CTA may leave while its peer can still signal its smem
            cluster_sync()

    fp8_gemm_1d2d.__name__ = fp8_gemm_1d2d.__qualname__ = cfg.name
    return fp8_gemm_1d2d
