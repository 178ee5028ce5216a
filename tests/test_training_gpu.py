"""FP8 training on a Hopper GPU (issue 19, item 7): the 1D1D wgrad and k-grouped GEMMs on
DeepGEMM's backward shapes, odd shapes, NaN poisoning, determinism; the Linear's gradients
against the reference step; an FP8-vs-bf16 training run of a small MLP block.

Shape conventions (D[M, N] = A[M, K] @ B[N, K]^T), for DeepGEMM's 7 forward (n, k) pairs of a
weight W (n, k) and 4096 tokens:
* dgrad dX (4096, k) = dY (4096, n) @ W: the 1D2D GEMM at (M, N, K) = (4096, k, n);
* wgrad dW (n, k) = dY^T (n, 4096) @ X (4096, k): the 1D1D GEMM at (M, N, K) = (n, k, 4096),
  accumulating into d = c = randn * 32 (DeepGEMM's test).

Thresholds: calc_diff < 1e-3 against the fp32 product of the unquantized inputs (DeepGEMM's
bar), and < 1e-6 against the float64 product of the FP8 values (FP32 output: only summation
order and the tensor cores' per-block accumulation differ; 1D2D's bf16 output: < 1e-5).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

import pyfp8gemm
import pyfp8gemm.nn as fnn
from pyfp8gemm import quantize
from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d, k_grouped_fp8_gemm_nt_contiguous
from pyfp8gemm.host.quantize_training import quantize_rowwise_and_transposed, quantize_transposed
from pyfp8gemm.testing import (
    calc_diff,
    fp32_product,
    reference_fp8_linear_step,
    reference_gemm,
    reference_gemm_1d1d,
    reference_k_grouped,
)

pytestmark = pytest.mark.gpu

DEEPGEMM_NK = [(2112, 7168), (576, 7168), (24576, 1536), (32768, 512), (7168, 16384),
               (4096, 7168), (7168, 2048)]
K_GROUPED = [(4, 4096, 7168, 8192), (4, 7168, 2048, 8192), (8, 4096, 7168, 4096),
             (8, 7168, 2048, 4096), (16, 4096, 7168, 2048), (16, 7168, 2048, 2048)]
TOKENS = 4096


def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def gen(seed):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    return g


def randn(*shape, gen, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)


# ---------------------------------------------------------------------------------------------
# 1D1D: the weight gradient
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", DEEPGEMM_NK)
def test_wgrad_deepgemm_shapes(gen, n, k):
    dy = randn(TOKENS, n, gen=gen)
    x = randn(TOKENS, k, gen=gen)
    dy_t = quantize_transposed(dy)            # (n, 4096), 1x128 along the tokens
    x_t = quantize_transposed(x)              # (k, 4096)
    d = randn(n, k, gen=gen, dtype=torch.float32) * 32
    c = d.clone()
    pyfp8gemm.fp8_gemm_nt(dy_t, x_t, d, c=d)
    torch.cuda.synchronize()
    assert calc_diff(d, reference_gemm_1d1d(dy_t, x_t, c)) < 1e-6
    assert calc_diff(d, c + fp32_product(dy.t(), x.t())) < 1e-3


@pytest.mark.parametrize("n,k", DEEPGEMM_NK)
def test_dgrad_deepgemm_shapes(gen, n, k):
    """dX = dY @ W through the 1D2D GEMM with W's 128x128 quantization transposed."""
    dy = randn(TOKENS, n, gen=gen)
    w = randn(n, k, gen=gen)
    w_q = quantize(w, "128x128")
    wt = (w_q.data.t().contiguous(), w_q.scale.t().contiguous())   # (k, n) K-major
    dy_q = quantize(dy, "1x128")
    out = torch.empty(TOKENS, k, dtype=torch.bfloat16, device="cuda")
    pyfp8gemm.fp8_gemm_nt(dy_q, wt, out)
    torch.cuda.synchronize()
    assert calc_diff(out, reference_gemm(dy_q, wt)) < 1e-5
    assert calc_diff(out, fp32_product(dy, w.t())) < 1e-3


@pytest.mark.parametrize("m,n,k", [(1, 4, 16), (37, 132, 272), (129, 260, 4112),
                                   (255, 1028, 1040), (4097, 64, 144)])
@pytest.mark.parametrize("c_mode", ["none", "d", "separate"])
def test_wgrad_odd_shapes(gen, m, n, k, c_mode):
    x = randn(m, k, gen=gen)
    y = randn(n, k, gen=gen)
    a, b = quantize(x, "1x128"), quantize(y, "1x128")
    d = torch.full((m, n), float("nan"), device="cuda")      # every element must be written
    c = {"none": None, "d": None, "separate": randn(m, n, gen=gen, dtype=torch.float32)}[c_mode]
    if c_mode == "d":
        d = randn(m, n, gen=gen, dtype=torch.float32)
        c = d
    c_before = None if c is None else c.clone()
    fp8_gemm_nt_1d1d(a, b, d, c)
    torch.cuda.synchronize()
    assert not d.isnan().any()
    assert calc_diff(d, reference_gemm_1d1d(a, b, c_before)) < 1e-6


def test_wgrad_nan_poisoning(gen):
    x = randn(256, 512, gen=gen)
    y = randn(192, 512, gen=gen)
    x[100, 300] = float("nan")
    y[7, 5] = float("inf")
    d = torch.full((256, 192), float("nan"), device="cuda")
    fp8_gemm_nt_1d1d(quantize(x, "1x128"), quantize(y, "1x128"), d)
    torch.cuda.synchronize()
    expected = torch.zeros(256, 192, dtype=torch.bool, device="cuda")
    expected[100, :] = True
    expected[:, 7] = True
    assert torch.equal(d.isnan(), expected)


def test_wgrad_deterministic(gen):
    a = quantize(randn(2112, 4096, gen=gen), "1x128")
    b = quantize(randn(7168, 4096, gen=gen), "1x128")
    first = torch.empty(2112, 7168, device="cuda")
    fp8_gemm_nt_1d1d(a, b, first)
    for _ in range(3):
        again = torch.empty_like(first)
        fp8_gemm_nt_1d1d(a, b, again)
        assert torch.equal(first, again)


# ---------------------------------------------------------------------------------------------
# k-grouped
# ---------------------------------------------------------------------------------------------


def k_grouped_inputs(gen, ks, m, n):
    total = sum(ks)
    a_tokens = randn(total, m, gen=gen)
    b_tokens = randn(total, n, gen=gen)
    a_data, a_scales, b_data, b_scales, plain = [], [], [], [], []
    start = 0
    for k in ks:
        a_g, b_g = a_tokens[start:start + k], b_tokens[start:start + k]
        qa, qb = quantize_transposed(a_g), quantize_transposed(b_g)
        a_data.append(qa.data.flatten())
        b_data.append(qb.data.flatten())
        a_scales.append(qa.scale)
        b_scales.append(qb.scale)
        plain.append(fp32_product(a_g.t(), b_g.t()))
        start += k
    a = (torch.cat(a_data), pyfp8gemm.to_mn_major_tma_aligned(torch.cat(a_scales, dim=1)))
    b = (torch.cat(b_data), pyfp8gemm.to_mn_major_tma_aligned(torch.cat(b_scales, dim=1)))
    return a, b, torch.stack(plain)


@pytest.mark.parametrize("zero_group", [False, True])
@pytest.mark.parametrize("groups,m,n,expected_k", K_GROUPED)
def test_k_grouped_deepgemm_shapes(gen, seed, groups, m, n, expected_k, zero_group):
    rng = random.Random(seed)
    ks = [max(128, (int(expected_k * rng.uniform(0.7, 1.3)) + 127) // 128 * 128)
          for _ in range(groups)]
    if zero_group:
        ks[rng.randrange(groups)] = 0
    a, b, plain = k_grouped_inputs(gen, ks, m, n)
    c = randn(groups, m, n, gen=gen, dtype=torch.float32) * 32
    d = c.clone()
    c_before = c.clone()
    ks_tensor = torch.tensor(ks, dtype=torch.int32, device="cuda")
    pyfp8gemm.k_grouped_fp8_gemm_nt_contiguous(a, b, d, ks, ks_tensor, d)
    torch.cuda.synchronize()
    assert calc_diff(d, c_before + plain) < 1e-3
    for g, k in enumerate(ks):
        if k == 0:
            assert torch.equal(d[g], c_before[g])
    # The float64 reference, group by group (memory: one group at a time).
    ref = reference_k_grouped(a, b, ks, c_before)
    assert calc_diff(d, ref) < 1e-6


def test_k_grouped_deterministic_and_nan_free(gen):
    ks = [256, 0, 384, 128]
    a, b, _ = k_grouped_inputs(gen, ks, 512, 768)
    kt = torch.tensor(ks, dtype=torch.int32, device="cuda")
    first = torch.full((4, 512, 768), float("nan"), device="cuda")
    k_grouped_fp8_gemm_nt_contiguous(a, b, first, ks, kt)
    assert not first.isnan().any()
    assert torch.equal(first[1], torch.zeros(512, 768, device="cuda"))
    again = torch.empty_like(first)
    k_grouped_fp8_gemm_nt_contiguous(a, b, again, ks, kt)
    assert torch.equal(first, again)


# ---------------------------------------------------------------------------------------------
# The Linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,in_f,out_f", [((4, 512), 1024, 2048), ((2, 300), 7168, 2112),
                                              ((1000,), 2048, 7168), ((3, 5), 256, 128)])
def test_linear_gradients_match_reference(gen, shape, in_f, out_f):
    fnn.functional.clear_weight_cache()
    lin = fnn.Linear(in_f, out_f, device="cuda", dtype=torch.bfloat16)
    x = randn(*shape, in_f, gen=gen).requires_grad_()
    y = lin(x)
    dy = randn(*y.shape, gen=gen)
    y.backward(dy)
    ref = reference_fp8_linear_step(x.detach(), lin.weight, dy, lin.bias)
    assert calc_diff(y.detach(), ref["out"]) < 1e-5
    assert calc_diff(x.grad, ref["grad_input"]) < 1e-5
    assert calc_diff(lin.weight.grad, ref["grad_weight"]) < 1e-5   # bf16 .grad
    assert calc_diff(lin.bias.grad, ref["grad_bias"]) < 1e-5


def test_linear_main_grad(gen):
    lin = fnn.Linear(1024, 512, device="cuda", dtype=torch.bfloat16)
    lin.weight.main_grad = torch.zeros(512, 1024, device="cuda")
    total = torch.zeros(512, 1024, device="cuda", dtype=torch.float64)
    for tokens in (1000, 4096):
        x = randn(tokens, 1024, gen=gen)
        dy = randn(tokens, 512, gen=gen)
        lin(x).backward(dy)
        total += reference_fp8_linear_step(x, lin.weight, dy)["grad_weight"].double()
    assert lin.weight.grad is None
    assert calc_diff(lin.weight.main_grad, total) < 1e-6


def test_quantize_both_layouts_match_cpu(gen):
    """The backward quantization gives the same bits on the GPU as on the CPU."""
    x = randn(1000, 384, gen=gen)
    rows, cols = quantize_rowwise_and_transposed(x)
    rows_cpu, cols_cpu = quantize_rowwise_and_transposed(x.cpu())
    assert torch.equal(rows.data.cpu().view(torch.uint8), rows_cpu.data.view(torch.uint8))
    assert torch.equal(cols.data.cpu().view(torch.uint8), cols_cpu.data.view(torch.uint8))
    assert torch.equal(cols.scale.cpu(), cols_cpu.scale)


# ---------------------------------------------------------------------------------------------
# FP8 vs bf16 training
# ---------------------------------------------------------------------------------------------


def test_fp8_training_run_tracks_bf16(seed):
    """A transformer MLP block (+ a bf16 head) on a synthetic next-token-like task, 300 AdamW
    steps, same seed and data: FP8's final loss within 0.25% (relative) of bf16's."""
    from test_nn_linear import MLPBlock, synthetic_batches, train

    no_tf32()
    batches = synthetic_batches(seed, 300, 2048, d=512, vocab=256)
    torch.manual_seed(seed)
    bf16_model = MLPBlock(d=512, hidden=2048, vocab=256).cuda()
    fp8_model = copy.deepcopy(bf16_model)
    report = fnn.convert(fp8_model, filter_fn=lambda name, m: name != "head")
    assert report.converted == ["up", "down"]
    bf16_losses = train(bf16_model, batches, "cuda", lr=1e-3)
    fp8_losses = train(fp8_model, batches, "cuda", lr=1e-3)
    final_bf16 = sum(bf16_losses[-30:]) / 30
    final_fp8 = sum(fp8_losses[-30:]) / 30
    assert final_bf16 < bf16_losses[0] - 0.2
    assert abs(final_fp8 - final_bf16) / final_bf16 < 0.0025, (final_fp8, final_bf16)


# ---------------------------------------------------------------------------------------------
# The 1D1D kernel's "tma" epilogue (through shared memory, TMA store / reduce-add; what the
# heuristic picks for 128-row tiles) and the "direct" one (picked where C is not D), forced
# here, against each other bit for bit
# ---------------------------------------------------------------------------------------------


def _tma_and_direct(schedule, accumulate, block_n=128):
    from pyfp8gemm.host.heuristics import make_config
    return [make_config(128, block_n, schedule=schedule, scaling="1d1d", accumulate=accumulate,
                        epilogue=epilogue) for epilogue in ("tma", "direct")]


@pytest.mark.parametrize("m,n,k", [(37, 132, 272), (129, 260, 4112), (255, 1028, 1040),
                                   (4097, 64, 144), (2112, 7168, 4096)])
@pytest.mark.parametrize("c_mode", ["none", "d", "separate"])
@pytest.mark.parametrize("block_n", [128, 152])   # 32-column swizzled panels; one row-major box
def test_wgrad_tma_epilogue_matches_direct(gen, m, n, k, c_mode, block_n):
    from pyfp8gemm.host.launch import launch_1d1d

    a = quantize(randn(m, k, gen=gen), "1x128")
    b = quantize(randn(n, k, gen=gen), "1x128")
    c = None if c_mode == "none" else randn(m, n, gen=gen, dtype=torch.float32) * 8
    outs = []
    for cfg in _tma_and_direct("dense", c is not None, block_n):
        d = torch.full((m, n), float("nan"), device="cuda")
        if c_mode == "d":
            d.copy_(c)
        launch_1d1d(a.data, a.scale, b.data, b.scale, d,
                    {"none": None, "d": d, "separate": c}[c_mode], config=cfg)
        outs.append(d)
    torch.cuda.synchronize()
    tma, direct = outs
    assert not tma.isnan().any()
    assert torch.equal(tma, direct)
    assert calc_diff(tma, reference_gemm_1d1d(a, b, c)) < 1e-6


@pytest.mark.parametrize("multicast", ["a", "b"])
@pytest.mark.parametrize("epilogue", ["tma", "direct"])
def test_wgrad_in_a_cluster_matches_one_cta(gen, multicast, epilogue):
    """1D1D in 2-CTA clusters sharing A or B (measured no faster: not picked): the same bits
    as without a cluster, with C."""
    from pyfp8gemm.host.heuristics import make_config
    from pyfp8gemm.host.launch import launch_1d1d

    m, n, k = 1024, 768, 1040                   # 8 M tiles, 6 N tiles: both pair up
    a = quantize(randn(m, k, gen=gen), "1x128")
    b = quantize(randn(n, k, gen=gen), "1x128")
    c = randn(m, n, gen=gen, dtype=torch.float32)
    outs = []
    for mc in (multicast, "none"):
        cfg = make_config(128, 128, mc, scaling="1d1d", accumulate=True,
                          epilogue=epilogue if mc != "none" else "direct")
        d = c.clone()
        launch_1d1d(a.data, a.scale, b.data, b.scale, d, d, config=cfg)
        outs.append(d)
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])
    assert calc_diff(outs[0], reference_gemm_1d1d(a, b, c)) < 1e-6


@pytest.mark.parametrize("block_n", [128, 136])
def test_k_grouped_tma_epilogue_matches_direct(gen, block_n):
    from pyfp8gemm.host.launch import launch_1d1d

    ks = [256, 0, 384, 128]
    (a_data, a_scale), (b_data, b_scale), _ = k_grouped_inputs(gen, ks, 520, 776)
    c = randn(4, 520, 776, gen=gen, dtype=torch.float32)
    outs = []
    for cfg in _tma_and_direct("k_grouped", True, block_n):
        d = c.clone()
        launch_1d1d(a_data, a_scale, b_data, b_scale, d, d, "k_grouped", tuple(ks), config=cfg)
        outs.append(d)
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][1], c[1])                      # the empty group: D = C


def test_wgrad_tma_reduce_add_keeps_subnormals(gen):
    """The TMA reduce-add adds in L2: a C of float32 subnormals (and tiny products) must come
    out as the direct epilogue's FADD gives them, not flushed to zero (PTX ISA versions differ
    on whether cp.reduce.async.bulk .add.f32 flushes)."""
    from pyfp8gemm.host.launch import launch_1d1d

    m, n, k = 256, 256, 256
    a = quantize(randn(m, k, gen=gen) * 1e-20, "1x128")
    b = quantize(randn(n, k, gen=gen) * 1e-20, "1x128")
    c = randn(m, n, gen=gen, dtype=torch.float32) * 1e-39          # subnormal float32
    assert (c != 0).any() and (c.abs() < torch.finfo(torch.float32).tiny).all()
    outs = []
    for cfg in _tma_and_direct("dense", True):
        d = c.clone()
        launch_1d1d(a.data, a.scale, b.data, b.scale, d, d, config=cfg)
        outs.append(d)
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])
