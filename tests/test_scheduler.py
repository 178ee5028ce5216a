"""The work schedule's host twin (device/scheduler.py, the same source the kernels compile)
against plain-Python models of what every schedule must visit: each (group, tile, K range)
exactly once, padding blocks and empty groups never with K blocks, clusters paired."""

import random

import pytest

from pyfp8gemm.device import scheduler
from pyfp8gemm.device.config import BLOCK_K, GemmConfig


def ceil_div(a, b):
    return -(-a // b)


def visits(cfg, m, n, k, grid, **kw):
    """Every CTA's visits, flattened: [(cta, group, m_block, n_block, split, kb_begin, kb_end,
    b_share)]."""
    walked = scheduler.walk(cfg, m, n, k, grid, **kw)
    return [(cta,) + v for cta, vs in walked.items() for v in vs]


def covered_k(visited):
    """{(group, m_block, n_block): sorted K ranges}."""
    out = {}
    for _, group, m_block, n_block, _, kb_begin, kb_end, _ in visited:
        out.setdefault((group, m_block, n_block), []).append((kb_begin, kb_end))
    return {tile: sorted(ranges) for tile, ranges in out.items()}


def assert_partition(ranges, num_kb):
    """The K ranges of one tile are non-empty, disjoint and cover [0, num_kb)."""
    at = 0
    for begin, end in ranges:
        assert begin == at and end > begin, ranges
        at = end
    assert at == num_kb, ranges


@pytest.mark.parametrize("block_m, block_n, multicast", [
    (64, 48, "none"), (128, 128, "a"), (128, 96, "b"), (256, 128, "a"), (64, 64, "b")])
@pytest.mark.parametrize("m, n, k", [(1000, 2112, 7168), (300, 576, 1040), (64, 4096, 512)])
@pytest.mark.parametrize("grid", [132, 10])
def test_dense_visits_every_tile_once(block_m, block_n, multicast, m, n, k, grid):
    cfg = GemmConfig(block_m, block_n, 3, multicast)
    cluster_m, cluster_n = cfg.cluster_shape
    if ceil_div(m, block_m) % cluster_m or ceil_div(n, block_n) % cluster_n:
        pytest.skip("the launcher refuses unpaired multicast tiles")
    grid -= grid % cfg.cluster_size
    visited = visits(cfg, m, n, k, grid)
    tiles = covered_k(visited)
    expected = {(0, mb, nb) for mb in range(ceil_div(m, block_m))
                for nb in range(ceil_div(n, block_n))}
    assert set(tiles) == expected
    assert all(ranges == [(0, ceil_div(k, BLOCK_K))] for ranges in tiles.values())
    # A cluster's two CTAs take neighbouring tiles at the same time (they share an operand).
    if cfg.cluster_size == 2:
        walked = scheduler.walk(cfg, m, n, k, grid)
        for cta in range(0, grid, 2):
            for first, second in zip(walked[cta], walked[cta + 1]):
                if multicast == "a":
                    assert (second[1], second[2]) == (first[1], first[2] + 1)
                else:
                    assert (second[1], second[2]) == (first[1] + 1, first[2])


@pytest.mark.parametrize("split_k, last_wave", [(2, False), (3, False), (4, True), (5, True)])
@pytest.mark.parametrize("m, n, k", [(64, 576, 7168), (4096, 2112, 7168), (300, 1000, 2048)])
def test_split_k_partitions_each_tile_s_k_blocks(split_k, last_wave, m, n, k):
    from pyfp8gemm.host.heuristics import split_k_fits
    if not split_k_fits(split_k, k):
        pytest.skip("the launcher refuses a split without K blocks")
    cfg = GemmConfig(128, 128, 3, split_k=True)
    num_sms = 132
    whole = scheduler.whole_tiles(cfg, m, n, split_k, last_wave, num_sms)
    units = scheduler.unit_count(cfg, m, n, k, split_k, whole)
    grid = scheduler.grid_size(cfg, units, num_sms)
    visited = visits(cfg, m, n, k, grid, split_k=split_k, whole=whole)
    tiles = covered_k(visited)
    num_kb = ceil_div(k, BLOCK_K)
    assert len(tiles) == scheduler.tiles(cfg, m, n)
    split_tiles = 0
    for ranges in tiles.values():
        assert_partition(ranges, num_kb)
        split_tiles += len(ranges) > 1
    assert split_tiles == scheduler.tiles(cfg, m, n) - whole
    assert len(visited) == units


def contiguous_layout(groups, rows, block_m, rng):
    """m_indices of groups with the given row counts, each segment padded with -1 rows to a
    multiple of block_m, plus a few whole -1 blocks and an out-of-range id block."""
    ids = []
    for g, r in enumerate(rows):
        ids += [g] * r + [-1] * (-r % block_m)
    ids += [-1] * block_m + [groups + 3] * block_m
    return ids


@pytest.mark.parametrize("block_m, block_n, multicast", [(128, 128, "none"), (64, 96, "none"),
                                                         (128, 64, "a")])
def test_m_grouped_contiguous_skips_padding_blocks(block_m, block_n, multicast):
    rng = random.Random(0)
    groups = 5
    rows = [rng.randrange(0, 400) for _ in range(groups)]
    rows[2] = 0                                                  # an empty group
    ids = contiguous_layout(groups, rows, block_m, rng)
    m, n, k = len(ids), 2 * 3 * block_n - 8, 1000
    cfg = GemmConfig(block_m, block_n, 3, multicast, schedule="m_grouped_contiguous")
    visited = visits(cfg, m, n, k, 20, layout=ids, groups=groups)
    tiles = covered_k(visited)
    num_kb = ceil_div(k, BLOCK_K)
    expected = {}
    for mb in range(ceil_div(m, block_m)):
        g = ids[mb * block_m]
        g = g if 0 <= g < groups else -1
        for nb in range(ceil_div(n, block_n)):
            expected[(g, mb, nb)] = [(0, 0)] if g < 0 else [(0, num_kb)]
    assert tiles == {t: [(b, e) if e > b else (0, 0) for b, e in r] for t, r in tiles.items()}
    assert {t: [(0, 0) if e == b else (b, e) for b, e in r] for t, r in tiles.items()} == expected
    assert all(kb_begin == kb_end for _, g, *_, kb_begin, kb_end, _ in visited if g < 0)


@pytest.mark.parametrize("grid", [132, 10])
@pytest.mark.parametrize("seed", range(4))
def test_m_grouped_contiguous_pairs_share_b_only_within_a_group(grid, seed):
    """Contiguous in a 2-CTA cluster sharing B (M blocks 2u, 2u + 1 at once, DeepGEMM's
    pairing): both CTAs walk one K range (a ring slot's turn for each), empty only if both
    blocks are padding; they share a B tile (b_share, the group rank 0 loads for both) when
    both blocks are one group or one is padding, else each loads its own (b_share -1); a
    padding block keeps group -1 (nothing computed, zeros stored). Odd block counts: the last
    block's partner lies past M."""
    rng = random.Random(seed)
    groups, block_m, block_n = 6, 128, 192
    rows = [rng.choice([0, 1, 127, 128, 129, 300, 511]) for _ in range(groups)]
    ids = contiguous_layout(groups, rows, block_m, rng)
    m, n, k = len(ids), 5 * block_n - 16, 1040
    num_kb, m_blocks = ceil_div(k, BLOCK_K), ceil_div(m, block_m)
    cfg = GemmConfig(block_m, block_n, 3, "b", schedule="m_grouped_contiguous")
    walked = scheduler.walk(cfg, m, n, k, grid, layout=ids, groups=groups)

    def group_of(mb):
        g = ids[mb * block_m] if mb < m_blocks else -1
        return g if 0 <= g < groups else -1

    seen = set()
    for cta in range(0, grid, 2):
        assert len(walked[cta]) == len(walked[cta + 1])
        for first, second in zip(walked[cta], walked[cta + 1]):
            (g0, m0, n0, _, b0, e0, s0), (g1, m1, n1, _, b1, e1, s1) = first, second
            assert (m0 % 2, m1, n1) == (0, m0 + 1, n0)
            assert (g0, g1) == (group_of(m0), group_of(m1))
            assert (b0, e0) == (b1, e1) == ((0, 0) if g0 < 0 and g1 < 0 else (0, num_kb))
            shared = g0 if g1 in (g0, -1) else g1 if g0 < 0 else -1
            assert s0 == s1 == shared
            seen |= {(m0, n0), (m1, n1)}
    assert seen == {(mb, nb) for mb in range(2 * ceil_div(m_blocks, 2))
                    for nb in range(ceil_div(n, block_n))}


@pytest.mark.parametrize("block_m, block_n, multicast, n", [
    (64, 128, "none", 4096 + 64), (128, 64, "none", 4096 + 64), (128, 64, "b", 4096 + 64),
    (128, 64, "b", 4096 + 128)])
@pytest.mark.parametrize("grid", [132, 8])
def test_m_grouped_masked_visits_only_counted_rows(block_m, block_n, multicast, n, grid):
    """Every M block of every group's rows, nothing of an empty group, nothing past a group's
    rows. In a cluster sharing B (M blocks in pairs), an odd block count's last block runs as
    units of two neighbouring weight tiles, each CTA its own B (b_share -1; DeepGEMM's fix
    for the idle partner), the last of an odd tile count's twice (the clamp); the pair's
    CTAs take one group, one K range."""
    rng = random.Random(1)
    m_max, k = 300, 2048
    masked_m = [rng.randrange(0, m_max + 1) for _ in range(9)]
    masked_m[0] = masked_m[4] = 0                                 # empty groups
    masked_m[5] = m_max
    masked_m[6] = 129                                             # 2 blocks
    masked_m[7] = 100                                             # 1 block
    cfg = GemmConfig(block_m, block_n, 3, multicast, schedule="m_grouped_masked")
    visited = visits(cfg, m_max, n, k, grid, layout=masked_m, groups=len(masked_m))
    tiles = covered_k(visited)
    n_tiles = ceil_div(n, block_n)
    blocks = [ceil_div(rows, block_m) for rows in masked_m]
    expected = {(g, mb, nb) for g, count in enumerate(blocks)
                for mb in range(count) for nb in range(n_tiles)}
    assert set(tiles) == expected                 # nothing past the rows, nothing empty
    repeated = (sum(count % 2 for count in blocks) if multicast == "b" and n_tiles % 2 else 0)
    assert len(visited) == len(expected) + repeated
    assert all(r == [(0, ceil_div(k, BLOCK_K))] * len(r) for r in tiles.values())
    if multicast == "b":
        assert any(count % 2 for count in blocks) and any(count and count % 2 == 0
                                                          for count in blocks)
        walked = scheduler.walk(cfg, m_max, n, k, grid, layout=masked_m, groups=len(masked_m))
        for cta in range(0, grid, 2):
            assert len(walked[cta]) == len(walked[cta + 1])
            for (g0, m0, n0, *r0, s0), (g1, m1, n1, *r1, s1) in zip(walked[cta],
                                                                    walked[cta + 1]):
                assert g0 == g1 and r0 == r1
                if s0 >= 0:                               # a pair of M blocks shares B
                    assert (n0, m0 % 2, m1, s0, s1) == (n1, 0, m0 + 1, g0, g0)
                else:                                     # an odd count's last block
                    assert m0 == m1 == blocks[g0] - 1 and blocks[g0] % 2 == 1
                    assert s1 == -1 and n0 % 2 == 0 and n1 == min(n0 + 1, n_tiles - 1)


def test_loaders_and_math_walk_the_same_order():
    """The producer recomputes the unit bound per tile, the math warps once: the same sequence.
    The walk is each CTA's units in increasing order, so both roles consume ring slots in one
    order."""
    cfg = GemmConfig(128, 128, 3, "a")
    schedule = scheduler.host_schedule(cfg)
    m, n, k, grid = 1000, 2048, 4096, 12
    for cta in range(grid):
        work = schedule.begin(m, n, k, 1, 0, (), 1, (cta % 2, cta // 2, grid // 2))
        units = schedule.count(work)
        math_order = [schedule.tile(u, work, schedule.start(work))[:8]
                      for u in range(cta // 2, units, grid // 2)]
        loader_order, unit, cursor = [], cta // 2, schedule.start(work)
        while unit < schedule.count(work):
            *tile, cursor = schedule.tile(unit, work, cursor)
            loader_order.append(tuple(tile))
            unit = schedule.next(unit, work)
        assert loader_order == math_order and math_order


def test_m_grouped_masked_runs_a_weight_tiles_m_blocks_together():
    """Inside a group, consecutive units are the group's M blocks of one N tile (grouped
    order): the CTAs of a wave that read a B tile read it together, once from DRAM."""
    masked_m = [300, 0, 129, 1000]
    cfg = GemmConfig(128, 128, 3, schedule="m_grouped_masked")
    schedule = scheduler.host_schedule(cfg)
    work = schedule.begin(1024, 512, 256, 1, 0, masked_m, len(masked_m), (0, 0, 1))
    order = [schedule.tile(u, work, schedule.start(work))[:3]
             for u in range(schedule.count(work))]
    assert order[:6] == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 0, 1), (0, 1, 1), (0, 2, 1)]
    assert order[12:16] == [(2, 0, 0), (2, 1, 0), (2, 0, 1), (2, 1, 1)]
    assert order[20:28] == [(3, mb, 0) for mb in range(8)]


@pytest.mark.parametrize("grid", [132, 131, 128, 2])
def test_m_grouped_masked_deals_whole_and_partial_blocks_to_every_cta(grid):
    """Masked, 2 M blocks per group (the second partial), an even grid: plain striding gave
    each CTA the same M block in every round (half the CTAs all the whole tiles). In odd rounds
    the CTAs take the round's units in reverse: every CTA alternates, each round still runs
    the same units (a B tile's M blocks together), and every tile is visited once."""
    masked_m = [192] * 32
    cfg = GemmConfig(128, 128, 3, schedule="m_grouped_masked")
    n = 6144
    walked = scheduler.walk(cfg, 256, n, 7168, grid, layout=masked_m, groups=len(masked_m))
    visits = sorted((g, mb, nb) for tiles in walked.values() for g, mb, nb, *_ in tiles)
    assert visits == sorted((g, mb, nb) for g in range(32) for mb in range(2)
                            for nb in range(n // 128))
    whole = [sum(1 for _, mb, *_ in tiles if mb == 0) for tiles in walked.values()]
    partial = [len(tiles) - w for tiles, w in zip(walked.values(), whole)]
    if grid > 2:
        assert max(whole) - min(whole) <= 1 and max(partial) - min(partial) <= 1
    schedule = scheduler.host_schedule(cfg)
    for cta in range(grid):             # the running cursor finds what a fresh search finds
        work = schedule.begin(256, n, 7168, 1, 0, masked_m, 32, (0, cta, grid))
        fresh, unit = [], cta
        while unit < schedule.count(work):
            fresh.append(schedule.tile(unit, work, schedule.start(work))[:3])
            unit = schedule.next(unit, work)
        assert fresh == [tile[:3] for tile in walked[cta]]
    for cta in (0, grid - 1):
        work = schedule.begin(256, n, 7168, 1, 0, masked_m, 32, (0, cta, grid))
        units, unit = [], cta
        while unit < schedule.count(work):
            units.append(unit)
            unit = schedule.next(unit, work)
        assert [u // grid for u in units] == list(range(len(units)))      # one per round


@pytest.mark.parametrize("block_n, split_k", [(8, 1), (32, 1), (16, 4)])
def test_swap_ab_walks_d_tiles_of_tokens_by_weight_rows(block_n, split_k):
    """A swap-AB config's schedule walks D's tiles (BLOCK_N tokens x 64 weight rows): every one
    once, each K range partitioned, as the host's tile count and grid say."""
    cfg = GemmConfig(64, block_n, 3, split_k=split_k > 1, swap_ab=True)
    m, n, k = 37, 2112 + 8, 7168
    assert scheduler.tiles(cfg, m, n) == ceil_div(m, block_n) * ceil_div(n, 64)
    visited = visits(cfg, m, n, k, 132, split_k=split_k, whole=0 if split_k > 1 else None)
    tiles = covered_k(visited)
    assert set(tiles) == {(0, mb, nb) for mb in range(ceil_div(m, block_n))
                          for nb in range(ceil_div(n, 64))}
    for ranges in tiles.values():
        assert_partition(ranges, ceil_div(k, BLOCK_K))


def test_swap_ab_masked_visits_only_counted_token_blocks():
    masked_m = [0, 1, 40, 16, 17, 0]
    cfg = GemmConfig(64, 16, 3, schedule="m_grouped_masked", swap_ab=True)
    m_max, n, k = 40, 1096, 1600
    tiles = covered_k(visits(cfg, m_max, n, k, 132, layout=masked_m, groups=len(masked_m)))
    assert set(tiles) == {(g, mb, nb) for g, rows in enumerate(masked_m)
                          for mb in range(ceil_div(rows, 16)) for nb in range(ceil_div(n, 64))}
