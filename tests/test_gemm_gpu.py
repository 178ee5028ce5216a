"""The dense FP8 GEMM on a Hopper GPU: correct for every shape, every config, every way of calling.

Marked `gpu`: skipped (with the reason) without a Hopper GPU, see conftest.py.

What "correct" means here (DESIGN.md, "The numerics"):

* calc_diff < 1e-5 against `reference_gemm`, the exact product of the dequantized FP8 inputs:
  a correct kernel differs from it only by bf16 output rounding (~1e-6);
* calc_diff < 1e-3 against the fp32 product of the unquantized bf16 inputs: that includes the
  FP8 quantization error itself (~7e-4 on random data);
* every output written: the output starts as NaN and no NaN may be left (finite inputs).

Inputs are fresh torch.randn bf16 values for every check (never zeros, which would hide a kernel
that writes nothing useful); the seed is printed by the `seed` fixture, so a failure replays.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from pyfp8gemm import quantize
from pyfp8gemm.host.gemm import fp8_gemm_nt, matmul
from pyfp8gemm.testing import calc_diff, fp32_product, reference_gemm

pytestmark = pytest.mark.gpu

BF16 = torch.bfloat16
MAX_DIFF_VS_REFERENCE = 1e-5
MAX_DIFF_VS_FP32 = 1e-3

# ../shared/ANCHORS.md, first table: the shapes pyfp8gemm is measured on.
ANCHOR_SHAPES = [
    (m, n, k)
    for m in (64, 128, 4096)
    for n, k in ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168),
                 (7168, 2048))
] + [(8192, 8192, 8192)]

# The shape grid of the dense GEMM issue: tiny to large M, N and K with and without tails
# (7296 = 57 * 128, 576 = 4.5 * 128, 2112 = 16.5 * 128).
GRID_M = (1, 7, 64, 129, 1000, 4097)
GRID_N = (128, 576, 2112, 7168)
GRID_K = (128, 576, 7168, 7296)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def seeded(seed):
    """Every test draws its inputs from a fresh, printed seed."""
    torch.manual_seed(seed)


def random_bf16(*shape) -> torch.Tensor:
    return torch.randn(*shape, dtype=BF16, device="cuda")


def nan_filled(*shape) -> torch.Tensor:
    """An output buffer poisoned with NaN: whatever the kernel does not write stays NaN."""
    return torch.full(shape, float("nan"), dtype=BF16, device="cuda")


def assert_correct(out, x, w, a, b) -> None:
    """All three correctness rules for out = x @ w^T computed from a = q(x), b = q(w).

    The fp32 bar, 1e-3, is a statement about the FP8 quantization of the inputs (~7e-4 on
    average), and on the tiniest shapes that is a noisy statistic: with M = 1 and N = 128 a
    handful of large inputs dominate it, and about 1 draw in 50 of the inputs alone, multiplied
    exactly, lands above 1e-3 (measured on the CPU: (1, 128, 7168) 2%, (1, 128, 128) 1%; none of
    300 draws for M >= 7 or N >= 576). Such a draw says nothing about the kernel, so the bar is
    raised to what the quantized inputs themselves give, plus the kernel's own distance from
    their exact product; the quantization error must still be sane (< 2e-3), and the kernel is
    held to 1e-5 against the exact product of the quantized inputs in every case.

    calc_diff(x, y) = |x - y|^2 / (|x|^2 + |y|^2) is a squared distance, so the two distances add
    under square roots (triangle inequality), not directly: adding them plainly failed once on
    a 5x8x16 product (1.287e-3 against 1.272e-3 + 1e-5).
    """
    unwritten = int(out.isnan().sum())
    assert unwritten == 0, f"{unwritten} of {out.numel()} outputs left unwritten (still NaN)"
    reference = reference_gemm(a, b)
    diff_reference = calc_diff(out, reference)
    assert diff_reference < MAX_DIFF_VS_REFERENCE, f"calc_diff vs FP8 reference {diff_reference:.3e}"
    fp32 = fp32_product(x, w)
    diff_fp32 = calc_diff(out, fp32)
    if diff_fp32 >= MAX_DIFF_VS_FP32:
        diff_of_quantization = calc_diff(reference, fp32)
        assert diff_of_quantization < 2 * MAX_DIFF_VS_FP32, (
            f"the quantized inputs themselves differ by {diff_of_quantization:.3e} from fp32"
        )
        bound = (math.sqrt(diff_of_quantization) + math.sqrt(diff_reference)) ** 2 * 1.01
        assert diff_fp32 < bound, (
            f"calc_diff vs fp32 product {diff_fp32:.3e}, quantization alone "
            f"{diff_of_quantization:.3e}"
        )


def check_fp8_gemm_nt(m: int, n: int, k: int) -> None:
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    out = nan_filled(m, n)
    assert fp8_gemm_nt(a, b, out) is out
    assert_correct(out, x, w, a, b)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m, n, k", ANCHOR_SHAPES)
def test_anchor_shapes(m, n, k):
    check_fp8_gemm_nt(m, n, k)


@pytest.mark.parametrize("k", GRID_K, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("n", GRID_N, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("m", GRID_M, ids=lambda m: f"M{m}")
def test_shape_grid(m, n, k):
    check_fp8_gemm_nt(m, n, k)


@pytest.mark.parametrize("m, n, k", [(333, 1000, 1040), (5, 8, 16), (130, 264, 144),
                                     (64, 22528, 1024)])
def test_odd_shapes(m, n, k):
    """Smallest legal N and K, and tails everywhere (N, K not multiples of the blocks).

    (64, 22528, 1024): for M <= 64 and N in (21120, 23232] the heuristic once picked BLOCK_N = 176,
    whose tiles can straddle three 128-column weight-scale blocks (e.g. columns 352..527 touch
    blocks 2, 3 and 4) and came out wrong; GemmConfig now rejects such widths. The shape stays
    as a regression test.
    """
    check_fp8_gemm_nt(m, n, k)


def test_row_major_activation_scales():
    """DeepGEMM-style (data, scale) pairs with row-major activation scales: converted, never
    misread, same bits as the FP8Tensor call."""
    m, n, k = 300, 576, 1040
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    expected = fp8_gemm_nt(a, b, nan_filled(m, n))
    out = fp8_gemm_nt((a.data, a.scale.contiguous()), (b.data, b.scale), nan_filled(m, n))
    assert torch.equal(out, expected)
    assert_correct(out, x, w, a, b)


# ---------------------------------------------------------------------------------------------
# NaN propagation: each output depends on exactly the inputs it should
# ---------------------------------------------------------------------------------------------

NAN_SHAPE = (300, 520, 1040)  # partial tiles in M, N (520 = 4 * 128 + 8) and K


@pytest.mark.parametrize("row, col", [(0, 0), (137, 700), (299, 1039)])
def test_nan_in_one_activation_block_poisons_exactly_its_row(row, col):
    m, n, k = NAN_SHAPE
    x, w = random_bf16(m, k), random_bf16(n, k)
    x[row, col] = float("nan")
    out = fp8_gemm_nt(quantize(x, "1x128"), quantize(w, "128x128"), nan_filled(m, n))
    expected = torch.zeros(m, n, dtype=torch.bool, device="cuda")
    expected[row, :] = True
    assert torch.equal(out.isnan(), expected)
    assert out[~expected].isfinite().all()


@pytest.mark.parametrize("row, col", [(0, 0), (300, 129), (519, 1039), (130, 640)])
def test_nan_in_one_weight_block_poisons_exactly_its_columns(row, col):
    """A NaN in w[row, col] makes its 128x128 block's scale NaN: the outputs of the block's
    128 columns (fewer in the last, partial block), every row, and nothing else. Catches a
    tile straddling two scale blocks that mixes their scales (NaN * 0 is NaN)."""
    m, n, k = NAN_SHAPE
    x, w = random_bf16(m, k), random_bf16(n, k)
    w[row, col] = float("nan")
    out = fp8_gemm_nt(quantize(x, "1x128"), quantize(w, "128x128"), nan_filled(m, n))
    expected = torch.zeros(m, n, dtype=torch.bool, device="cuda")
    first = row // 128 * 128
    expected[:, first:first + 128] = True
    assert torch.equal(out.isnan(), expected)
    assert out[~expected].isfinite().all()


# ---------------------------------------------------------------------------------------------
# Determinism and streams
# ---------------------------------------------------------------------------------------------


def test_bitwise_identical_run_to_run():
    m, n, k = 4096, 2112, 7168
    a = quantize(random_bf16(m, k), "1x128")
    b = quantize(random_bf16(n, k), "128x128")
    first = fp8_gemm_nt(a, b, nan_filled(m, n))
    for _ in range(3):
        again = fp8_gemm_nt(a, b, nan_filled(m, n))
        assert torch.equal(again.view(torch.int16), first.view(torch.int16))


def test_non_default_stream():
    """The GEMM runs on torch's current stream, ordered after the work queued there before it.

    On a side stream: spin the GPU ~20 ms, then fill `out` with NaN, then the GEMM. Launched on
    the side stream, the GEMM waits for the fill. Launched on any other stream, it would run
    first and the late NaN fill would wipe its result.
    """
    m, n, k = 1000, 2112, 7168
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    out = torch.empty(m, n, dtype=BF16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # inputs are ready on the side stream too
    with torch.cuda.stream(side):
        torch.cuda._sleep(40_000_000)  # GPU clock cycles
        out.fill_(float("nan"))
        fp8_gemm_nt(a, b, out)
        via_matmul = matmul(x, w.t())
    side.synchronize()
    assert_correct(out, x, w, a, b)
    assert torch.equal(via_matmul, out)


def test_fewer_sms():
    """set_num_sms: a persistent grid of fewer CTAs than tiles still covers every tile."""
    from pyfp8gemm.host import device_info

    all_sms = device_info.device_sm_count()
    with pytest.raises(ValueError, match="num_sms"):
        device_info.set_num_sms(all_sms + 1)
    try:
        for num_sms in (1, 7, all_sms - 1):
            device_info.set_num_sms(num_sms)
            assert device_info.get_num_sms() == num_sms
            check_fp8_gemm_nt(1000, 2112, 1536)
    finally:
        device_info.set_num_sms(all_sms)


def test_cuda_graph_capture():
    """A call is capturable: no host synchronization, no allocation inside fp8_gemm_nt."""
    m, n, k = 129, 2112, 7168
    a = quantize(random_bf16(m, k), "1x128")
    b = quantize(random_bf16(n, k), "128x128")
    out = nan_filled(m, n)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fp8_gemm_nt(a, b, out)  # warm-up: compile and load the kernel outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fp8_gemm_nt(a, b, out)
    # New inputs in the same buffers, a poisoned output, then replay.
    x, w = random_bf16(m, k), random_bf16(n, k)
    a_new, b_new = quantize(x, "1x128"), quantize(w, "128x128")
    a.data.copy_(a_new.data)
    a.scale.copy_(a_new.scale)
    b.data.copy_(b_new.data)
    b.scale.copy_(b_new.scale)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_correct(out, x, w, a_new, b_new)


# ---------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------


def test_matmul_bf16_inputs_with_leading_dims():
    x, w = random_bf16(4, 250, 7168), random_bf16(2112, 7168)
    y = matmul(x, w.t())
    assert y.shape == (4, 250, 2112) and y.dtype == BF16
    a, b = quantize(x.reshape(1000, 7168), "1x128"), quantize(w, "128x128")
    assert_correct(y.reshape(1000, 2112), x.reshape(1000, 7168), w, a, b)
    # Same bits as the DeepGEMM-style call on the same quantized operands.
    assert torch.equal(y.reshape(1000, 2112), fp8_gemm_nt(a, b, nan_filled(1000, 2112)))


def test_matmul_fp8_weight_transposed_view():
    x, w = random_bf16(129, 1536), random_bf16(24576 // 4, 1536)
    b = quantize(w, "128x128")
    out = nan_filled(129, w.shape[0])
    assert matmul(x, b.t(), out=out) is out
    assert_correct(out, x, w, quantize(x, "1x128"), b)


def test_matmul_fp8_activations_and_contiguous_kn_weight():
    x, w = random_bf16(64, 576), random_bf16(2112, 576)
    a = quantize(x, "1x128")
    y = matmul(a, w.t().contiguous())  # a (K, N) weight: one transpose copy
    assert_correct(y, x, w, a, quantize(w, "128x128"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_matmul_other_input_dtypes(dtype):
    x, w = random_bf16(7, 2048).to(dtype), random_bf16(576, 2048).to(dtype)
    y = matmul(x, w.t())
    assert_correct(y, x, w, quantize(x, "1x128"), quantize(w, "128x128"))


# ---------------------------------------------------------------------------------------------
# Every configuration the heuristic can choose
# ---------------------------------------------------------------------------------------------


def _all_configs():
    """heuristics.all_configs() if the heuristic exposes it and the launcher takes config=."""
    try:
        from pyfp8gemm.host import heuristics
        from pyfp8gemm.host.launch import fp8_gemm_nt_launch
    except Exception:  # e.g. numba-cuda missing: the test below says why it is skipped
        return []
    if not hasattr(heuristics, "all_configs"):
        return []
    if "config" not in inspect.signature(fp8_gemm_nt_launch).parameters:
        return []
    return [cfg for cfg in heuristics.all_configs()
            if cfg.schedule == "dense" and cfg.scaling == "1d2d"]


CONFIGS = _all_configs()


def config_shape(cfg) -> tuple[int, int, int]:
    """The medium shape a config is tested on: M = 1000, K = 1600 (= 12.5 * 128) and N near
    1000, always with partial tiles in M, N and K.

    N is 2t * BLOCK_N - 8: the number of N tiles is even (and 1000 rows make 8 M tiles of 128),
    so 2-CTA multicast clusters pair every tile, which the launcher requires of a forced
    multicast config. And N spans at least 128 / gcd(BLOCK_N, 128) tiles: then the tiles start
    at every offset they can have relative to the 128-column weight-scale blocks, so every way
    a tile can straddle scale blocks is exercised."""
    block_n = cfg.block_n
    tiles_per_scale_period = 128 // math.gcd(block_n, 128)
    pairs = max(1, round(1024 / (2 * block_n)), -(-tiles_per_scale_period // 2))
    return 1000, 2 * pairs * block_n - 8, 1600


@pytest.mark.skipif(not CONFIGS, reason="heuristics.all_configs() or launcher config= missing")
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda cfg: getattr(cfg, "name", str(cfg)))
def test_every_config(cfg):
    check_config(cfg, *config_shape(cfg))


def check_config(cfg, m: int, n: int, k: int) -> None:
    """One GEMM with a forced configuration, on fresh random inputs, checked for correctness."""
    from pyfp8gemm.host.launch import fp8_gemm_nt_launch

    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    out = nan_filled(m, n)
    fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out, config=cfg)
    assert_correct(out, x, w, a, b)


# ---------------------------------------------------------------------------------------------
# BLOCK_M 256: two 64-row waves per math warpgroup (the heuristic's choice for large M).
# Checked like the heuristic's configs, with partial tiles and multicast, plus one shape where
# every CTA walks several tiles.
# ---------------------------------------------------------------------------------------------


def _block_m_256_configs():
    try:
        from pyfp8gemm.host.heuristics import make_config
    except Exception:
        return []
    return [make_config(256, block_n, multicast)
            for block_n, multicast in ((128, "none"), (128, "a"), (64, "b"), (112, "none"),
                                       (48, "a"), (16, "none"))]


BLOCK_M_256_CONFIGS = _block_m_256_configs()


@pytest.mark.skipif(not BLOCK_M_256_CONFIGS, reason="the launcher cannot be imported")
@pytest.mark.parametrize("cfg", BLOCK_M_256_CONFIGS, ids=lambda cfg: cfg.name)
def test_block_m_256(cfg):
    for m, n, k in (config_shape(cfg), (4096, 2 * 12 * cfg.block_n, 7168)):
        check_config(cfg, m, n, k)


# ---------------------------------------------------------------------------------------------
# BLOCK_N a multiple of 8 but not of 16: the output tile is stored in unswizzled 8-column
# panels (17 TMA stores for BLOCK_N 136), and tiles straddle B-scale blocks at 8-column offsets.
# ---------------------------------------------------------------------------------------------


def _block_n_8_configs():
    try:
        from pyfp8gemm.host.heuristics import make_config
    except Exception:
        return []
    return [make_config(block_m, block_n, multicast)
            for block_m, block_n, multicast in ((128, 136, "none"), (128, 120, "a"),
                                                (64, 24, "none"), (256, 72, "b"))]


BLOCK_N_8_CONFIGS = _block_n_8_configs()


@pytest.mark.skipif(not BLOCK_N_8_CONFIGS, reason="the launcher cannot be imported")
@pytest.mark.parametrize("cfg", BLOCK_N_8_CONFIGS, ids=lambda cfg: cfg.name)
def test_block_n_multiple_of_8(cfg):
    check_config(cfg, *config_shape(cfg))


# ---------------------------------------------------------------------------------------------
# Narrow A tiles (BLOCK_M 16 / 32, for decode): the wgmma computes 64 rows of which BLOCK_M are
# data; the rest read past the slot's A rows and must never reach D. M below, at and above
# BLOCK_M (several M tiles), N and K tails, a straddling BLOCK_N; D poisoned with NaN first, so
# a row stored from the garbage rows, or one not stored, fails.
# ---------------------------------------------------------------------------------------------


def _narrow_configs():
    try:
        from pyfp8gemm.host.heuristics import make_config
    except Exception:
        return []
    return [make_config(block_m, block_n)
            for block_m, block_n in ((16, 16), (16, 64), (16, 128), (32, 32), (32, 48),
                                     (32, 128))]


NARROW_CONFIGS = _narrow_configs()


@pytest.mark.skipif(not NARROW_CONFIGS, reason="the launcher cannot be imported")
@pytest.mark.parametrize("cfg", NARROW_CONFIGS, ids=lambda cfg: cfg.name)
def test_narrow_block_m(cfg):
    _, n, _ = config_shape(cfg)
    for m, k in ((1, 7168), (cfg.block_m - 3, 1600), (cfg.block_m, 1040), (cfg.block_m + 1, 4096),
                 (100, 2048)):
        check_config(cfg, m, n, k)


# ---------------------------------------------------------------------------------------------
# Swap-AB (decode batches): D^T = B A^T, 64 weight rows x BLOCK_N tokens per tile, D stored
# transposed from registers, bounded by M and N; with split-K where few weight tiles.
# ---------------------------------------------------------------------------------------------


def _swap_ab_cases():
    try:
        from pyfp8gemm.host.heuristics import make_config
        from pyfp8gemm.host.problem import KernelChoice
    except Exception:
        return []
    plain = [(make_config(64, bn, swap_ab=True), (m, n, k))
             for bn in (8, 16, 24, 32)
             for m, n, k in ((1, 2112, 7168), (bn - 3 if bn > 8 else 5, 264, 1600),
                             (bn, 576, 1040), (bn + 1, 4104, 2048), (100, 200, 512))]
    split = [(KernelChoice(make_config(64, bn, split_k=True, swap_ab=True), splits), shape)
             for bn, splits, shape in ((8, 4, (3, 2112, 7168)), (16, 7, (16, 576, 7168)),
                                       (32, 3, (29, 1544, 4000)), (24, 16, (24, 64, 16384)))]
    return plain + split


SWAP_AB_CASES = _swap_ab_cases()


@pytest.mark.skipif(not SWAP_AB_CASES, reason="the launcher cannot be imported")
@pytest.mark.parametrize("choice, shape", SWAP_AB_CASES,
                         ids=[f"{getattr(c, 'name', '')}_{m}x{n}x{k}"
                              for c, (m, n, k) in SWAP_AB_CASES])
def test_swap_ab(choice, shape):
    """Every element written once (NaN-poisoned output), rows past M and columns past N never
    (D is allocated with a NaN margin around the view the kernel gets), correct to the
    dequantized product; split-K twice, bit for bit."""
    from pyfp8gemm.host.launch import fp8_gemm_nt_launch

    m, n, k = shape
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    outs = []
    for _ in range(2):
        storage = nan_filled(m + 3, n)
        out = storage[:m]
        fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out, config=choice)
        assert storage[m:].isnan().all(), "a row past M was written"
        assert_correct(out, x, w, a, b)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------
# Split-K: fewer tiles than SMs, K shared by several CTAs per tile, partials summed in FP32.
# ---------------------------------------------------------------------------------------------


def _split_k_cases():
    try:
        from pyfp8gemm.host.heuristics import make_choice as make_config
    except Exception:
        return []
    return [(make_config(64, 16, "none", 3), (64, 576, 7168)),
            (make_config(64, 32, "none", 8), (7, 264, 16000)),        # K tail, N tail
            (make_config(128, 64, "none", 5), (130, 192, 4096)),      # M tail, straddle-free
            (make_config(64, 48, "none", 2), (33, 200, 1040)),        # straddling BLOCK_N
            (make_config(128, 16, "none", 16), (256, 16, 8192)),
            # Only the last, partial wave split (on 132 SMs: 4 full waves + 16 tiles; 1 full
            # wave + 4 tiles, M and N tails; 4 full waves + 48 straddling tiles, K tail).
            (make_config(128, 128, "none", 4, split_last_wave=True), (4096, 2112, 7168)),
            (make_config(128, 128, "none", 4, split_last_wave=True), (2100, 1000, 2048)),
            (make_config(64, 48, "none", 2, split_last_wave=True), (1100, 1504, 1040)),
            # BLOCK_M 256 (two waves per warpgroup): plain split-K with an M tail, and the
            # last wave of 4096x2112x7168 (2 full waves + 8 tiles of 256x128) split 4 ways.
            (make_config(256, 128, "none", 3), (300, 256, 4096)),
            (make_config(256, 128, "none", 4, split_last_wave=True), (4096, 2112, 7168))]


SPLIT_K_CASES = _split_k_cases()


@pytest.mark.skipif(not SPLIT_K_CASES, reason="the launcher cannot be imported")
@pytest.mark.parametrize("cfg, shape", SPLIT_K_CASES,
                         ids=[f"{c.name}_{m}x{n}x{k}" for c, (m, n, k) in SPLIT_K_CASES])
def test_split_k(cfg, shape):
    from pyfp8gemm.host.launch import fp8_gemm_nt_launch

    m, n, k = shape
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    outs = []
    for _ in range(3):      # the per-tile counters must be back at 0 after every launch
        out = nan_filled(m, n)
        fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out, config=cfg)
        assert_correct(out, x, w, a, b)
        outs.append(out)
    assert all(torch.equal(outs[0], other) for other in outs[1:]), "split-K is not reproducible"


def test_split_k_chosen_for_few_tiles_and_on_a_side_stream():
    from pyfp8gemm.host.heuristics import choose_dense

    m, n, k = 64, 576, 7168
    assert choose_dense(m, n, k, torch.cuda.get_device_properties(0).multi_processor_count).split_k > 1
    x, w = random_bf16(m, k), random_bf16(n, k)
    a, b = quantize(x, "1x128"), quantize(w, "128x128")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = nan_filled(m, n)
        fp8_gemm_nt(a, b, out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_correct(out, x, w, a, b)
