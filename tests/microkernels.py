"""Micro-kernels: one small GPU kernel per idea the GEMM kernel relies on, built from the same
intrinsics (pyfp8gemm.device.ptx / tile) and the same pipeline (compile_kernel: numba-cuda ->
PTX -> tensor maps by value -> ptxas).

tests/test_intrinsics_gpu.py launches them and checks their output exactly against torch;
tests/test_intrinsics.py compiles every one of them on the CPU, so a compile error shows in CI.

  make_tma_round_trip()      TMA load of a 128B-swizzled tile (mbarrier expect_tx + wait), read
                             back through the documented swizzle formula, TMA store back.
  make_wgmma_tile(n)         one 64 x n x 128 e4m3 product on the tensor cores: four wgmma
                             m64nNk32 steps over smem descriptors advanced by 32 bytes.
  make_multicast()           a 2-CTA cluster: rank 0 multicasts one TMA tile into both CTAs;
                             each CTA then signals both CTAs' barriers (the remote arrive).
  make_setmaxnreg()          384 threads: warpgroup 2 gives registers back (setmaxnreg.dec 40),
                             warpgroups 0-1 take them (setmaxnreg.inc 232) and use ~200 each.
  make_pack_bf16x2()         cvt.rn.bf16x2.f32: which float lands in which half.
  make_bf16_row_copy(n)      a 64 x n fragment tile row-major into shared memory (padded rows),
                             then the first rows out by one 1-D bulk copy each (the masked
                             epilogue's last rows).

Conventions (those of the GEMM kernel, see pyfp8gemm/device/gemm_1d2d.py):
* parameters are raw int64 pointers, int32/float32 scalars, and tensor maps: int64 in the Python
  signature, turned into by-value 128-byte CUtensorMap parameters by the PTX post-edit;
* dynamic shared memory is one 1024-aligned byte array; every smem address is a 32-bit value
  (`smem_base(smem) + offset`);
* no wait can hang: every mbarrier wait here has a deadline (%globaltimer) and a kernel reports
  through a `status` word per thread whether its waits completed (STATUS_OK) or timed out
  (STATUS_TIMEOUT); the host initializes it to STATUS_NOT_RUN.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from pathlib import Path

from llvmlite import ir
from numba import cuda
from numba.cuda import types
from numba.cuda.extending import intrinsic

from pyfp8gemm.cache.compiler import KernelSpec
from pyfp8gemm.device.config import GemmConfig
import functools

from pyfp8gemm.device.ptx import (
    _descriptor_low, _descriptor_of_low, _typer, bulk_store_1d, cluster_ctarank, cluster_sync,
    fence_mbarrier_init, fence_proxy_async_smem, mbarrier_arrive_cluster,
    mbarrier_arrive_expect_tx, mbarrier_init, prefetch_tensormap, ptx_instruction,
    setmaxnreg_dec, setmaxnreg_inc, smem_base, tma_load_2d,
    tma_load_2d_multicast, tma_store_2d, tma_store_commit, tma_store_wait, udiv32,
    wgmma_commit, wgmma_fence, wgmma_fp8, wgmma_wait,
)
from pyfp8gemm.device.tile import (
    fragment_fence, fragment_promote, fragment_store_bf16_rows, fragment_zeros,
)

I64, I32, F32 = types.int64, types.int32, types.float32

# The compile cache keys a kernel by its config, the device sources and the tool versions, not
# by this file: put this file's hash in every config, so that an edit here rebuilds the kernels.
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

STATUS_NOT_RUN, STATUS_OK, STATUS_TIMEOUT = 0, 1, 2
# A wait that has not seen its phase complete after this long gives up (a correct TMA of a few
# KB lands in microseconds; this only turns a wrong kernel's hang into a failed test).
WAIT_TIMEOUT_NS = 2_000_000_000

SWIZZLE = 128                    # bytes: TMA's 128B swizzle, the one the GEMM kernel uses
TILE_ROWS = 64                   # a TMA tile of 64 rows x 128 bytes (one swizzle atom wide)
TILE_BYTES = TILE_ROWS * SWIZZLE
MBARRIER_BYTES = 8

inline = cuda.jit(device=True, inline="always")


# ---------------------------------------------------------------------------------------------
# Intrinsics only the tests use (the kernels do not): kept here, next to the micro-kernels and
# tiny kernels that check them, so that pyfp8gemm/device/ptx.py holds what kernels run.
# ---------------------------------------------------------------------------------------------

from pyfp8gemm.device.ptx import st_global_f32  # noqa: E402,F401  (the kernels' own; re-exported)

u32, u64, f32 = types.uint32, types.uint64, types.float32
TEST_ONLY_INTRINSICS = ("named_barrier_arrive", "ld_global_nc_f32", "pack_bf16x2", "stmatrix_x1",
                        "stmatrix_x2", "stmatrix_x4", "smem_descriptor")

named_barrier_arrive = ptx_instruction(
    "named_barrier_arrive", "bar.arrive $0, $1;", (u32, u32),
    doc="bar.arrive id, count: count this warp into barrier `id` without waiting for it "
        "(the other threads of the `count` wait with bar.sync).")

ld_global_nc_f32 = ptx_instruction(
    "ld_global_nc_f32", "ld.global.nc.f32 $0, [$1];", (u64,), f32,
    doc="ld.global.nc.f32: read-only (non-coherent) global load of one float.")

pack_bf16x2 = ptx_instruction(
    "pack_bf16x2", "cvt.rn.bf16x2.f32 $0, $2, $1;", (f32, f32), u32,
    doc="cvt.rn.bf16x2.f32: (lo, hi) floats -> one 32-bit word, lo in the low half.")

stmatrix_x2 = ptx_instruction(
    "stmatrix_x2", "stmatrix.sync.aligned.x2.m8n8.shared.b16 [$0], {$1, $2};",
    (u32, u32, u32),
    doc="stmatrix x2: two 8x8 b16 matrices; lanes 0-15 give the 16 row addresses.")

stmatrix_x4 = ptx_instruction(
    "stmatrix_x4", "stmatrix.sync.aligned.x4.m8n8.shared.b16 [$0], {$1, $2, $3, $4};",
    (u32, u32, u32, u32, u32),
    doc="stmatrix x4: four 8x8 b16 matrices; lanes 0-31 give the 32 row addresses.")

stmatrix_x1 = ptx_instruction(
    "stmatrix_x1", "stmatrix.sync.aligned.x1.m8n8.shared.b16 [$0], {$1};", (u32, u32),
    doc="stmatrix x1: one 8x8 b16 matrix; lanes 0-7 give the row addresses.")

@functools.cache
def smem_descriptor(swizzle_bytes=128):
    """Make `desc(smem_addr) -> u64`: a wgmma descriptor for a K-major, swizzled tile.

    Layout (PTX ISA, "matrix descriptor"): bits 0-13 start address >> 4; 16-29 leading byte
    offset >> 4 (unused for swizzled K-major: 1); 32-45 stride byte offset >> 4 (8 rows of
    `swizzle_bytes`, i.e. the distance between 8-row core-matrix groups); 62-63 swizzle mode.
    Stepping K by 32 bytes inside the swizzle atom is a plain +32 on the start address.
    """
    def codegen(context, builder, sig, args):
        return _descriptor_of_low(builder, _descriptor_low(builder, args[0]), swizzle_bytes)

    fn = intrinsic(_typer(1, types.uint64(types.uint32), codegen,
                          f"smem_descriptor_sw{swizzle_bytes}"))
    return fn



# ---------------------------------------------------------------------------------------------
# Test-only helper instructions (plain loads/stores on raw pointers, a bounded mbarrier wait)
# ---------------------------------------------------------------------------------------------

st_global_u32 = ptx_instruction("st_global_u32", "st.global.u32 [$0], $1;", (u64, u32),
                                doc="st.global.u32 [address], value")
ld_shared_u32 = ptx_instruction("ld_shared_u32", "ld.shared.u32 $0, [$1];", (u32,), u32,
                                doc="ld.shared.u32: one 4-byte word of shared memory")
ld_global_f32 = ptx_instruction("ld_global_f32", "ld.global.f32 $0, [$1];", (u64,), f32,
                                doc="ld.global.f32")
ld_global_u32 = ptx_instruction("ld_global_u32", "ld.global.u32 $0, [$1];", (u64,), u32,
                                doc="ld.global.u32")
globaltimer_ns = ptx_instruction("globaltimer_ns", "mov.u64 $0, %globaltimer;",
                                 result=types.int64, doc="%globaltimer: nanoseconds")
mbarrier_try_wait = ptx_instruction(
    "mbarrier_try_wait",
    "{ .reg .pred done; mbarrier.try_wait.parity.shared::cta.b64 done, [$1], $2; "
    "selp.u32 $0, 1, 0, done; }",
    (u32, u32), u32,
    doc="mbarrier.try_wait.parity, once: 1 if the phase of that parity has completed.")


@inline
def mbarrier_wait_bounded(bar, parity):
    """pyfp8gemm's mbarrier_wait (a try_wait.parity spin), with a deadline.

    Returns STATUS_OK once the phase of parity `parity` completed, STATUS_TIMEOUT after
    WAIT_TIMEOUT_NS. Same instruction as the library's spin; only the deadline is added.
    """
    start = globaltimer_ns()
    while mbarrier_try_wait(bar, parity) == 0:
        if globaltimer_ns() - start > WAIT_TIMEOUT_NS:
            return STATUS_TIMEOUT
    return STATUS_OK


@inline
def worst(status_a, status_b):
    """Combine two statuses: any timeout wins."""
    return status_a if status_a > status_b else status_b


def _address_of(builder, base, byte_offset):
    """A typed global (addrspace 1) float pointer at base + byte_offset (base: an i64)."""
    address = builder.add(base, ir.Constant(ir.IntType(64), byte_offset))
    return builder.inttoptr(address, ir.PointerType(ir.FloatType(), 1))


def fragment_load_global(n_acc):
    """Make `load(address) -> fragment`: n_acc consecutive floats from global memory into a
    register fragment (straight-line loads, like the tile.py intrinsics: no local memory)."""
    frag = types.UniTuple(types.float32, n_acc)

    def codegen(context, builder, sig, args):
        values = [builder.load(_address_of(builder, args[0], 4 * e)) for e in range(n_acc)]
        return context.make_tuple(builder, frag, values)

    return intrinsic(_typer(1, frag(types.int64), codegen, f"fragment_load_global_{n_acc}"))


def fragment_store_global(n_acc):
    """Make `store(address, fragment)`: the fragment's n_acc floats to consecutive global
    addresses, in fragment order (the host maps them to the tile, see fragment_to_tile)."""
    frag = types.UniTuple(types.float32, n_acc)

    def codegen(context, builder, sig, args):
        for e in range(n_acc):
            builder.store(builder.extract_value(args[1], e), _address_of(builder, args[0], 4 * e))
        return context.get_dummy_value()

    return intrinsic(_typer(2, types.void(types.int64, frag), codegen,
                            f"fragment_store_global_{n_acc}"))


@inline
def copy_tile_unswizzled(tile, out, first, step):
    """Copy one TILE_ROWS x 128-byte tile that TMA wrote with the 128B swizzle from shared
    memory to a row-major global array, undoing the swizzle with the documented formula:

        the 16-byte chunk c of row r lives at chunk c ^ (r % 8) of that row

    (rows are 128 bytes; the tile starts 1024-aligned). Threads first, first+step, ... copy one
    4-byte word at a time (a word never straddles a chunk).
    """
    for word in range(first, TILE_BYTES // 4, step):
        row = word // 32
        chunk = (word % 32) // 4
        swizzled = row * SWIZZLE + 16 * (chunk ^ (row % 8)) + 4 * (word % 4)
        st_global_u32(out + 4 * word, ld_shared_u32(tile + swizzled))


# ---------------------------------------------------------------------------------------------
# How a micro-kernel is built and launched
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroKernel:
    """A micro-kernel's compile spec plus what a launch needs."""
    spec: KernelSpec
    smem_bytes: int               # dynamic shared memory per CTA
    cluster_size: int = 1

    @property
    def name(self):
        return self.spec.name

    @property
    def threads(self):
        return self.spec.threads

    @property
    def param_types(self):
        """ctypes of the parameters for cuLaunchKernelEx: None for a by-value tensor map."""
        ctype = {I64: ctypes.c_int64, I32: ctypes.c_int32, F32: ctypes.c_float}
        return tuple(None if i in self.spec.tensormap_params else ctype[t]
                     for i, t in enumerate(self.spec.signature))


def _micro_kernel(name, make_kernel, signature, threads, smem_bytes, tensormap_params=(),
                  cluster_size=1, **config):
    spec = KernelSpec(name=name, make_kernel=make_kernel, signature=signature, threads=threads,
                      tensormap_params=tensormap_params,
                      config=dict(config, test_source=SOURCE_HASH))
    return MicroKernel(spec, smem_bytes, cluster_size)


# ---------------------------------------------------------------------------------------------
# a. TMA: load a 128B-swizzled tile, read it with ld.shared, store it back
# ---------------------------------------------------------------------------------------------


def make_tma_round_trip() -> MicroKernel:
    """tma_round_trip(tmap_src, tmap_dst, unswizzled, status, src_x, src_y, dst_x, dst_y)

    One CTA of 128 threads:
    1. thread 0 sets up an mbarrier, arms it with arrive.expect_tx(TILE_BYTES) and issues
       tma_load_2d of the box at (x=src_x bytes, y=src_y rows) of `src` into shared memory;
    2. every thread waits for the barrier's phase 0 (the TMA completes TILE_BYTES on it);
    3. all threads copy the tile to `unswizzled` (64 x 128 bytes, row-major) with plain
       ld.shared, undoing the 128B swizzle with the formula the epilogue relies on;
    4. thread 0 TMA-stores the (still swizzled) smem tile at (dst_x, dst_y) of `dst` through a
       tensor map with the same swizzle, which un-swizzles it on the way out.
    status[tid] = STATUS_OK if this thread's wait completed.
    """
    THREADS = 128
    SMEM_TILE, BAR = 0, TILE_BYTES

    def make_kernel():
        def tma_round_trip(tmap_src, tmap_dst, unswizzled, status, src_x, src_y, dst_x, dst_y):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            base = smem_base(smem)
            tid = cuda.threadIdx.x
            if tid == 0:
                prefetch_tensormap(tmap_src)
                prefetch_tensormap(tmap_dst)
                mbarrier_init(base + BAR, 1)       # phase 0 completes after 1 arrival + tx
                fence_mbarrier_init()
            cuda.syncthreads()                     # the barrier is initialized for everyone
            if tid == 0:
                # expect_tx must name exactly the bytes the TMA will deliver: the whole box.
                mbarrier_arrive_expect_tx(base + BAR, TILE_BYTES)
                tma_load_2d(base + SMEM_TILE, tmap_src, base + BAR, src_x, src_y)
            landed = mbarrier_wait_bounded(base + BAR, 0)
            copy_tile_unswizzled(base + SMEM_TILE, unswizzled, tid, THREADS)
            if tid == 0:
                tma_store_2d(tmap_dst, base + SMEM_TILE, dst_x, dst_y)
                tma_store_commit()
                tma_store_wait()                   # the store completes before the CTA exits
            st_global_u32(status + 4 * tid, landed)

        return tma_round_trip

    return _micro_kernel(
        "microkernel_tma_round_trip_sw128", make_kernel,
        signature=(I64, I64, I64, I64, I32, I32, I32, I32), threads=THREADS,
        smem_bytes=BAR + MBARRIER_BYTES, tensormap_params=(0, 1))


# ---------------------------------------------------------------------------------------------
# b. wgmma: one 64 x N x 128 e4m3 product
# ---------------------------------------------------------------------------------------------


def make_wgmma_tile(n: int) -> MicroKernel:
    """wgmma_tile_n{n}(tmap_a, tmap_b, fragments, status)

    One warpgroup (128 threads). TMA loads A (64 x 128 e4m3) and B (n x 128 e4m3, K-major) into
    shared memory with the 128B swizzle, exactly as the GEMM kernel stages one K block; then
    four wgmma m64n{n}k32 steps, K advanced by 32 bytes (= 32 e4m3) on both descriptors:

        D (64 x n, fp32) = A @ B^T

    Each thread stores its fragment (n/2 floats, fragment order) to fragments[tid]; the host
    places them with the documented layout (fragment_to_tile).
    """
    THREADS = 128
    N_ACC = n // 2
    A_BYTES, B_BYTES = 64 * 128, n * 128
    SMEM_A, SMEM_B = 0, 64 * 128            # both 1024-aligned (n % 8 == 0): swizzle atoms
    BAR = SMEM_B + B_BYTES

    def make_kernel():
        mma = wgmma_fp8(n)
        desc = smem_descriptor(SWIZZLE)
        wait_all = wgmma_wait(0)
        zeros = fragment_zeros(N_ACC)
        fence = fragment_fence(N_ACC)
        store = fragment_store_global(N_ACC)

        def wgmma_tile(tmap_a, tmap_b, fragments, status):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            base = smem_base(smem)
            tid = cuda.threadIdx.x
            if tid == 0:
                mbarrier_init(base + BAR, 1)
                fence_mbarrier_init()
            cuda.syncthreads()
            if tid == 0:
                mbarrier_arrive_expect_tx(base + BAR, A_BYTES + B_BYTES)   # both tiles
                tma_load_2d(base + SMEM_A, tmap_a, base + BAR, 0, 0)
                tma_load_2d(base + SMEM_B, tmap_b, base + BAR, 0, 0)
            landed = mbarrier_wait_bounded(base + BAR, 0)
            a_tile = base + SMEM_A
            b_tile = base + SMEM_B
            acc = zeros()
            wgmma_fence()                          # registers/smem ready for the tensor cores
            acc = mma(desc(a_tile), desc(b_tile), acc, 0)             # D = A[:, 0:32] B^T
            acc = mma(desc(a_tile + 32), desc(b_tile + 32), acc, 1)   # D += A[:, 32:64] ...
            acc = mma(desc(a_tile + 64), desc(b_tile + 64), acc, 1)
            acc = mma(desc(a_tile + 96), desc(b_tile + 96), acc, 1)
            wgmma_commit()
            wait_all()                             # the fragment is valid from here on
            acc = fence(acc)                       # ... and no read of it moves above the wait
            store(fragments + 4 * N_ACC * tid, acc)
            st_global_u32(status + 4 * tid, landed)

        return wgmma_tile

    return _micro_kernel(
        f"microkernel_wgmma_m64n{n}k128_e4m3", make_kernel, signature=(I64, I64, I64, I64),
        threads=THREADS, smem_bytes=BAR + MBARRIER_BYTES, tensormap_params=(0, 1), n=n)


def fragment_to_tile(fragments, n: int):
    """Place per-thread fragments (a torch tensor (128, n/2), fragment order) into the 64 x n
    tile, with the layout documented in pyfp8gemm/device/tile.py:

        element 4i+j of thread t (warp w = t // 32, lane l = t % 32) sits at
        row 16*(w % 4) + l // 4 + 8*(j >= 2), column 8i + 2*(l % 4) + j % 2.
    """
    import torch
    rows, cols = fragment_coordinates(n)
    tile = torch.full((64, n), float("nan"), dtype=fragments.dtype, device=fragments.device)
    tile[rows.to(fragments.device), cols.to(fragments.device)] = fragments
    return tile


def fragment_coordinates(n: int):
    """(rows, cols): two (128, n/2) int64 tensors, the tile coordinates of every thread's
    fragment elements (see fragment_to_tile)."""
    import torch
    t = torch.arange(128).view(128, 1)
    e = torch.arange(n // 2).view(1, n // 2)
    warp, lane = t // 32, t % 32
    i, j = e // 4, e % 4
    rows = 16 * (warp % 4) + lane // 4 + 8 * (j >= 2).long()
    cols = 8 * i + 2 * (lane % 4) + j % 2
    return rows.expand(128, n // 2), cols.expand(128, n // 2)


# ---------------------------------------------------------------------------------------------
# c. TMA multicast into a 2-CTA cluster, and the remote (cluster) mbarrier arrive
# ---------------------------------------------------------------------------------------------

CLUSTER = 2


def make_multicast() -> MicroKernel:
    """multicast(tmap, tiles, status, ranks, x, y), clusters of 2 CTAs, 128 threads each.

    Cluster c (CTAs 2c and 2c+1) works on the tile at (x, y + 64 c):
    1. each CTA initializes two barriers: `full` (1 arrival + the tile's bytes) and
       `peers_done` (one arrival from each CTA of the cluster); cluster_sync makes both CTAs'
       barriers initialized before anyone can signal them;
    2. each CTA's thread 0 arms its own `full` with expect_tx(TILE_BYTES): the multicast
       delivers the whole tile to each CTA and completes TILE_BYTES on each CTA's barrier at
       the same smem offset (if rank 0's bytes arrive at rank 1 before rank 1's expect_tx,
       the tx-count goes transiently negative; the phase still needs rank 1's arrival);
    3. rank 0 alone issues tma_load_2d_multicast with cta_mask 0b11;
    4. each CTA copies its own smem tile (un-swizzled) to tiles[blockIdx.x];
    5. each CTA then arrives on `peers_done` of both CTAs (mbarrier_arrive_cluster, the
       GEMM's "empty" signal), and waits on its own: both CTAs are done with the tile.
    ranks[blockIdx.x] = %cluster_ctarank; status[blockIdx.x][tid] = worst of both waits.
    """
    THREADS = 128
    CTA_MASK = (1 << CLUSTER) - 1
    SMEM_TILE, FULL, PEERS_DONE = 0, TILE_BYTES, TILE_BYTES + MBARRIER_BYTES

    def make_kernel():
        def multicast(tmap, tiles, status, ranks, x, y):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            base = smem_base(smem)
            tid = cuda.threadIdx.x
            block = cuda.blockIdx.x
            rank = cluster_ctarank()
            if tid == 0:
                mbarrier_init(base + FULL, 1)
                mbarrier_init(base + PEERS_DONE, CLUSTER)
                fence_mbarrier_init()              # publish the inits to the whole cluster
            cluster_sync()
            if tid == 0:
                mbarrier_arrive_expect_tx(base + FULL, TILE_BYTES)
                if rank == 0:
                    tma_load_2d_multicast(base + SMEM_TILE, tmap, base + FULL, x,
                                          y + TILE_ROWS * (block // CLUSTER), CTA_MASK)
            landed = mbarrier_wait_bounded(base + FULL, 0)
            copy_tile_unswizzled(base + SMEM_TILE, tiles + TILE_BYTES * block, tid, THREADS)
            cuda.syncthreads()                     # every thread of this CTA is done
            if tid < CLUSTER:                      # thread r signals the CTA of rank r
                mbarrier_arrive_cluster(base + PEERS_DONE, tid)
            peers = mbarrier_wait_bounded(base + PEERS_DONE, 0)
            if tid == 0:
                st_global_u32(ranks + 4 * block, rank)
            st_global_u32(status + 4 * (THREADS * block + tid), worst(landed, peers))
            cluster_sync()        # no CTA leaves while its peer may still signal its smem

        return multicast

    return _micro_kernel(
        "microkernel_tma_multicast_cluster2", make_kernel,
        signature=(I64, I64, I64, I64, I32, I32), threads=THREADS,
        smem_bytes=PEERS_DONE + MBARRIER_BYTES, tensormap_params=(0,), cluster_size=CLUSTER)


# ---------------------------------------------------------------------------------------------
# d. setmaxnreg: registers move from the producer warpgroup to the math warpgroups
# ---------------------------------------------------------------------------------------------

SETMAXNREG_THREADS = 384          # 3 warpgroups: launch bounds give ptxas 65536/384 -> 168 each
PRODUCER_REGISTERS, MATH_REGISTERS = 40, 232     # 128*40 + 256*232 = 64512 <= 65536
SETMAXNREG_N_ACC = 96             # two 96-float fragments live at once: ~200 registers


def make_setmaxnreg(with_setmaxnreg: bool = True) -> MicroKernel:
    """setmaxnreg_kernel(values, out, marks, scale_row0, scale_row8, iterations), 384 threads.

    Warpgroup 2 (threads 256..383) lowers its budget to 40 registers and writes marks[t] = t.
    Warpgroups 0-1 raise theirs to 232 and then keep two 96-float fragments live across a loop:

        final = 0;  repeat `iterations` times: final += acc * (scale_row0 | scale_row8)

    (fragment_promote, uniform scale), acc = values[tid] (96 floats), out[tid] = final. About
    200 live registers: more than the 168 the launch bounds give, so without the raise ptxas
    would spill (with_setmaxnreg=False builds that control; it is never launched).
    """
    THREADS = SETMAXNREG_THREADS
    N_ACC = SETMAXNREG_N_ACC
    MATH_THREADS = 256
    suffix = "" if with_setmaxnreg else "_without"

    def make_kernel():
        give_back = setmaxnreg_dec(PRODUCER_REGISTERS)
        take = setmaxnreg_inc(MATH_REGISTERS)
        zeros = fragment_zeros(N_ACC)
        promote = fragment_promote(N_ACC, False)
        load = fragment_load_global(N_ACC)
        store = fragment_store_global(N_ACC)

        def setmaxnreg_kernel(values, out, marks, scale_row0, scale_row8, iterations):
            tid = cuda.threadIdx.x
            if tid >= MATH_THREADS:            # warpgroup-uniform branch (.sync.aligned)
                if with_setmaxnreg:
                    give_back()
                st_global_u32(marks + 4 * (tid - MATH_THREADS), tid)
            else:
                if with_setmaxnreg:
                    take()
                acc = load(values + 4 * N_ACC * tid)
                final = zeros()
                for _ in range(iterations):
                    final = promote(final, acc, scale_row0, scale_row8)
                store(out + 4 * N_ACC * tid, final)

        return setmaxnreg_kernel

    return _micro_kernel(
        f"microkernel_setmaxnreg_{PRODUCER_REGISTERS}_{MATH_REGISTERS}{suffix}", make_kernel,
        signature=(I64, I64, I64, F32, F32, I32), threads=THREADS, smem_bytes=0,
        with_setmaxnreg=with_setmaxnreg)


# ---------------------------------------------------------------------------------------------
# e. cvt.rn.bf16x2.f32: which float goes where
# ---------------------------------------------------------------------------------------------


def make_pack_bf16x2() -> MicroKernel:
    """pack_bf16x2_kernel(values, packed): packed[t] = pack_bf16x2(values[2t], values[2t+1]),
    128 threads. Documented: the first argument lands in the low 16 bits."""
    THREADS = 128

    def make_kernel():
        def pack_bf16x2_kernel(values, packed):
            tid = cuda.threadIdx.x
            lo = ld_global_f32(values + 8 * tid)
            hi = ld_global_f32(values + 8 * tid + 4)
            st_global_u32(packed + 4 * tid, pack_bf16x2(lo, hi))

        return pack_bf16x2_kernel

    return _micro_kernel("microkernel_pack_bf16x2", make_kernel, signature=(I64, I64),
                         threads=THREADS, smem_bytes=0)


def make_udiv32() -> MicroKernel:
    """udiv32_kernel(pairs, quotients): quotients[t] = udiv32(pairs[2t], pairs[2t+1]), 128
    threads (the scheduler's and split-K's divisions)."""
    THREADS = 128
    def make_kernel():
        def udiv32_kernel(pairs, quotients):
            tid = cuda.threadIdx.x
            a = ld_global_u32(pairs + 8 * tid)
            b = ld_global_u32(pairs + 8 * tid + 4)
            st_global_u32(quotients + 4 * tid, udiv32(a, b))

        return udiv32_kernel

    return _micro_kernel("microkernel_udiv32", make_kernel, signature=(I64, I64),
                         threads=THREADS, smem_bytes=0)


def make_bf16_row_copy(n: int) -> MicroKernel:
    """bf16_row_copy(values, out, rows, width_bytes, out_stride_bytes), 128 threads:

    thread t loads its n/2 fragment floats (values[t * n/2 ...], fragment order), writes them
    as bf16 into shared memory row-major with the masked epilogue's row pitch
    (GemmConfig.d_row_pitch; stmatrix); after fence.proxy.async and a barrier, each thread
    t < rows copies tile row t (its first width_bytes) to out + t * out_stride_bytes with one
    cp.async.bulk, and waits for it."""
    THREADS = 128
    PITCH = GemmConfig(64, n, 1, schedule="m_grouped_masked").d_row_pitch

    def make_kernel():
        load = fragment_load_global(n // 2)
        write_rows = fragment_store_bf16_rows(n // 2, PITCH)

        def bf16_row_copy(values, out, rows, width_bytes, out_stride_bytes):
            smem = cuda.shared.array(0, types.uint8, alignment=1024)
            base = smem_base(smem)
            tid = cuda.threadIdx.x
            write_rows(base, load(values + 2 * n * tid), 16 * (tid // 32), tid % 32)
            fence_proxy_async_smem()
            cuda.syncthreads()
            if tid < rows:
                bulk_store_1d(out + tid * out_stride_bytes, base + tid * PITCH, width_bytes)
                tma_store_commit()
                tma_store_wait()

        return bf16_row_copy

    return _micro_kernel(f"microkernel_bf16_row_copy_n{n}", make_kernel,
                         signature=(I64, I64, I32, I32, I32), threads=THREADS,
                         smem_bytes=64 * PITCH)


BF16_ROW_COPY_NS = (192, 112)
WGMMA_TILE_NS = (16, 112, 128, 256)


def all_micro_kernels() -> list[MicroKernel]:
    """Every micro-kernel the GPU tests launch (the CPU test compiles each of them)."""
    return ([make_tma_round_trip()] + [make_wgmma_tile(n) for n in WGMMA_TILE_NS]
            + [make_multicast(), make_setmaxnreg(), make_pack_bf16x2(), make_udiv32()]
            + [make_bf16_row_copy(n) for n in BF16_ROW_COPY_NS])
