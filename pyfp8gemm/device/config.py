"""What a GEMM kernel is compiled for: `GemmConfig`, and the constants of the CTA's layout.

A config says *how* a kernel computes (tile, ring depth, cluster, which schedule and which
scaling it is built for); the problem it runs on (M, N, K, groups) and the host's launch policy
(how many ways K is split, which tiles) are kernel parameters, not config fields. Everything a
config derives (shared-memory layout, thread counts, swizzles) is a compile-time constant of the
kernel factories that take it.
"""

import math
from dataclasses import dataclass

BLOCK_K = 128                   # one K block = one scale block = 4 wgmma k32 steps
D_STORE_ROWS = 64               # the output is TMA-stored in 64-row slabs (one per warpgroup wave)
SMEM_LIMIT = 232448             # dynamic shared memory per CTA on sm_90 (227 KB)
# setmaxnreg budgets: the producer warpgroup (a TMA thread and a B-scale thread) needs few
# registers, the math warpgroups hold the fragments. setmaxnreg moves registers inside the CTA's
# pool, which is what it got at launch (ptxas's count x threads: 168 x 384 = 64512 with two math
# warpgroups), NOT the SM's 65536: 56 * 128 + 224 * 256 = 64512 fits exactly (a budget beyond
# the pool leaves a setmaxnreg.inc waiting forever: a hang seen on the H200, which
# check_register_budget refuses). With two loader threads, 40 producer registers spilled; at 224
# the math warpgroups hold every configuration the heuristic picks without spilling.
PRODUCER_REGISTERS = 56
MATH_REGISTERS = {1: 248, 2: 224}
# BLOCK_M 256 keeps two final fragments and one MMA fragment per thread: 1.5 * BLOCK_N floats.
BLOCK_M_256_MAX_N = 128
MAX_SPLIT_K = 16
SFB_STAGE_BYTES = 16            # a ring slot's B scales: the tile's one or two 128-column blocks
# Narrow A tiles for small M (DeepGEMM's BLOCK_M 16 / 32): TMA loads only BLOCK_M rows of A
# (and their scales) per slot, so a slot is mostly B and more slots fit; the wgmma still
# computes 64 rows (m64), reading past the slot's A rows into the next bytes of shared memory,
# and those rows are never stored (the epilogue's warps past BLOCK_M skip their stmatrix and
# the TMA store box is BLOCK_M rows).
NARROW_BLOCK_M = (16, 32)
# Swap-AB (DeepGEMM's users' ask for decode batches): the tile is D^T, so the weight rows fill
# the wgmma's 64-row side (BLOCK_M 64: one math warpgroup) and the tokens its N side, as few as
# 8 (m64n8 instead of computing 64 token rows of which at most 32 are real).
SWAP_AB_BLOCK_N = tuple(range(8, 33, 8))
# Straddling BLOCK_N with at most this many scale splits get one K loop per split (constant
# split, see k_loop.py); the others select scales per 8-column group at run time.
MAX_K_LOOP_COPIES = 4

#: The work schedules a kernel can be built for (device/scheduler.py).
SCHEDULES = ("dense", "m_grouped_contiguous", "m_grouped_masked", "k_grouped")
#: Scaling recipes: A 1x128 with B 128x128 (bf16 out) or with B 1x128 (FP32 out, the wgrad).
SCALINGS = ("1d2d", "1d1d")


def align(x, a):
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
    block_m: int                # 64 (one math warpgroup), 128 (two), 256 (two, 2 waves each);
                                # 16 or 32: narrow A tiles for small M (see NARROW_BLOCK_M)
    block_n: int                # multiple of 8 in [16, 256] (register budget permitting);
                                # 8-32 with swap_ab (tokens)
    stages: int                 # depth of the TMA ring
    multicast: str = "none"     # "none", "a" (2 CTAs along N share A), "b" (along M share B)
    group_m: int = 16           # rasterization group height, in cluster units
    split_k: bool = False       # built with the split-K reduction (the split count and which
                                # tiles are split are kernel parameters)
    schedule: str = "dense"     # one of SCHEDULES
    scaling: str = "1d2d"       # one of SCALINGS
    accumulate: bool = False    # 1d1d: D = C + A @ B^T (C read in the epilogue)
    epilogue: str = "direct"    # 1d1d: "direct" (FP32 from registers to global memory) or
                                # "tma" (through shared memory: TMA store / reduce-add)
    swap_ab: bool = False       # 1d2d: compute D^T = B A^T: block_m rows of B (weights, the
                                # wgmma's M side) x block_n rows of A (tokens, its N side);
                                # A's 1x128 scales per column, B's 128x128 scale per tile; D
                                # stored transposed from registers (`d_tile` is D's view)
    compiled_shape: tuple = ()  # (N, groups, grid CTAs) compiled in as constants, 0 where
                                # read at run time; () serves any shape. DeepGEMM compiles
                                # its shapes in too: divisions by them become multiplies, the
                                # masked count loop unrolls (bench/JOURNAL.md, session 32)

    def __post_init__(self):
        if self.block_m not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_m must be 16, 32, 64, 128 or 256, got {self.block_m}")
        if self.block_m in NARROW_BLOCK_M and (self.scaling != "1d2d" or self.schedule != "dense"
                                               or self.multicast != "none" or self.split_k):
            raise ValueError(f"block_m={self.block_m} (narrow A tiles) runs the dense 1D2D "
                             "schedule only, without clusters or split-K")
        if self.block_m == 256 and self.block_n > BLOCK_M_256_MAX_N:
            raise ValueError(f"block_m=256 needs block_n <= {BLOCK_M_256_MAX_N} (two final "
                             f"fragments per warpgroup must fit in registers), got {self.block_n}")
        if self.swap_ab:
            if (self.scaling != "1d2d" or self.schedule not in ("dense", "m_grouped_masked")
                    or self.block_m != 64 or self.block_n not in SWAP_AB_BLOCK_N
                    or self.multicast != "none"):
                raise ValueError(
                    "swap_ab runs the 1D2D dense or m_grouped_masked schedule, block_m 64 (B's "
                    f"rows) and block_n in {SWAP_AB_BLOCK_N} (A's rows), without clusters; got "
                    f"{self.scaling}, {self.schedule}, {self.block_m}x{self.block_n}, "
                    f"multicast {self.multicast!r}")
        elif self.block_n % 8 or not 16 <= self.block_n <= 256:
            raise ValueError(f"block_n must be a multiple of 8 in [16, 256], got {self.block_n}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.scaling == "1d1d" and (self.schedule not in ("dense", "k_grouped")
                                       or self.split_k or self.block_m == 256):
            raise ValueError("scaling '1d1d' runs the dense or k_grouped schedule, BLOCK_M 64 or "
                             "128, without split-K")
        if self.epilogue not in ("direct", "tma"):
            raise ValueError(f"epilogue must be 'direct' or 'tma', got {self.epilogue!r}")
        if self.epilogue == "tma" and (self.scaling != "1d1d"
                                       or (self.block_n % 32 and self.block_n % 16 != 8)):
            raise ValueError("epilogue 'tma' is the 1D1D kernel's, with block_n a multiple of "
                             "32 (128-byte swizzled panels of FP32) or 8 modulo 16 (one "
                             "row-major box without bank conflicts), got "
                             f"{self.scaling}, {self.block_n}")
        if self.schedule == "k_grouped" and self.scaling != "1d1d":
            raise ValueError("schedule 'k_grouped' needs scaling '1d1d'")
        if self.accumulate and self.scaling != "1d1d":
            raise ValueError("accumulate needs scaling '1d1d' (FP32 output)")
        if self.scaling == "1d2d" and self.max_scale_offset + self.block_n > 256:
            raise ValueError(f"block_n={self.block_n}: a tile could span three 128-column B-scale "
                             "blocks (the kernel promotes with at most two)")
        if self.multicast not in ("none", "a", "b"):
            raise ValueError(f"multicast must be 'none', 'a' or 'b', got {self.multicast!r}")
        if not isinstance(self.split_k, bool):
            raise TypeError(f"split_k is whether the kernel has the split-K reduction (a bool), "
                            f"got {self.split_k!r}; the split count is a launch parameter")
        if self.split_k and self.multicast != "none":
            raise ValueError("split_k needs multicast 'none'")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule.startswith("m_grouped") and self.split_k:
            raise ValueError(f"schedule {self.schedule!r}: no split-K")
        if self.schedule == "m_grouped_masked" and self.multicast == "a":
            raise ValueError("schedule 'm_grouped_masked': multicast 'b' (a group's M blocks "
                             "share its weights) or none")
        if self.compiled_shape and (
                self.scaling != "1d2d" or len(self.compiled_shape) != 3
                or not all(isinstance(x, int) and x >= 0 for x in self.compiled_shape)
                or self.compiled_shape[2] % self.cluster_size):
            raise ValueError("compiled_shape is (N, groups, grid CTAs), integers >= 0 (0: read at "
                             "run time), the grid a multiple of the cluster size, for the 1D2D "
                             f"kernel; got {self.compiled_shape!r} ({self.scaling})")
        if self.stages < 1 or self.smem_bytes > SMEM_LIMIT:
            raise ValueError(f"{self}: {self.smem_bytes} B of shared memory > {SMEM_LIMIT}")

    @property
    def overlap_promotion(self):
        """Two fragments in flight (promote K block i while i+1's wgmmas run): only where the
        registers hold them (BLOCK_N <= 128, one wave per warpgroup; 1D1D keeps BLOCK_N / 4
        column scales per thread as well: BLOCK_N <= 64)."""
        widest = 128 if self.scaling == "1d2d" and not self.swap_ab else 64
        return self.block_n <= widest and self.waves == 1

    @property
    def split_promotion(self):
        """The one-fragment K loop's wgmmas as two BLOCK_N/2-wide halves in two commit groups:
        the low half is promoted while the high half's wgmmas still run, so only half of the
        FFMAs wait for the tensor cores (1D2D, one 64-row wave per warpgroup, BLOCK_N a
        multiple of 16: each half a whole number of 8-column groups and 8-row swizzle atoms).
        Two parts, not more: narrower wgmmas re-read A (bench/JOURNAL.md, session 22)."""
        return (self.scaling == "1d2d" and not self.swap_ab and not self.overlap_promotion
                and self.waves == 1 and self.block_n % 16 == 0)

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
        """Whether a tile can cross a 128-column B-scale block boundary (1D2D only: 1D1D has
        a scale per column)."""
        return self.scaling == "1d2d" and not self.swap_ab and 128 % self.block_n != 0

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

    @property
    def d_tile(self):
        """(rows, columns) of D a tile covers: (block_m, block_n), swapped for swap_ab. The
        schedule walks D's tiles in this view (scheduler.py; the kernel computes a swap_ab
        tile transposed)."""
        return (self.block_n, self.block_m) if self.swap_ab else (self.block_m, self.block_n)

    # --- shape of the CTA ---
    @property
    def math_warpgroups(self):
        return 1 if self.block_m <= 64 else 2

    @property
    def waves(self):
        """64-row wgmma waves per math warpgroup per K block (2 for BLOCK_M 256; 1 for the
        narrow tiles, whose one wave has BLOCK_M real rows)."""
        return max(1, self.block_m // (64 * self.math_warpgroups))

    @property
    def store_rows(self):
        """Rows of the output tile the epilogue stores per math warpgroup wave (the TMA store
        box): 64, or BLOCK_M for the narrow tiles."""
        return min(self.block_m, D_STORE_ROWS)

    @property
    def math_threads(self):
        return 128 * self.math_warpgroups

    @property
    def threads(self):
        return self.math_threads + 128          # + the producer warpgroup

    @property
    def cluster_size(self):
        return 1 if self.multicast == "none" else 2

    @property
    def cluster_shape(self):
        """(CTAs along M, CTAs along N) of a cluster."""
        return (2 if self.multicast == "b" else 1), (2 if self.multicast == "a" else 1)

    # --- the output tile in shared memory ---
    @property
    def swizzle_d(self):
        """Widest TMA swizzle (bytes) whose panels tile a BLOCK_N row of bf16 exactly; 16 means
        no swizzle, in panels of 8 columns (e.g. BLOCK_N 136 = 17 panels), which stmatrix also
        writes without bank conflicts (8 rows x 16 bytes = 128 contiguous bytes)."""
        return next(s for s in (128, 64, 32, 16) if (self.block_n * 2) % s == 0)

    @property
    def f32_store_box(self):
        """The 1D1D "tma" epilogue's box of D per TMA store (columns, rows) and its swizzle
        (bytes): 32-column panels with the 128-byte swizzle where BLOCK_N is a multiple of 32,
        else the whole tile width in one row-major box (BLOCK_N 8 modulo 16)."""
        if self.block_n % 32 == 0:
            return (32, D_STORE_ROWS), 128
        return (self.block_n, D_STORE_ROWS), 0

    # --- shared-memory layout (byte offsets from the 1024-aligned base) ---
    @property
    def a_stage_bytes(self):
        return self.block_m * BLOCK_K

    @property
    def b_stage_bytes(self):
        return self.block_n * BLOCK_K

    @property
    def sfa_stage_bytes(self):
        """A's 1x128 scales of the tile's rows of A: block_m, or block_n with swap_ab."""
        return align(self.d_tile[0] * 4, 128)

    @property
    def sfb_stage_bytes(self):
        """1D2D: the tile's one or two B-scale blocks; 1D1D: a scale per column (TMA box)."""
        return SFB_STAGE_BYTES if self.scaling == "1d2d" else align(self.block_n * 4, 128)

    @property
    def d_stage_bytes(self):
        """The output tile staged for its TMA store: bf16 (1D2D), FP32 (1D1D's "tma"
        epilogue; its "direct" one stores from registers), rounded up to 1024 bytes: A's slots
        after it need that alignment for the 128-byte swizzle (only the narrow tiles' are not
        multiples of it already)."""
        if self.swap_ab:            # stored transposed from registers
            return 0
        if self.scaling == "1d2d":
            return align(self.block_m // self.store_rows * self.d_slab_bytes, 1024)
        return self.block_m * self.block_n * 4 if self.epilogue == "tma" else 0

    @property
    def d_slab_bytes(self):
        """The bf16 staging tile is slab-major: each `store_rows`-row slab (what one warpgroup
        wave stores) in its own bytes, its swizzle panels one after another. A warpgroup then
        never touches the other's staging bytes, whatever layout it writes them in (the masked
        GEMM's row-major last rows, cfg.d_row_pitch apart). With several slabs (64 rows each)
        a multiple of 1024 bytes: every panel starts where the TMA swizzle needs it."""
        slab = self.store_rows * self.block_n * 2
        if self.schedule == "m_grouped_masked":
            slab = max(slab, self.store_rows * self.d_row_pitch)
        return slab

    @property
    def d_row_pitch(self):
        """Bytes from row to row of the row-major staged output tile (the masked grouped GEMM's
        last rows of a group, copied out row by row): BLOCK_N bf16 padded to an odd number of
        16-byte chunks, so that stmatrix's 8 rows of a matrix fall in 8 different bank groups."""
        return (self.block_n // 8 | 1) * 16

    @property
    def smem_offsets(self):
        d = 0
        a = d + self.d_stage_bytes
        b = a + self.stages * self.a_stage_bytes
        sfa = b + self.stages * self.b_stage_bytes
        sfb = sfa + self.stages * self.sfa_stage_bytes
        full = sfb + self.stages * self.sfb_stage_bytes
        empty = full + 8 * self.stages
        flag = empty + 8 * self.stages                  # split-K: "this CTA reduces the tile"
        end = flag + (16 if self.split_k else 0)
        return dict(d=d, a=a, b=b, sfa=sfa, sfb=sfb, full=full, empty=empty, flag=flag,
                    end=end)

    @property
    def smem_bytes(self):
        return self.smem_offsets["end"]

    @property
    def name(self):
        kind = "" if self.schedule == "dense" else "_" + self.schedule
        mc = "" if self.multicast == "none" else f"_mc{self.multicast}2"
        overlap = "_ovl" if self.overlap_promotion else ""
        split = "_splitk" if self.split_k else ""
        acc = "_acc" if self.accumulate else ""
        tma_d = "_tmad" if self.epilogue == "tma" else ""
        swap = "_swapab" if self.swap_ab else ""
        shape = ("_shape" + "x".join(map(str, self.compiled_shape))
                 if self.compiled_shape else "")
        return (f"fp8_gemm_{self.scaling}{kind}_m{self.block_m}_n{self.block_n}_k{BLOCK_K}"
                f"_s{self.stages}{mc}_g{self.group_m}{overlap}{split}{acc}{tma_d}{swap}"
                f"{shape}")

    @staticmethod
    def max_stages(block_m, block_n, scaling="1d2d", epilogue="direct", swap_ab=False,
                   schedule="dense"):
        cfg = GemmConfig(block_m, block_n, 1, scaling=scaling, schedule=schedule,
                         epilogue=epilogue, swap_ab=swap_ab)   # its layout, with one stage
        per_stage = (block_m * BLOCK_K + block_n * BLOCK_K + cfg.sfa_stage_bytes
                     + cfg.sfb_stage_bytes + 16)
        return (SMEM_LIMIT - cfg.d_stage_bytes) // per_stage
