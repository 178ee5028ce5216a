"""The ring of shared-memory stages between the producer and the math warpgroups.

`stages` slots, each with two mbarriers: `full[s]` (the slot's K block has landed: the loader
threads arrive on it, TMA completes its transaction bytes) and `empty[s]` (every math warp of
every CTA the slot was filled for is done reading it). Both sides walk the slots in the same
order; a slot's barrier phase flips each time the walk wraps around, so a waiter passes the
parity of the round it expects.

    ring = make_ring(stages, full_offset, empty_offset, full_arrivals, empty_arrivals, cluster)
    kernel entry: ring.publish(base, one_thread); (work that needs no slot); ring.await_published()
    producer:  ring.wait_empty(base, stage, phase); fill slot; stage, phase = ring.next_slot(...)
    consumer:  ring.wait_full(...) (or ring.test_full); read; ring.release(base, stage, lane)
    kernel exit (cluster): one producer thread ring.drain(base, stage, phase); the others leave
"""

from typing import Callable, NamedTuple

from numba import cuda
from numba.cuda import types

from .ptx import (
    cluster_arrive_relaxed, cluster_wait, fence_mbarrier_init, mbarrier_arrive,
    mbarrier_arrive_cluster, mbarrier_init, mbarrier_test_wait, mbarrier_wait,
)


class Ring(NamedTuple):
    publish: Callable        # publish(base, initializer): the initializer thread sets up every
                             #   barrier; every thread of the CTA calls it (the cluster arrive)
    await_published: Callable   # await_published(): every CTA of the cluster has published
    next_slot: Callable      # next_slot(stage, phase) -> (stage, phase)
    wait_full: Callable      # wait_full(base, stage, phase): the slot holds its K block
    test_full: Callable      # test_full(base, stage, phase) -> 1 if it does already
    wait_empty: Callable     # wait_empty(base, stage, phase): the slot may be refilled
    release: Callable        # release(base, stage, lane): this warp is done with the slot
    drain: Callable          # drain(base, stage, phase): every fill so far released by every
                             #   consumer of the cluster (none of them signals this CTA again)


def make_ring(stages, full_offset, empty_offset, full_arrivals, empty_arrivals, cluster):
    """The ring's device functions for `stages` slots whose barriers sit at byte offsets
    `full_offset` / `empty_offset` (8 bytes a slot) of shared memory. `empty_arrivals`: one per
    math warp of each CTA that reads what the slot's loads deliver (`cluster` CTAs with
    multicast: a warp releases the slot at each of them)."""
    inline = cuda.jit(device=True, inline="always")

    @inline
    def publish(base, initializer):
        if initializer:
            for s in range(stages):
                mbarrier_init(base + full_offset + 8 * s, full_arrivals)
                mbarrier_init(base + empty_offset + 8 * s, empty_arrivals)
            fence_mbarrier_init()
        if cluster > 1:     # relaxed: fence.mbarrier_init published the inits, the only writes
            cluster_arrive_relaxed()    # before it (a releasing arrive would wait for the
                                        # caller's earlier loads: MEMBAR.GPU + ERRBAR)

    @inline
    def await_published():
        if cluster > 1:
            cluster_wait()
        else:
            cuda.syncthreads()

    @inline
    def next_slot(stage, phase):
        """Advance around the ring; the parity flips each time it wraps."""
        if stage + 1 == stages:
            return types.int32(0), types.int32(phase ^ 1)
        return types.int32(stage + 1), phase

    @inline
    def wait_full(base, stage, phase):
        mbarrier_wait(base + full_offset + 8 * stage, phase)

    @inline
    def test_full(base, stage, phase):
        return mbarrier_test_wait(base + full_offset + 8 * stage, phase)

    @inline
    def wait_empty(base, stage, phase):
        mbarrier_wait(base + empty_offset + 8 * stage, phase ^ 1)

    @inline
    def release(base, stage, lane):
        empty = base + empty_offset + 8 * stage
        if cluster > 1:         # one arrival per warp at each CTA that loaded into the slot
            if lane < cluster:
                mbarrier_arrive_cluster(empty, lane)
        elif lane == 0:
            mbarrier_arrive(empty)

    @inline
    def drain(base, stage, phase):
        """From the producer's next slot on, wait once on each slot's empty barrier as if to
        refill it: its last fill has then been released by every math warp of every CTA that
        read it, so no peer arrives on (or multicasts into) this CTA's shared memory any more
        and the CTA may leave (DeepGEMM's exit: a cluster barrier would have every thread
        wait for both CTAs' last stores). Without a cluster nothing else signals: a no-op."""
        if cluster > 1:
            for _ in range(stages):
                wait_empty(base, stage, phase)
                stage, phase = next_slot(stage, phase)

    return Ring(publish, await_published, next_slot, wait_full, test_full, wait_empty,
                release, drain)


def make_ring_loader(ring, schedule, load_slot, drain=False):
    """A loader thread's loop: walk this CTA's work in the order the math warpgroups consume
    it; for each K block, wait until ring slot `stage` is free and call
    `load_slot(base, operands, rank, stage, group, b_share, m_block, n_block, kb)` to fill it
    (b_share: the schedule's, see scheduler.Schedule.tile). `drain`: then `ring.drain` (the
    one loader that keeps its CTA alive until its cluster's peers are done with it)."""
    inline = cuda.jit(device=True, inline="always")
    count, start, tile, next_unit = (schedule.count, schedule.start, schedule.tile,
                                     schedule.next)
    next_slot, wait_empty, drain_ring = ring.next_slot, ring.wait_empty, ring.drain

    @inline
    def loader_loop(base, operands, work):
        rank, unit = work[2], work[3]
        cursor = start(work)
        stage = types.int32(0)
        phase = types.int32(0)
        # (The bound is recomputed per tile: one register less to keep live.)
        while unit < count(work):
            group, m_block, n_block, _, _, kb_begin, kb_end, b_share, cursor = tile(
                unit, work, cursor)
            for kb in range(kb_begin, kb_end):
                wait_empty(base, stage, phase)
                load_slot(base, operands, rank, stage, group, b_share, m_block, n_block, kb)
                stage, phase = next_slot(stage, phase)
            unit = next_unit(unit, work)
        if drain:
            drain_ring(base, stage, phase)
    return loader_loop


def make_ring_skipper(ring):
    """`skip(base, stage, phase, lane, kb_begin, kb_end) -> (stage, phase)`: a math warp that
    has nothing to compute for these K blocks (its rows all lie past a masked group's count, or
    a contiguous padding block whose cluster partner computes) still takes its turn on each
    slot: wait until the block has landed (the producer must not refill a slot its TMA is still
    writing), release it."""
    inline = cuda.jit(device=True, inline="always")
    next_slot, wait_full, release = ring.next_slot, ring.wait_full, ring.release

    @inline
    def skip(base, stage, phase, lane, kb_begin, kb_end):
        kb = kb_begin
        while kb < kb_end:
            wait_full(base, stage, phase)
            release(base, stage, lane)
            stage, phase = next_slot(stage, phase)
            kb = types.int32(kb + 1)
        return stage, phase
    return skip
