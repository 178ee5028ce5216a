"""The intrinsics on a Hopper GPU: micro-kernels (tests/microkernels.py), each checked exactly
against torch on fresh random data.

  a. TMA: a 128B-swizzled tile loaded (mbarrier expect_tx + wait) and stored back; read with
     plain ld.shared through the documented swizzle formula; out-of-bounds parts of the box.
  b. wgmma: one 64 x N x 128 e4m3 product (four m64nNk32 steps) vs a.float() @ b.float().T,
     read back through the documented fragment layout.
  c. TMA multicast into a 2-CTA cluster, %cluster_ctarank and the remote mbarrier arrive.
  d. setmaxnreg: 40 registers for one warpgroup, 232 for two, ~200 of them used.
  e. cvt.rn.bf16x2.f32: which float goes in which half.
  g. a fragment tile row-major into padded shared-memory rows (stmatrix), rows copied out by
     1-D bulk copies: only the rows and bytes asked for are written.

Marked `gpu`: skipped without a Hopper GPU (conftest.py). Kernels are compiled and launched
exactly as the GEMM is: compile_kernel(KernelSpec) -> LoadedKernel -> cuLaunchKernelEx on torch's
current stream, tensor maps by value. No kernel can hang: every mbarrier wait has a deadline and
reports through a status word per thread (microkernels.STATUS_*), checked first.
"""

from __future__ import annotations

import collections

import pytest
import torch

from pyfp8gemm.cache.compiler import compile_kernel
from pyfp8gemm.host import driver
from pyfp8gemm.testing import calc_diff

import microkernels
from microkernels import STATUS_NOT_RUN, STATUS_OK, TILE_ROWS, fragment_to_tile

pytestmark = pytest.mark.gpu

E4M3 = torch.float8_e4m3fn
POISON = 0xA5          # bytes a kernel must not touch stay this
ROWS, COLS = 256, 512  # the global uint8 tensors TMA tiles are cut from (64 x 128-byte boxes)

# ---------------------------------------------------------------------------------------------
# Launching a micro-kernel
# ---------------------------------------------------------------------------------------------

_loaded: dict[str, driver.LoadedKernel] = {}


def launch(micro: microkernels.MicroKernel, grid: int, *values):
    """Compile (cached) and load `micro` once, launch it on torch's stream and wait for it."""
    kernel = _loaded.get(micro.name)
    if kernel is None:
        compiled = compile_kernel(micro.spec)
        kernel = _loaded[micro.name] = driver.LoadedKernel(
            micro.name, compiled.cubin, torch.cuda.current_device(), micro.threads,
            micro.smem_bytes, micro.cluster_size)
    kernel.launch(grid, torch.cuda.current_stream().cuda_stream, values, micro.param_types)
    torch.cuda.synchronize()


def status_words(count: int) -> torch.Tensor:
    return torch.full((count,), STATUS_NOT_RUN, dtype=torch.int32, device="cuda")


def assert_waits_completed(status: torch.Tensor):
    """Every thread ran, and every one of its mbarrier waits completed before its deadline."""
    counts = collections.Counter(status.tolist())
    assert counts == {STATUS_OK: status.numel()}, (
        f"status words (0 = thread never got there, 2 = a wait timed out): {dict(counts)}")


def random_bytes(generator, *shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).cuda()


def randint(generator, low, high) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def byte_tile_map(tensor: torch.Tensor) -> driver.cu.CUtensorMap:
    """A TMA map over a (rows, cols) uint8 tensor: 64-row x 128-byte boxes, 128B swizzle
    (the GEMM's A/B maps: e4m3 moves as bytes)."""
    rows, cols = tensor.shape
    return driver.tensormap_2d(driver.DTYPE_FP8, tensor.data_ptr(), cols, rows, cols,
                               128, TILE_ROWS, 128)


def box_of(tensor: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """What a TMA load of the 64 x 128 box at (x bytes, y rows) gives: out-of-bounds bytes read
    as zeros."""
    rows, cols = tensor.shape
    box = torch.zeros((TILE_ROWS, 128), dtype=tensor.dtype, device=tensor.device)
    h, w = min(TILE_ROWS, rows - y), min(128, cols - x)
    box[:h, :w] = tensor[y:y + h, x:x + w]
    return box


# ---------------------------------------------------------------------------------------------
# a. TMA load / store of a 128B-swizzled tile
# ---------------------------------------------------------------------------------------------

# (src_x, src_y, dst_x, dst_y) per placement; None: drawn at random, inside the tensors.
PLACEMENTS = {
    "inside": None,
    # The box hangs over the bottom-right corner: the load zero-fills what lies outside,
    # the store drops it (what the GEMM relies on for M, N and K tails).
    "overhanging": (COLS - 48, ROWS - 24, COLS - 80, ROWS - 40),
}


def run_tma_round_trip(generator, placement):
    if PLACEMENTS[placement] is None:
        # Anywhere inside, not at the origin; x in 16-byte steps (TMA's global alignment).
        src_x, dst_x = (16 * randint(generator, 1, (COLS - 128) // 16) for _ in range(2))
        src_y, dst_y = (randint(generator, 1, ROWS - TILE_ROWS) for _ in range(2))
    else:
        src_x, src_y, dst_x, dst_y = PLACEMENTS[placement]
    src = random_bytes(generator, ROWS, COLS)
    dst = torch.full((ROWS, COLS), POISON, dtype=torch.uint8, device="cuda")
    unswizzled = torch.full((TILE_ROWS, 128), POISON, dtype=torch.uint8, device="cuda")
    status = status_words(128)
    launch(microkernels.make_tma_round_trip(), 1, byte_tile_map(src), byte_tile_map(dst),
           unswizzled.data_ptr(), status.data_ptr(), src_x, src_y, dst_x, dst_y)
    assert_waits_completed(status)
    return src, dst, unswizzled, (src_x, src_y, dst_x, dst_y)


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_tma_store_writes_back_the_loaded_tile_and_nothing_else(generator, placement):
    src, dst, _, (src_x, src_y, dst_x, dst_y) = run_tma_round_trip(generator, placement)
    tile = box_of(src, src_x, src_y)
    expected = torch.full_like(dst, POISON)
    h, w = min(TILE_ROWS, ROWS - dst_y), min(128, COLS - dst_x)
    expected[dst_y:dst_y + h, dst_x:dst_x + w] = tile[:h, :w]
    assert torch.equal(dst, expected)


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_tma_128b_swizzle_is_chunk_xor_row(generator, placement):
    # The kernel read the smem tile with plain ld.shared: byte b of 16-byte chunk c of row r
    # at r * 128 + 16 * (c ^ (r % 8)) + b. Un-swizzled that way, it is the box.
    src, _, unswizzled, (src_x, src_y, _, _) = run_tma_round_trip(generator, placement)
    assert torch.equal(unswizzled, box_of(src, src_x, src_y))


# ---------------------------------------------------------------------------------------------
# b. wgmma: a 64 x N x 128 e4m3 product
# ---------------------------------------------------------------------------------------------


def run_wgmma_tile(n, a, b):
    """a (64, 128) and b (n, 128) float32 holding e4m3 values -> the kernel's (64, n) fp32."""
    a8, b8 = a.to(E4M3).cuda(), b.to(E4M3).cuda()
    fragments = torch.full((128, n // 2), float("nan"), dtype=torch.float32, device="cuda")
    status = status_words(128)
    tmap_a = driver.tensormap_2d(driver.DTYPE_FP8, a8.data_ptr(), 128, 64, 128, 128, 64, 128)
    tmap_b = driver.tensormap_2d(driver.DTYPE_FP8, b8.data_ptr(), 128, n, 128, 128, n, 128)
    launch(microkernels.make_wgmma_tile(n), 1, tmap_a, tmap_b, fragments.data_ptr(),
           status.data_ptr())
    assert_waits_completed(status)
    return fragment_to_tile(fragments.cpu(), n)


@pytest.mark.parametrize("n", microkernels.WGMMA_TILE_NS)
def test_wgmma_e4m3_tile_is_exact_on_small_integers(generator, n):
    # Entries in [-3, 3] are exact in e4m3, and so is every partial sum (|sum| <= 128 * 9):
    # the tensor core must return a.float() @ b.float().T bit for bit.
    a = torch.randint(-3, 4, (64, 128), generator=generator).float()
    b = torch.randint(-3, 4, (n, 128), generator=generator).float()
    assert torch.equal(a.to(E4M3).float(), a) and torch.equal(b.to(E4M3).float(), b)
    out = run_wgmma_tile(n, a, b)
    assert torch.equal(out, a @ b.T)


@pytest.mark.parametrize("n", microkernels.WGMMA_TILE_NS)
def test_wgmma_e4m3_tile_on_random_values(generator, n):
    a = torch.randn((64, 128), generator=generator).to(E4M3).float()
    b = torch.randn((n, 128), generator=generator).to(E4M3).float()
    out = run_wgmma_tile(n, a, b)
    reference = a.double() @ b.double().T       # exact: products of e4m3 need 8 bits each
    # The tensor core keeps ~14 bits while accumulating FP8 products: a loose bound, relative
    # to the sum of |products| (a wrong layout or descriptor is off by O(1)).
    bound = (a.abs().double() @ b.abs().double().T) * 2.0**-7
    assert ((out.double() - reference).abs() <= bound).all()
    assert calc_diff(out, reference.float()) < 1e-5


# ---------------------------------------------------------------------------------------------
# c. TMA multicast into a cluster of 2 CTAs
# ---------------------------------------------------------------------------------------------


def test_tma_multicast_fills_both_ctas_of_the_cluster(generator):
    clusters = 2
    grid = clusters * microkernels.CLUSTER
    src = random_bytes(generator, ROWS, COLS)
    x = 16 * randint(generator, 1, (COLS - 128) // 16)
    y = randint(generator, 1, ROWS - clusters * TILE_ROWS)     # cluster c: rows y + 64 c
    tiles = torch.full((grid, TILE_ROWS, 128), POISON, dtype=torch.uint8, device="cuda")
    ranks = torch.full((grid,), -1, dtype=torch.int32, device="cuda")
    status = status_words(grid * 128)
    launch(microkernels.make_multicast(), grid, byte_tile_map(src), tiles.data_ptr(),
           status.data_ptr(), ranks.data_ptr(), x, y)
    # Both waits completed in every thread: the tile landed, and both CTAs' remote arrivals
    # (mbarrier_arrive_cluster) reached this CTA's barrier.
    assert_waits_completed(status)
    assert ranks.tolist() == [0, 1] * clusters                  # %cluster_ctarank
    for block in range(grid):
        cluster = block // microkernels.CLUSTER
        expected = src[y + TILE_ROWS * cluster:y + TILE_ROWS * (cluster + 1), x:x + 128]
        assert torch.equal(tiles[block], expected), f"CTA {block} (rank {block % 2})"


# ---------------------------------------------------------------------------------------------
# d. setmaxnreg
# ---------------------------------------------------------------------------------------------


def test_setmaxnreg_moves_registers_to_the_math_warpgroups(generator):
    # The math warpgroups use ~200 registers after setmaxnreg.inc 232 (the CPU test checks the
    # SASS); had the raise not taken effect, those instructions would fault. Small integers
    # times powers of two: every FMA is exact, so the result is checked bit for bit.
    n_acc = microkernels.SETMAXNREG_N_ACC
    values = torch.randint(-8, 9, (256, n_acc), generator=generator).float().cuda()
    out = torch.full_like(values, float("nan"))
    marks = torch.full((128,), -1, dtype=torch.int32, device="cuda")
    scale_row0 = 2.0 ** randint(generator, -3, 3)
    scale_row8 = 2.0 ** randint(generator, -3, 3)
    iterations = randint(generator, 1, 5)
    launch(microkernels.make_setmaxnreg(), 1, values.data_ptr(), out.data_ptr(),
           marks.data_ptr(), scale_row0, scale_row8, iterations)
    # Fragment element e = 4i + j belongs to row half j // 2 (row0: j < 2, row8: j >= 2).
    first_half = (torch.arange(n_acc, device="cuda") % 4) < 2
    scale = torch.where(first_half, scale_row0, scale_row8)
    assert torch.equal(out, values * scale * iterations)
    assert marks.tolist() == list(range(256, 384))    # the 40-register warpgroup ran too


# ---------------------------------------------------------------------------------------------
# e. cvt.rn.bf16x2.f32
# ---------------------------------------------------------------------------------------------


def test_pack_bf16x2_puts_the_first_float_in_the_low_half(generator):
    values = torch.randn(256, generator=generator)
    # Round-to-nearest-even ties (1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6), signed zero,
    # infinities and a float above bf16's largest finite value.
    values[:8] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -0.0, float("inf"), -float("inf"),
                               3.4e38, 65504.0, -1.5])
    values_on_gpu = values.cuda()
    packed = torch.zeros(128, dtype=torch.int32, device="cuda")
    launch(microkernels.make_pack_bf16x2(), 1, values_on_gpu.data_ptr(), packed.data_ptr())
    # torch (little-endian): element 2t of a bf16 pair is the low half of int32 word t.
    expected = values.view(128, 2).to(torch.bfloat16).view(torch.int32).view(128)
    assert torch.equal(packed.cpu(), expected)


# ---------------------------------------------------------------------------------------------
# f. udiv32
# ---------------------------------------------------------------------------------------------


def test_udiv32_is_exact_on_random_words(generator):
    # Dividends and divisors over the whole 32-bit range, plus the edges: a < b, a == b,
    # divisor 1, the largest word.
    pairs = torch.randint(0, 2**32, (128, 2), generator=generator, dtype=torch.int64)
    pairs[:, 1] = pairs[:, 1].clamp(min=1) >> torch.randint(0, 32, (128,), generator=generator)
    pairs[:, 1] = pairs[:, 1].clamp(min=1)
    pairs[:6] = torch.tensor([[3, 7], [7, 7], [2**32 - 1, 1], [2**32 - 1, 2**32 - 1],
                              [2**32 - 1, 3], [0, 5]])
    words = pairs.to(torch.uint32).view(torch.int32).cuda()
    quotients = torch.full((128,), -1, dtype=torch.int32, device="cuda")
    launch(microkernels.make_udiv32(), 1, words.data_ptr(), quotients.data_ptr())
    expected = (pairs[:, 0] // pairs[:, 1]).to(torch.uint32).view(torch.int32)
    assert torch.equal(quotients.cpu(), expected)


# ---------------------------------------------------------------------------------------------
# g. fragment -> row-major smem (fragment_store_bf16_rows) -> 1-D bulk copy per row
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", microkernels.BF16_ROW_COPY_NS)
@pytest.mark.parametrize("rows, columns", [(64, None), (41, None), (1, 8), (23, 40)])
def test_row_copies_write_the_rows_and_columns_asked_for(generator, n, rows, columns):
    columns = columns or n
    values = torch.randn(128, n // 2, generator=generator).cuda()
    stride = n + 24                                   # output rows wider than the tile
    out = torch.full((64, stride), float("nan"), dtype=torch.bfloat16, device="cuda")
    launch(microkernels.make_bf16_row_copy(n), 1, values.data_ptr(), out.data_ptr(), rows,
           2 * columns, 2 * stride)
    tile = microkernels.fragment_to_tile(values, n).to(torch.bfloat16)
    assert torch.equal(out[:rows, :columns], tile[:rows, :columns])
    assert out[:rows, columns:].isnan().all() and out[rows:].isnan().all()
