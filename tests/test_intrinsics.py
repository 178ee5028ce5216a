"""The intrinsics on the CPU: each one compiles, and turns into the Hopper instruction it names.

pyfp8gemm writes its kernels in Python; each PTX instruction the kernels need is one small
intrinsic (pyfp8gemm/device/ptx.py), and register-tile operations are straight-line IR
(pyfp8gemm/device/tile.py). Here every one of them is compiled inside a tiny sm_90a kernel

    numba-cuda -> PTX (cc=(9, 0, "a"), launch bounds) -> the compiler's post-edits -> ptxas

and the SASS that ptxas made is read back (cuobjdump) to check it holds the intended Hopper
instruction: the table below is a dictionary from intrinsic to SASS. A test also checks that no
public intrinsic lacks an entry. Then: the PTX post-edits of pyfp8gemm.cache.compiler on real
numba PTX, the fragment operations (register-only FFMA chains), setmaxnreg's effect on register
allocation, and every micro-kernel of tests/microkernels.py (which the GPU tests launch) builds.

No GPU needed. Compiled kernels are cached per module (each builds once, ~0.3 s).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Callable

import pytest
from numba import cuda
from numba.cuda import types

from pyfp8gemm.cache import compiler, toolchain
from pyfp8gemm.cache.toolchain import CompileError
from pyfp8gemm.device import ptx, tile
from pyfp8gemm.device.ptx import (
    cluster_arrive_relaxed, cluster_ctarank, cluster_sync, cluster_wait, cp_async_4, cp_async_mbarrier_arrive_noinc, elect_one, fence_mbarrier_init, fence_proxy_async_smem,
    ld_global_nc_s32, ld_shared_f32, mbarrier_arrive, mbarrier_arrive_cluster,
    mbarrier_arrive_expect_tx, mbarrier_init, mbarrier_test_wait, mbarrier_wait,
    named_barrier_sync,
    prefetch_tensormap, ptx_instruction, setmaxnreg_dec, setmaxnreg_inc, smem_base,
    atom_add_global_u32, fence_acq_rel_gpu, ld_shared_u32,
    st_shared_u32, smem_descriptor_words, tma_load_2d,
    tma_load_2d_multicast,
    tma_load_3d, tma_store_2d, tma_store_commit, tma_store_wait, tma_store_wait_read, udiv32,
    tma_store_3d, tma_reduce_add_3d, bulk_store_1d,
    warp_uniform, wgmma_commit, wgmma_fence, wgmma_fp8, wgmma_wait,
    bits_as_f32, cvt_e4m3x2, f32_as_bits, ld_global_nc_v4_u32, ld_shared_u16, st_global_v2_u32,
    st_global_v4_u32, st_shared_v4_u32, ld_shared_u8, ld_shared_v4_u32, st_shared_v2_u32,
)
from pyfp8gemm.device.tile import (
    fragment_add_global_v4, fragment_fence, fragment_halves, fragment_promote,
    fragment_store_bf16,
    fragment_column_scales, fragment_promote_per_column,
    fragment_store_bf16_transposed_global,
    fragment_store_f32_global, fragment_store_global_v4, fragment_zeros,
    fragment_store_f32_staged, fragment_store_bf16_rows,
)

import microkernels
from microkernels import (
    ld_global_nc_f32, named_barrier_arrive, pack_bf16x2, smem_descriptor, stmatrix_x1,
    stmatrix_x2, stmatrix_x4,
    fragment_coordinates, fragment_load_global, fragment_store_global, st_global_f32,
    st_global_u32,
)

I64, I32, F32 = types.int64, types.int32, types.float32

# ---------------------------------------------------------------------------------------------
# Building tiny kernels and reading their SASS
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyKernel:
    name: str
    pyfunc: Callable
    signature: tuple
    threads: int
    tensormap_params: tuple
    covers: tuple          # the intrinsics (names in ptx.py / tile.py) whose SASS it shows


@dataclass(frozen=True)
class Built:
    ptx: str               # after the post-edits
    cubin: bytes
    sass: str
    instructions: tuple    # "OPCODE.MODIFIERS operands" per SASS instruction, in order
    usage: dict            # toolchain.resource_usage of the kernel


TINY_KERNELS: dict[str, TinyKernel] = {}
_built: dict[str, Built] = {}

# One SASS line: "/*0230*/  @P0 ELECT P2, URZ, PT ;  /* 0x... */" -> "ELECT P2, URZ, PT"
_INSTRUCTION = re.compile(r"/\*[0-9a-fA-F]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][^;]*?)\s*;")


def tiny_kernel(*covers, signature=(I64,), threads=128, tensormap_params=()):
    """Register a tiny kernel (a plain Python function) that shows the SASS of `covers`."""
    def register(pyfunc):
        TINY_KERNELS[pyfunc.__name__] = TinyKernel(pyfunc.__name__, pyfunc, signature, threads,
                                                   tensormap_params, covers)
        return pyfunc
    return register


def build(name, pyfunc, signature, threads=128, tensormap_params=()) -> Built:
    """numba-cuda -> PTX for sm_90a -> post-edits (entry name, tensor maps by value) -> ptxas;
    memoized by name for the whole test module."""
    if name not in _built:
        ptx_text, _ = cuda.compile_ptx(pyfunc, signature, cc=compiler.COMPUTE_CAPABILITY,
                                       launch_bounds=(threads, 1))
        ptx_text = compiler.rename_entry(ptx_text, name)
        ptx_text = compiler.tensormaps_by_value(ptx_text, name, tensormap_params)
        cubin = toolchain.ptxas(ptx_text, arch=compiler.ARCH)
        sass = toolchain.sass(cubin)
        _built[name] = Built(ptx_text, cubin, sass, tuple(_INSTRUCTION.findall(sass)),
                             toolchain.resource_usage(cubin)[name])
    return _built[name]


def built(name) -> Built:
    kernel = TINY_KERNELS[name]
    return build(name, kernel.pyfunc, kernel.signature, kernel.threads, kernel.tensormap_params)


def matching(instructions, pattern):
    """The instructions that match `pattern` at their start (opcode first)."""
    return [i for i in instructions if re.match(pattern, i)]


def opcodes(instructions):
    return collections.Counter(i.split()[0] for i in instructions)


# ---------------------------------------------------------------------------------------------
# The tiny kernels: one idea each. `out` is a global pointer that keeps results alive.
# ---------------------------------------------------------------------------------------------

# Shared-memory layout of the tiny kernels: a tile at 0, a barrier at 8 KB.
BAR = 8192


@tiny_kernel("smem_base", "ld_shared_f32")
def shared_load(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    st_global_f32(out, ld_shared_f32(smem_base(smem) + 4 * cuda.threadIdx.x))


@tiny_kernel("ld_shared_u32", "st_shared_u32")
def shared_word_round_trip(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    word = smem_base(smem) + 4 * cuda.threadIdx.x
    st_shared_u32(word, cuda.threadIdx.x)
    st_global_u32(out, ld_shared_u32(word ^ 4))


@tiny_kernel("atom_add_global_u32", "fence_acq_rel_gpu", "st_global_u32")
def count_arrivals(out):
    ptx.st_global_u32(out + 8, 7)
    fence_acq_rel_gpu()
    if atom_add_global_u32(out, 1) == 31:
        ptx.st_global_u32(out + 4, 0)


zeros_8 = fragment_zeros(8)
add_partial_8 = fragment_add_global_v4(8)
store_partial_8 = fragment_store_global_v4(8)


@tiny_kernel("fragment_store_global_v4", "fragment_add_global_v4")
def partial_tile_round_trip(out):
    tid = cuda.threadIdx.x
    frag = add_partial_8(zeros_8(), out + 16 * tid, 16 * 128)
    store_partial_8(out + 4096 + 16 * tid, frag, 16 * 128)


@tiny_kernel("ld_global_nc_f32")
def read_only_global_load(out):
    st_global_f32(out, ld_global_nc_f32(out + 4))


@tiny_kernel("ld_global_nc_s32")
def read_only_global_int(out):
    st_global_u32(out, ld_global_nc_s32(out + 4) + 1)


@tiny_kernel("ld_global_nc_v4_u32", "st_shared_v4_u32", "ld_shared_u16", "bits_as_f32",
             "cvt_e4m3x2", "st_global_v2_u32")
def quantize_eight_bytes(out):
    """The fused quantizer's row step in miniature: 16 bytes in, two words parked in shared
    memory, four values converted to E4M3 pairs, 8 bytes out."""
    smem = cuda.shared.array(0, types.uint8, alignment=16)
    base = smem_base(smem) + 16 * cuda.threadIdx.x
    w0, w1, w2, w3 = ld_global_nc_v4_u32(out + 16 * cuda.threadIdx.x)
    st_shared_v4_u32(base, w0, w1, w2, w3)
    h = types.uint32(ld_shared_u16(base + 2)) << 16
    lo = cvt_e4m3x2(bits_as_f32(w0 << 16), bits_as_f32(h))
    hi = cvt_e4m3x2(bits_as_f32(w2 & 0xFFFF0000), bits_as_f32(w3 << 16))
    st_global_v2_u32(out + 4096 + 8 * cuda.threadIdx.x, types.uint32(lo), types.uint32(hi))


@tiny_kernel("ld_shared_v4_u32", "st_shared_v2_u32", "ld_shared_u8")
def transpose_bytes(out):
    """The weight quantizer's shared-memory steps: 16 bytes parked and read back, 8 bytes
    stored, one byte gathered from another thread's word."""
    smem = cuda.shared.array(0, types.uint8, alignment=16)
    base = smem_base(smem)
    tid = cuda.threadIdx.x
    w0, w1, w2, w3 = ld_global_nc_v4_u32(out + 16 * tid)
    st_shared_v4_u32(base + 16 * tid, w0, w1, w2, w3)
    r0, r1, r2, r3 = ld_shared_v4_u32(base + 16 * (tid ^ 1))
    st_shared_v2_u32(base + 4096 + 8 * tid, r0 ^ r1, r2 ^ r3)
    cuda.syncthreads()
    st_global_u32(out + 8192 + 4 * tid, ld_shared_u8(base + 4096 + 8 * (tid ^ 3) + 1))


@tiny_kernel("st_global_v4_u32", "f32_as_bits", "st_global_f32")
def store_sixteen_bytes(out):
    value = ld_global_nc_f32(out + 4 * cuda.threadIdx.x)
    bits = f32_as_bits(value)
    st_global_v4_u32(out + 4096 + 16 * cuda.threadIdx.x, bits, bits ^ 1, bits ^ 2, bits ^ 3)
    st_global_f32(out + 8192 + 4 * cuda.threadIdx.x, value * 2)


store_transposed_8 = fragment_store_bf16_transposed_global(8)


@tiny_kernel("fragment_store_bf16_transposed_global")
def transposed_bf16_store(out):
    """A swap-AB tile's way out: element (r, c) to D[c, r], bounded (rows: D's columns)."""
    tid = cuda.threadIdx.x
    frag = add_partial_8(zeros_8(), out + 16 * tid, 16 * 128)
    store_transposed_8(out + 8192 + 2 * tid, frag, 256, 40 - tid // 4, 16 - 2 * (tid % 4))


column_scales_8 = fragment_column_scales(8)
promote_per_column_8 = fragment_promote_per_column(8)
store_f32_acc_8 = fragment_store_f32_global(8, True)


@tiny_kernel("fragment_column_scales", "fragment_promote_per_column", "fragment_store_f32_global")
def promote_per_column_and_accumulate(out):
    """The 1D1D epilogue's path: column scales from shared memory, a per-element promotion,
    then D = C + fragment (C read, D written, both bounded)."""
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    tid = cuda.threadIdx.x
    frag = add_partial_8(zeros_8(), out + 16 * tid, 16 * 128)
    columns = column_scales_8(smem_base(smem) + 8 * (tid % 4))
    final = promote_per_column_8(zeros_8(), frag, ld_shared_f32(smem_base(smem) + 256), 2.0,
                                 columns)
    store_f32_acc_8(out + 8192 + 8 * tid, out + 16384 + 8 * tid, final, 512, 20 - tid // 4,
                    16 - 2 * (tid % 4))


@tiny_kernel("pack_bf16x2")
def pack_two_floats(out):
    st_global_u32(out, pack_bf16x2(ld_global_nc_f32(out + 4), ld_global_nc_f32(out + 8)))


@tiny_kernel("elect_one")
def elect_a_lane(out):
    st_global_u32(out + 4 * cuda.threadIdx.x, elect_one())


@tiny_kernel("named_barrier_sync")
def named_barrier_1_of_128(out):
    named_barrier_sync(1, 128)          # barrier id 1, 128 threads


@tiny_kernel("named_barrier_arrive", threads=256)
def named_barrier_arrive_2_of_256(out):
    if cuda.threadIdx.x < 128:
        named_barrier_arrive(2, 256)    # the first 128 count in and go on
    else:
        named_barrier_sync(2, 256)      # the other 128 wait for them


@tiny_kernel("cluster_ctarank")
def cluster_rank(out):
    st_global_u32(out, cluster_ctarank())


@tiny_kernel("cluster_sync")
def cluster_barrier(out):
    cluster_sync()


@tiny_kernel("cluster_arrive_relaxed", "cluster_wait")
def split_cluster_barrier_after_load(out):
    # The kernels' first barrier: global loads before the relaxed arrive, their use after the wait.
    value = ld_global_nc_s32(out)
    cluster_arrive_relaxed()
    cluster_wait()
    st_global_u32(out, types.uint32(value))


@tiny_kernel()
def cluster_barrier_after_load(out):
    # The same with the releasing arrive (cluster_sync), for the regression guard below.
    value = ld_global_nc_s32(out)
    cluster_sync()
    st_global_u32(out, types.uint32(value))


@tiny_kernel("fence_proxy_async_smem")
def fence_generic_to_async(out):
    fence_proxy_async_smem()


@tiny_kernel("mbarrier_init", "fence_mbarrier_init")
def init_barrier(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    if cuda.threadIdx.x == 0:
        mbarrier_init(smem_base(smem) + BAR, 1)
        fence_mbarrier_init()
    cuda.syncthreads()


@tiny_kernel("mbarrier_arrive")
def arrive(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    mbarrier_arrive(smem_base(smem) + BAR)


@tiny_kernel("cp_async_4", "cp_async_mbarrier_arrive_noinc")
def copy_scale_then_arrive(out):
    # The B-scale thread: a 4-byte global -> shared copy, then an arrival once it landed.
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    cp_async_4(smem_base(smem) + 16, out + 4)
    cp_async_mbarrier_arrive_noinc(smem_base(smem) + BAR)


@tiny_kernel("mbarrier_arrive_expect_tx")
def arrive_expecting_bytes(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    mbarrier_arrive_expect_tx(smem_base(smem) + BAR, 8192)


@tiny_kernel("mbarrier_arrive_cluster")
def arrive_on_peer(out):
    # The GEMM's "empty" signal: lane r of a warp arrives on the barrier of the CTA of rank r.
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    lane = cuda.threadIdx.x % 32
    if lane < 2:
        mbarrier_arrive_cluster(smem_base(smem) + BAR, lane)


# The form mbarrier_arrive_cluster must not regress to: .release.cluster orders all of the
# thread's prior memory accesses cluster-wide, which ptxas implements as a GPU-wide MEMBAR.
_arrive_release_cluster = ptx_instruction(
    "arrive_release_cluster",
    "{ .reg .b32 remote; mapa.shared::cluster.u32 remote, $0, $1; "
    "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote]; }",
    (types.uint32, types.uint32))


@tiny_kernel()
def arrive_on_peer_with_release(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    lane = cuda.threadIdx.x % 32
    if lane < 2:
        _arrive_release_cluster(smem_base(smem) + BAR, lane)


@tiny_kernel("mbarrier_wait")
def wait_for_phase(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    mbarrier_wait(smem_base(smem) + BAR, 0)


@tiny_kernel("udiv32", signature=(I64, I32, I32))
def divide_words(out, a, b):
    st_global_u32(out, udiv32(a, b))


@tiny_kernel("mbarrier_test_wait")
def probe_phase(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    st_global_u32(out, mbarrier_test_wait(smem_base(smem) + BAR, 1))


@tiny_kernel("prefetch_tensormap", signature=(I64,), tensormap_params=(0,))
def prefetch_map(tmap):
    prefetch_tensormap(tmap)


@tiny_kernel("tma_load_2d", signature=(I64, I32, I32), tensormap_params=(0,))
def tma_load_tile(tmap, x, y):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    base = smem_base(smem)
    tma_load_2d(base, tmap, base + BAR, x, y)


@tiny_kernel("tma_load_2d_multicast", signature=(I64, I32, I32), tensormap_params=(0,))
def tma_load_tile_to_two_ctas(tmap, x, y):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    base = smem_base(smem)
    tma_load_2d_multicast(base, tmap, base + BAR, x, y, 0b11)


@tiny_kernel("tma_load_3d", signature=(I64, I32, I32), tensormap_params=(0,))
def tma_load_box_3d(tmap, x, y):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    base = smem_base(smem)
    tma_load_3d(base, tmap, base + BAR, x, y, 1)


@tiny_kernel("tma_store_2d", "tma_store_commit", signature=(I64, I32, I32), tensormap_params=(0,))
def tma_store_tile(tmap, x, y):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    tma_store_2d(tmap, smem_base(smem), x, y)
    tma_store_commit()


@tiny_kernel("tma_store_3d", "tma_reduce_add_3d", signature=(I64, I32, I32, I32),
             tensormap_params=(0,))
def tma_store_and_add_box_3d(tmap, x, y, z):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    tma_store_3d(tmap, smem_base(smem), x, y, z)
    tma_reduce_add_3d(tmap, smem_base(smem) + 8192, x + 32, y, z)
    tma_store_commit()


store_f32_swizzled_16 = fragment_store_f32_staged(16, True)
store_f32_rows_16 = fragment_store_f32_staged(16, False)


@tiny_kernel("fragment_store_f32_staged")
def staged_f32_tiles(out):
    """A 64 x 32 FP32 tile of a warpgroup into one 128-byte-swizzled panel, and into one
    row-major box (rows 128 bytes apart) after it."""
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    tid = cuda.threadIdx.x
    frag = add_partial_8(zeros_8(), out + 16 * tid, 16 * 128)
    both = (frag[0], frag[1], frag[2], frag[3], frag[4], frag[5], frag[6], frag[7],
            frag[0], frag[1], frag[2], frag[3], frag[4], frag[5], frag[6], frag[7])
    row, lane = 16 * (tid // 32) + (tid % 32) // 4, tid % 32
    store_f32_swizzled_16(smem_base(smem), both, row, lane)
    store_f32_rows_16(smem_base(smem) + 8192, both, row, lane)
    cuda.syncthreads()
    st_global_u32(out + 4 * tid, ld_shared_u32(smem_base(smem) + 4 * tid)
                  + ld_shared_u32(smem_base(smem) + 8192 + 4 * tid))


@tiny_kernel("bulk_store_1d", signature=(I64, I32))
def bulk_store_row(out, row_bytes):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    bulk_store_1d(out, smem_base(smem), row_bytes)
    tma_store_commit()


@tiny_kernel("tma_store_wait_read")
def wait_stores_read_smem(out):
    tma_store_wait_read()


@tiny_kernel("tma_store_wait")
def wait_stores_done(out):
    tma_store_wait()


@tiny_kernel("stmatrix_x1")
def store_one_8x8_matrix(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    stmatrix_x1(smem_base(smem) + 16 * cuda.threadIdx.x, cuda.threadIdx.x)


@tiny_kernel("stmatrix_x2")
def store_two_8x8_matrices(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    stmatrix_x2(smem_base(smem) + 16 * cuda.threadIdx.x, cuda.threadIdx.x, 7)


@tiny_kernel("stmatrix_x4")
def store_four_8x8_matrices(out):
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    stmatrix_x4(smem_base(smem) + 16 * cuda.threadIdx.x, cuda.threadIdx.x, 7, 8, 9)


@tiny_kernel("wgmma_fence")
def warpgroup_fence(out):
    wgmma_fence()


wait_none_pending = wgmma_wait(0)
wait_one_pending = wgmma_wait(1)


@tiny_kernel("wgmma_wait")
def warpgroup_wait_all(out):
    wait_none_pending()


@tiny_kernel("wgmma_wait")
def warpgroup_wait_all_but_one(out):
    wait_one_pending()


grow_to_232 = setmaxnreg_inc(232)
shrink_to_40 = setmaxnreg_dec(40)


@tiny_kernel("setmaxnreg_inc", "setmaxnreg_dec", threads=384)
def reallocate_registers(out):
    # DeepGEMM's budgets: 128 * 40 + 256 * 232 <= 65536. The branch is warpgroup-uniform.
    if cuda.threadIdx.x >= 256:
        shrink_to_40()
    else:
        grow_to_232()


def make_wgmma_kernel(n):
    """Two k32 steps of wgmma m64n{n}k32 over smem descriptors: fence, mma, mma, commit, wait."""
    n_acc = n // 2
    mma = wgmma_fp8(n)
    desc = smem_descriptor(128)
    low, desc_of_low = smem_descriptor_words(128)
    zeros = fragment_zeros(n_acc)
    fence = fragment_fence(n_acc)
    store = fragment_store_global(n_acc)

    def wgmma_two_steps(out):
        smem = cuda.shared.array(0, types.uint8, alignment=1024)
        a_tile = smem_base(smem)
        b_tile = a_tile + 8192
        acc = zeros()
        wgmma_fence()
        acc = mma(desc(a_tile), desc(b_tile), acc, 0)             # D = A B^T (zeros unread)
        # D += ..., next 32 of K (descriptors stepped the way the GEMM kernel steps them:
        # low words + 2, i.e. 32 bytes)
        acc = mma(desc_of_low(low(a_tile) + 2), desc_of_low(low(b_tile) + 2), acc, 1)
        wgmma_commit()
        wait_none_pending()
        acc = fence(acc)
        store(out + 4 * n_acc * cuda.threadIdx.x, acc)

    wgmma_two_steps.__name__ = f"wgmma_m64n{n}k32"
    return wgmma_two_steps


WGMMA_NS = (16, 64, 96, 112, 128, 256)     # 96: split promotion's halves of 192
for _n in WGMMA_NS:
    tiny_kernel("wgmma_fp8", "smem_descriptor", "smem_descriptor_words", "fragment_zeros",
                "fragment_fence", "wgmma_commit")(make_wgmma_kernel(_n))


@tiny_kernel("warp_uniform")
def broadcast_lane_0(out):
    st_global_u32(out + 4 * cuda.threadIdx.x, warp_uniform(cuda.threadIdx.x // 32))


# ---------------------------------------------------------------------------------------------
# Intrinsic -> SASS
# ---------------------------------------------------------------------------------------------

# (tiny kernel, regular expression an instruction must match: opcode first, then operands)
SASS_OF = [
    ("quantize_eight_bytes", r"LDG\.E\.128\.CONSTANT\b"),                # ld.global.nc.v4.u32
    ("quantize_eight_bytes", r"STS\.128\b"),                               # st.shared.v4.u32
    ("quantize_eight_bytes", r"LDS\.U16\b"),                               # ld.shared.u16
    ("quantize_eight_bytes", r"F2FP\.SATFINITE\.E4M3\.F32\.PACK_AB"),      # cvt...e4m3x2.f32
    ("quantize_eight_bytes", r"STG\.E\.64\b"),                            # st.global.v2.u32
    ("transpose_bytes", r"LDS\.128\b"),                                   # ld.shared.v4.u32
    ("transpose_bytes", r"STS\.64\b"),                                    # st.shared.v2.u32
    ("transpose_bytes", r"LDS\.U8\b"),                                    # ld.shared.u8
    ("store_sixteen_bytes", r"STG\.E\.128\b"),                            # st.global.v4.u32
    ("store_sixteen_bytes", r"STG\.E\b"),                                  # st.global.f32
    ("shared_load", r"LDS\b"),
    ("shared_word_round_trip", r"STS\b"),
    ("shared_word_round_trip", r"LDS\b"),
    ("count_arrivals", r"(ATOMG\.E\.ADD|RED\.E\.ADD|ATOMG\.ADD)"),   # atom.global.add
    ("count_arrivals", r"MEMBAR\.(\w+\.)?GPU\b"),                  # fence.acq_rel.gpu
    ("count_arrivals", r"STG\.E\b"),                                # st.global.u32
    ("partial_tile_round_trip", r"LDG\.E\.128\.STRONG\.GPU\b|LDG\.E\.EL\.128\b|LDG\.E\.128\b"),
    ("partial_tile_round_trip", r"STG\.E\.128\b"),
    ("broadcast_lane_0", r"SHFL\.IDX\b"),                       # warp_uniform
    ("read_only_global_load", r"LDG\.E\.CONSTANT\b"),             # ld.global.nc
    ("read_only_global_int", r"LDG\.E\.CONSTANT\b"),
    ("transposed_bf16_store", r"STG\.E\.U16\b"),                   # one bf16 per element
    ("promote_per_column_and_accumulate", r"LDS\.64\b"),            # ld.shared.v2.f32
    ("promote_per_column_and_accumulate", r"FFMA\b"),
    ("promote_per_column_and_accumulate", r"LDG\.E\.64\b"),          # C, two floats
    ("promote_per_column_and_accumulate", r"STG\.E\.64\b"),          # D, two floats
    ("pack_two_floats", r"F2FP\.BF16\.F32\.PACK_AB\b"),           # cvt.rn.bf16x2.f32
    ("elect_a_lane", r"ELECT\b"),
    ("named_barrier_1_of_128", r"BAR\.SYNC\S* 0x1, 0x80\b"),      # id 1, 128 threads
    ("named_barrier_arrive_2_of_256", r"BAR\.ARV 0x2, 0x100\b"),    # id 2, 256 threads
    ("cluster_rank", r"S2U?R \w+, SR_CgaCtaId\b"),                # %cluster_ctarank
    ("cluster_barrier", r"UCGABAR_ARV\b"),
    ("cluster_barrier", r"UCGABAR_WAIT\b"),
    ("split_cluster_barrier_after_load", r"UCGABAR_ARV\b"),
    ("split_cluster_barrier_after_load", r"UCGABAR_WAIT\b"),
    ("fence_generic_to_async", r"FENCE\.VIEW\.ASYNC\.S\b"),
    ("init_barrier", r"SYNCS\.EXCH\.64\b"),                       # mbarrier.init
    ("arrive", r"SYNCS\.ARRIVE\.TRANS64\.A1T0\b"),                # 1 arrival, 0 bytes
    ("arrive_expecting_bytes", r"SYNCS\.ARRIVE\.TRANS64 "),       # bytes in a register
    ("copy_scale_then_arrive", r"LDGSTS\.E\b"),                    # cp.async 4 bytes
    ("copy_scale_then_arrive", r"ARRIVES\.LDGSTSBAR\.64\.ARVCNT\b"),  # .noinc: counts
    ("arrive_on_peer", r"SYNCS\.ARRIVE\.TRANS64\.RED\.A1T0\b"),   # remote: a reduction
    ("wait_for_phase", r"SYNCS\.PHASECHK\.TRANS64\.TRYWAIT\b"),
    ("wait_for_phase", r"NANOSLEEP\.SYNCS\b"),                   # the suspend-time hint
    ("probe_phase", r"SYNCS\.PHASECHK\.TRANS64 "),                  # test_wait: no TRYWAIT
    ("divide_words", r"MUFU\.RCP\b"),                      # inline 32-bit division (no CALL)
    ("prefetch_map", r"UTMACCTL\.PF\b"),
    ("tma_load_tile", r"UTMALDG\.2D \["),
    ("tma_load_tile_to_two_ctas", r"UTMALDG\.2D\.MULTICAST\b"),
    ("tma_load_box_3d", r"UTMALDG\.3D\b"),
    ("tma_store_tile", r"UTMASTG\.2D\b"),
    ("tma_store_tile", r"UTMACMDFLUSH\b"),                        # commit_group
    ("tma_store_and_add_box_3d", r"UTMASTG\.3D\b"),
    ("bulk_store_row", r"UBLKCP\.G\.S\b"),                          # cp.async.bulk s2g
    ("tma_store_and_add_box_3d", r"UTMAREDG\.3D\.ADD\b"),         # reduce-add in L2
    ("staged_f32_tiles", r"STS\.64\b"),                            # st.shared.v2.f32
    ("wait_stores_read_smem", r"DEPBAR\.LE SB0, 0x0\b"),          # wait_group.read 0
    ("wait_stores_done", r"DEPBAR\.LE SB0, 0x0\b"),               # wait_group 0
    ("store_one_8x8_matrix", r"STSM\.16\.M88 "),
    ("store_two_8x8_matrices", r"STSM\.16\.M88\.2\b"),
    ("store_four_8x8_matrices", r"STSM\.16\.M88\.4\b"),
    ("warpgroup_fence", r"WARPGROUP\.ARRIVE\b"),
    ("warpgroup_wait_all", r"WARPGROUP\.DEPBAR\.LE gsb0, 0x0\b"),
    ("warpgroup_wait_all_but_one", r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1\b"),
    ("reallocate_registers", r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, 0xe8\b"),   # inc 232
    ("reallocate_registers", r"USETMAXREG\.DEALLOC\.CTAPOOL 0x28\b"),          # dec 40
] + [(f"wgmma_m64n{n}k32", rf"QGMMA\.64x{n}x32\.F32\.E4M3\.E4M3\b") for n in WGMMA_NS]


@pytest.mark.parametrize("kernel, pattern", SASS_OF, ids=[f"{k}:{p}" for k, p in SASS_OF])
def test_intrinsic_compiles_to_its_sass_instruction(kernel, pattern):
    kernel_sass = built(kernel)
    found = matching(kernel_sass.instructions, pattern)
    assert found, (f"{kernel}: no SASS instruction matches {pattern!r}; the kernel has:\n  "
                   + "\n  ".join(kernel_sass.instructions))


def test_every_public_intrinsic_has_a_sass_check():
    """A new intrinsic in ptx.py or tile.py needs a tiny kernel here (and a SASS_OF entry)."""
    public = set(microkernels.TEST_ONLY_INTRINSICS)
    for module in (ptx, tile):
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            is_intrinsic = type(value).__name__ == "_Intrinsic"
            is_factory = callable(value) and hasattr(value, "cache_info")   # functools.cache
            if defined_here and (is_intrinsic or is_factory) and not name.startswith("_"):
                public.add(name)
    covered = {name for kernel in TINY_KERNELS.values() for name in kernel.covers}
    assert public - covered == set(), "intrinsics without a compile + SASS test"
    assert covered - public == set(), "tests claim to cover intrinsics that do not exist"


def test_fence_mbarrier_init_is_accepted_by_ptxas():
    # fence.mbarrier_init.release.cluster has no SASS of its own after a CTA-local init (ptxas
    # orders SYNCS.EXCH itself); what matters is that the PTX keeps it and ptxas accepts it.
    kernel = built("init_barrier")
    assert "fence.mbarrier_init.release.cluster;" in kernel.ptx
    assert matching(kernel.instructions, r"SYNCS\.EXCH\.64\b")


def test_remote_arrive_has_no_gpu_wide_fence():
    # Regression guard: the .release.cluster form cost a MEMBAR.ALL.GPU per arrival, i.e. per
    # math warp per K block in the multicast GEMM.
    assert not matching(built("arrive_on_peer").instructions, r"MEMBAR\.ALL\.GPU\b")
    # ... and the guard would see it: the .release.cluster form does emit the fence.
    assert matching(built("arrive_on_peer_with_release").instructions, r"MEMBAR\.ALL\.GPU\b")


def test_first_cluster_barrier_waits_for_no_memory_access():
    # Regression guard: the releasing arrive after the entry's loads cost a MEMBAR.ALL.GPU and
    # an ERRBAR (every earlier access complete) before the cluster could start (session 31).
    relaxed = built("split_cluster_barrier_after_load").instructions
    assert not matching(relaxed, r"MEMBAR\.ALL\.GPU\b") and not matching(relaxed, r"ERRBAR\b")
    # ... and the guard would see it: the releasing form does emit them.
    released = built("cluster_barrier_after_load").instructions
    assert matching(released, r"MEMBAR\.ALL\.GPU\b") and matching(released, r"ERRBAR\b")


def test_expect_tx_arrive_is_not_a_plain_arrival():
    # arrive.expect_tx carries the byte count; a plain arrive is the A1T0 ("1 arrival, 0 tx").
    assert not matching(built("arrive_expecting_bytes").instructions, r"SYNCS\.\S*A1T0")


def test_tma_load_2d_is_not_multicast():
    assert not matching(built("tma_load_tile").instructions, r"UTMALDG\S*MULTICAST")


@pytest.mark.parametrize("n", WGMMA_NS)
def test_wgmma_steps_accumulate_and_commit(n):
    qgmma = matching(built(f"wgmma_m64n{n}k32").instructions, r"QGMMA\.")
    assert len(qgmma) == 2, qgmma
    first, second = qgmma
    # accumulate=0: the first step reads no accumulator (RZ) and its scale-d predicate is off.
    assert re.search(r"\bRZ, !UPT\b", first), first
    # accumulate=1: the second reads the first one's registers.
    d_register = first.split()[1].rstrip(",")
    assert f", {d_register}," in second, (first, second)
    # wgmma.commit_group closes the batch: the last wgmma of the group carries the gsb0 token.
    assert second.endswith("gsb0"), second
    assert built(f"wgmma_m64n{n}k32").usage["local_bytes"] == 0


def _descriptor(address, swizzle_bytes):
    """The wgmma shared-memory matrix descriptor, from the PTX ISA's bit layout (K-major,
    swizzled): start address >> 4 in bits 0-13, leading byte offset 1 (unused) in 16-29,
    stride byte offset (8 rows of swizzle_bytes) >> 4 in 32-45, swizzle mode in 62-63."""
    mode = {128: 1, 64: 2, 32: 3}[swizzle_bytes]
    return (((address & 0x3FFFF) >> 4) | (1 << 16) | ((8 * swizzle_bytes >> 4) << 32)
            | (mode << 62))


def test_descriptor_words_step_like_addresses():
    # The GEMM kernel keeps only descriptors' low words and adds bytes // 16 to them (ring
    # slots, 32-byte K steps); rebuilt, they must be the descriptors of the advanced addresses.
    low, desc = smem_descriptor_words(128)
    st_global_u64 = ptx_instruction("st_global_u64", "st.global.u64 [$0], $1;",
                                    (types.uint64, types.uint64))

    def advanced(out):
        st_global_u64(out, desc(low(0x400) + 0x1F000 // 16))
        st_global_u64(out + 8, desc(low(0x2420) + 96 // 16))
        st_global_u64(out + 16, desc(low(0x3FFF0)))

    kernel = build("descriptor_words_constants", advanced, (I64,))
    constants = {int(c) % 2**64 for c in re.findall(r"mov\.u64\s+%rd\d+, (-?\d+);", kernel.ptx)}
    assert _descriptor(0x400 + 0x1F000, 128) in constants
    assert _descriptor(0x2420 + 96, 128) in constants
    assert _descriptor(0x3FFF0, 128) in constants


@pytest.mark.parametrize("swizzle_bytes", (128, 64, 32))
def test_smem_descriptor_bits(swizzle_bytes):
    # With a constant address the descriptor folds to a constant in the PTX: read it there.
    desc = smem_descriptor(swizzle_bytes)
    st_global_u64 = ptx_instruction("st_global_u64", "st.global.u64 [$0], $1;",
                                    (types.uint64, types.uint64))
    addresses = (0x400, 0x2420, 0x1F3F0)

    def descriptors(out):
        st_global_u64(out, desc(0x400))
        st_global_u64(out + 8, desc(0x2420))
        st_global_u64(out + 16, desc(0x1F3F0))

    kernel = build(f"smem_descriptor_sw{swizzle_bytes}", descriptors, (I64,))
    # (PTX prints 64-bit immediates signed: read them back as unsigned.)
    constants = {int(c) % 2**64 for c in re.findall(r"mov\.u64\s+%rd\d+, (-?\d+);", kernel.ptx)}
    for address in addresses:
        assert _descriptor(address, swizzle_bytes) in constants, hex(address)


# ---------------------------------------------------------------------------------------------
# Fragment operations: straight-line register code, no local memory
# ---------------------------------------------------------------------------------------------

FRAGMENT = 64      # floats per thread (a wgmma m64n128 fragment)
_load = fragment_load_global(FRAGMENT)
_store = fragment_store_global(FRAGMENT)
_promote_uniform = fragment_promote(FRAGMENT, False)
_promote_straddle = fragment_promote(FRAGMENT, True)
_fence = fragment_fence(FRAGMENT)
_store_bf16 = fragment_store_bf16(FRAGMENT, 64, 64 * FRAGMENT * 4, 128)   # one slab


@tiny_kernel("fragment_promote", signature=(I64, I64, F32, F32))
def promote_uniform(values, out, scale_row0, scale_row8):
    tid = cuda.threadIdx.x
    acc = _load(values + 4 * FRAGMENT * tid)
    final = _load(values + 4 * FRAGMENT * (tid + 128))
    _store(out + 4 * FRAGMENT * tid, _promote_uniform(final, acc, scale_row0, scale_row8))


@tiny_kernel("fragment_promote", signature=(I64, I64, F32, F32, F32, F32, I32))
def promote_straddle(values, out, scale_row0, scale_row8, second_row0, second_row8, n_first):
    tid = cuda.threadIdx.x
    acc = _load(values + 4 * FRAGMENT * tid)
    final = _load(values + 4 * FRAGMENT * (tid + 128))
    _store(out + 4 * FRAGMENT * tid, _promote_straddle(final, acc, scale_row0, scale_row8,
                                                       second_row0, second_row8, n_first))


@tiny_kernel(signature=(I64, I64))
def copy_fragment(values, out):
    _store(out + 4 * FRAGMENT * cuda.threadIdx.x, _load(values + 4 * FRAGMENT * cuda.threadIdx.x))


@tiny_kernel("fragment_fence", signature=(I64, I64))
def copy_fragment_fenced(values, out):
    fragment = _fence(_load(values + 4 * FRAGMENT * cuda.threadIdx.x))
    _store(out + 4 * FRAGMENT * cuda.threadIdx.x, fragment)


_split_halves, _join_halves = fragment_halves(FRAGMENT)


@tiny_kernel("fragment_halves", signature=(I64, I64))
def copy_fragment_by_halves(values, out):
    """Split into its two halves (split promotion's two m64n{N/2} fragments) and join again."""
    low, high = _split_halves(_load(values + 4 * FRAGMENT * cuda.threadIdx.x))
    _store(out + 4 * FRAGMENT * cuda.threadIdx.x, _join_halves(low, high))


_store_bf16_rows = fragment_store_bf16_rows(FRAGMENT, 272)


@tiny_kernel("fragment_store_bf16", "fragment_store_bf16_rows", signature=(I64, I64))
def fragment_to_smem_bf16(values, out):
    """The fragment into one swizzled slab, and row-major (272-byte rows) after it."""
    smem = cuda.shared.array(0, types.uint8, alignment=1024)
    tid = cuda.threadIdx.x
    fragment = _load(values + 4 * FRAGMENT * tid)
    _store_bf16(smem_base(smem), fragment, 16 * (tid // 32), tid % 32)
    _store_bf16_rows(smem_base(smem) + 16384, fragment, 16 * (tid // 32), tid % 32)


def _no_local_memory(kernel):
    usage = kernel.usage
    assert usage["local_bytes"] == usage["stack_bytes"] == 0, usage
    assert usage["spill_store_bytes"] == usage["spill_load_bytes"] == 0, usage
    assert not matching(kernel.instructions, r"(LDL|STL)\b")


@pytest.mark.parametrize("kernel", ["promote_uniform", "promote_straddle"])
def test_fragment_promote_is_one_ffma_per_element(kernel):
    # final[e] += acc[e] * scale: one FFMA each, every element in a register.
    promote = built(kernel)
    assert opcodes(promote.instructions)["FFMA"] == FRAGMENT
    _no_local_memory(promote)


def test_fragment_promote_straddle_selects_the_scale_per_column_group():
    # One select per 8-column group and row half chooses the first or second B block's scale.
    selects = opcodes(built("promote_straddle").instructions)["FSEL"]
    assert selects == 2 * (FRAGMENT // 4)
    assert opcodes(built("promote_uniform").instructions)["FSEL"] == 0


def test_fragment_fence_costs_no_instruction():
    assert opcodes(built("copy_fragment_fenced").instructions) == \
        opcodes(built("copy_fragment").instructions)


def test_fragment_halves_cost_no_instruction():
    # Splitting and joining only regroups values: the same registers, nothing moved.
    assert opcodes(built("copy_fragment_by_halves").instructions) == \
        opcodes(built("copy_fragment").instructions)
    _no_local_memory(built("copy_fragment_by_halves"))


def test_fragment_store_bf16_packs_and_uses_stmatrix():
    store = built("fragment_to_smem_bf16")                  # two layouts, one store each
    ops = opcodes(store.instructions)
    # two floats per 32-bit word, packed once for both layouts (ptxas shares the packs)
    assert ops["F2FP.BF16.F32.PACK_AB"] == FRAGMENT // 2
    assert ops["STSM.16.M88.2"] == 2 * FRAGMENT // 4             # one x2 per 8 columns
    _no_local_memory(store)


@pytest.mark.parametrize("n", (16, 112, 128, 256))
def test_documented_fragment_layout_covers_the_tile_once(n):
    # The layout the GPU tests use to place fragments: a bijection onto the 64 x n tile.
    rows, cols = fragment_coordinates(n)
    flat = sorted((rows * n + cols).flatten().tolist())
    assert flat == list(range(64 * n))


# ---------------------------------------------------------------------------------------------
# The PTX post-edits (pyfp8gemm.cache.compiler) on real numba-cuda PTX
# ---------------------------------------------------------------------------------------------


def numba_ptx(pyfunc, signature):
    ptx_text, _ = cuda.compile_ptx(pyfunc, signature, cc=compiler.COMPUTE_CAPABILITY,
                                   launch_bounds=(128, 1))
    return ptx_text


def _prefetch_and_store(tmap, out):
    prefetch_tensormap(tmap)
    st_global_u32(out, 1)


def _reads_low_half_of_map(tmap, out):
    st_global_u32(out, types.uint32(tmap))            # numba: ld.param.u32 [param]


def _reads_high_half_of_map(tmap, out):
    st_global_u32(out, types.uint32(tmap >> 32))      # numba: ld.param.u32 [param+4]


@pytest.fixture(scope="module")
def prefetch_ptx():
    return numba_ptx(_prefetch_and_store, (I64, I64))


def test_rename_entry_names_the_kernel_and_its_params(prefetch_ptx):
    mangled = re.search(r"\.entry\s+(\S+?)\s*\(", prefetch_ptx).group(1)
    assert mangled.startswith("_Z")                   # numba's mangled name
    renamed = compiler.rename_entry(prefetch_ptx, "prefetch_and_store")
    assert mangled not in renamed
    assert ".entry prefetch_and_store(" in renamed
    assert ".param .u64 prefetch_and_store_param_0" in renamed
    assert ".param .u64 prefetch_and_store_param_1" in renamed
    assert "Function : prefetch_and_store" in toolchain.sass(toolchain.ptxas(renamed))


def test_rename_entry_without_an_entry_raises():
    with pytest.raises(CompileError, match="no .entry"):
        compiler.rename_entry(".version 9.5\n.target sm_90a\n", "anything")


def test_tensormap_param_becomes_a_128_byte_by_value_param(prefetch_ptx):
    name = "prefetch_by_value"
    edited = compiler.tensormaps_by_value(compiler.rename_entry(prefetch_ptx, name), name, (0,))
    # The declaration: 128 bytes, 64-aligned (a CUtensorMap, passed as a __grid_constant__).
    assert f".param .align 64 .b8 {name}_param_0[128]" in edited
    assert f".param .u64 {name}_param_0" not in edited
    # Its load became the parameter's own address: mov + cvta.param to a generic address.
    assert not re.search(rf"ld\.param\.\w+\s+%\w+,\s*\[{name}_param_0\]", edited)
    move = re.search(rf"mov\.b64 (%rd\d+), {name}_param_0;\s*cvta\.param\.u64 \1, \1;", edited)
    assert move, edited
    # ... which is what prefetch.tensormap receives.
    assert re.search(rf"prefetch\.tensormap \[{re.escape(move.group(1))}\]", edited)
    # The other parameter (a pointer) is untouched.
    assert f".param .u64 {name}_param_1" in edited
    assert re.search(rf"ld\.param\.u64\s+%rd\d+,\s*\[{name}_param_1\]", edited)
    assert matching(_INSTRUCTION.findall(toolchain.sass(toolchain.ptxas(edited))),
                    r"UTMACCTL\.PF\b")


def test_tensormap_param_must_be_a_u64():
    def takes_int32(x, out):
        st_global_u32(out, x)

    name = "int32_map"
    renamed = compiler.rename_entry(numba_ptx(takes_int32, (I32, I64)), name)
    with pytest.raises(CompileError, match="not a u64"):
        compiler.tensormaps_by_value(renamed, name, (0,))


@pytest.mark.parametrize("reader", [_reads_low_half_of_map, _reads_high_half_of_map])
def test_tensormap_read_as_data_raises(reader):
    # A kernel that reads the map's bytes (here: NVVM narrows the u64 load to ld.param.u32)
    # cannot be turned into a by-value map: the edit refuses instead of miscompiling.
    name = "map_read_as_data"
    renamed = compiler.rename_entry(numba_ptx(reader, (I64, I64)), name)
    assert re.search(rf"ld\.param\.u32\s+%r\d+,\s*\[{name}_param_0(\+4)?\]", renamed)
    with pytest.raises(CompileError, match="unexpected way"):
        compiler.tensormaps_by_value(renamed, name, (0,))


# ---------------------------------------------------------------------------------------------
# setmaxnreg takes effect in register allocation; every micro-kernel builds
# ---------------------------------------------------------------------------------------------

_micro_built: dict[str, tuple[bytes, dict, tuple]] = {}


def build_micro(micro):
    """compiler.build (the library's pipeline, no disk cache): (cubin, meta, instructions)."""
    if micro.name not in _micro_built:
        cubin, meta = compiler.build(micro.spec)
        _micro_built[micro.name] = (cubin, meta, tuple(_INSTRUCTION.findall(toolchain.sass(cubin))))
    return _micro_built[micro.name]


def max_register(instructions):
    return max(int(r) for i in instructions for r in re.findall(r"\bR(\d+)\b", i))


def test_setmaxnreg_lets_the_math_warpgroups_use_more_than_the_launch_bounds_give():
    # 384 threads, launch bounds (384, 1): 65536 / 384 -> 168 registers per thread at entry.
    # After setmaxnreg.inc 232 the math code keeps ~200 floats live without spilling ...
    _, meta, instructions = build_micro(microkernels.make_setmaxnreg())
    assert meta["registers"] == 168
    assert meta["spill_store_bytes"] == meta["spill_load_bytes"] == 0
    assert 168 <= max_register(instructions) < microkernels.MATH_REGISTERS
    assert matching(instructions, r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, 0xe8\b")
    assert matching(instructions, r"USETMAXREG\.DEALLOC\.CTAPOOL 0x28\b")
    # ... while the same kernel without setmaxnreg has to spill.
    _, control, control_instructions = build_micro(microkernels.make_setmaxnreg(False))
    assert control["spill_store_bytes"] > 0
    assert not matching(control_instructions, r"USETMAXREG")


MICRO_KERNELS = {micro.name: micro for micro in microkernels.all_micro_kernels()}

# What each GPU micro-kernel must contain (it is built by the library's own pipeline).
MICRO_SASS = {
    "microkernel_tma_round_trip_sw128": [r"UTMALDG\.2D \[", r"UTMASTG\.2D\b",
                                         r"SYNCS\.ARRIVE\.TRANS64 ", r"UTMACCTL\.PF\b"],
    "microkernel_tma_multicast_cluster2": [r"UTMALDG\.2D\.MULTICAST\b",
                                           r"SYNCS\.ARRIVE\.TRANS64\.RED\.A1T0\b",
                                           r"UCGABAR_WAIT\b"],
    "microkernel_setmaxnreg_40_232": [r"USETMAXREG\.TRY_ALLOC", r"USETMAXREG\.DEALLOC"],
    "microkernel_pack_bf16x2": [r"F2FP\.BF16\.F32\.PACK_AB\b"],
    "microkernel_udiv32": [r"MUFU\.RCP\b"],
} | {f"microkernel_wgmma_m64n{n}k128_e4m3": [rf"QGMMA\.64x{n}x32\.F32\.E4M3\.E4M3\b"]
     for n in microkernels.WGMMA_TILE_NS
} | {f"microkernel_bf16_row_copy_n{n}": [r"STSM\.16\.M88\.2\b", r"FENCE\.VIEW\.ASYNC\.S\b",
                                         r"UBLKCP\.G\.S\b"]
     for n in microkernels.BF16_ROW_COPY_NS}


@pytest.mark.parametrize("name", sorted(MICRO_KERNELS))
def test_micro_kernel_builds(name):
    micro = MICRO_KERNELS[name]
    cubin, meta, instructions = build_micro(micro)
    assert cubin[:4] == b"\x7fELF"
    assert meta["spill_store_bytes"] == meta["spill_load_bytes"] == 0, meta
    assert not matching(instructions, r"(LDL|STL)\b")
    for pattern in MICRO_SASS[name]:
        assert matching(instructions, pattern), (name, pattern)
    if "wgmma" in name:
        assert len(matching(instructions, r"QGMMA\.")) == 4       # K = 128 = 4 x k32
    # Tensor maps travel by value; everything else is a pointer or a scalar.
    assert micro.param_types.count(None) == len(micro.spec.tensormap_params)
