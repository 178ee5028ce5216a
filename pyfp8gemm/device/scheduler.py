"""Persistent tile scheduler: which output tile a CTA computes next.

The grid has one CTA per SM (or per SM pair, in 2-CTA clusters). The output is cut into
BLOCK_M x BLOCK_N tiles; a *unit* is what one cluster computes at once (one tile, or two tiles
side by side that share the multicast operand). Cluster c takes units c, c + clusters, ...

Units are visited in groups of `group_m` unit-rows (Triton's "grouped ordering"): inside a
group the M index moves fastest, so the CTAs running at the same time touch `group_m` rows
of A and a few columns of B, which stay in L2 instead of streaming all of B per row of A.
"""

from numba import cuda

from .ptx import udiv32


def make_tile_scheduler(cluster_m, cluster_n, group_m):
    """Make `tile_of(unit, rank, num_m_units, num_n_units) -> (m_block, n_block)`.

    cluster_m == 2: the cluster's two CTAs take vertically adjacent tiles (they share B).
    cluster_n == 2: horizontally adjacent tiles (they share A). `rank` is the CTA's rank in
    its cluster (0 without clusters).
    """
    assert cluster_m * cluster_n <= 2

    @cuda.jit(device=True, inline="always")
    def tile_of(unit, rank, num_m_units, num_n_units):
        # (32-bit divisions: numba's 64-bit ones are slow subroutine calls)
        units_per_group = group_m * num_n_units
        group = udiv32(unit, units_per_group)
        first_m = group * group_m
        rows_in_group = min(num_m_units - first_m, group_m)
        in_group = unit - group * units_per_group
        n_unit = udiv32(in_group, rows_in_group)
        m_unit = first_m + (in_group - n_unit * rows_in_group)
        if cluster_m == 2:
            return m_unit * 2 + rank, n_unit
        if cluster_n == 2:
            return m_unit, n_unit * 2 + rank
        return m_unit, n_unit

    return tile_of
