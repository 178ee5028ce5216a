"""Register-tile operations on wgmma accumulator fragments (UniTuples of float32).

A fragment of wgmma m64nNk32 holds N/2 floats per thread. Looping over it in Python with a
run-time index would make numba emit a switch (or spill the tuple to local memory), so each
operation here is an intrinsic that unrolls its loop in the IR builder: straight-line code,
every element in a register. Each factory is specialized (and memoized) by the fragment size.

Fragment layout (PTX ISA, wgmma D fragments): element 4i+j of thread t (warp w = t/32 inside
the warpgroup, lane l) sits at row 16*(w%4) + l/4 + 8*(j >= 2), column 8i + 2*(l%4) + j%2.
"""

import functools

from llvmlite import ir
from numba.cuda import types
from numba.cuda.extending import intrinsic

from .ptx import _typer, emit_asm

F32 = ir.FloatType()
I32 = ir.IntType(32)


def _fragment(n_acc):
    return types.UniTuple(types.float32, n_acc)


@functools.cache
def fragment_zeros(n_acc):
    """Make `zeros() -> fragment`: n_acc float32 zeros."""
    frag = _fragment(n_acc)

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, frag, [ir.Constant(F32, 0.0)] * n_acc)

    return intrinsic(_typer(0, frag(), codegen, f"fragment_zeros_{n_acc}"))


@functools.cache
def fragment_fence(n_acc):
    """Make `fence(fragment) -> fragment`: pin every register in place (CUTLASS's
    warpgroup_fence_operand). The empty volatile asm keeps LLVM from moving reads of wgmma
    results above wgmma_wait, or writes of its inputs below the wgmma that reads them."""
    frag = _fragment(n_acc)

    def codegen(context, builder, sig, args):
        values = [builder.extract_value(args[0], i) for i in range(n_acc)]
        fenced = [emit_asm(builder, "", (types.float32,), (types.float32,), [v],
                           tied_outputs=True) for v in values]
        return context.make_tuple(builder, frag, fenced)

    return intrinsic(_typer(1, frag(frag), codegen, f"fragment_fence_{n_acc}"))


@functools.cache
def fragment_promote(n_acc, two_scale_blocks, n_final=None, offset=0, first_groups=None):
    """Make the two-level-accumulation step: `final += acc * scale`, per row half.

    `final` holds n_final floats (default n_acc); the step updates final[offset:offset + n_acc]
    (with BLOCK_M 256 a warpgroup keeps one final fragment per 64-row wave, side by side).

    Uniform B scale (BLOCK_N never straddles a 128-column scale block):
        promote(final, acc, scale_row0, scale_row8) -> final
    Straddling B scale (the first `n_first` 8-column groups use the first B block's scale):
        promote(final, acc, scale_row0, scale_row8, scale_row0_second, scale_row8_second,
                n_first) -> final
    With `first_groups` given, the split is that compile-time constant instead: the same call
    (n_first is ignored) without a compare and two selects per 8-column group.
    Each scale is scale_a[row] * scale_b[block], computed once per K block by the caller.
    """
    n_final = n_final or n_acc
    frag, final_frag = _fragment(n_acc), _fragment(n_final)
    f32 = types.float32

    def codegen(context, builder, sig, args):
        final, acc = args[0], args[1]
        s_row0, s_row8 = args[2], args[3]
        out = [builder.extract_value(final, e) for e in range(n_final)]
        for i in range(n_acc // 4):
            if two_scale_blocks and first_groups is not None:
                row0, row8 = (s_row0, s_row8) if i < first_groups else (args[4], args[5])
            elif two_scale_blocks:
                first = builder.icmp_signed("<", ir.Constant(I32, i), args[6])
                row0 = builder.select(first, s_row0, args[4])
                row8 = builder.select(first, s_row8, args[5])
            else:
                row0, row8 = s_row0, s_row8
            for j, scale in enumerate((row0, row0, row8, row8)):
                e = 4 * i + j
                out[offset + e] = builder.fma(builder.extract_value(acc, e), scale,
                                              out[offset + e])
        return context.make_tuple(builder, final_frag, out)

    if two_scale_blocks and first_groups is not None:
        sig = final_frag(final_frag, frag, f32, f32, f32, f32)
        arity = 6
    elif two_scale_blocks:
        sig = final_frag(final_frag, frag, f32, f32, f32, f32, types.int32)
        arity = 7
    else:
        sig = final_frag(final_frag, frag, f32, f32)
        arity = 4
    split = "" if first_groups is None else f"_first{first_groups}"
    name = (f"fragment_promote_{n_acc}_{'straddle' if two_scale_blocks else 'uniform'}"
            f"_{n_final}_at{offset}{split}")
    return intrinsic(_typer(arity, sig, codegen, name))


def _fragment_store_bf16(n_acc, n_final, offset, chunk_offset, name, layout_start=None):
    """The register -> smem step of the bf16 epilogues: `store(smem_d, fragment, row0, lane)`
    converts fragment elements offset..offset + n_acc to bf16 and writes them with stmatrix x2,
    8 columns (a 16-byte chunk of a row) per pair of 8x8 matrices. The layout:
    `layout_start(builder, const, smem_d, row0, row) -> (start, r)` where the 16 rows row0 +
    row of the fragment start and r the row from there (default: smem_d and row0 + row), then
    `chunk_offset(builder, const, r, i)` where chunk i of row r sits, in bytes from start."""
    layout_start = layout_start or (
        lambda builder, const, smem_d, row0, row: (smem_d, builder.add(row0, row)))
    n_final = n_final or n_acc
    pack_asm = "cvt.rn.bf16x2.f32 $0, $2, $1;"
    stsm_asm = "stmatrix.sync.aligned.x2.m8n8.shared.b16 [$0], {$1, $2};"
    u32, f32 = types.uint32, types.float32

    def codegen(context, builder, sig, args):
        smem_d, acc, row0, lane = args
        const = lambda v: ir.Constant(I32, v)  # noqa: E731
        row = builder.and_(lane, const(15))            # lanes 0-7: rows 0-7, 8-15: rows 8-15
        smem_d, row_in_tile = layout_start(builder, const, smem_d, row0, row)
        for i in range(n_acc // 4):
            addr = builder.add(smem_d, chunk_offset(builder, const, row_in_tile, i))
            v = [builder.extract_value(acc, offset + 4 * i + j) for j in range(4)]
            lo = emit_asm(builder, pack_asm, (u32,), (f32, f32), [v[0], v[1]])
            hi = emit_asm(builder, pack_asm, (u32,), (f32, f32), [v[2], v[3]])
            emit_asm(builder, stsm_asm, (), (u32, u32, u32), [addr, lo, hi])
        return context.get_dummy_value()

    sig = types.void(types.uint32, _fragment(n_final), types.uint32, types.uint32)
    return intrinsic(_typer(4, sig, codegen, name))


@functools.cache
def fragment_store_bf16(n_acc, slab_rows, slab_bytes, swizzle_bytes, n_final=None, offset=0):
    """Make `store(smem_d, fragment, row0, lane)`: the epilogue's register -> smem step.

    The fragment holds n_final floats (default n_acc); elements offset..offset + n_acc are
    stored (one 64-row wave of a BLOCK_M 256 warpgroup; `row0` says where its rows start).

    Converts the fragment to bf16 and writes it with stmatrix x2 into the output tile in shared
    memory, laid out as TMA's `swizzle_bytes` swizzle expects it: the tile is cut into slabs of
    `slab_rows` rows, `slab_bytes` apart; a slab's columns into atoms `swizzle_bytes` wide (each
    a slab_rows x swizzle_bytes panel, stored one after another); inside a panel, the 16-byte
    chunk c of row r sits at chunk c ^ (r % (swizzle/16)) of that row's 8x128-byte line group.
    `row0` is the fragment's first row in the tile (16 * math warp + 128 * wave), `lane` the
    lane id; lanes 0-15 give the 16 row addresses.
    """
    chunks_per_atom = swizzle_bytes // 16      # 16-byte chunks (8 bf16 columns) per atom row
    atom_bytes = slab_rows * swizzle_bytes
    assert slab_rows & (slab_rows - 1) == 0

    def slab_start(builder, const, smem_d, row0, row):
        # row0 is a multiple of 16 and row < 16: the 16 rows lie in row0's slab.
        slab = builder.lshr(row0, const(slab_rows.bit_length() - 1))
        start = builder.add(smem_d, builder.mul(slab, const(slab_bytes)))
        return start, builder.add(builder.and_(row0, const(slab_rows - 1)), row)

    def swizzled(builder, const, row, i):
        atom, chunk = divmod(i, chunks_per_atom)
        # Swizzle as DeepGEMM's epilogue: view the panel as rows of 128 bytes.
        bank_group = builder.add(builder.mul(row, const(chunks_per_atom)), const(chunk))
        line = builder.lshr(bank_group, const(3))
        col = builder.xor(builder.and_(bank_group, const(7)),
                          builder.and_(line, const(chunks_per_atom - 1)))
        in_panel = builder.add(builder.mul(line, const(128)), builder.mul(col, const(16)))
        return builder.add(in_panel, const(atom * atom_bytes))

    return _fragment_store_bf16(n_acc, n_final, offset, swizzled,
                                f"fragment_store_bf16_{n_acc}_r{slab_rows}_s{slab_bytes}"
                                f"_sw{swizzle_bytes}_{n_final or n_acc}_at{offset}", slab_start)


@functools.cache
def fragment_store_bf16_rows(n_acc, row_pitch):
    """Make `store(smem_d, fragment, row0, lane)` as `fragment_store_bf16`'s, into a row-major
    tile instead: row r at r * row_pitch bytes, its columns in order (rows a 1-D bulk copy can
    take whole). With row_pitch an odd number of 16-byte chunks, the 8 rows of each stmatrix
    matrix fall in 8 different bank groups (no conflicts)."""
    assert row_pitch % 16 == 0 and row_pitch >= n_acc * 4

    def row_major(builder, const, row_in_tile, i):
        return builder.add(builder.mul(row_in_tile, const(row_pitch)), const(16 * i))

    return _fragment_store_bf16(n_acc, None, 0, row_major,
                                f"fragment_store_bf16_rows_{n_acc}_p{row_pitch}")


@functools.cache
def fragment_store_global_v4(n_final):
    """Make `store(address, fragment, stride)`: the fragment's floats in groups of four, group g
    with st.global.v4.f32 at address + g * stride. With stride = threads * 16 and address =
    base + 16 * thread, a warp writes 512 contiguous bytes per group (split-K partial sums)."""
    frag = _fragment(n_final)
    f32, u64 = types.float32, types.uint64
    asm = "st.global.v4.f32 [$0], {$1, $2, $3, $4};"

    def codegen(context, builder, sig, args):
        address, fragment, stride = args
        for g in range(n_final // 4):
            at = builder.add(address, builder.mul(stride, ir.Constant(ir.IntType(64), g)))
            values = [builder.extract_value(fragment, 4 * g + j) for j in range(4)]
            emit_asm(builder, asm, (), (u64, f32, f32, f32, f32), [at] + values)
        return context.get_dummy_value()

    sig = types.void(u64, frag, u64)
    return intrinsic(_typer(3, sig, codegen, f"fragment_store_global_v4_{n_final}"))


@functools.cache
def fragment_add_global_v4(n_final):
    """Make `add(fragment, address, stride) -> fragment`: fragment + the floats that
    fragment_store_global_v4 wrote there, read with ld.global.cg (L2, never a stale L1 line:
    another CTA wrote them during this kernel)."""
    frag = _fragment(n_final)
    f32, u64 = types.float32, types.uint64
    asm = "ld.global.cg.v4.f32 {$0, $1, $2, $3}, [$4];"

    def codegen(context, builder, sig, args):
        fragment, address, stride = args
        out = [builder.extract_value(fragment, e) for e in range(n_final)]
        for g in range(n_final // 4):
            at = builder.add(address, builder.mul(stride, ir.Constant(ir.IntType(64), g)))
            values = emit_asm(builder, asm, (f32,) * 4, (u64,), [at])
            for j in range(4):
                out[4 * g + j] = builder.fadd(out[4 * g + j], values[j])
        return context.make_tuple(builder, frag, out)

    sig = frag(frag, u64, u64)
    return intrinsic(_typer(3, sig, codegen, f"fragment_add_global_v4_{n_final}"))


@functools.cache
def fragment_store_bf16_transposed_global(n_acc):
    """Make `store(address, fragment, row_bytes, rows, cols)`: the fragment transposed, as bf16
    straight to global memory, only inside a bound: element (r, c) goes to D[c, r] (a swap-AB
    tile: its rows are D's columns).

    `address` is D's element (this thread's first column, its first row), `row_bytes` D's row
    stride, `rows` how many fragment rows from the thread's first may be written (its rows are
    r and r + 8: D's columns), `cols` how many fragment columns from its first (D's rows). One
    predicated st.global.b16 per element: the 8 lanes of a quad column write 16 contiguous
    bytes of one D row."""
    u64, i32 = types.uint64, types.int32
    store_asm = ("{ .reg .pred p; .reg .b16 h; setp.ne.u32 p, $2, 0; "
                 "cvt.rn.bf16.f32 h, $1; @p st.global.b16 [$0], h; }")

    def codegen(context, builder, sig, args):
        address, fragment, row_bytes, rows, cols = args
        i64 = ir.IntType(64)
        row_ok = (builder.icmp_signed(">", rows, ir.Constant(I32, 0)),
                  builder.icmp_signed(">", rows, ir.Constant(I32, 8)))
        for i in range(n_acc // 4):
            for j in range(4):
                column = 8 * i + j % 2
                col_ok = builder.icmp_signed(">", cols, ir.Constant(I32, column))
                ok = builder.zext(builder.and_(row_ok[j // 2], col_ok), I32)
                at = builder.add(builder.add(address, builder.mul(row_bytes,
                                                                  ir.Constant(i64, column))),
                                 ir.Constant(i64, 16 * (j // 2)))
                emit_asm(builder, store_asm, (), (u64, types.float32, types.uint32),
                         [at, builder.extract_value(fragment, 4 * i + j), ok])
        return context.get_dummy_value()

    sig = types.void(u64, _fragment(n_acc), u64, i32, i32)
    return intrinsic(_typer(5, sig, codegen, f"fragment_store_bf16_transposed_global_{n_acc}"))


@functools.cache
def fragment_column_scales(n_acc):
    """Make `load(address) -> scales`: the per-column scales of this thread's fragment columns
    from shared memory (1D1D: B's scale per output column), n_acc / 2 floats: column pair i
    (8i + 2 * (lane % 4) + 0/1) at address + 32 * i, one ld.shared.v2 each. `address` is the
    slot's scale of column 2 * (lane % 4)."""
    scales = _fragment(n_acc // 2)
    f32, u32 = types.float32, types.uint32

    def codegen(context, builder, sig, args):
        (address,) = args
        out = []
        for i in range(n_acc // 4):
            at = builder.add(address, ir.Constant(I32, 32 * i))
            out += emit_asm(builder, "ld.shared.v2.f32 {$0, $1}, [$2];", (f32, f32), (u32,),
                            [at])
        return context.make_tuple(builder, scales, out)

    return intrinsic(_typer(1, scales(u32), codegen, f"fragment_column_scales_{n_acc}"))


@functools.cache
def fragment_promote_per_column(n_acc, n_final=None, offset=0):
    """Make `promote(final, acc, scale_row0, scale_row8, column_scales) -> final`: the 1D1D
    two-level accumulation, final += acc * (scale_a[row] * scale_b[column]) per element
    (`column_scales` from fragment_column_scales)."""
    n_final = n_final or n_acc
    frag, final_frag = _fragment(n_acc), _fragment(n_final)
    f32 = types.float32

    def codegen(context, builder, sig, args):
        final, acc, s_row0, s_row8, columns = args
        out = [builder.extract_value(final, e) for e in range(n_final)]
        for i in range(n_acc // 4):
            for j in range(4):
                e = 4 * i + j
                column = builder.extract_value(columns, 2 * i + j % 2)
                scale = builder.fmul(s_row0 if j < 2 else s_row8, column)
                out[offset + e] = builder.fma(builder.extract_value(acc, e), scale,
                                              out[offset + e])
        return context.make_tuple(builder, final_frag, out)

    sig = final_frag(final_frag, frag, f32, f32, _fragment(n_acc // 2))
    return intrinsic(_typer(5, sig, codegen,
                            f"fragment_promote_per_column_{n_acc}_{n_final}_at{offset}"))


@functools.cache
def fragment_store_f32_staged(n_acc, swizzled):
    """Make `store(slab, fragment, row, lane)`: a math warpgroup's 64-row FP32 fragment into
    shared memory in the layout of a TMA store or reduce-add box. `row` is the thread's first
    fragment row within the warpgroup's 64 (16 * warp + lane / 4; the second is row + 8),
    `lane` its lane; a column pair is one st.shared.v2.f32.

    `swizzled`: the 2 * n_acc columns are cut into panels 32 floats (128 bytes) wide, each 64
    rows x 128 bytes, one after another from `slab`; in a panel, the 16-byte chunk c of row r
    sits at chunk c ^ (r % 8) (TMA's 128-byte swizzle). A warp's 32 pairs fill the 32 banks
    twice (no conflict beyond that).
    Otherwise one row-major panel, rows 2 * n_acc floats apart (a box of the whole tile width,
    no swizzle): without bank conflicts when that width is 8 modulo 16 floats (the row pitch is
    then 32 or 96 modulo 128 bytes, so a warp's 8 rows x 32 bytes fall on 4 distinct quarters
    of the banks, twice), as DeepGEMM's 1D1D staging."""
    f32, u32 = types.float32, types.uint32
    store_asm = "st.shared.v2.f32 [$0], {$1, $2};"
    row_bytes = 128 if swizzled else 8 * n_acc

    def codegen(context, builder, sig, args):
        slab, fragment, row, lane = args
        const = lambda v: ir.Constant(I32, v)  # noqa: E731
        quad = builder.and_(lane, const(3))
        for half in range(2):
            r = builder.add(row, const(8 * half))
            line = builder.add(slab, builder.mul(r, const(row_bytes)))
            for i in range(n_acc // 4):                            # 8-column groups
                if swizzled:
                    panel, group = divmod(i, 4)                    # 4 groups per panel
                    chunk = builder.add(const(2 * group), builder.lshr(quad, const(1)))
                    at = builder.add(
                        builder.add(line, const(panel * 64 * 128)),
                        builder.add(builder.mul(builder.xor(chunk, builder.and_(r, const(7))),
                                                const(16)),
                                    builder.mul(builder.and_(quad, const(1)), const(8))))
                else:
                    at = builder.add(line, builder.add(const(32 * i),
                                                       builder.mul(quad, const(8))))
                v = [builder.extract_value(fragment, 4 * i + 2 * half + j) for j in range(2)]
                emit_asm(builder, store_asm, (), (u32, f32, f32), [at] + v)
        return context.get_dummy_value()

    sig = types.void(u32, _fragment(n_acc), u32, u32)
    layout = "swizzled" if swizzled else "rows"
    return intrinsic(_typer(4, sig, codegen, f"fragment_store_f32_{layout}_{n_acc}"))


@functools.cache
def fragment_store_f32_global(n_acc, accumulate):
    """Make `store(d_address, c_address, fragment, row_bytes, rows, cols)`: the fragment as
    FP32 straight to global memory, only inside a bound: `d_address` is this thread's first
    element (its first row, its first column: 2 * (lane % 4) of the tile's first 8-column
    group), `row_bytes` the row stride, `rows` how many rows from the thread's first row may be
    written (its rows are r and r + 8), `cols` how many columns from its first column; a
    column pair is one predicated st.global.v2.f32. With `accumulate`, each pair
    is first read at c_address (the same offsets: C may be D itself) and added: D = C + frag.
    Every element has one owning thread, so the read-modify-write needs no atomics. All of C's
    loads are issued before the first store: the asm is volatile with a memory clobber, so a
    load, add, store per pair would wait out a DRAM round trip per pair (session 11: 32 of
    them per tile in the 1D1D kernel's SASS, with the tensor cores idle)."""
    u64, i32, f32 = types.uint64, types.int32, types.float32
    load_asm = ("{ .reg .pred p; setp.ne.u32 p, $3, 0; mov.f32 $0, 0f00000000; "
                "mov.f32 $1, 0f00000000; @p ld.global.v2.f32 {$0, $1}, [$2]; }")
    store_asm = "{ .reg .pred p; setp.ne.u32 p, $3, 0; @p st.global.v2.f32 [$0], {$1, $2}; }"

    def codegen(context, builder, sig, args):
        d_address, c_address, fragment, row_bytes, rows, cols = args
        i64 = ir.IntType(64)
        eight_rows = builder.mul(row_bytes, ir.Constant(i64, 8))
        row_ok = (builder.icmp_signed(">", rows, ir.Constant(I32, 0)),
                  builder.icmp_signed(">", rows, ir.Constant(I32, 8)))
        pairs = []          # (offset, in bounds, fragment index of its first element)
        for i in range(n_acc // 4):
            col_ok = builder.icmp_signed(">", cols, ir.Constant(I32, 8 * i))
            for half in range(2):
                step = ir.Constant(i64, 32 * i)
                if half:
                    step = builder.add(step, eight_rows)
                ok = builder.zext(builder.and_(row_ok[half], col_ok), I32)
                pairs.append((step, ok, 4 * i + 2 * half))
        if accumulate:      # every load in flight at once, then the adds and stores
            c = [emit_asm(builder, load_asm, (f32, f32), (u64, types.uint32),
                          [builder.add(c_address, step), ok]) for step, ok, _ in pairs]
        for p, (step, ok, first) in enumerate(pairs):
            v = [builder.extract_value(fragment, first + j) for j in range(2)]
            if accumulate:
                v = [builder.fadd(v[j], c[p][j]) for j in range(2)]
            emit_asm(builder, store_asm, (), (u64, f32, f32, types.uint32),
                     [builder.add(d_address, step)] + v + [ok])
        return context.get_dummy_value()

    sig = types.void(u64, u64, _fragment(n_acc), u64, i32, i32)
    return intrinsic(_typer(6, sig, codegen, f"fragment_store_f32_global_{n_acc}"
                                             f"{'_acc' if accumulate else ''}"))


@functools.cache
def fragment_halves(n_acc):
    """(split, join): `split(fragment) -> (low, high)`, its first and last n_acc/2 floats (the
    fragments of two wgmmas each half as wide), and `join(low, high) -> fragment`. Both only
    regroup values: no instructions, the same registers."""
    frag, half = _fragment(n_acc), _fragment(n_acc // 2)
    halves = types.Tuple((half, half))

    def split_codegen(context, builder, sig, args):
        values = [builder.extract_value(args[0], i) for i in range(n_acc)]
        low = context.make_tuple(builder, half, values[:n_acc // 2])
        high = context.make_tuple(builder, half, values[n_acc // 2:])
        return context.make_tuple(builder, halves, [low, high])

    def join_codegen(context, builder, sig, args):
        values = [builder.extract_value(part, i) for part in args for i in range(n_acc // 2)]
        return context.make_tuple(builder, frag, values)

    split = intrinsic(_typer(1, halves(frag), split_codegen, f"fragment_split_{n_acc}"))
    join = intrinsic(_typer(2, frag(half, half), join_codegen, f"fragment_join_{n_acc}"))
    return split, join
