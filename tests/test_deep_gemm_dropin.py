"""pyfp8gemm.deep_gemm as DeepGEMM's stand-in, driven the way vLLM's and SGLang's DeepGEMM shims
call it (DEEPGEMM_API.md sections 5 and 6, written from those descriptions), on CPU tensors."""

from __future__ import annotations

import contextlib

import pytest
import torch

import pyfp8gemm.deep_gemm as deep_gemm
from pyfp8gemm.host import device_info

BF16 = torch.bfloat16
E4M3 = torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(device_info, "_num_sms_limit", None)
    from pyfp8gemm.host import grouped

    monkeypatch.setattr(grouped, "_mk_alignment", grouped.get_mk_alignment_for_contiguous_layout())
    monkeypatch.setattr(deep_gemm, "_knobs", dict(deep_gemm._knobs))


def _dequant_per_token(q, sf):
    return q.double() * sf.double().repeat_interleave(128, -1)[..., : q.shape[-1]]


def _dequant_per_block(q, sf):
    n, k = q.shape[-2:]
    full = sf.double().repeat_interleave(128, -2).repeat_interleave(128, -1)
    return q.double() * full[..., :n, :k]


# ---------------------------------------------------------------------------------------------
# vLLM: block-FP8 linear through a mutating custom op (fp8_gemm_nt_op)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("_test_vllm::fp8_gemm_nt_op", mutates_args=["output"])
def _vllm_fp8_gemm_nt_op(q: torch.Tensor, q_scale: torch.Tensor, w: torch.Tensor,
                         w_scale: torch.Tensor, output: torch.Tensor, use_e8m0: bool) -> None:
    deep_gemm.fp8_gemm_nt((q, q_scale), (w, w_scale), output,
                          disable_ue8m0_cast=not use_e8m0)


@_vllm_fp8_gemm_nt_op.register_fake
def _(q, q_scale, w, w_scale, output, use_e8m0):
    return None


def _vllm_prepare_weight(generator, n, k):
    w = torch.randn(n, k, generator=generator).to(BF16)
    wq, ws = deep_gemm.per_block_cast_to_fp8(w, use_ue8m0=False)
    # deepgemm_post_process_fp8_weight_block: validated, returned as is on SM90.
    ws = deep_gemm.transform_sf_into_required_layout(sf=ws, mn=n, k=k, recipe=(1, 128, 128),
                                                     is_sfa=False)
    return w, wq, ws


def _vllm_linear(x, wq, ws):
    # QuantFP8(group 1x128, column_major_scales=True, tma_aligned_scales=True)
    q, q_scale = deep_gemm.per_token_cast_to_fp8(x, use_ue8m0=False)
    q_scale = deep_gemm.get_col_major_tma_aligned_tensor(q_scale)
    out = torch.empty(x.shape[0], wq.shape[0], dtype=BF16, device=x.device)
    torch.ops._test_vllm.fp8_gemm_nt_op(q, q_scale, wq, ws, out, False)
    return out


def test_vllm_block_fp8_linear(generator):
    m, n, k = 48, 256, 512
    assert n % 64 == 0 and k % 128 == 0   # should_use_deepgemm_for_fp8_linear
    w, wq, ws = _vllm_prepare_weight(generator, n, k)
    x = torch.randn(m, k, generator=generator).to(BF16)
    out = _vllm_linear(x, wq, ws)
    q, q_scale = deep_gemm.per_token_cast_to_fp8(x, use_ue8m0=False)
    ref = _dequant_per_token(q, q_scale) @ _dequant_per_block(wq, ws).t()
    assert deep_gemm.calc_diff(out, ref) < 1e-5
    assert deep_gemm.calc_diff(out, x.float() @ w.float().t()) < 1e-3


def test_vllm_linear_compiles_with_no_graph_break(generator):
    _, wq, ws = _vllm_prepare_weight(generator, 128, 256)
    x = torch.randn(32, 256, generator=generator).to(BF16)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: _vllm_linear(x, wq, ws) * 2, fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(x), _vllm_linear(x, wq, ws) * 2)


# ---------------------------------------------------------------------------------------------
# vLLM: fused MoE, contiguous (DeepGemmExperts) and masked (BatchedDeepGemmExperts)
# ---------------------------------------------------------------------------------------------


def _experts(generator, e, n, k):
    ws = [deep_gemm.per_block_cast_to_fp8(torch.randn(n, k, generator=generator).to(BF16),
                                          use_ue8m0=False) for _ in range(e)]
    return torch.stack([w for w, _ in ws]), torch.stack([s for _, s in ws])


def test_vllm_moe_contiguous(generator):
    e, n, k = 3, 256, 256
    w, w_scale = _experts(generator, e, n, k)
    block = deep_gemm.get_mk_alignment_for_contiguous_layout()
    assert block == 128 and deep_gemm.get_m_alignment_for_contiguous_layout() == 128
    tokens = [5, 0, 130]
    m_sum = sum(deep_gemm.align(t, block) for t in tokens)
    # deepgemm_moe_permute: every block carries its expert id, padding rows too.
    expert_ids = torch.zeros(m_sum, dtype=torch.int32)
    a = torch.zeros(m_sum, k, dtype=BF16)
    start = 0
    for g, t in enumerate(tokens):
        size = deep_gemm.align(t, block)
        expert_ids[start:start + size] = g
        a[start:start + t] = torch.randn(t, k, generator=generator).to(BF16)
        start += size
    a1q, a1q_scale = deep_gemm.per_token_cast_to_fp8(a, use_ue8m0=False)
    a1q_scale = deep_gemm.get_col_major_tma_aligned_tensor(a1q_scale)
    out = torch.empty(m_sum, n, dtype=BF16)
    deep_gemm.m_grouped_fp8_gemm_nt_contiguous((a1q, a1q_scale), (w, w_scale), out, expert_ids)
    a_deq = _dequant_per_token(a1q, a1q_scale)
    start = 0
    for g, t in enumerate(tokens):
        rows = slice(start, start + t)
        if t:
            ref = a_deq[rows] @ _dequant_per_block(w[g], w_scale[g]).t()
            assert deep_gemm.calc_diff(out[rows], ref) < 1e-5
        start += deep_gemm.align(t, block)
    # The v1 name computes the same thing.
    out_v1 = torch.empty_like(out)
    deep_gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a1q, a1q_scale), (w, w_scale), out_v1,
                                                        expert_ids)
    assert torch.equal(out_v1, out)


def test_vllm_moe_masked(generator):
    e, max_tokens, n, k = 3, 64, 128, 384
    w, w_scale = _experts(generator, e, n, k)
    a = torch.randn(e, max_tokens, k, generator=generator).to(BF16)
    q = [deep_gemm.per_token_cast_to_fp8(a[g], use_ue8m0=False) for g in range(e)]
    a1q = torch.stack([d for d, _ in q])
    a1q_scale = deep_gemm.get_mn_major_tma_aligned_tensor(torch.stack([s for _, s in q]))
    assert a1q_scale.stride() == (deep_gemm.align(max_tokens, 4) * 3, 1,
                                  deep_gemm.align(max_tokens, 4))
    expert_num_tokens = torch.tensor([7, 0, 64], dtype=torch.int32)
    workspace = torch.zeros(e, max_tokens, n, dtype=BF16)
    deep_gemm.fp8_m_grouped_gemm_nt_masked((a1q, a1q_scale), (w, w_scale), workspace,
                                           expert_num_tokens, 32)
    for g in range(e):
        t = int(expert_num_tokens[g])
        if t:
            ref = _dequant_per_token(a1q[g, :t], a1q_scale[g, :t]) @ \
                _dequant_per_block(w[g], w_scale[g]).t()
            assert deep_gemm.calc_diff(workspace[g, :t], ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# SGLang: deep_gemm_wrapper entry points and its custom op
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("_test_sglang::deep_gemm_fp8_fp8_bf16_nt", mutates_args=["C"])
def _sglang_op(A: torch.Tensor, As: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor,
               C: torch.Tensor) -> None:
    deep_gemm.fp8_gemm_nt((A, As), (B, Bs), C)   # entrypoint.gemm_nt_f8f8bf16


@_sglang_op.register_fake
def _(A, As, B, Bs, C):
    return None


@contextlib.contextmanager
def _configure_deep_gemm_num_sms(num_sms):
    """SGLang's configure_deep_gemm_num_sms."""
    if num_sms is None:
        yield
        return
    original = deep_gemm.get_num_sms()
    deep_gemm.set_num_sms(num_sms)
    try:
        yield
    finally:
        deep_gemm.set_num_sms(original)


def test_sglang_block_fp8_linear(generator):
    m, n, k = 20, 192, 256
    w = torch.randn(n, k, generator=generator).to(BF16)
    B, Bs = deep_gemm.per_block_cast_to_fp8(w, use_ue8m0=False)
    x = torch.randn(m, k, generator=generator).to(BF16)
    A, As = deep_gemm.per_token_cast_to_fp8(x, use_ue8m0=False)   # row-major scales: converted
    C = torch.empty(m, n, dtype=BF16)
    deep_gemm.set_num_sms(100)
    with _configure_deep_gemm_num_sms(60):
        assert deep_gemm.get_num_sms() == 60
        torch.ops._test_sglang.deep_gemm_fp8_fp8_bf16_nt(A, As, B, Bs, C)
    assert deep_gemm.get_num_sms() == 100
    ref = _dequant_per_token(A, As) @ _dequant_per_block(B, Bs).t()
    assert deep_gemm.calc_diff(C, ref) < 1e-5
    C_v1 = torch.empty_like(C)
    deep_gemm.gemm_fp8_fp8_bf16_nt((A, As), (B, Bs), C_v1)
    assert torch.equal(C_v1, C)


# ---------------------------------------------------------------------------------------------
# Conventions: recipes, edge sizes, wgrad, helpers, knobs, what is not supported
# ---------------------------------------------------------------------------------------------


def test_1d1d_recipe_and_wgrad(generator):
    m, n, k = 64, 128, 256
    a, sa = deep_gemm.per_token_cast_to_fp8(torch.randn(m, k, generator=generator), False)
    b, sb = deep_gemm.per_token_cast_to_fp8(torch.randn(n, k, generator=generator), False)
    c = torch.randn(m, n, generator=generator)
    d = torch.empty(m, n)
    deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, c=c, recipe=(1, 1, 128))
    ref = c.double() + _dequant_per_token(a, sa) @ _dequant_per_token(b, sb).t()
    assert deep_gemm.calc_diff(d, ref) < 1e-9
    acc = c.clone()
    deep_gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), acc)
    torch.testing.assert_close(acc, d, rtol=1e-5, atol=1e-4)
    d2 = torch.empty(m, n)
    deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d2, c=c, recipe_a=(1, 128), recipe_b=(1, 128))
    assert torch.equal(d2, d)


def test_k_grouped(generator):
    m, n, ks = 32, 64, [128, 0, 256]
    groups = [(torch.randn(m, kg, generator=generator), torch.randn(n, kg, generator=generator))
              for kg in ks]
    a_parts, b_parts, sa_parts, sb_parts = [], [], [], []
    for x, y in groups:
        if x.shape[1]:
            qa, sa = deep_gemm.per_token_cast_to_fp8(x, False)
            qb, sb = deep_gemm.per_token_cast_to_fp8(y, False)
            a_parts.append(qa.reshape(-1)), b_parts.append(qb.reshape(-1))
            sa_parts.append(sa), sb_parts.append(sb)
    a = (torch.cat(a_parts), deep_gemm.get_mn_major_tma_aligned_tensor(torch.cat(sa_parts, 1)))
    b = (torch.cat(b_parts), deep_gemm.get_mn_major_tma_aligned_tensor(torch.cat(sb_parts, 1)))
    c = torch.randn(len(ks), m, n, generator=generator)
    d = torch.empty(len(ks), m, n)
    deep_gemm.k_grouped_fp8_gemm_nt_contiguous(a, b, d, ks, torch.tensor(ks, dtype=torch.int32),
                                               c)
    torch.testing.assert_close(d[1], c[1])
    sa_it = iter(zip(a_parts, sa_parts, b_parts, sb_parts))
    for g, kg in enumerate(ks):
        if kg:
            qa, sa, qb, sb = next(sa_it)
            ref = c[g].double() + _dequant_per_token(qa.view(m, kg), sa) @ \
                _dequant_per_token(qb.view(n, kg), sb).t()
            assert deep_gemm.calc_diff(d[g], ref) < 1e-9


def test_edge_sizes_follow_deepgemm(generator):
    a = torch.empty(8, 0, dtype=E4M3)
    b = torch.empty(16, 0, dtype=E4M3)
    d = torch.randn(8, 16, generator=generator).to(BF16)
    deep_gemm.fp8_gemm_nt((a, torch.empty(8, 0)), (b, torch.empty(1, 0)), d)
    assert torch.equal(d, torch.zeros_like(d))          # K == 0: d = 0
    c = torch.randn(8, 16, generator=generator)
    d32 = torch.empty(8, 16)
    deep_gemm.fp8_gemm_nt((a, torch.empty(8, 0)), (b, torch.empty(16, 0)), d32, c=c,
                          recipe=(1, 1, 128))
    assert torch.equal(d32, c)                          # K == 0: d = c
    d_empty = torch.empty(0, 16, dtype=BF16)
    deep_gemm.fp8_gemm_nt((torch.empty(0, 128, dtype=E4M3), torch.empty(0, 1)),
                          (torch.randn(16, 128, generator=generator).to(E4M3), torch.ones(1, 1)),
                          d_empty)                      # M == 0: nothing


def test_1d2d_refuses_c_and_unknown_recipes(generator):
    a, sa = deep_gemm.per_token_cast_to_fp8(torch.randn(8, 128, generator=generator), False)
    b, sb = deep_gemm.per_block_cast_to_fp8(torch.randn(16, 128, generator=generator), False)
    d = torch.empty(8, 16, dtype=BF16)
    with pytest.raises(ValueError, match=r"^c: the \(1, 128, 128\) recipe"):
        deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, c=d)
    with pytest.raises(NotImplementedError, match=r"recipe \(1, 1, 32\)"):
        deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, recipe=(1, 1, 32))
    with pytest.raises(ValueError, match="either recipe or recipe_a"):
        deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, recipe=(1, 128, 128), recipe_a=(1, 128))
    with pytest.raises(NotImplementedError, match="UE8M0"):
        deep_gemm.fp8_gemm_nt((a, sa.view(torch.int32)), (b, sb), d)
    deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, compiled_dims="nk", disable_ue8m0_cast=True)


@pytest.mark.parametrize("name", ["fp8_gemm_nn", "fp8_gemm_tn", "fp8_gemm_tt",
                                  "m_grouped_fp8_gemm_nn_contiguous", "bench_kineto",
                                  "bf16_gemm_nt", "fp8_mqa_logits", "einsum"])
def test_unsupported_names_say_what_is_missing(name):
    with pytest.raises(NotImplementedError, match=name):
        getattr(deep_gemm, name)(None, None, None)


def test_layout_helpers(generator):
    sf = torch.rand(5, 3, generator=generator)
    aligned = deep_gemm.get_mn_major_tma_aligned_tensor(sf)
    assert aligned.stride() == (1, 8) and torch.equal(aligned, sf)
    assert deep_gemm.get_mn_major_tma_aligned_tensor(aligned) is aligned
    sf3 = torch.rand(2, 5, 3, generator=generator)
    aligned3 = deep_gemm.get_mn_major_tma_aligned_tensor(sf3)
    assert aligned3.stride() == (24, 1, 8) and torch.equal(aligned3, sf3)
    assert deep_gemm.get_col_major_tma_aligned_tensor is deep_gemm.get_mn_major_tma_aligned_tensor
    assert deep_gemm.ceil_div(129, 128) == 2 and deep_gemm.align(129, 128) == 256
    assert deep_gemm.get_tma_aligned_size(5, 4) == 8
    with pytest.raises(ValueError, match="is_sfa"):
        deep_gemm.transform_sf_into_required_layout(sf, 5, 384, (1, 128, 128))
    out = deep_gemm.transform_sf_into_required_layout(sf, 5, 384, (1, 128, 128), is_sfa=True)
    assert out.stride() == (1, 8)


def test_casts(generator):
    x = torch.randn(130, 300, generator=generator)
    q, sf = deep_gemm.per_token_cast_to_fp8(x, use_ue8m0=False)
    assert q.shape == x.shape and sf.shape == (130, 3)
    assert deep_gemm.calc_diff(_dequant_per_token(q, sf), x) < 1e-3
    q, sf = deep_gemm.per_block_cast_to_fp8(x, use_ue8m0=True)
    assert sf.shape == (2, 3)
    assert torch.equal(sf, deep_gemm.ceil_to_ue8m0(sf))   # powers of two
    assert deep_gemm.calc_diff(_dequant_per_block(q, sf), x) < 1e-3
    y = torch.randn(256, 40, generator=generator)
    q, sf = deep_gemm.per_channel_cast_to_fp8(y, use_ue8m0=False)
    assert sf.shape == (2, 40)
    deq = q.double() * sf.double().repeat_interleave(128, 0)
    assert deep_gemm.calc_diff(deq, y) < 1e-3


def test_knobs_keep_state():
    deep_gemm.set_num_sms(64)
    assert deep_gemm.get_num_sms() == 64
    with pytest.raises(ValueError, match="num_sms"):
        deep_gemm.set_num_sms(10**6)
    assert deep_gemm.get_tc_util() == 100
    deep_gemm.set_tc_util(70)
    assert deep_gemm.get_tc_util() == 70
    deep_gemm.set_pdl(True)
    assert deep_gemm.get_pdl() is True
    deep_gemm.set_mk_alignment_for_contiguous_layout(64)
    assert deep_gemm.get_mk_alignment_for_contiguous_layout() == 64
    assert deep_gemm.get_m_alignment_for_contiguous_layout() == 64
