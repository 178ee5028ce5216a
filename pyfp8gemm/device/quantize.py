"""Fused FP8 quantization kernels: one read of the input, every layout training needs.

Both kernels take one CTA per 128 x 128 tile, 256 threads, and compute the numerics of
`quantize` (host/fp8tensor.py) bit for bit: scale = max(amax, 1e-4) / 448 (a correctly rounded
float32 division), NaN for a block holding NaN or +-inf; data = E4M3(x / scale), nearest-even,
saturated (cvt.rn.satfinite, the clamp of `_to_e4m3`).

1x128 (activations): a Linear's backward needs each of X (T, C) and dY (T, C) twice in FP8:
row-wise, one scale per token per 128 channels (the forward and dgrad GEMMs' A operand), and
transposed, one scale per channel per 128 tokens (the wgrad GEMM's operands, K = tokens). Torch
ops make the two from separate float32 passes; this kernel reads each tile of bf16 x once:

  rows        8 steps of 16 rows, loaded 4 steps at a time: each thread loads 8 channels of one
              row (16 bytes), 16 lanes reduce the row's amax by shuffles, and each writes its 8
              E4M3 bytes (and lane 0 the row's scale). The bf16 bits go to shared memory on the
              way.
  transposed  each thread owns one channel and half of the tile's 128 tokens: the amax over
              its 64 tokens, combined with the other half's through shared memory, then 4 x 16
              E4M3 bytes of the channel's row of x^T (C, T_pad).

  Layouts (quantize_training.py): rows data (T, C) row-major, scales (T, ceil(C/128)) at
  [cb * align(T, 4) + t]; transposed data (C, T_pad) row-major, scales (C, ceil(T/128)) at
  [tb * align(C, 4) + c]; the transposed layout's pad tokens (T <= t < T_pad) are zeros. The
  host asks C % 16 == 0 and 16-byte aligned rows (vector loads and stores); x is contiguous.

128x128 (weights, once per optimizer update): W (N, K) in bf16 or float32 to E4M3 W (N, K) with
one scale per 128 x 128 block, and, for the dgrad GEMM, W^T (K, N): the same bytes transposed
(a 128 x 128 block's scale serves both).

  load        the tile into shared memory, 16 bytes per thread and row step, folding each
              thread's amax; warps reduce by shuffles, then through shared memory: one scale.
  rows        each thread quantizes the elements it loaded and stores them (8 or 4 bytes) to W's
              row, and, for W^T, into a 128 x 128 byte tile in shared memory.
  transposed  each thread owns one column of the tile and 64 of its rows: 4 x 16 bytes of W^T's
              row, gathered byte by byte from the byte tile.

  Layouts: data (N, K) row-major, scale (ceil(N/128), ceil(K/128)) row-major; data_t (K, N)
  row-major, scale_t (ceil(K/128), ceil(N/128)) row-major. The host asks K % 16 == 0 (and
  N % 16 == 0 for W^T) and 16-byte aligned, contiguous input.
"""

from numba import cuda
from numba.cuda import types

from .ptx import (
    bits_as_f32, cvt_e4m3x2, f32_as_bits, ld_global_nc_v4_u32, ld_shared_u8, ld_shared_u16,
    ld_shared_u32, ld_shared_v4_u32, smem_base, st_global_f32, st_global_u32, st_global_v2_u32,
    st_global_v4_u32, st_shared_u32, st_shared_v2_u32, st_shared_v4_u32,
)

TILE = 128                     # tokens x channels per CTA: one 1x128 block along each axis
THREADS = 256
ROW_BYTES = TILE * 2           # one bf16 row of the tile in shared memory
PARTIALS = TILE * ROW_BYTES    # after the tile: per channel and half, amax and "non-finite"
SMEM_BYTES = PARTIALS + 2 * 2 * TILE * 4
AMAX_MIN = 1e-4
E4M3_MAX = 448.0
FULL_MASK = 0xFFFFFFFF
NAN = float("nan")
LOADS_IN_FLIGHT = 4            # 16-byte loads per thread issued before their values are used
                               # (the kernels' load groups are written out four wide)

# Kernel parameters: x, T, C, rows data and scales, transposed data and scales (0 when that
# layout is not made), T_pad.
PARAMS = (("x", types.int64), ("tokens", types.int32), ("channels", types.int32),
          ("row_data", types.int64), ("row_scale", types.int64),
          ("col_data", types.int64), ("col_scale", types.int64), ("t_pad", types.int32))


# ---- parts both kernels use ---------------------------------------------------------

@cuda.jit(device=True, inline="always")
def load16(x, row, col, rows, cols, elem_bytes):
    """16 bytes of row-major x (rows, cols) at (row, col); zeros past its edge (they never
    raise an amax)."""
    if row < rows and col < cols:
        return ld_global_nc_v4_u32(x + (types.int64(row) * cols + col) * elem_bytes)
    return types.uint32(0), types.uint32(0), types.uint32(0), types.uint32(0)


@cuda.jit(device=True, inline="always")
def word_stats(word, amax, bad):
    """Fold the two bf16 of a 32-bit word into (amax, non-finite flag)."""
    lo = bits_as_f32(word << 16)
    hi = bits_as_f32(word & 0xFFFF0000)
    amax = max(amax, max(abs(lo), abs(hi)))
    # exponent all ones: +-inf or NaN
    bad |= types.int32((word & 0x7F80) == 0x7F80) | types.int32((word & 0x7F800000) == 0x7F800000)
    return amax, bad


@cuda.jit(device=True, inline="always")
def float_stats(word, amax, bad):
    """Fold a float32 (its bits) into (amax, non-finite flag)."""
    amax = max(amax, abs(bits_as_f32(word)))
    bad |= types.int32((word & 0x7F800000) == 0x7F800000)
    return amax, bad


@cuda.jit(device=True, inline="always")
def block_scale(amax, bad):
    scale = max(amax, types.float32(AMAX_MIN)) / types.float32(E4M3_MAX)
    return types.float32(NAN) if bad else scale


@cuda.jit(device=True, inline="always")
def quantize_word_pair(w0, w1, scale):
    """Four bf16 (two words) -> four E4M3 bytes, element order kept (lowest first)."""
    q0 = cvt_e4m3x2(bits_as_f32(w0 & 0xFFFF0000) / scale, bits_as_f32(w0 << 16) / scale)
    q1 = cvt_e4m3x2(bits_as_f32(w1 & 0xFFFF0000) / scale, bits_as_f32(w1 << 16) / scale)
    return types.uint32(q0) | (types.uint32(q1) << 16)


@cuda.jit(device=True, inline="always")
def quantize_four(v0, v1, v2, v3, scale):
    """Four float32 -> four E4M3 bytes in one word (v0 lowest)."""
    return (types.uint32(cvt_e4m3x2(v1 / scale, v0 / scale))
            | (types.uint32(cvt_e4m3x2(v3 / scale, v2 / scale)) << 16))


# ---- 1x128 ---------------------------------------------------------------------------------

def grid_size(tokens: int, channels: int) -> int:
    """CTAs for a (T, C) input: one per 128 x 128 tile (the kernel's order: channel tiles
    fastest)."""
    return -(-tokens // TILE) * -(-channels // TILE)


def make_quantize_1x128(rowwise: bool, transposed: bool):
    """The kernel, making the row-wise layout, the transposed one, or both."""
    assert rowwise or transposed

    # ---- row-wise: 16 rows per step, 16 lanes per row ----------------------------------------

    @cuda.jit(device=True, inline="always")
    def rows_pass(base, w0, w1, w2, w3, tokens, channels, row_data, row_scale, t0, c0, tile_c,
                  r, lane16):
        """Row r's 8 channels of this lane, loaded: parked for the transposed layout and
        quantized row-wise."""
        t = t0 + r
        c = c0 + lane16 * 8
        if transposed:
            st_shared_v4_u32(base + r * ROW_BYTES + lane16 * 16, w0, w1, w2, w3)
        if rowwise:
            amax, bad = types.float32(0), types.int32(0)
            amax, bad = word_stats(w0, amax, bad)
            amax, bad = word_stats(w1, amax, bad)
            amax, bad = word_stats(w2, amax, bad)
            amax, bad = word_stats(w3, amax, bad)
            for offset in (8, 4, 2, 1):          # the 16 lanes of this row
                amax = max(amax, cuda.shfl_xor_sync(FULL_MASK, amax, offset))
                bad |= cuda.shfl_xor_sync(FULL_MASK, bad, offset)
            scale = block_scale(amax, bad)
            if t < tokens and c < channels:
                st_global_v2_u32(row_data + types.int64(t) * channels + c,
                                 quantize_word_pair(w0, w1, scale),
                                 quantize_word_pair(w2, w3, scale))
                if lane16 == 0:
                    aligned_tokens = (tokens + 3) // 4 * 4
                    st_global_f32(row_scale + (types.int64(tile_c) * aligned_tokens + t) * 4,
                                  scale)

    # ---- transposed: one channel, 64 tokens per thread ---------------------------------------

    @cuda.jit(device=True, inline="always")
    def token_value(column, i):
        """Token i of this thread's channel, from the tile in shared memory, as float32."""
        return bits_as_f32(types.uint32(ld_shared_u16(column + i * ROW_BYTES)) << 16)

    @cuda.jit(device=True, inline="always")
    def transposed_word(column, i, tokens_left, scale):
        """The E4M3 bytes of tokens i..i+3 of the channel; those at or past T (tokens_left =
        T - their first token) are pad bytes: zero, even under a NaN scale."""
        word = quantize_four(token_value(column, i), token_value(column, i + 1),
                             token_value(column, i + 2), token_value(column, i + 3), scale)
        if tokens_left < 4:
            word &= (types.uint32(1) << (8 * max(tokens_left, 0))) - 1
        return word

    @cuda.jit(device=True, inline="always")
    def transposed_tile(base, tokens, channels, col_data, col_scale, t_pad, t0, c0, tile_t,
                        tid):
        ch = tid % TILE
        half = tid // TILE
        column = base + ch * 2
        first = half * 64                      # this thread's tokens: first .. first + 63
        amax, bad = types.float32(0), types.int32(0)
        for i in range(first, first + 64):
            h = types.uint32(ld_shared_u16(column + i * ROW_BYTES))
            amax = max(amax, abs(bits_as_f32(h << 16)))
            bad |= types.int32((h & 0x7F80) == 0x7F80)
        st_shared_u32(base + PARTIALS + (half * TILE + ch) * 4, f32_as_bits(amax))
        st_shared_u32(base + PARTIALS + ((2 + half) * TILE + ch) * 4, bad)
        cuda.syncthreads()
        other = 1 - half
        amax = max(amax, bits_as_f32(ld_shared_u32(base + PARTIALS + (other * TILE + ch) * 4)))
        bad |= types.int32(ld_shared_u32(base + PARTIALS + ((2 + other) * TILE + ch) * 4))
        scale = block_scale(amax, bad)
        c = c0 + ch
        if c < channels:
            if half == 0:
                aligned_channels = (channels + 3) // 4 * 4
                st_global_f32(col_scale + (types.int64(tile_t) * aligned_channels + c) * 4,
                              scale)
            for i in range(first, first + 64, 16):     # 16 tokens per 16-byte store
                t = t0 + i
                if t < t_pad:
                    left = tokens - t
                    st_global_v4_u32(col_data + types.int64(c) * t_pad + t,
                                     transposed_word(column, i, left, scale),
                                     transposed_word(column, i + 4, left - 4, scale),
                                     transposed_word(column, i + 8, left - 8, scale),
                                     transposed_word(column, i + 12, left - 12, scale))

    # ---- the kernel ----------------------------------------------------------------------

    def quantize_1x128_kernel(x, tokens, channels, row_data, row_scale, col_data, col_scale,
                              t_pad):
        smem = cuda.shared.array(0, types.uint8, alignment=16)
        base = smem_base(smem)
        tid = types.int32(cuda.threadIdx.x)
        channel_tiles = (channels + TILE - 1) // TILE
        tile_t = types.int32(cuda.blockIdx.x) // channel_tiles
        tile_c = types.int32(cuda.blockIdx.x) % channel_tiles
        t0, c0 = tile_t * TILE, tile_c * TILE
        lane16 = tid % 16
        c = c0 + lane16 * 8
        for group in range(TILE // 16 // LOADS_IN_FLIGHT):   # 16 rows a step, 4 steps a group
            r = group * LOADS_IN_FLIGHT * 16 + tid // 16
            a0, a1, a2, a3 = load16(x, t0 + r, c, tokens, channels, 2)
            b0, b1, b2, b3 = load16(x, t0 + r + 16, c, tokens, channels, 2)
            d0, d1, d2, d3 = load16(x, t0 + r + 32, c, tokens, channels, 2)
            e0, e1, e2, e3 = load16(x, t0 + r + 48, c, tokens, channels, 2)
            rows_pass(base, a0, a1, a2, a3, tokens, channels, row_data, row_scale, t0, c0,
                      tile_c, r, lane16)
            rows_pass(base, b0, b1, b2, b3, tokens, channels, row_data, row_scale, t0, c0,
                      tile_c, r + 16, lane16)
            rows_pass(base, d0, d1, d2, d3, tokens, channels, row_data, row_scale, t0, c0,
                      tile_c, r + 32, lane16)
            rows_pass(base, e0, e1, e2, e3, tokens, channels, row_data, row_scale, t0, c0,
                      tile_c, r + 48, lane16)
        if transposed:
            cuda.syncthreads()
            transposed_tile(base, tokens, channels, col_data, col_scale, t_pad, t0, c0, tile_t,
                            tid)

    name = "quantize_1x128" + ("_rows" if rowwise else "") + ("_transposed" if transposed else "")
    quantize_1x128_kernel.__name__ = quantize_1x128_kernel.__qualname__ = name
    return quantize_1x128_kernel


# ---- 128x128 ---------------------------------------------------------------------------------

# Kernel parameters: w, N, K, W's data and scales, W^T's data and scales (0 without W^T).
BLOCK_PARAMS = (("w", types.int64), ("rows", types.int32), ("cols", types.int32),
                ("data", types.int64), ("scale", types.int64),
                ("data_t", types.int64), ("scale_t", types.int64))
BLOCK_DTYPES = {"bf16": 2, "f32": 4}         # the input dtypes the kernel reads: element bytes
WARPS = THREADS // 32


def block_smem_bytes(dtype: str, transposed: bool) -> int:
    """The input tile, the E4M3 byte tile (for W^T), two words per warp for the reduction."""
    return TILE * TILE * (BLOCK_DTYPES[dtype] + (1 if transposed else 0)) + WARPS * 8


def block_grid_size(rows: int, cols: int) -> int:
    """CTAs for an (N, K) weight: one per 128 x 128 block (K's blocks fastest)."""
    return -(-rows // TILE) * -(-cols // TILE)


def make_quantize_128x128(dtype: str, transposed: bool):
    """The kernel for a bf16 or float32 ("bf16", "f32") weight, making W, or W and W^T."""
    elem_bytes = BLOCK_DTYPES[dtype]
    per_load = 16 // elem_bytes                  # elements per 16-byte load: 8 or 4
    lanes_per_row = TILE // per_load             # 16 or 32
    rows_per_step = THREADS // lanes_per_row     # 16 or 8
    groups = TILE // rows_per_step // LOADS_IN_FLIGHT
    tile_row_bytes = TILE * elem_bytes
    byte_tile = TILE * tile_row_bytes            # shared-memory offsets: E4M3 tile, partials
    partials = byte_tile + (TILE * TILE if transposed else 0)

    # ---- parts -----------------------------------------------------------------------------

    @cuda.jit(device=True, inline="always")
    def vector_stats(w0, w1, w2, w3, amax, bad):
        """Fold 16 bytes of input (8 bf16 or 4 float32) into (amax, non-finite flag)."""
        if elem_bytes == 2:
            amax, bad = word_stats(w0, amax, bad)
            amax, bad = word_stats(w1, amax, bad)
            amax, bad = word_stats(w2, amax, bad)
            amax, bad = word_stats(w3, amax, bad)
        else:
            amax, bad = float_stats(w0, amax, bad)
            amax, bad = float_stats(w1, amax, bad)
            amax, bad = float_stats(w2, amax, bad)
            amax, bad = float_stats(w3, amax, bad)
        return amax, bad

    @cuda.jit(device=True, inline="always")
    def park(base, r, lane, w0, w1, w2, w3, amax, bad):
        """Park 16 loaded bytes at the tile's row r in shared memory and fold them in."""
        st_shared_v4_u32(base + r * tile_row_bytes + lane * 16, w0, w1, w2, w3)
        return vector_stats(w0, w1, w2, w3, amax, bad)

    @cuda.jit(device=True, inline="always")
    def block_reduce(base, amax, bad, tid):
        """The amax and non-finite flag of the whole tile, in every thread."""
        for offset in (16, 8, 4, 2, 1):
            amax = max(amax, cuda.shfl_xor_sync(FULL_MASK, amax, offset))
            bad |= cuda.shfl_xor_sync(FULL_MASK, bad, offset)
        if tid % 32 == 0:
            st_shared_u32(base + partials + (tid // 32) * 8, f32_as_bits(amax))
            st_shared_u32(base + partials + (tid // 32) * 8 + 4, bad)
        cuda.syncthreads()
        for warp in range(WARPS):
            amax = max(amax, bits_as_f32(ld_shared_u32(base + partials + warp * 8)))
            bad |= types.int32(ld_shared_u32(base + partials + warp * 8 + 4))
        return amax, bad

    @cuda.jit(device=True, inline="always")
    def quantize_vector(base, r, lane, scale):
        """The E4M3 bytes of the 16 input bytes this thread parked at row r: (lo, hi) words
        (hi unused for float32 input)."""
        w0, w1, w2, w3 = ld_shared_v4_u32(base + r * tile_row_bytes + lane * 16)
        if elem_bytes == 2:
            return quantize_word_pair(w0, w1, scale), quantize_word_pair(w2, w3, scale)
        return (quantize_four(bits_as_f32(w0), bits_as_f32(w1), bits_as_f32(w2),
                              bits_as_f32(w3), scale), types.uint32(0))

    @cuda.jit(device=True, inline="always")
    def gather_column(base, c, r0):
        """Rows r0 .. r0 + 3 of column c of the byte tile, as one word (row r0 lowest)."""
        at = base + byte_tile + r0 * TILE + c
        return (ld_shared_u8(at) | (ld_shared_u8(at + TILE) << 8)
                | (ld_shared_u8(at + 2 * TILE) << 16) | (ld_shared_u8(at + 3 * TILE) << 24))

    # ---- the kernel ----------------------------------------------------------------------

    def quantize_128x128_kernel(w, rows, cols, data, scale, data_t, scale_t):
        smem = cuda.shared.array(0, types.uint8, alignment=16)
        base = smem_base(smem)
        tid = types.int32(cuda.threadIdx.x)
        col_blocks = (cols + TILE - 1) // TILE
        row_blocks = (rows + TILE - 1) // TILE
        block_n = types.int32(cuda.blockIdx.x) // col_blocks
        block_k = types.int32(cuda.blockIdx.x) % col_blocks
        n0, k0 = block_n * TILE, block_k * TILE
        lane = tid % lanes_per_row
        first_row = tid // lanes_per_row
        k = k0 + lane * per_load

        # load: LOADS_IN_FLIGHT loads issued, then parked in shared memory
        amax, bad = types.float32(0), types.int32(0)
        for group in range(groups):
            r = (group * LOADS_IN_FLIGHT) * rows_per_step + first_row
            a0, a1, a2, a3 = load16(w, n0 + r, k, rows, cols, elem_bytes)
            b0, b1, b2, b3 = load16(w, n0 + r + rows_per_step, k, rows, cols, elem_bytes)
            c0, c1, c2, c3 = load16(w, n0 + r + 2 * rows_per_step, k, rows, cols, elem_bytes)
            d0, d1, d2, d3 = load16(w, n0 + r + 3 * rows_per_step, k, rows, cols, elem_bytes)
            amax, bad = park(base, r, lane, a0, a1, a2, a3, amax, bad)
            amax, bad = park(base, r + rows_per_step, lane, b0, b1, b2, b3, amax, bad)
            amax, bad = park(base, r + 2 * rows_per_step, lane, c0, c1, c2, c3, amax, bad)
            amax, bad = park(base, r + 3 * rows_per_step, lane, d0, d1, d2, d3, amax, bad)
        amax, bad = block_reduce(base, amax, bad, tid)
        block_scale_value = block_scale(amax, bad)
        if tid == 0:
            st_global_f32(scale + (types.int64(block_n) * col_blocks + block_k) * 4,
                          block_scale_value)
            if transposed:
                st_global_f32(scale_t + (types.int64(block_k) * row_blocks + block_n) * 4,
                              block_scale_value)

        # rows: W's bytes, from the elements this thread parked
        for step in range(groups * LOADS_IN_FLIGHT):
            r = step * rows_per_step + first_row
            lo, hi = quantize_vector(base, r, lane, block_scale_value)
            if n0 + r < rows and k < cols:
                if elem_bytes == 2:
                    st_global_v2_u32(data + types.int64(n0 + r) * cols + k, lo, hi)
                else:
                    st_global_u32(data + types.int64(n0 + r) * cols + k, lo)
            if transposed:
                if elem_bytes == 2:
                    st_shared_v2_u32(base + byte_tile + r * TILE + lane * per_load, lo, hi)
                else:
                    st_shared_u32(base + byte_tile + r * TILE + lane * per_load, lo)

        # transposed: W^T's rows, one column of the tile per thread, 64 rows of it
        if transposed:
            cuda.syncthreads()
            c = tid % TILE
            first = (tid // TILE) * 64
            if k0 + c < cols:
                for r0 in range(first, first + 64, 16):      # 16 bytes per store
                    if n0 + r0 < rows:
                        st_global_v4_u32(data_t + types.int64(k0 + c) * rows + n0 + r0,
                                         gather_column(base, c, r0),
                                         gather_column(base, c, r0 + 4),
                                         gather_column(base, c, r0 + 8),
                                         gather_column(base, c, r0 + 12))

    name = f"quantize_128x128_{dtype}" + ("_transposed" if transposed else "")
    quantize_128x128_kernel.__name__ = quantize_128x128_kernel.__qualname__ = name
    return quantize_128x128_kernel
