"""The work schedule: which (group, tile, K range) a CTA computes next, on the GPU and the host.

The grid is persistent: one CTA per SM (or per SM pair, in 2-CTA clusters). The output is cut
into BLOCK_M x BLOCK_N tiles; a *unit* is what one cluster computes at once (one tile, or two
tiles side by side that share the multicast operand, or one K share of a split tile). Cluster c
takes units c, c + clusters, ... (masked: in every other round the mirror unit, `next`).

Units are visited in groups of `group_m` unit-rows (Triton's "grouped ordering"): inside a group
the M index moves fastest, so the CTAs running at the same time touch `group_m` rows of A and a
few columns of B, which stay in L2 instead of streaming all of B per row of A.

Schedules (GemmConfig.schedule):
* dense: M x N tiles, all of K. With split-K, the first `whole_tiles` units are whole tiles and
  every later tile is `split_k` consecutive units, each a contiguous share of its K blocks.
* m_grouped_contiguous: the rows of A are grouped; the group of an M block is read from the
  per-row layout tensor (`m_indices[m_block * BLOCK_M]`). Blocks of padding (-1, or an id that
  is not a group) get an empty K range: no loads, no MMA, zero rows stored. In a 2-CTA cluster
  sharing B (M blocks 2u, 2u + 1, DeepGEMM's pairing) the pair walks one K range: empty only if
  both blocks are padding; the pair shares a B tile only if both blocks are the same group, or
  one is padding (its CTA then loads and releases the slots, computes nothing, stores zeros);
  two groups: each CTA loads its own B tile.
* m_grouped_masked: A is (groups, M_max, K); group g has `masked_m[g]` rows (read on the GPU),
  so ceil(masked_m[g] / BLOCK_M) M blocks: empty groups and blocks past the count cost nothing.
  Group after group, each in grouped order (its M blocks of a weight tile together). In a
  2-CTA cluster sharing B, a group's M blocks in pairs, and an odd count's last block as units
  of two neighbouring weight tiles (no sharing there).
* k_grouped: every group is an M x N problem of its own K; the layout holds the cumulative K
  blocks (int32, groups + 1), so group g's tiles take K blocks [cum[g], cum[g + 1]) (global
  indices: the scales of all groups are concatenated along K). An empty group's tiles get an
  empty K range (their output is C, or zeros).

`make_schedule(..., device=True)` gives the kernel's inline device functions; `device=False`
gives the same source as plain Python (the host twin), which the launcher and the tests use:
one formula for the kernel, the grid and the tests.
"""

import operator
from types import SimpleNamespace
from typing import Callable, NamedTuple

BLOCK_K = 128


class Schedule(NamedTuple):
    begin: Callable   # begin(m, n, k, split_k, whole_tiles, layout, groups, where) -> work:
                      #   what this CTA walks (computed once, shared by all roles); `where` is
                      #   the host twin's (cluster rank, first unit, unit step), ignored on the
                      #   GPU, which reads them from blockIdx, gridDim and %cluster_ctarank
    count: Callable   # count(work) -> number of units
    start: Callable   # start(work) -> cursor: where tile() starts looking (masked: group 0)
    tile: Callable    # tile(unit, work, cursor) -> (group, m_block, n_block, tile_unit,
                      #   split, kb_begin, kb_end, b_share, cursor); tile_unit counts split
                      #   tiles for the workspace; b_share: in a cluster sharing B, the group
                      #   whose B tile the pair shares (rank 0 loads it for both), -1 where
                      #   each CTA loads its own (contiguous, two groups; masked, an odd
                      #   block count's last block; no such cluster);
                      #   pass the cursor back with the next, later unit
    rows: Callable    # rows(work, group) -> masked: the group's row count, clamped to
                      #   [0, M_max] (what the epilogue may write)
    next: Callable    # next(unit, work) -> the unit this CTA takes after `unit`


# The host twin's arithmetic: Python ints, `layout` a sequence, `where` given by the caller.
_HOST_OPS = SimpleNamespace(jit=lambda f: f, div=operator.floordiv, i32=int,
                            load=lambda layout, index: int(layout[index]),
                            position=lambda where, cluster: where)


def _device_ops():
    from numba import cuda
    from numba.cuda import types

    from .ptx import cluster_ctarank, ld_global_nc_s32, udiv32

    jit = cuda.jit(device=True, inline="always")

    @jit
    def load(layout, index):
        """int32 element `index` of a layout tensor in global memory."""
        return ld_global_nc_s32(layout + 4 * index)

    @jit
    def position(where, cluster):
        """(rank in the cluster, first unit, unit step) of this CTA."""
        rank = cluster_ctarank() if cluster > 1 else 0
        return (rank, types.int32(cuda.blockIdx.x // cluster),
                types.int32(cuda.gridDim.x // cluster))

    # (32-bit divisions: numba's 64-bit ones are slow subroutine calls)
    return SimpleNamespace(jit=jit, div=udiv32, i32=types.int32, load=load, position=position)


def make_schedule(schedule, block_m, block_n, cluster_m, cluster_n, group_m, split_k,
                  device=True, grid_ctas=0):
    """The schedule's functions for one kernel configuration (all arguments compile-time).

    cluster_m == 2: the cluster's two CTAs take vertically adjacent tiles (they share B).
    cluster_n == 2: horizontally adjacent tiles (they share A). `split_k`: whether the kernel
    has split-K (else the split arithmetic folds away). `grid_ctas`: the grid the kernel is
    compiled for (0: gridDim, read at run time).
    """
    assert cluster_m * cluster_n <= 2
    ops = _device_ops() if device else _HOST_OPS
    jit, div, i32, load, position = ops.jit, ops.div, ops.i32, ops.load, ops.position
    cluster = cluster_m * cluster_n
    BM, BN = block_m, block_n
    GROUPED_CONTIGUOUS = schedule == "m_grouped_contiguous"
    MASKED = schedule == "m_grouped_masked"
    K_GROUPED = schedule == "k_grouped"
    split_k_built = split_k

    @jit
    def tile_of(unit, rank, num_m_units, num_n_units):
        """(m_block, n_block) of a tile unit, in grouped order. (The i32 casts here and in
        the per-tile functions below keep numba's int64 widening out of every tile's
        arithmetic: 64-bit compares and clamps were ~100-200 SASS instructions of the kernel.)"""
        units_per_group = i32(group_m * num_n_units)
        group = i32(div(unit, units_per_group))
        first_m = i32(group * group_m)
        rows_in_group = min(i32(num_m_units - first_m), i32(group_m))
        in_group = i32(unit - group * units_per_group)
        n_unit = i32(div(in_group, rows_in_group))
        m_unit = i32(first_m + (in_group - n_unit * rows_in_group))
        if cluster_m == 2:
            return m_unit * 2 + rank, n_unit
        if cluster_n == 2:
            return m_unit, n_unit * 2 + rank
        return m_unit, n_unit

    @jit
    def masked_rows(layout, g, m_max):
        """Rows of group g of a masked layout (read on the GPU), clamped to [0, M_max]: a
        negative or too large count never reaches an address."""
        return i32(min(max(load(layout, g), i32(0)), m_max))   # (a bare 0 is int64 to
        # numba: the clamp, in `begin`'s count for every group, went 64-bit)

    @jit
    def masked_blocks(layout, g, m_max):
        """M blocks of group g of a masked layout."""
        return div(masked_rows(layout, g, m_max) + (BM - 1), BM)

    @jit
    def masked_units(blocks, num_n_units):
        """Units of a masked group of `blocks` M blocks: one per tile; in a 2-CTA cluster
        sharing B, one per pair of M blocks and weight tile, and where the count is odd, the
        last block's tiles two by two (the pair's CTAs take neighbouring weight tiles, each
        loading its own, instead of one of them idling beside a block past the rows)."""
        if cluster_m == 2:
            odd_block_units = i32((num_n_units + 1) >> 1)
            return i32(i32(blocks >> 1) * num_n_units + (blocks & 1) * odd_block_units)
        return i32(blocks * num_n_units)

    @jit
    def begin(m, n, k, split_k, whole_tiles, layout, groups, where):
        """What this CTA walks: (K blocks per tile, (split_k, whole_tiles), cluster rank, first
        unit, unit stride, M and N units, (layout, groups, M units per group)), computed once
        at the kernel's entry for all roles. `m` is M_max for a masked layout. (The int32 casts
        narrow numba's int64: the 64-bit division by BLOCK_N and clamps to M_max were ~80
        instructions of every thread's start, 0.3-1% of a short masked launch.)"""
        num_kb = i32((k + BLOCK_K - 1) // BLOCK_K)
        if not split_k_built:
            split_k = 1         # constants, so the unit arithmetic folds away
            whole_tiles = 0
        num_m_units = i32((m + BM * cluster_m - 1) // (BM * cluster_m))
        num_n_units = i32(div(i32(n) + (BN * cluster_n - 1), BN * cluster_n))
        m_max = i32(m)
        units = 0
        if MASKED:
            for g in range(groups):
                units += masked_units(masked_blocks(layout, g, m_max), num_n_units)
        rank, first, step = position(where, cluster)
        if grid_ctas:           # the grid compiled in (masked: the snake divides by the step)
            step = i32(grid_ctas // cluster)
        return (num_kb, (split_k, whole_tiles), rank, first, step, num_m_units, num_n_units,
                (layout, groups, i32(units), m_max))

    @jit
    def count(work):
        num_kb, splitting, rank, first, step, num_m_units, num_n_units, grouping = work
        if MASKED:
            return grouping[2]
        tiles = num_m_units * num_n_units
        if K_GROUPED:
            return grouping[1] * tiles
        if not split_k_built:
            return tiles
        split_k, whole_tiles = splitting
        return whole_tiles + (tiles - whole_tiles) * split_k

    @jit
    def unit_work(unit, num_kb, splitting):
        """(tile unit, split, first K block, end K block) of a unit: the first whole_tiles units
        are whole tiles (all of K; the host sets whole_tiles to the tiles of the full waves when
        only the last, partial wave is split), then each later tile is split_k consecutive
        units (run by neighbouring CTAs at the same time), each a contiguous share of its K
        blocks (the host makes every share non-empty)."""
        if not split_k_built:
            return unit, 0, i32(0), num_kb
        split_k, whole_tiles = splitting
        if unit < whole_tiles:
            return unit, 0, i32(0), num_kb
        tail_tile = div(unit - whole_tiles, split_k)
        split = unit - whole_tiles - tail_tile * split_k
        per_split = div(num_kb + split_k - 1, split_k)
        kb_begin = split * per_split
        return (whole_tiles + tail_tile, split, i32(kb_begin),
                i32(min(num_kb, kb_begin + per_split)))

    @jit
    def start(work):
        """Masked: (group, units before it, its M blocks) of group 0; a cursor that only moves
        forward, as a CTA's units increase (other schedules: unused zeros)."""
        if MASKED:
            grouping = work[7]
            return (i32(0), i32(0), i32(masked_blocks(grouping[0], 0, grouping[3])))
        return (i32(0), i32(0), i32(0))

    @jit
    def masked_tile(unit, rank, num_kb, num_n_units, layout, groups, m_max, cursor):
        """Group g's tiles come after those of groups < g; inside a group, in grouped order
        (M fastest: a group's few M blocks of one weight tile are consecutive units, run at
        once by neighbouring CTAs, so each of its B tiles streams from DRAM once; with N
        fastest, a wave boundary inside a group read its B tiles again for the later M blocks,
        the weights being far larger than L2). The group is found from the cursor forward (a
        dependent load of masked_m per group passed: from group 0 on every tile, that walk
        held up the math warps of every tile of a late group)."""
        group, before, blocks = cursor
        while i32(unit - before) >= masked_units(blocks, num_n_units) and group + 1 < groups:
            before = i32(before + masked_units(blocks, num_n_units))
            group = i32(group + 1)
            blocks = i32(masked_blocks(layout, group, m_max))
        in_group = i32(unit - before)
        b_share = own_b_share(group)
        if cluster_m == 2:
            pairs = i32(blocks >> 1)
            paired_units = i32(pairs * num_n_units)
            if in_group < paired_units:
                m_block, n_block = tile_of(in_group, rank, pairs, num_n_units)
            else:         # an odd count's last block: two of its tiles, each CTA its own B
                m_block = i32(2 * pairs)
                # (the second of an odd tile count's last two repeats the first: the same
                # values stored twice, where a tile past N would read past B's scales)
                n_block = min(i32(2 * (in_group - paired_units) + rank), i32(num_n_units - 1))
                b_share = -1
        else:
            m_block, n_block = tile_of(in_group, rank, blocks, num_n_units)
        return (i32(group), i32(m_block), i32(n_block), unit, 0, i32(0), num_kb,
                i32(b_share), (i32(group), i32(before), i32(blocks)))

    @jit
    def own_b_share(group):
        """b_share where a pair's two blocks are always one group's (dense, masked, k-grouped):
        that group in a cluster sharing B, else -1."""
        return i32(group if cluster_m == 2 else -1)

    @jit
    def contiguous_group(layout, groups, m, m_block):
        """The group of a contiguous layout's M block; -1 for padding or (in a pair: the
        partner of an odd count's last block) past M."""
        group = -1
        if cluster_m == 1 or m_block * BM < m:
            group = load(layout, m_block * BM)
            if group < 0 or group >= groups:
                group = -1
        return i32(group)

    @jit
    def tile(unit, work, cursor):
        num_kb, splitting, rank, first, step, num_m_units, num_n_units, grouping = work
        if MASKED:
            return masked_tile(unit, rank, num_kb, num_n_units, grouping[0], grouping[1],
                               grouping[3], cursor)
        if K_GROUPED:
            tiles = num_m_units * num_n_units
            group = div(unit, tiles)
            m_block, n_block = tile_of(unit - group * tiles, rank, num_m_units, num_n_units)
            return (i32(group), m_block, n_block, unit, 0, i32(load(grouping[0], group)),
                    i32(load(grouping[0], group + 1)), own_b_share(group), cursor)
        tile_unit, split, kb_begin, kb_end = unit_work(unit, num_kb, splitting)
        m_block, n_block = tile_of(tile_unit, rank, num_m_units, num_n_units)
        group = 0
        b_share = own_b_share(group)
        if GROUPED_CONTIGUOUS:
            group = contiguous_group(grouping[0], grouping[1], grouping[3], m_block)
            b_share = -1
            if cluster_m == 2:    # the pair: one K range; B shared where one group's
                peer = contiguous_group(grouping[0], grouping[1], grouping[3], m_block ^ 1)
                if group < 0 or peer == group:
                    b_share = peer
                elif peer < 0:
                    b_share = group
                if group < 0 and peer < 0:
                    kb_end = kb_begin
            elif group < 0:       # padding: nothing to compute
                kb_end = kb_begin
        return (i32(group), m_block, n_block, tile_unit, split, kb_begin, kb_end, i32(b_share),
                cursor)

    @jit
    def rows(work, group):
        grouping = work[7]
        return masked_rows(grouping[0], group, grouping[3])

    @jit
    def next_unit(unit, work):
        """A round is `step` consecutive units, one per cluster; a cluster takes one unit of
        each round. Masked: in odd rounds the clusters take the round's units in reverse
        ("snake"). With plain striding and an even step, a group of 2 M blocks (or any even
        count) gave a cluster the same M block in every round: at ~192 rows per group half the
        CTAs ran every whole tile and the others every partial one, and the kernel took as long
        as the first half. Reversed, the same units run in each round (the same B tiles in L2
        together), dealt out so each CTA alternates."""
        first, step = work[3], work[4]
        if not MASKED:
            return i32(unit + step)
        round_next = i32(div(unit, step) + 1)
        position = first
        if round_next & 1:
            position = i32(step - 1 - first)
        return i32(round_next * step + position)

    return Schedule(begin, count, start, tile, rows, next_unit)


# --- the host's view of the same schedule -------------------------------------------------------

def host_schedule(cfg):
    """The host twin of `cfg`'s schedule."""
    cluster_m, cluster_n = cfg.cluster_shape
    return make_schedule(cfg.schedule, *cfg.d_tile, cluster_m, cluster_n, cfg.group_m,
                         cfg.split_k, device=False)


def tiles(cfg, m, n):
    """Output tiles of an (M, N) problem (one group's M for grouped schedules)."""
    rows, columns = cfg.d_tile
    return -(-m // rows) * -(-n // columns)


def whole_tiles(cfg, m, n, split_k, split_last_wave, num_sms):
    """How many tiles (the first, in scheduling order) run unsplit: all without split-K, none
    with plain split-K, the full waves' with `split_last_wave`."""
    total = tiles(cfg, m, n)
    if split_k == 1:
        return total
    if split_last_wave:
        return total - total % num_sms
    return 0


def unit_count(cfg, m, n, k, split_k=1, whole=None, layout=(), groups=1):
    """Work units of a launch (what the grid is sized by); `layout` is needed for masked."""
    schedule = host_schedule(cfg)
    whole = tiles(cfg, m, n) if whole is None else whole
    work = schedule.begin(m, n, k, split_k, whole, layout, groups, (0, 0, 1))
    return schedule.count(work)


def grid_size(cfg, units, num_sms):
    """Persistent grid: one CTA per SM, but no more clusters than there are work units."""
    return min(units, num_sms // cfg.cluster_size) * cfg.cluster_size


def masked_grid_size(cfg, num_sms):
    """A masked launch's grid: every SM's cluster (its units are counted on the GPU only, from
    masked_m); what a kernel compiled for its grid (GemmConfig.compiled_shape) is built for."""
    return grid_size(cfg, num_sms, num_sms)


def walk(cfg, m, n, k, grid, split_k=1, whole=None, layout=(), groups=1):
    """Every CTA's work in the order it runs it: {cta: [(group, m_block, n_block, split,
    kb_begin, kb_end, b_share), ...]} (the host twin, step by step as the kernel's loops go)."""
    schedule = host_schedule(cfg)
    whole = tiles(cfg, m, n) if whole is None else whole
    cluster = cfg.cluster_size
    out = {}
    for cta in range(grid):
        work = schedule.begin(m, n, k, split_k, whole, layout, groups,
                              (cta % cluster, cta // cluster, grid // cluster))
        units = schedule.count(work)
        unit, visited, cursor = cta // cluster, [], schedule.start(work)
        while unit < units:
            group, m_block, n_block, _, split, kb_begin, kb_end, b_share, cursor = (
                schedule.tile(unit, work, cursor))
            visited.append((group, m_block, n_block, split, kb_begin, kb_end, b_share))
            unit = schedule.next(unit, work)
        out[cta] = visited
    return out
