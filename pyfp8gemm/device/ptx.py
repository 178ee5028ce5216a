"""Inline-PTX intrinsics: one small function per Hopper instruction the kernels use.

numba-cuda has no `asm()`; each intrinsic here emits one llvmlite `InlineAsm` call. Operands are
written $0, $1, ... with the outputs first. Shared-memory addresses are 32-bit (`r`) values
in the shared window (see `smem_base`); global pointers and tensor-map addresses are 64-bit (`l`).
Every asm is `side_effect=True` with a memory clobber, so LLVM neither drops nor reorders them
against each other: their order in the kernel source is their order in the PTX.

Intrinsics whose PTX needs a compile-time number (wgmma's N, wait_group's depth, setmaxnreg's
count) are made by small factories and memoized, so each variant exists once.
"""

import functools

from llvmlite import ir
from numba.cuda import types
from numba.cuda.extending import intrinsic

# numba type -> (LLVM type, inline-asm constraint letter)
_ASM_TYPES = {
    types.uint16: (ir.IntType(16), "h"),
    types.uint32: (ir.IntType(32), "r"),
    types.int32: (ir.IntType(32), "r"),
    types.uint64: (ir.IntType(64), "l"),
    types.int64: (ir.IntType(64), "l"),
    types.float32: (ir.FloatType(), "f"),
}

u16, u32, i32, u64, f32 = types.uint16, types.uint32, types.int32, types.uint64, types.float32


def emit_asm(builder, template, out_types, in_types, in_values, tied_outputs=False):
    """Emit one volatile inline-asm call; returns the output value(s) (None, one, or a list).

    With tied_outputs, the inputs after the first len(in_types) - len(out_types) are tied to the
    outputs ("0", "1", ...): LLVM has no "+f", so read-write operands are written this way.
    """
    out_ll = [_ASM_TYPES[t][0] for t in out_types]
    in_ll = [_ASM_TYPES[t][0] for t in in_types]
    constraints = ["=" + _ASM_TYPES[t][1] for t in out_types]
    if tied_outputs:
        n_free = len(in_types) - len(out_types)
        constraints += [_ASM_TYPES[t][1] for t in in_types[:n_free]]
        constraints += [str(i) for i in range(len(out_types))]
    else:
        constraints += [_ASM_TYPES[t][1] for t in in_types]
    constraints.append("~{memory}")
    if not out_ll:
        ret_ll = ir.VoidType()
    elif len(out_ll) == 1:
        ret_ll = out_ll[0]
    else:
        ret_ll = ir.LiteralStructType(out_ll)
    asm = ir.InlineAsm(ir.FunctionType(ret_ll, in_ll), template, ",".join(constraints),
                       side_effect=True)
    result = builder.call(asm, list(in_values))
    if len(out_ll) <= 1:
        return result if out_ll else None
    return [builder.extract_value(result, i) for i in range(len(out_ll))]


def _typer(arity, signature, codegen, name):
    """numba reads an intrinsic's arity off its Python signature, so build one of that arity."""
    typers = {
        0: lambda typingctx: (signature, codegen),
        1: lambda typingctx, a: (signature, codegen),
        2: lambda typingctx, a, b: (signature, codegen),
        3: lambda typingctx, a, b, c: (signature, codegen),
        4: lambda typingctx, a, b, c, d: (signature, codegen),
        5: lambda typingctx, a, b, c, d, e: (signature, codegen),
        6: lambda typingctx, a, b, c, d, e, f: (signature, codegen),
        7: lambda typingctx, a, b, c, d, e, f, g: (signature, codegen),
    }
    fn = typers[arity]
    fn.__name__ = fn.__qualname__ = name
    return fn


def ptx_instruction(name, template, args=(), result=None, doc=""):
    """Make an intrinsic `name(*args) -> result` that emits `template` as inline PTX.

    Arguments are converted to the declared types at the call site (numba casts to the
    signature), so kernels may pass plain Python ints.
    """
    signature = (result or types.void)(*args)
    out_types = (result,) if result is not None else ()

    def codegen(context, builder, sig, llargs):
        value = emit_asm(builder, template, out_types, args, llargs)
        return value if result is not None else context.get_dummy_value()

    fn = intrinsic(_typer(len(args), signature, codegen, name))
    fn.__doc__ = doc or f"PTX: {template}"
    return fn


# --------------------------------------------------------------------------------------------
# Shared memory, thread and cluster basics
# --------------------------------------------------------------------------------------------

@intrinsic
def smem_base(typingctx, array):
    """32-bit shared-window address of a shared array's first byte (cvta to .shared)."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte_ptr = builder.bitcast(data, ir.PointerType(ir.IntType(8), data.type.addrspace))
        if byte_ptr.type.addrspace != 3:
            byte_ptr = builder.addrspacecast(byte_ptr, ir.PointerType(ir.IntType(8), 3))
        return builder.trunc(builder.ptrtoint(byte_ptr, ir.IntType(64)), ir.IntType(32))
    return types.uint32(array), codegen


elect_one = ptx_instruction(
    "elect_one",
    "{ .reg .b32 r; .reg .pred p; elect.sync r|p, 0xffffffff; selp.u32 $0, 1, 0, p; }",
    result=u32, doc="elect.sync: 1 in exactly one active lane of the warp, 0 elsewhere.")

named_barrier_sync = ptx_instruction(
    "named_barrier_sync", "bar.sync $0, $1;", (u32, u32),
    doc="bar.sync id, count: a barrier over `count` threads (a multiple of 32), id 1..15.")

cluster_ctarank = ptx_instruction(
    "cluster_ctarank", "mov.u32 $0, %cluster_ctarank;", result=u32,
    doc="%cluster_ctarank: this CTA's rank inside its cluster.")

cluster_sync = ptx_instruction(
    "cluster_sync",
    "barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned;",
    doc="barrier.cluster.arrive + wait: every thread of every CTA of the cluster meets here.")

cluster_arrive_relaxed = ptx_instruction(
    "cluster_arrive_relaxed", "barrier.cluster.arrive.relaxed.aligned;",
    doc="barrier.cluster.arrive.relaxed: this thread is here, no memory ordering. The kernel's "
        "first cluster barrier: fence.mbarrier_init has published the barrier inits, the only "
        "writes before it; a releasing arrive has ptxas wait for every earlier memory access "
        "(MEMBAR.GPU + ERRBAR).")

cluster_wait = ptx_instruction(
    "cluster_wait", "barrier.cluster.wait.acquire.aligned;",
    doc="barrier.cluster.wait: until every thread of the cluster has arrived.")

fence_proxy_async_smem = ptx_instruction(
    "fence_proxy_async_smem", "fence.proxy.async.shared::cta;",
    doc="fence.proxy.async.shared::cta: make generic-proxy smem writes visible to TMA/wgmma.")

warp_uniform = ptx_instruction(
    "warp_uniform", "shfl.sync.idx.b32 $0, $1, 0, 0x1f, 0xffffffff;", (u32,), u32,
    doc="shfl.sync.idx lane 0: the value lane 0 holds. Tells ptxas the value is warp-uniform, "
        "so what is computed from it (e.g. wgmma descriptors) lives in uniform registers.")

@intrinsic
def udiv32(typingctx, a, b):
    """`udiv32(a, b)`: a // b on unsigned 32-bit integers. numba widens integer arithmetic to
    64 bits, and a 64-bit division by a runtime value is a subroutine call (~100 instructions:
    five of them sat between the producer's start and its first TMA load); ptxas inlines the
    32-bit one in ~15 (reciprocal, multiply-high, one correction)."""
    def codegen(context, builder, sig, args):
        return builder.udiv(args[0], args[1])
    return types.uint32(types.uint32, types.uint32), codegen


ld_shared_f32 = ptx_instruction(
    "ld_shared_f32", "ld.shared.f32 $0, [$1];", (u32,), f32, doc="ld.shared.f32")

ld_shared_u32 = ptx_instruction(
    "ld_shared_u32", "ld.shared.u32 $0, [$1];", (u32,), u32, doc="ld.shared.u32")

st_shared_u32 = ptx_instruction(
    "st_shared_u32", "st.shared.u32 [$0], $1;", (u32, u32), doc="st.shared.u32")

st_global_u32 = ptx_instruction(
    "st_global_u32", "st.global.u32 [$0], $1;", (u64, u32), doc="st.global.u32")

atom_add_global_u32 = ptx_instruction(
    "atom_add_global_u32", "atom.global.add.u32 $0, [$1], $2;", (u64, u32), u32,
    doc="atom.global.add.u32 (relaxed, gpu scope): returns the old value.")

fence_acq_rel_gpu = ptx_instruction(
    "fence_acq_rel_gpu", "fence.acq_rel.gpu;",
    doc="fence.acq_rel.gpu: order this thread's memory accesses at GPU scope (__threadfence).")

ld_global_nc_s32 = ptx_instruction(
    "ld_global_nc_s32", "ld.global.nc.s32 $0, [$1];", (u64,), i32,
    doc="ld.global.nc.s32: read-only (non-coherent) global load of one int32 (layout tensors "
        "the kernel reads and nobody writes while it runs).")

cp_async_4 = ptx_instruction(
    "cp_async_4", "cp.async.ca.shared.global [$0], [$1], 4;", (u32, u64),
    doc="cp.async 4 bytes global -> shared (LDGSTS): the thread does not wait for the data.")

cp_async_mbarrier_arrive_noinc = ptx_instruction(
    "cp_async_mbarrier_arrive_noinc", "cp.async.mbarrier.arrive.noinc.shared::cta.b64 [$0];",
    (u32,),
    doc="cp.async.mbarrier.arrive.noinc: once this thread's cp.async copies so far have landed, "
        "arrive on the barrier (one of the arrivals its phase expects).")

@functools.cache
def setmaxnreg_inc(count):
    """setmaxnreg.inc.sync.aligned.u32: raise this warpgroup's register budget to `count`."""
    return ptx_instruction(f"setmaxnreg_inc_{count}",
                           f"setmaxnreg.inc.sync.aligned.u32 {count};")


@functools.cache
def setmaxnreg_dec(count):
    """setmaxnreg.dec.sync.aligned.u32: lower this warpgroup's register budget to `count`."""
    return ptx_instruction(f"setmaxnreg_dec_{count}",
                           f"setmaxnreg.dec.sync.aligned.u32 {count};")


# --------------------------------------------------------------------------------------------
# mbarrier
# --------------------------------------------------------------------------------------------

mbarrier_init = ptx_instruction(
    "mbarrier_init", "mbarrier.init.shared::cta.b64 [$0], $1;", (u32, u32),
    doc="mbarrier.init: a barrier expecting `count` arrivals per phase.")

fence_mbarrier_init = ptx_instruction(
    "fence_mbarrier_init", "fence.mbarrier_init.release.cluster;",
    doc="fence.mbarrier_init.release.cluster: publish barrier inits to the cluster.")

mbarrier_arrive = ptx_instruction(
    "mbarrier_arrive", "mbarrier.arrive.shared::cta.b64 _, [$0];", (u32,),
    doc="mbarrier.arrive on a barrier of this CTA.")

mbarrier_arrive_cluster = ptx_instruction(
    "mbarrier_arrive_cluster",
    "{ .reg .b32 remote; mapa.shared::cluster.u32 remote, $0, $1; "
    "mbarrier.arrive.shared::cluster.b64 _, [remote]; }",
    (u32, u32),
    doc="mapa + mbarrier.arrive.shared::cluster: arrive on the same barrier of CTA `rank`. "
        "Not .release.cluster: that form costs a MEMBAR.ALL.GPU per arrival (seen in SASS), "
        "and the smem reads it would order are done (wgmma_wait) before the arrival.")

mbarrier_arrive_expect_tx = ptx_instruction(
    "mbarrier_arrive_expect_tx",
    "mbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], $1;", (u32, u32),
    doc="mbarrier.arrive.expect_tx: arrive and expect `bytes` of TMA transactions.")

mbarrier_wait = ptx_instruction(
    "mbarrier_wait",
    "{ .reg .pred done; wait_loop: "
    "mbarrier.try_wait.parity.shared::cta.b64 done, [$0], $1, 0x989680; "
    "@!done bra wait_loop; }",
    (u32, u32),
    doc="mbarrier.try_wait.parity loop: return once the phase of parity `parity` completed. "
        "The suspend-time hint (CUTLASS's 10 ms) makes ptxas put the warp to sleep until the "
        "barrier changes (NANOSLEEP.SYNCS) instead of spinning on TRYWAIT.")

mbarrier_test_wait = ptx_instruction(
    "mbarrier_test_wait",
    "{ .reg .pred done; mbarrier.test_wait.parity.shared::cta.b64 done, [$1], $2; "
    "selp.u32 $0, 1, 0, done; }",
    (u32, u32), result=i32,
    doc="mbarrier.test_wait.parity (non-blocking, acquire): 1 if the phase of parity "
        "`parity` completed, else 0.")

# --------------------------------------------------------------------------------------------
# TMA (cp.async.bulk.tensor)
# --------------------------------------------------------------------------------------------

prefetch_tensormap = ptx_instruction(
    "prefetch_tensormap", "prefetch.tensormap [$0];", (u64,),
    doc="prefetch.tensormap: pull a tensor map into the descriptor cache.")

tma_load_2d = ptx_instruction(
    "tma_load_2d",
    "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
    " [$0], [$1, {$3, $4}], [$2];",
    (u32, u64, u32, i32, i32),
    doc="cp.async.bulk.tensor.2d load (smem_dst, tensor_map, mbarrier, x, y); "
        "completes bytes on the mbarrier.")

tma_load_2d_multicast = ptx_instruction(
    "tma_load_2d_multicast",
    "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
    ".multicast::cluster [$0], [$1, {$3, $4}], [$2], $5;",
    (u32, u64, u32, i32, i32, u16),
    doc="cp.async.bulk.tensor.2d multicast load: the tile lands at the same smem offset (and "
        "completes on the same mbarrier offset) in every CTA of `cta_mask`.")

tma_load_3d = ptx_instruction(
    "tma_load_3d",
    "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
    " [$0], [$1, {$3, $4, $5}], [$2];",
    (u32, u64, u32, i32, i32, i32),
    doc="cp.async.bulk.tensor.3d load (smem_dst, tensor_map, mbarrier, x, y, z).")

tma_store_2d = ptx_instruction(
    "tma_store_2d",
    "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [$0, {$2, $3}], [$1];",
    (u64, u32, i32, i32),
    doc="cp.async.bulk.tensor.2d store (tensor_map, smem_src, x, y) in a bulk group.")

tma_store_3d = ptx_instruction(
    "tma_store_3d",
    "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [$0, {$2, $3, $4}], [$1];",
    (u64, u32, i32, i32, i32),
    doc="cp.async.bulk.tensor.3d store (tensor_map, smem_src, x, y, z) in a bulk group.")

tma_reduce_add_3d = ptx_instruction(
    "tma_reduce_add_3d",
    "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
    " [$0, {$2, $3, $4}], [$1];",
    (u64, u32, i32, i32, i32),
    doc="cp.reduce.async.bulk.tensor.3d add (tensor_map, smem_src, x, y, z): the box is added "
        "to global memory (in L2, element type from the map) in a bulk group.")

bulk_store_1d = ptx_instruction(
    "bulk_store_1d",
    "cp.async.bulk.global.shared::cta.bulk_group [$0], [$1], $2;",
    (u64, u32, u32),
    doc="cp.async.bulk 1-D store (global_dst, smem_src, bytes) in a bulk group: a contiguous "
        "run of bytes, both addresses 16-byte aligned, bytes a multiple of 16.")

tma_store_commit = ptx_instruction(
    "tma_store_commit", "cp.async.bulk.commit_group;",
    doc="cp.async.bulk.commit_group: close the current bulk group of TMA stores.")

tma_store_wait_read = ptx_instruction(
    "tma_store_wait_read", "cp.async.bulk.wait_group.read 0;",
    doc="cp.async.bulk.wait_group.read 0: all committed stores have read their smem source.")

tma_store_wait = ptx_instruction(
    "tma_store_wait", "cp.async.bulk.wait_group 0;",
    doc="cp.async.bulk.wait_group 0: all committed stores are complete.")


# --------------------------------------------------------------------------------------------
# wgmma
# --------------------------------------------------------------------------------------------

wgmma_fence = ptx_instruction(
    "wgmma_fence", "wgmma.fence.sync.aligned;",
    doc="wgmma.fence: order register/smem accesses before the next wgmma.mma_async.")

wgmma_commit = ptx_instruction(
    "wgmma_commit", "wgmma.commit_group.sync.aligned;",
    doc="wgmma.commit_group: close the batch of wgmma.mma_async issued so far.")


@functools.cache
def wgmma_wait(pending):
    """wgmma.wait_group.sync.aligned N: wait until at most N wgmma groups are pending."""
    return ptx_instruction(f"wgmma_wait_{pending}", f"wgmma.wait_group.sync.aligned {pending};")


# Shared-memory matrix descriptor: swizzle mode field (bits 62-63) per swizzle width in bytes.
SWIZZLE_MODE = {128: 1, 64: 2, 32: 3}


def _descriptor_low(builder, addr):
    """Low word: start address >> 4 (< 2^14: shared memory is < 256 KB) and the leading byte
    offset 1 (bit 16)."""
    start = builder.lshr(addr, ir.Constant(ir.IntType(32), 4))
    return builder.add(start, ir.Constant(ir.IntType(32), 1 << 16))


def _descriptor_of_low(builder, low, swizzle_bytes):
    """The whole descriptor: the low word with the constant high word (stride, swizzle mode)."""
    high = ((8 * swizzle_bytes >> 4) << 32) | (SWIZZLE_MODE[swizzle_bytes] << 62)
    return builder.or_(builder.zext(low, ir.IntType(64)), ir.Constant(ir.IntType(64), high))


@functools.cache
def smem_descriptor_words(swizzle_bytes=128):
    """Make `(low(smem_addr) -> u32, desc(low) -> u64)`: the same descriptor as
    `smem_descriptor`, split so that a kernel keeps only the low word (start address >> 4, and
    the leading byte offset 1) and steps it with 32-bit adds: +2 is 32 bytes further along K,
    + bytes // 16 another ring slot. The high word (stride, swizzle mode) is a constant that
    `desc` ORs in, which ptxas materializes as one UMOV per wgmma (as NVCC does for
    DeepGEMM) instead of carrying 64-bit additions through the K loop."""
    def low_codegen(context, builder, sig, args):
        return _descriptor_low(builder, args[0])

    def desc_codegen(context, builder, sig, args):
        return _descriptor_of_low(builder, args[0], swizzle_bytes)

    low = intrinsic(_typer(1, types.uint32(types.uint32), low_codegen,
                           f"smem_descriptor_low_sw{swizzle_bytes}"))
    desc = intrinsic(_typer(1, types.uint64(types.uint32), desc_codegen,
                            f"smem_descriptor_from_low_sw{swizzle_bytes}"))
    return low, desc


@functools.cache
def wgmma_fp8(n):
    """Make `mma(desc_a, desc_b, acc, accumulate) -> acc` for wgmma m64n{n}k32 e4m3 x e4m3 -> f32.

    `acc` is a UniTuple of n/2 float32 (this thread's fragment): d[4i+0..1] are row
    (warp%4)*16 + lane/4, columns 8i + 2*(lane%4) + {0,1}; d[4i+2..3] the same 8 rows lower.
    `accumulate` = 0 overwrites the fragment (D = A*B), 1 adds (D += A*B). The result is only
    valid after wgmma_commit + wgmma_wait.
    """
    assert n % 8 == 0 and 8 <= n <= 256, n
    n_acc = n // 2
    acc_type = types.UniTuple(types.float32, n_acc)
    regs = ", ".join(f"${i}" for i in range(n_acc))
    template = (f"{{ .reg .pred p; setp.ne.b32 p, ${n_acc + 2}, 0; "
                f"wgmma.mma_async.sync.aligned.m64n{n}k32.f32.e4m3.e4m3 "
                f"{{{regs}}}, ${n_acc}, ${n_acc + 1}, p, 1, 1; }}")
    in_types = (types.uint64, types.uint64, types.uint32) + (types.float32,) * n_acc

    def codegen(context, builder, sig, args):
        desc_a, desc_b, acc, accumulate = args
        acc_in = [builder.extract_value(acc, i) for i in range(n_acc)]
        outs = emit_asm(builder, template, (types.float32,) * n_acc, in_types,
                        [desc_a, desc_b, accumulate] + acc_in, tied_outputs=True)
        return context.make_tuple(builder, acc_type, outs)

    sig = acc_type(types.uint64, types.uint64, acc_type, types.uint32)
    fn = intrinsic(_typer(4, sig, codegen, f"wgmma_m64n{n}k32_f32_e4m3"))
    fn.__doc__ = f"wgmma.mma_async m64n{n}k32 f32 += e4m3 * e4m3 (both operands in smem)."
    return fn


# --------------------------------------------------------------------------------------------
# Elementwise kernels (quantize.py): vector loads and stores, FP8 conversion
# --------------------------------------------------------------------------------------------

def _vector_load(name, template, width, address=types.uint64):
    """An intrinsic `name(address) -> UniTuple(u32, width)` from a multi-output PTX load
    (address: u64 global, u32 shared)."""
    out_type = types.UniTuple(types.uint32, width)

    def codegen(context, builder, sig, args):
        outs = emit_asm(builder, template, (types.uint32,) * width, (address,), args)
        return context.make_tuple(builder, out_type, outs)

    fn = intrinsic(_typer(1, out_type(address), codegen, name))
    fn.__doc__ = f"PTX: {template}"
    return fn


ld_global_nc_v4_u32 = _vector_load(
    "ld_global_nc_v4_u32", "ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];", 4)

st_global_v2_u32 = ptx_instruction(
    "st_global_v2_u32", "st.global.v2.u32 [$0], {$1, $2};", (u64, u32, u32),
    doc="st.global.v2.u32: 8 bytes (8-byte aligned).")

st_global_v4_u32 = ptx_instruction(
    "st_global_v4_u32", "st.global.v4.u32 [$0], {$1, $2, $3, $4};", (u64, u32, u32, u32, u32),
    doc="st.global.v4.u32: 16 bytes (16-byte aligned).")

st_global_f32 = ptx_instruction(
    "st_global_f32", "st.global.f32 [$0], $1;", (u64, f32), doc="st.global.f32")

st_shared_v4_u32 = ptx_instruction(
    "st_shared_v4_u32", "st.shared.v4.u32 [$0], {$1, $2, $3, $4};", (u32, u32, u32, u32, u32),
    doc="st.shared.v4.u32: 16 bytes (16-byte aligned).")

ld_shared_v4_u32 = _vector_load(
    "ld_shared_v4_u32", "ld.shared.v4.u32 {$0, $1, $2, $3}, [$4];", 4, address=u32)

st_shared_v2_u32 = ptx_instruction(
    "st_shared_v2_u32", "st.shared.v2.u32 [$0], {$1, $2};", (u32, u32, u32),
    doc="st.shared.v2.u32: 8 bytes (8-byte aligned).")

ld_shared_u8 = ptx_instruction(
    "ld_shared_u8", "ld.shared.u8 $0, [$1];", (u32,), u32, doc="ld.shared.u8, zero-extended")

ld_shared_u16 = ptx_instruction(
    "ld_shared_u16", "ld.shared.u16 $0, [$1];", (u32,), u16, doc="ld.shared.u16")

bits_as_f32 = ptx_instruction(
    "bits_as_f32", "mov.b32 $0, $1;", (u32,), f32,
    doc="mov.b32: the float32 whose bits these are (a bf16 shifted left 16 is its float32).")

f32_as_bits = ptx_instruction(
    "f32_as_bits", "mov.b32 $0, $1;", (f32,), u32, doc="mov.b32: the bits of a float32.")

cvt_e4m3x2 = ptx_instruction(
    "cvt_e4m3x2", "cvt.rn.satfinite.e4m3x2.f32 $0, $1, $2;", (f32, f32), u16,
    doc="cvt.rn.satfinite.e4m3x2.f32 d, hi, lo: two float32 to E4M3, nearest-even, saturated "
        "to +-448, NaN kept; `lo` lands in the low byte.")
