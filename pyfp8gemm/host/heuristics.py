"""Choosing a kernel configuration for a GEMM shape.

The kernel is persistent: `num_sms` CTAs walk over ceil(M/BLOCK_M) * ceil(N/BLOCK_N) tiles. A
tile's time grows with BLOCK_M * BLOCK_N (its wgmma work) plus a fixed part per row of the tile
(loading A's rows and scales, B's scales, the epilogue), and the GEMM takes as many rounds
("waves") as the busiest SM has tiles. So we pick the (BLOCK_M, BLOCK_N) minimizing

    waves * BLOCK_M * (BLOCK_N + TILE_OVERHEAD_COLUMNS[BLOCK_M]) * (measured penalties)

which prefers tiles that fill the SMs in whole waves (e.g. 112 or 144 next to 128), ties going
to the larger tile. The constants come from side-by-side sweeps on the H200
(scripts/tune_sweep.py, bench/JOURNAL.md):

- BLOCK_M: 64 (one math warpgroup) when M <= 64; else 128 (two math warpgroups); for
  M >= 1024 also 256 with BLOCK_N 128 (two 64-row waves per warpgroup), which ran 3-10% faster
  than BLOCK_M 128 at equal wave counts on every large ANCHORS shape.
- penalties: BLOCK_N > 128 cannot overlap promotion with the next wgmmas (registers); a
  BLOCK_N that does not divide 128 makes tiles straddle two B-scale blocks, which costs where
  the kernel selects each 8-column group's scale at run time (not where it compiles a K loop
  per split); for M >= 512, a BLOCK_M 128 config that cannot multicast pays a little.
- stages: as many as shared memory holds: the deeper ring helped small-M, long-K shapes by
  4-6% (more bytes in flight per SM) and never hurt.
- multicast (BLOCK_M 128, M >= 512 only): a 2-CTA cluster loads A once for two N-neighbours
  ("a") when the number of N tiles is even, else B once for two M-neighbours ("b"). BLOCK_M 256
  shares A ("a") when the N tiles pair up, else runs without a cluster: in short bursts at boost
  clock multicast looked no better, but under sustained load every FP8 GEMM here runs at the
  700 W cap, and halving A's L2->SM traffic buys clock: +1.7..4.8% (do_bench, 1.5 s runs) on
  every M = 4096/8192 ANCHORS shape it applies to, where sharing B gained nothing.
  BLOCK_M 64 with an even number of M tiles (M = 65..128), BLOCK_N >= 64 and K >= 4096 shares
  B ("b").
- M <= 16 (decode): swap-AB, 64 weight rows x M tokens rounded up to 8 per tile
  (SWAP_AB_MAX_M), unless its 64-row weight tiles would be split in two.
- otherwise M <= 32: the BLOCK_M 64 pick's tile with only 16 (M <= 16) or 32 rows of A loaded
  per ring slot (NARROW_MAX_M), where the pick runs without split-K or a cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from ..device.config import BLOCK_K, MAX_SPLIT_K, SWAP_AB_BLOCK_N, GemmConfig
from ..device.scheduler import masked_grid_size
from .problem import GemmProblem, KernelChoice

MAX_STAGES = 32                 # i.e. no cap below what shared memory holds
# The fixed per-tile cost, in columns of BLOCK_N (fitted to the sweeps: 32 picks the best
# BLOCK_N on every M <= 64 shape; 64 on the M = 128..4096 ones, e.g. 4096x2112x7168 runs
# BLOCK_N 128 in 5 waves at 992 TFLOPS, BLOCK_N 96 at BLOCK_M 256 in 3 waves at 849).
TILE_OVERHEAD_COLUMNS = {64: 32, 128: 64, 256: 64}
MULTICAST_MIN_M = 512
# Measured on the H200 (bench/JOURNAL.md). Multicast A vs none at BLOCK_M 128: 1052 vs 1034.
# No overlapped promotion (BLOCK_N > 128): BLOCK_N 160 ran x1.14 slower per tile than 128 at
# 4096x4096x7168 (session 2); with B scales in the ring, per-split K loops and no turns, BLOCK_M
# 128 x BLOCK_N 192 beat the overlapped tiles it competes with on 8 of 8 shapes with M >= 384
# (x1.035 at 4096x2112x7168, where this factor's cost model predicts x1.030; x1.05-1.13
# elsewhere), but not at M = 128 (128x24576x1536: x0.954 against 128x96), nor at BLOCK_M 64
# (64x24576x1536 64x192: x0.968 against 64x64): BLOCK_N > 128 at BLOCK_M 128 needs M >= 256.
NO_MULTICAST_PENALTY = 1.03
NO_OVERLAP_PENALTY = {64: 1.15, 128: 1.10}
WIDE_TILE_MIN_M = 256
STRADDLE_PENALTY = 1.15        # 64x24576x1536: BLOCK_N 64 246 TFLOPS vs 96 (straddling) 233
SMALL_BLOCK_N = 32
# BLOCK_M 64 with an even number of M tiles (e.g. M = 128): two M-neighbour CTAs share the weight
# tile (multicast "b"), for long K only. Profiler, interleaved: 128x4096x7168 64x64 471-472 TFLOPS
# vs 426-448 (multicast "a" 426), 96x4096x7168 334-335 vs 296; but 128x4096x2048 270-273 vs 294
# and 72x4096x2048 146 vs 143-145 (with 16 K blocks the pair's coupling costs more than it saves);
# 128x2112x7168 64x32: 316-319 vs 320 (a 32-wide B tile is little of the traffic).
SMALL_M_MULTICAST_B_MIN_N = 64
SMALL_M_MULTICAST_B_MIN_K = 4096
# Split-K: at least 12 K blocks (1536 of K) per CTA. Measured (do_bench, launch included):
# 64x576x7168 split 3 11.3 us vs 13.9 unsplit, 64x256x16384 split 8 11.2 vs 23.1, but
# 16x576x2048 split 3 9.2 vs 7.9: with little K per split the partial-sum round trip (fence,
# counter, reload) costs more than the idle SMs did.
MIN_K_BLOCKS_PER_SPLIT = 12
# Narrow A tiles for decode (BLOCK_M 16 / 32: the ring slot holds 16 / 32 rows of A instead of
# 64, so no TMA box is mostly out of bounds and more of B is in flight; DeepGEMM does the same
# for M <= 16 / 32). Interleaved A/B against the BLOCK_M 64 pick (H100, ab_time.py): sessions 11
# (16 rows) 1x2112x7168 16x16 x1.29, 16x32 x1.39; 8x7168x16384 16x64 x1.06; 16x4096x7168 16x32
# x1.03; and 13 (32 rows, the 64-row pick's BLOCK_N) 32x2112x7168 32x16 x1.107,
# 24x4096x7168 32x32 x1.058, 32x4096x7168 32x32 x0.996, 32x7168x16384 32x64 x1.007. A
# 16-row pick of BLOCK_N 16 becomes 16 x 32 (half the CTAs, twice the bytes per slot: x1.39
# against x1.29).
NARROW_MAX_M = 32


def narrow_block_m(m: int) -> int:
    """BLOCK_M of the narrow A tiles for M <= NARROW_MAX_M."""
    return 16 if m <= 16 else 32


# Swap-AB (GemmConfig.swap_ab; issue 22): D^T = B A^T, tiles of 64 weight rows x the tokens
# rounded up to 8, split-K where the weight tiles leave SMs idle. H100, ab_time.py, the 36
# decode shapes (M = 1..32 x DeepSeek-V3's N, K), against the narrow tiles the heuristic picked
# before, in the same rounds (JOURNAL session 14): x1.006-1.058 at M <= 16 on 26 of 30 shapes;
# the exceptions are all 4096x7168, where 64 weight tiles split in two (x0.92-1.01); at M = 32
# x0.88-1.005. So the heuristic swaps for M <= SWAP_AB_MAX_M unless the split would be 2.
# Masked groups of 1-8 rows ran x1.01 swapped: not picked (expected_m is only a hint, and a
# group far larger than it would re-read the weights every 8 rows).
SWAP_AB_MAX_M = 16
SWAP_AB_LOSING_SPLIT = 2


def swap_ab_choice(m: int, n: int, k: int, num_sms: int,
                   schedule: str = "dense") -> KernelChoice:
    """The swap-AB kernel for an M-token problem: BLOCK_N the tokens rounded up to 8 (at most
    the widest of SWAP_AB_BLOCK_N), split-K (dense) as for any tiles too few for the SMs."""
    block_m, block_n = 64, min(_ceil_div(m, 8) * 8, max(SWAP_AB_BLOCK_N))   # weights, tokens
    split_k = 1
    if schedule == "dense":
        split_k = choose_split_k(_ceil_div(m, block_n) * _ceil_div(n, block_m), k, num_sms)
    return KernelChoice(make_config(block_m, block_n, split_k=split_k > 1, schedule=schedule,
                                    swap_ab=True), split_k)


def swap_ab_configs(picked_only: bool = False) -> list[GemmConfig]:
    """The swap-AB kernels swap_ab_choice can give (`picked_only`: those choose_dense picks)."""
    configs = [make_config(64, block_n, split_k=split_k, schedule=schedule, swap_ab=True)
               for block_n in SWAP_AB_BLOCK_N
               for schedule, split_k in (("dense", False), ("dense", True),
                                         ("m_grouped_masked", False))]
    if picked_only:
        return [cfg for cfg in configs
                if cfg.schedule == "dense" and cfg.block_n <= SWAP_AB_MAX_M]
    return configs


# Splitting the last, partial wave's tiles (e.g. 4096x2112x7168: 544 tiles of 128x128 = 4 full
# waves and 16 tiles): they take 1 / split of a tile time, plus the partial-sum round trip,
# modelled as this fraction of a tile time.
TAIL_REDUCE_WAVES = 0.15
# BLOCK_M 256 (two 64-row waves per math warpgroup, B tile shared by four wgmma waves) ran
# 3-10% faster than BLOCK_M 128 at equal wave counts on every M = 4096/8192 ANCHORS shape.
BLOCK_M_256_SPEEDUP = 0.92
BLOCK_M_256_MIN_M = 1024
# BLOCK_N candidates per BLOCK_M; capped where the two FP32 fragments (BLOCK_N regs/thread)
# still fit the math warpgroups' register budget without spilling.
# 176 is left out: a 176-wide tile can span three B-scale blocks (GemmConfig rejects it).
# (192 at BLOCK_M 128 spilled at 224 registers until its K loops were compiled per scale split.)
BLOCK_N_CANDIDATES = {64: tuple(n for n in range(16, 193, 16) if n != 176),
                      128: tuple(n for n in range(16, 193, 16) if n != 176),
                      256: (128,)}


def _ceil_div(a, b):
    return -(-a // b)


def make_config(block_m: int, block_n: int, multicast: str = "none", split_k: bool = False,
                schedule: str = "dense", scaling: str = "1d2d",
                accumulate: bool = False, epilogue: str = "direct",
                swap_ab: bool = False) -> GemmConfig:
    """The kernel of a tile shape, with the deepest ring shared memory holds."""
    stages = min(MAX_STAGES, GemmConfig.max_stages(block_m, block_n, scaling, epilogue, swap_ab,
                                                    schedule))
    return GemmConfig(block_m, block_n, stages, multicast, split_k=split_k, schedule=schedule,
                      scaling=scaling, accumulate=accumulate, epilogue=epilogue,
                      swap_ab=swap_ab)


def make_choice(block_m: int, block_n: int, multicast: str = "none", split_k: int = 1,
                split_last_wave: bool = False, schedule: str = "dense") -> KernelChoice:
    """A kernel and its split policy (split_k > 1 runs the kernel built with split-K)."""
    return KernelChoice(make_config(block_m, block_n, multicast, split_k > 1, schedule),
                        split_k, split_last_wave)


def split_k_fits(split_k: int, k: int) -> bool:
    """Whether every one of `split_k` contiguous shares of K's 128-wide blocks is non-empty
    (the kernel gives split s blocks [s * ceil(kb / split_k), ...))."""
    num_kb = _ceil_div(k, BLOCK_K)
    return (split_k - 1) * _ceil_div(num_kb, split_k) < num_kb


def choose_split_k(tiles: int, k: int, num_sms: int) -> int:
    """Split K over several CTAs per tile when the tiles alone would leave most SMs idle
    (e.g. M <= 64 with N = 576: 36 tiles of 16 columns for 132 SMs), as long as every split
    keeps at least MIN_K_BLOCKS_PER_SPLIT K blocks. The partial tiles go through an FP32
    workspace and the last CTA of each tile adds them up (no extra kernel)."""
    if tiles * 2 > num_sms:
        return 1
    split_k = min(num_sms // tiles, _ceil_div(k, BLOCK_K) // MIN_K_BLOCKS_PER_SPLIT, MAX_SPLIT_K)
    while split_k > 1 and not split_k_fits(split_k, k):
        split_k -= 1
    return max(split_k, 1)


def choose_last_wave_split(tiles: int, k: int, num_sms: int) -> int:
    """How many ways to split each tile of the last wave when the tiles fill more than one
    wave but the last one less than half (the SMs would idle for most of it)."""
    if tiles <= num_sms or tiles % num_sms == 0:
        return 1
    return choose_split_k(tiles % num_sms, k, num_sms)


def choose_config(problem: GemmProblem, num_sms: int) -> KernelChoice:
    """The kernel and launch policy pyfp8gemm uses for `problem` on `num_sms` SMs."""
    if problem.out_dtype == "f32":
        return choose_1d1d(problem, num_sms)
    if problem.kind == "dense":
        return choose_dense(problem.m, problem.n, problem.k, num_sms)
    if problem.kind in ("m_grouped_contiguous", "m_grouped_masked"):
        choice = choose_m_grouped(problem, num_sms)
        return for_shape(choice, problem, num_sms) if specializes_shapes() else choice
    raise ValueError(f"{problem.kind!r} problems have FP32 output (out_dtype='f32')")


@functools.lru_cache(maxsize=1024)
def choose_dense(m: int, n: int, k: int, num_sms: int) -> KernelChoice:
    """The configuration pyfp8gemm launches for an (M, N, K) GEMM on `num_sms` SMs."""
    if m <= SWAP_AB_MAX_M:
        swapped = swap_ab_choice(m, n, k, num_sms)
        if swapped.split_k != SWAP_AB_LOSING_SPLIT:
            return swapped
    wants_multicast = m >= MULTICAST_MIN_M and num_sms % 2 == 0

    def cost(block_m, block_n, last_wave_split):
        return tile_cost(_ceil_div(m, block_m), _ceil_div(n, block_n), block_m, block_n,
                         num_sms, last_wave_split, wants_multicast)

    def best_tile(block_ms):
        options = [(bm, bn, 1) for bm in block_ms for bn in BLOCK_N_CANDIDATES[bm]
                   if not (bm == 128 and bn > 128 and m < WIDE_TILE_MIN_M)]
        # (BLOCK_M 256 can split too, but at 4096x2112x7168 its 2 waves + 8 split tiles ran
        # 973-978 TFLOPS against 1042-1046 for 4 waves of 128x128 + 16 split tiles.)
        options += [(bm, bn, split) for bm, bn, _ in options if bm <= 128
                    for split in [choose_last_wave_split(
                        _ceil_div(m, bm) * _ceil_div(n, bn), k, num_sms)] if split > 1]
        return min(options, key=lambda c: cost(*c))

    block_ms = (64,) if m <= 64 else (128, 256) if m >= BLOCK_M_256_MIN_M else (128,)
    block_m, block_n, last_wave_split = best_tile(block_ms)
    if block_m == 128 and m <= 128 and block_n <= SMALL_BLOCK_N:
        # One 128-row block and a thin N tile (m64n16/n32 wgmmas mostly re-read A from smem):
        # two 64-row blocks with a wider N tile fill the SMs as well and ran faster
        # (128x2112x7168: 64x32 252 TFLOPS vs 128x16 225; 128x4096x7168: 64x64 377 vs 128x32 369).
        block_m, block_n, last_wave_split = best_tile((64,))
    if last_wave_split > 1:
        return make_choice(block_m, block_n, "none", last_wave_split, split_last_wave=True)
    multicast = "none"
    if wants_multicast and block_m == 128:
        multicast = _multicast_for(_ceil_div(m, block_m), _ceil_div(n, block_n))
    elif wants_multicast and block_m == 256 and _ceil_div(n, block_n) % 2 == 0:
        multicast = "a"
    elif (block_m == 64 and _ceil_div(m, 64) % 2 == 0 and block_n >= SMALL_M_MULTICAST_B_MIN_N
          and k >= SMALL_M_MULTICAST_B_MIN_K and num_sms % 2 == 0):
        multicast = "b"
    split_k = 1
    if multicast == "none":
        split_k = choose_split_k(_ceil_div(m, block_m) * _ceil_div(n, block_n), k, num_sms)
    if m <= NARROW_MAX_M and block_m == 64 and multicast == "none" and split_k == 1:
        narrow = narrow_block_m(m)
        return make_choice(narrow, max(block_n, 32) if narrow == 16 else block_n)
    return make_choice(block_m, block_n, multicast, split_k)


def tile_cost(m_blocks: int, n_blocks: int, block_m: int, block_n: int, num_sms: int,
              last_wave_split: int = 1, wants_multicast: bool = False, scaling: str = "1d2d",
              no_overlap_penalty: float | None = None):
    """The cost model (module docstring) of m_blocks x n_blocks tiles; smaller is faster, ties
    go to the larger tile. `no_overlap_penalty`: the factor of a tile too wide to overlap its
    promotion (default NO_OVERLAP_PENALTY[block_m])."""
    tiles = m_blocks * n_blocks
    waves = _ceil_div(tiles, num_sms)
    if last_wave_split > 1:
        waves = tiles // num_sms + 1 / last_wave_split + TAIL_REDUCE_WAVES
    time = waves * block_m * (block_n + TILE_OVERHEAD_COLUMNS[block_m])
    if block_m == 256:
        time *= BLOCK_M_256_SPEEDUP
    elif block_n > (128 if scaling == "1d2d" else WGRAD_OVERLAP_MAX_N):
        time *= no_overlap_penalty or NO_OVERLAP_PENALTY[block_m]   # promotion not overlapped
    if (wants_multicast and block_m == 128 and (
            last_wave_split > 1 or _multicast_for(m_blocks, n_blocks) == "none")):
        time *= NO_MULTICAST_PENALTY
    if scaling == "1d2d" and _straddle_costs(block_m, block_n):
        time *= STRADDLE_PENALTY                # tiles cross B-scale blocks
    return time, -block_m, -block_n


# Weight-gradient GEMMs (1D1D scaling, FP32 out; dense or k-grouped) use the same cost model:
# BLOCK_M 64 for M <= 64 else 128, BLOCK_N up to 128 (a promotion with a scale per column keeps
# BLOCK_N / 4 more floats per thread, so only BLOCK_N <= 64 overlaps it with the next wgmmas),
# no split-K. A k-grouped problem's tiles are those of every group (G x M x N blocks).
# 128-row tiles leave through the "tma" epilogue (swizzled shared memory, then a TMA store or
# reduce-add into D; BLOCK_N a multiple of 32): x1.02-1.18 over the direct stores on an H100
# (JOURNAL session 12), except where C is a tensor other than D, which the reduce-add would
# first copy into D. 2-CTA clusters measured no faster (x0.98-1.00): none.
# The TMA epilogue also takes DeepGEMM's 136 / 152 (8 modulo 16: one row-major box), whose
# waves this model prices right where their last N tile is nearly full (H100, ab_time.py
# --1d1d, C = D, against 128): 7168x16384x4096 152 x1.082 (136 x1.038), 2112x7168x4096 136
# x1.068 (152 x1.005), 4096x7168x4096 both x1.04, 7168x2048x4096 152 x1.02 (3.9% of its columns
# padding); but not at 24576x1536x4096 (152: 8.9% padding, x0.93 where the model ties; 136:
# 6.3%, x0.93): they need WGRAD_ROW_MAJOR_MAX_PAD or less (JOURNAL session 13).
WGRAD_OVERLAP_MAX_N = 64
WGRAD_BLOCK_N = tuple(range(16, 129, 16))
WGRAD_TMA_BLOCK_N = tuple(range(32, 129, 32)) + (136, 152)
WGRAD_ROW_MAJOR_MAX_PAD = 0.04


def wgrad_epilogue(block_m: int, separate_c: bool = False) -> str:
    """The 1D1D kernel's epilogue for 128- or 64-row tiles (the TMA one measured for 128)."""
    return "tma" if block_m == 128 and not separate_c else "direct"


@functools.lru_cache(maxsize=1024)
def choose_1d1d(problem: GemmProblem, num_sms: int) -> KernelChoice:
    block_m = 64 if problem.m <= 64 else 128
    epilogue = wgrad_epilogue(block_m, problem.separate_c)
    groups = problem.groups if problem.kind == "k_grouped" else 1

    def cost(block_n):
        return tile_cost(groups * _ceil_div(problem.m, block_m), _ceil_div(problem.n, block_n),
                         block_m, block_n, num_sms, scaling="1d1d")

    def fits(block_n):          # a row-major width's last N tile nearly full
        padded = _ceil_div(problem.n, block_n) * block_n
        return block_n % 16 == 0 or padded <= problem.n * (1 + WGRAD_ROW_MAJOR_MAX_PAD)

    block_n = min((bn for bn in (WGRAD_TMA_BLOCK_N if epilogue == "tma" else WGRAD_BLOCK_N)
                   if fits(bn)), key=cost)
    return KernelChoice(make_config(block_m, block_n, schedule=problem.kind, scaling="1d1d",
                                    accumulate=problem.accumulate, epilogue=epilogue))


# MoE grouped GEMMs (m-grouped contiguous and masked) use the dense kernel with a grouped
# schedule, so the dense cost model applies to their tiles, counted per group: a group of r
# rows takes ceil(r / BLOCK_M) M blocks. BLOCK_M as for dense GEMMs of the expected rows per
# group, at most the contiguous layout's segment alignment (a block must not span two groups;
# 256 never), no split-K (MoE K is long: 2048-7168). Clusters share B between two M neighbours
# of one group (DeepGEMM's pick; contiguous pairs a block with padding where the neighbour is
# another group's). H100, ab_grouped.py, against DeepGEMM in the same rounds (JOURNAL sessions
# 13-14): masked G=32 x ~192 rows, 6144x7168: 128x128 0.84x, 128x192 0.88x, 128x128:b 0.90x,
# 128x192:b 0.97x; G=6 x ~1024 rows: 128x192 0.83x, 128x192:b 0.92x. At K = 2048 the masked
# cluster loses at 32 x ~192 rows (x0.975, with 16 empty x0.966; session 15) but, since an odd
# block count's last block no longer idles a CTA, wins at 6 x ~1024 (x1.058, with 3 empty x1.038;
# before that fix x0.99 / x0.91): K >= MASKED_SHARED_B_MIN_K, or at least
# MASKED_SHARED_B_SHORT_K_MIN_ROWS rows a group (placed between the two measured sizes).
# Contiguous, 128x192:b against 128x192:a (sharing A)
# x1.01 / x1.02 / x1.08 / x1.00 at 4x8192 6144x7168, 4x8192 4096x4096, 8x4096 7168x3072 and
# 8x4096 4096x2048, and x1.10 / x1.04 over the 128x128:a the model picked at N = 4096 / 2048.
# Past 128 rows a group, a wide tile's unoverlapped promotion costs less than the dense model's
# x1.10 (x1.02-1.04 fits those shapes; 128x192 alone ran x1.03-1.06 over 128x128 at 32 x ~192
# rows): GROUPED_WIDE_NO_OVERLAP_PENALTY.
GROUPED_BLOCK_N = tuple(n for n in range(16, 193, 16) if n != 176)
GROUPED_WIDE_MIN_ROWS = 129
MASKED_SHARED_B_MIN_K = 3072
MASKED_SHARED_B_SHORT_K_MIN_ROWS = 512
GROUPED_WIDE_NO_OVERLAP_PENALTY = 1.04


#: `0` turns shape-compiled grouped kernels off: one kernel a tile shape serves every N and
#: group count (fewer compiles, 0.2-2.6% slower; bench/JOURNAL.md, session 32). Read when a
#: problem is first planned (plans are cached).
SPECIALIZE_SHAPES_ENV = "PYFP8GEMM_SPECIALIZE_SHAPES"


def specializes_shapes() -> bool:
    """Whether choose_config compiles m-grouped kernels for their shape (for_shape)."""
    return os.environ.get(SPECIALIZE_SHAPES_ENV, "1").strip().lower() not in ("0", "false",
                                                                               "no", "off")


def for_shape(choice: KernelChoice, problem: GemmProblem, num_sms: int) -> KernelChoice:
    """An m-grouped kernel compiled for the problem's N and group count (and, masked, for its
    grid: the snake divides by it), as DeepGEMM compiles its kernels per shape: MoE layers
    have a few fixed (N, groups), so a few more kernels, each 0.2-2.6% faster (session 32).
    K stays a run-time value: compiled in, it made the K = 7168 kernel 4% slower."""
    cfg = choice.config
    if cfg.swap_ab:
        return choice
    grid = masked_grid_size(cfg, num_sms) if problem.kind == "m_grouped_masked" else 0
    cfg = dataclasses.replace(cfg, compiled_shape=(problem.n, problem.groups, grid))
    return dataclasses.replace(choice, config=cfg)


@functools.lru_cache(maxsize=1024)
def choose_m_grouped(problem: GemmProblem, num_sms: int) -> KernelChoice:
    rows, groups, n = problem.rows_per_group, problem.groups, problem.n
    contiguous = problem.kind == "m_grouped_contiguous"
    # As for dense GEMMs (the model's per-row overhead would always pick 64 rows otherwise):
    # 64-row blocks for up to 64 rows a group, else 128 (the alignment permitting).
    block_ms = (64,) if rows <= 64 or (contiguous and problem.m_alignment < 128) else (128,)
    wants_multicast = contiguous and rows * groups >= MULTICAST_MIN_M and num_sms % 2 == 0
    wide = rows >= GROUPED_WIDE_MIN_ROWS

    def cost(block_m, block_n):
        return tile_cost(groups * _ceil_div(rows, block_m), _ceil_div(n, block_n), block_m,
                         block_n, num_sms, 1,   # (any M blocks pair up: no penalty)
                         no_overlap_penalty=GROUPED_WIDE_NO_OVERLAP_PENALTY if wide else None)

    block_m, block_n = min(((bm, bn) for bm in block_ms for bn in GROUPED_BLOCK_N
                            if not (bm == 128 and bn > 128 and not wide)),
                           key=lambda c: cost(*c))
    multicast = "none"
    if block_m == 128 and num_sms % 2 == 0 and (
            wants_multicast if contiguous else wide and (
                problem.k >= MASKED_SHARED_B_MIN_K or rows >= MASKED_SHARED_B_SHORT_K_MIN_ROWS)):
        multicast = "b"
    return make_choice(block_m, block_n, multicast, schedule=problem.kind)


def grouped_configs() -> list[GemmConfig]:
    """Every grouped kernel choose_m_grouped can pick."""
    out = []
    for schedule in ("m_grouped_contiguous", "m_grouped_masked"):
        for block_m in (64, 128):
            for block_n in GROUPED_BLOCK_N:
                out.append(make_config(block_m, block_n, schedule=schedule))
                if block_m == 128:
                    out.append(make_config(block_m, block_n, "b", schedule=schedule))
    return out


@functools.cache
def _straddle_costs(block_m: int, block_n: int) -> bool:
    """Whether straddling B-scale blocks costs: where the kernel picks each group's scale at
    run time (GemmConfig.static_scale_splits; the stage count does not matter here), and at
    BLOCK_M 64, where per-split K loops measured no faster (64x96 x1.000, 64x192 x0.968
    against 64x64 at 64x24576x1536)."""
    cfg = GemmConfig(block_m, block_n, 1)
    return cfg.straddles and (block_m == 64 or not cfg.static_scale_splits)


def _multicast_for(m_blocks: int, n_blocks: int) -> str:
    """A 2-CTA cluster shares A ("a": N-neighbours, measured faster) or B ("b": M-neighbours);
    each needs an even number of tiles along the pairing direction."""
    if n_blocks % 2 == 0:
        return "a"
    if m_blocks % 2 == 0:
        return "b"
    return "none"


def all_configs() -> list[GemmConfig]:
    """Every kernel choose_config can launch (what `inspect` compiles and tests run)."""
    dense = [make_config(block_m, block_n, multicast, split_k)
             for block_m, candidates in BLOCK_N_CANDIDATES.items()
             for block_n in candidates
             for multicast in ("none", "a", "b")
             for split_k in (False, True)
             if not (block_m == 64 and multicast == "a")
             and not (block_m == 64 and multicast == "b"
                      and block_n < SMALL_M_MULTICAST_B_MIN_N)
             and not (split_k and multicast != "none")]
    narrow = [make_config(block_m, block_n) for block_m in (16, 32)
              for block_n in BLOCK_N_CANDIDATES[64] if block_n >= 32 or block_m == 32]
    wgrad = [make_config(block_m, block_n, schedule=schedule, scaling="1d1d",
                         accumulate=accumulate, epilogue=epilogue)
             for schedule in ("dense", "k_grouped") for block_m in (64, 128)
             for accumulate in (False, True)
             for epilogue in {wgrad_epilogue(block_m), wgrad_epilogue(block_m, accumulate)}
             for block_n in (WGRAD_TMA_BLOCK_N if epilogue == "tma" else WGRAD_BLOCK_N)]
    return dense + narrow + swap_ab_configs(picked_only=True) + grouped_configs() + wgrad
