"""Device side of scripts/probe_small_m.py (issue 22 item 1): kernels that stream B (N, K) e4m3
once, in the tiles and order a small-M GEMM reads them, with no math, through four load paths.

Every kernel walks the same work: B is cut into N tiles of `block_n` rows; a tile is read one
K unit at a time (128 bytes of K for cp.async / vector loads; a whole ring slot, i.e.
box_k * boxes bytes, for TMA). Two schedules (runtime `mode`):
  0 "tiles"    the GEMM's: CTA c walks tiles c, c + grid, ... each over all of K (a small-M GEMM
               with BLOCK_N-wide tiles and one tile row of M); CTAs past the tile count idle;
  1 "balanced" the tiles' K units laid end to end (tile-major, K fastest) and cut into `grid`
               equal contiguous ranges (what split-K would read): every CTA reads the same bytes.

Kernels (one factory each; sizes that are runtime parameters cost no extra compile):
  tma_stream         one producer thread (warp 4, elect.sync) fills a ring of `stages` slots
                     with cp.async.bulk.tensor boxes (2-D, or 3-D for multi-K-block boxes),
                     arrive.expect_tx on the slot's full barrier; 4 consumer warps wait on it and
                     release the empty barrier (lane 0 of each warp), as the GEMM's math warps
                     do, minus the wgmma. Optional A box per slot (the GEMM's A traffic, L2 hits).
                     With check = 1 (the host's validation launch, never timed) the consumers
                     also add up every slot's B bytes: the host compares the total with B's.
                     Box shape, boxes per slot, stages, BLOCK_N all at run time; one copy with
                     the GEMM's baseline constants compiled in (`tma_stream_fixed`) checks that
                     run-time sizes cost nothing.
  cpasync_ring       the same ring, filled by a warpgroup (128 or 256 loader threads) of
                     cp.async.cg 16-byte copies (LDGSTS), each loader signalling the slot's
                     full barrier with cp.async.mbarrier.arrive.noinc; consumers as above
                     (checked the same way).
  cpasync_groups     256 threads, each keeps up to `stages` commit groups of its own 16-byte
                     copies in flight (cp.async.wait_group stages-1; no barriers, no consumers).
  vector_u{U}_{f}    512 threads; each issues U 16-byte loads (ld.global[.nc].v4.u32, one asm
                     block, predicated at a tile's end) along K, then adds them into a running
                     sum; the sums go to `out` once at the end (the host checks their total
                     against B's: every byte read exactly once).

Every barrier wait is bounded (%globaltimer, WAIT_TIMEOUT_NS): a wrong configuration sets the
status word to STATUS_TIMEOUT and the kernel returns instead of hanging the GPU call.
Thread 0 of each CTA writes its first and last %globaltimer to times[2c], times[2c + 1].

Conventions as in the library (pyfp8gemm/device/gemm_1d2d.py, tests/microkernels.py): raw
pointers as uint64 parameters, tensor maps as uint64 parameters turned into by-value
CUtensorMaps by compiler.tensormaps_by_value, one 1024-aligned dynamic smem array.
"""

from __future__ import annotations

import functools
import time

from numba import cuda
from numba.cuda import types

from pyfp8gemm.device.ptx import (
    cp_async_mbarrier_arrive_noinc, elect_one, fence_mbarrier_init, ld_shared_u32,
    mbarrier_arrive, mbarrier_arrive_expect_tx, mbarrier_init, prefetch_tensormap,
    ptx_instruction, smem_base, st_global_u32, tma_load_2d, tma_load_3d, udiv32,
)

U64, U32, I32 = types.uint64, types.uint32, types.int32
u32, u64 = types.uint32, types.uint64

STATUS_OK, STATUS_TIMEOUT = 1, 2
WAIT_TIMEOUT_NS = 500_000_000          # a streaming kernel here takes < 1 ms
CONSUMER_WARPS = 4
VECTOR_THREADS = 512
CPASYNC_GROUP_THREADS = 256
MAX_SMEM = 232448                      # sm_90 opt-in dynamic shared memory per block (227 KB)

inline = cuda.jit(device=True, inline="always")

# ---- intrinsics the library does not have (defined here, ptx.py untouched) ---------------

globaltimer = ptx_instruction("probe_globaltimer", "mov.u64 $0, %globaltimer;", result=u64,
                              doc="%globaltimer (ns)")
st_global_u64 = ptx_instruction("probe_st_global_u64", "st.global.u64 [$0], $1;", (u64, u64),
                                doc="st.global.u64")
try_wait_once = ptx_instruction(
    "probe_try_wait_once",
    "{ .reg .pred done; mbarrier.try_wait.parity.shared::cta.b64 done, [$1], $2; "
    "selp.u32 $0, 1, 0, done; }",
    (u32, u32), u32, doc="mbarrier.try_wait.parity once: 1 if that phase completed")
cp_async_16 = ptx_instruction(
    "probe_cp_async_16", "cp.async.cg.shared.global [$0], [$1], 16;", (u32, u64),
    doc="cp.async.cg 16 bytes global -> shared (L2 only, LDGSTS.BYPASS)")
cp_async_16_l2_256 = ptx_instruction(
    "probe_cp_async_16_l2_256", "cp.async.cg.shared.global.L2::256B [$0], [$1], 16;", (u32, u64),
    doc="cp.async.cg 16 bytes with a 256-byte L2 prefetch hint")
cp_async_commit = ptx_instruction("probe_cp_async_commit", "cp.async.commit_group;",
                                  doc="cp.async.commit_group")
cp_async_wait_all = ptx_instruction("probe_cp_async_wait_all", "cp.async.wait_all;",
                                    doc="cp.async.wait_all")


@functools.cache
def cp_async_wait_group(pending):
    return ptx_instruction(f"probe_cp_async_wait_group_{pending}",
                           f"cp.async.wait_group {pending};")


VECTOR_LOADS = {
    "nc": "ld.global.nc.v4.u32",
    "plain": "ld.global.v4.u32",
    "nc_na256": "ld.global.nc.L1::no_allocate.L2::256B.v4.u32",
}


@functools.cache
def vector_load_sum(unroll, flavor):
    """`acc = f(address, n_valid, acc)`: issue `unroll` 16-byte loads at address + 128 * j
    (j < n_valid; the others are predicated off and read as zero) in one asm block, all before
    the first use, then add their 4 * unroll words into acc."""
    op = VECTOR_LOADS[flavor]
    lines = [f"{{ .reg .pred p; .reg .b32 v<{4 * unroll}>;"]
    for j in range(4 * unroll):
        lines.append(f"mov.b32 v{j}, 0;")
    for j in range(unroll):
        regs = ", ".join(f"v{4 * j + i}" for i in range(4))
        offset = f"+{128 * j}" if j else ""
        lines.append(f"setp.gt.u32 p, $2, {j}; @p {op} {{{regs}}}, [$1{offset}];")
    lines.append("add.u32 $0, $3, v0;")
    for j in range(1, 4 * unroll):
        lines.append(f"add.u32 $0, $0, v{j};")
    lines.append("}")
    return ptx_instruction(f"probe_vector_load_sum_{unroll}_{flavor}", " ".join(lines),
                           (u64, u32, u32), u32,
                           doc=f"{unroll} x {op} in flight, summed")


# ---- shared helpers -------------------------------------------------------------------------

@inline
def wait_bounded(bar, parity, status):
    """Spin until the phase of `parity` completed; 0 if it did, 1 after WAIT_TIMEOUT_NS (then
    the status word says STATUS_TIMEOUT)."""
    if try_wait_once(bar, parity) != 0:
        return 0
    start = globaltimer()
    while try_wait_once(bar, parity) == 0:
        if globaltimer() - start > types.uint64(WAIT_TIMEOUT_NS):
            st_global_u32(status, STATUS_TIMEOUT)
            return 1
    return 0


@inline
def work_of_cta(mode, n_tiles, kunits):
    """(first tile, first K unit, tile step, number of units) of this CTA's walk."""
    grid = types.uint32(cuda.gridDim.x)
    cta = types.uint32(cuda.blockIdx.x)
    if mode == 0:
        mine = types.uint32(0)
        if cta < n_tiles:
            mine = udiv32(n_tiles - cta - types.uint32(1), grid) + types.uint32(1)
        return (types.int32(cta), types.int32(0), types.int32(grid),
                types.int32(mine * kunits))
    total = n_tiles * kunits
    begin = udiv32(cta * total, grid)
    end = udiv32((cta + types.uint32(1)) * total, grid)
    tile0 = udiv32(begin, kunits)
    return (types.int32(tile0), types.int32(begin - tile0 * kunits), types.int32(1),
            types.int32(end - begin))


@inline
def mark_time(times, slot):
    if cuda.threadIdx.x == 0:
        st_global_u64(times + types.uint64(16 * cuda.blockIdx.x + 8 * slot), globaltimer())


@inline
def consume(base, full_off, empty_off, stages, slot_bytes, sum_bytes, count, status, tid,
            check, out):
    """A consumer warp: wait for each slot's full barrier, release it (lane 0). With `check`
    (the validation launch only), the consumer threads also add up the first `sum_bytes` of
    every slot (B's boxes, any swizzle: a sum of words does not care where they sit) and write
    their sums to out[cta * 512 + tid]: the host compares the total with B's."""
    lane = tid % 32
    acc = types.uint32(0)
    stage = types.int32(0)
    phase = types.int32(0)
    for _ in range(count):
        if wait_bounded(base + full_off + 8 * stage, phase, status):
            return
        if check:
            slot = base + stage * slot_bytes
            for w in range(4 * tid, sum_bytes, 4 * 32 * CONSUMER_WARPS):
                acc = types.uint32(acc + ld_shared_u32(slot + w))
        if lane == 0:
            mbarrier_arrive(base + empty_off + 8 * stage)
        stage += 1
        if stage == stages:
            stage = types.int32(0)
            phase ^= 1
    if check:
        st_global_u32(out + types.uint64(4 * (cuda.blockIdx.x * 512 + tid)), acc)


@inline
def chunk_address(b, k_bytes, tile, block_n, row, kb, col):
    """Global address of 16-byte chunk `col` of row `row` of tile `tile`, K block kb."""
    return (b + types.uint64(tile * block_n + row) * types.uint64(k_bytes)
            + types.uint64(kb * 128 + col * 16))


# ---- TMA ring -----------------------------------------------------------------------------

def make_tma_stream(fixed=None):
    """tma_stream(tmap_b, tmap_a, status, times, n_rows, k_bytes, block_n, box_k, boxes,
    stages, a_rows, dims, mode, check, out). `fixed`: a dict of constants (block_n, box_k,
    boxes, stages, a_rows, dims) compiled in; the run-time values are then ignored."""
    THREADS = 32 * (CONSUMER_WARPS + 1)
    F = fixed or {}
    F_BN, F_BK, F_BX = F.get("block_n", 0), F.get("box_k", 0), F.get("boxes", 0)
    F_ST, F_AR, F_DIMS = F.get("stages", 0), F.get("a_rows", -1), F.get("dims", 0)

    def tma_stream(tmap_b, tmap_a, status, times, n_rows, k_bytes, block_n, box_k, boxes,
                   stages, a_rows, dims, mode, check, out):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        base = smem_base(smem)
        tid = cuda.threadIdx.x
        if F_BN:
            block_n = types.int32(F_BN)
        if F_BK:
            box_k = types.int32(F_BK)
        if F_BX:
            boxes = types.int32(F_BX)
        if F_ST:
            stages = types.int32(F_ST)
        if F_AR >= 0:
            a_rows = types.int32(F_AR)
        if F_DIMS:
            dims = types.int32(F_DIMS)
        kstep = box_k * boxes                      # bytes of K per ring slot
        b_box = block_n * box_k
        a_box = a_rows * box_k
        slot_bytes = (block_n + a_rows) * kstep
        full_off = stages * slot_bytes
        empty_off = full_off + 8 * stages
        n_tiles = types.uint32(udiv32(types.uint32(n_rows), types.uint32(block_n)))
        kunits = types.uint32(udiv32(types.uint32(k_bytes), types.uint32(kstep)))
        tile, ku, tile_step, count = work_of_cta(mode, n_tiles, kunits)
        if tid == 32 * CONSUMER_WARPS:
            prefetch_tensormap(tmap_b)
            if a_rows > 0:
                prefetch_tensormap(tmap_a)
            for s in range(stages):
                mbarrier_init(base + full_off + 8 * s, 1)
                mbarrier_init(base + empty_off + 8 * s, CONSUMER_WARPS)
            fence_mbarrier_init()
        cuda.syncthreads()
        mark_time(times, 0)
        if tid >= 32 * CONSUMER_WARPS:
            if elect_one():
                stage = types.int32(0)
                phase = types.int32(0)
                for _ in range(count):
                    if wait_bounded(base + empty_off + 8 * stage, phase ^ 1, status):
                        break
                    full = base + full_off + 8 * stage
                    mbarrier_arrive_expect_tx(full, slot_bytes)
                    dst = base + stage * slot_bytes
                    row = tile * block_n
                    x = ku * kstep
                    for j in range(boxes):
                        if dims == 3:
                            tma_load_3d(dst + j * b_box, tmap_b, full, 0, (x + j * box_k) >> 7,
                                        row)
                        else:
                            tma_load_2d(dst + j * b_box, tmap_b, full, x + j * box_k, row)
                    if a_rows > 0:
                        a_dst = dst + boxes * b_box
                        for j in range(boxes):
                            tma_load_2d(a_dst + j * a_box, tmap_a, full, x + j * box_k, 0)
                    stage += 1
                    if stage == stages:
                        stage = types.int32(0)
                        phase ^= 1
                    ku += 1
                    if ku == kunits:
                        ku = types.int32(0)
                        tile += tile_step
            cuda.syncwarp()
        else:
            consume(base, full_off, empty_off, stages, slot_bytes, boxes * b_box, count, status,
                    tid, check, out)
            mark_time(times, 1)

    name = "probe_tma_stream" + ("_fixed" if fixed else "")
    tma_stream.__name__ = tma_stream.__qualname__ = name
    sig = (U64, U64, U64, U64) + (I32,) * 10 + (U64,)
    return dict(name=name, pyfunc=tma_stream, signature=sig, threads=THREADS,
                tensormap_params=(0, 1))


# ---- cp.async ring (a loader warpgroup instead of the TMA thread) --------------------------

def make_cpasync_ring(loaders=128, l2_hint=False):
    """cpasync_ring(b, status, times, n_rows, k_bytes, block_n, stages, mode, check, out):
    `loaders` threads fill slot s (block_n x 128 bytes, 128B-swizzled layout) with 16-byte
    cp.async copies and arrive (noinc) on its full barrier; 4 consumer warps wait and release
    (and, with check = 1, add up the slot: see consume)."""
    THREADS = loaders + 32 * CONSUMER_WARPS
    copy = cp_async_16_l2_256 if l2_hint else cp_async_16
    LOADERS = loaders

    def cpasync_ring(b, status, times, n_rows, k_bytes, block_n, stages, mode, check, out):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        base = smem_base(smem)
        tid = cuda.threadIdx.x
        slot_bytes = block_n * 128
        full_off = stages * slot_bytes
        empty_off = full_off + 8 * stages
        n_tiles = types.uint32(udiv32(types.uint32(n_rows), types.uint32(block_n)))
        kunits = types.uint32(udiv32(types.uint32(k_bytes), types.uint32(128)))
        tile, kb, tile_step, count = work_of_cta(mode, n_tiles, kunits)
        if tid == 0:
            for s in range(stages):
                mbarrier_init(base + full_off + 8 * s, LOADERS)
                mbarrier_init(base + empty_off + 8 * s, CONSUMER_WARPS)
            fence_mbarrier_init()
        cuda.syncthreads()
        mark_time(times, 0)
        if tid >= 32 * CONSUMER_WARPS:
            t = tid - 32 * CONSUMER_WARPS
            per_thread = (block_n * 8) // LOADERS
            stage = types.int32(0)
            phase = types.int32(0)
            for _ in range(count):
                if wait_bounded(base + empty_off + 8 * stage, phase ^ 1, status):
                    break
                dst = base + stage * slot_bytes
                for j in range(per_thread):
                    c = t + j * LOADERS
                    row = c >> 3
                    col = c & 7
                    copy(dst + row * 128 + 16 * (col ^ (row & 7)),
                         chunk_address(b, k_bytes, tile, block_n, row, kb, col))
                cp_async_mbarrier_arrive_noinc(base + full_off + 8 * stage)
                stage += 1
                if stage == stages:
                    stage = types.int32(0)
                    phase ^= 1
                kb += 1
                if kb == kunits:
                    kb = types.int32(0)
                    tile += tile_step
            cp_async_wait_all()
        else:
            consume(base, full_off, empty_off, stages, slot_bytes, slot_bytes, count, status,
                    tid, check, out)
            mark_time(times, 1)

    name = f"probe_cpasync_ring_w{loaders}" + ("_l2h" if l2_hint else "")
    cpasync_ring.__name__ = cpasync_ring.__qualname__ = name
    sig = (U64, U64, U64) + (I32,) * 6 + (U64,)
    return dict(name=name, pyfunc=cpasync_ring, signature=sig, threads=THREADS,
                tensormap_params=())


# ---- cp.async with per-thread commit groups (no barriers) ----------------------------------

def make_cpasync_groups():
    """cpasync_groups(b, status, times, n_rows, k_bytes, block_n, stages, mode): 256 threads
    copy each K unit's block_n x 128 bytes into ring slot i % stages, one commit group per
    unit, and keep at most `stages` groups in flight (stages in {2, 4, 8, 16})."""
    THREADS = CPASYNC_GROUP_THREADS
    w1, w3, w7, w15 = (cp_async_wait_group(1), cp_async_wait_group(3), cp_async_wait_group(7),
                       cp_async_wait_group(15))

    def cpasync_groups(b, status, times, n_rows, k_bytes, block_n, stages, mode):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        base = smem_base(smem)
        t = cuda.threadIdx.x
        slot_bytes = block_n * 128
        n_tiles = types.uint32(udiv32(types.uint32(n_rows), types.uint32(block_n)))
        kunits = types.uint32(udiv32(types.uint32(k_bytes), types.uint32(128)))
        tile, kb, tile_step, count = work_of_cta(mode, n_tiles, kunits)
        mark_time(times, 0)
        per_thread = (block_n * 8) // THREADS
        stage = types.int32(0)
        for _ in range(count):
            dst = base + stage * slot_bytes
            for j in range(per_thread):
                c = t + j * THREADS
                row = c >> 3
                col = c & 7
                cp_async_16(dst + row * 128 + 16 * (col ^ (row & 7)),
                            chunk_address(b, k_bytes, tile, block_n, row, kb, col))
            cp_async_commit()
            if stages == 16:
                w15()
            elif stages == 8:
                w7()
            elif stages == 4:
                w3()
            else:
                w1()
            stage += 1
            if stage == stages:
                stage = types.int32(0)
            kb += 1
            if kb == kunits:
                kb = types.int32(0)
                tile += tile_step
        cp_async_wait_all()
        mark_time(times, 1)

    name = "probe_cpasync_groups"
    cpasync_groups.__name__ = cpasync_groups.__qualname__ = name
    sig = (U64, U64, U64) + (I32,) * 5
    return dict(name=name, pyfunc=cpasync_groups, signature=sig, threads=THREADS,
                tensormap_params=())


# ---- plain 16-byte vector loads into registers ----------------------------------------------

def make_vector(unroll=8, flavor="nc"):
    """vector(b, out, status, times, n_rows, k_bytes, block_n, mode, zero): 512 threads; thread t
    reads 16-byte column t % 8 of rows t / 8 (+ 64 per pass) of each tile, `unroll` K blocks
    per asm block, and writes the sum of its words to out[cta * 512 + t]. Pass zero = 0."""
    THREADS = VECTOR_THREADS
    UNROLL = unroll
    load_sum = vector_load_sum(unroll, flavor)

    def vector(b, out, status, times, n_rows, k_bytes, block_n, mode, zero):
        t = cuda.threadIdx.x
        n_tiles = types.uint32(udiv32(types.uint32(n_rows), types.uint32(block_n)))
        kunits = types.int32(k_bytes >> 7)
        tile, kb, tile_step, count = work_of_cta(mode, n_tiles, types.uint32(kunits))
        mark_time(times, 0)
        passes = (block_n * 8) // THREADS
        row0 = t >> 3
        col = t & 7
        acc = types.uint32(0)
        remaining = count
        while remaining > 0:
            hi = min(kunits, kb + remaining)
            for p in range(passes):
                address = chunk_address(b, k_bytes, tile, block_n, row0 + p * (THREADS // 8),
                                        kb, col)
                k = kb
                while k < hi:
                    acc = load_sum(address, types.uint32(hi - k), acc)
                    # `zero` is 0 at run time, but ptxas cannot know it: the next loads wait
                    # for this block's sum. (Without it ptxas unrolls this loop and hoists the
                    # next blocks' loads: 16 in flight for unroll 4 and 8, seen in the SASS.)
                    address += types.uint64(128 * UNROLL) + types.uint64(acc & zero)
                    k += UNROLL
            remaining -= hi - kb
            kb = types.int32(0)
            tile += tile_step
        st_global_u32(out + types.uint64(4 * (cuda.blockIdx.x * THREADS + t)), acc)
        mark_time(times, 1)

    name = f"probe_vector_u{unroll}_{flavor}"
    vector.__name__ = vector.__qualname__ = name
    sig = (U64, U64, U64, U64) + (I32,) * 4 + (U32,)
    return dict(name=name, pyfunc=vector, signature=sig, threads=THREADS, tensormap_params=())


# ---- the kernel list and the compile step -------------------------------------------------

# The GEMM's small-M baseline ring (64x7168x16384: BLOCK_N 64, 13 stages of A 64x128 + B 64x128)
BASELINE_FIXED = dict(block_n=64, box_k=128, boxes=1, stages=13, a_rows=64, dims=2)

FACTORIES = {
    "probe_tma_stream": (make_tma_stream, {}),
    "probe_tma_stream_fixed": (make_tma_stream, {"fixed": BASELINE_FIXED}),
    "probe_cpasync_ring_w128": (make_cpasync_ring, {"loaders": 128}),
    "probe_cpasync_ring_w256": (make_cpasync_ring, {"loaders": 256}),
    "probe_cpasync_ring_w128_l2h": (make_cpasync_ring, {"loaders": 128, "l2_hint": True}),
    "probe_cpasync_groups": (make_cpasync_groups, {}),
    "probe_vector_u4_nc": (make_vector, {"unroll": 4, "flavor": "nc"}),
    "probe_vector_u8_nc": (make_vector, {"unroll": 8, "flavor": "nc"}),
    "probe_vector_u16_nc": (make_vector, {"unroll": 16, "flavor": "nc"}),
    "probe_vector_u8_plain": (make_vector, {"unroll": 8, "flavor": "plain"}),
    "probe_vector_u8_nc_na256": (make_vector, {"unroll": 8, "flavor": "nc_na256"}),
}


def kernel_threads(name):
    factory, kwargs = FACTORIES[name]
    return factory(**kwargs)["threads"]


def build_one(name):
    """Compile one probe kernel: numba-cuda -> PTX (sm_90a, launch bounds) -> entry rename and
    tensor maps by value -> ptxas. Returns (name, cubin, usage, seconds). Runs in a worker."""
    from pyfp8gemm.cache import compiler, toolchain
    start = time.perf_counter()
    factory, kwargs = FACTORIES[name]
    k = factory(**kwargs)
    assert k["name"] == name, (k["name"], name)
    ptx, _ = cuda.compile_ptx(k["pyfunc"], k["signature"], cc=compiler.COMPUTE_CAPABILITY,
                              launch_bounds=(k["threads"], 1))
    ptx = compiler.rename_entry(ptx, name)
    ptx = compiler.tensormaps_by_value(ptx, name, k["tensormap_params"])
    cubin = toolchain.ptxas(ptx, arch=compiler.ARCH)
    usage = toolchain.resource_usage(cubin).get(name, {})
    return name, cubin, usage, round(time.perf_counter() - start, 2)
