"""A drop-in for DeepGEMM's SM90 Python API: ``import pyfp8gemm.deep_gemm as deep_gemm``.

The names, argument names and conventions of DeepGEMM (2.x, with the v1 aliases engines still
call) for every operation pyfp8gemm implements, mapped onto pyfp8gemm's functions:

* GEMMs return None and write `d` in place; operands are ``(data, scale)`` pairs; 1x128
  activation scales in any layout (converted as DeepGEMM does), 128x128 weight scales.
* ``fp8_gemm_nt`` with DeepGEMM's keyword arguments: ``recipe`` (1, 128, 128) (the default,
  1D2D, bf16 d) or (1, 1, 128) (1D1D: per-row b scales, float32 d, optional c); ``recipe_a`` /
  ``recipe_b``; ``compiled_dims`` (accepted, ignored: pyfp8gemm picks its own config) and
  ``disable_ue8m0_cast`` (ignored on SM90, as in DeepGEMM). K == 0 gives d = c (or zeros),
  M == 0 or N == 0 does nothing, as in DeepGEMM.
* The grouped GEMMs (contiguous, masked, k-grouped) with DeepGEMM's argument names.
* Knobs that keep state: set_num_sms / get_num_sms (used by the kernels), the contiguous
  layout's alignment (used), set_tc_util, set_pdl, set_ignore_compile_dims,
  set_block_size_multiple_of (kept, not used).
* Helpers: ceil_div, align, get_tma_aligned_size, get_mn_major_tma_aligned_tensor (and v1's
  get_col_major_tma_aligned_tensor), transform_sf_into_required_layout, per_token_cast_to_fp8,
  per_block_cast_to_fp8, per_channel_cast_to_fp8, calc_diff.

Not supported (NotImplementedError naming the feature): fp8_gemm_nn/tn/tt (SM90 FP8 needs
K-major A and B), UE8M0 / packed scales (SM100), FP4, the BF16 GEMMs, einsum, MQA logits,
Mega MoE, bench_kineto. CPU tensors run on pyfp8gemm's CPU reference backend, so an engine's
DeepGEMM shim can be unit-tested without a GPU.
"""

from __future__ import annotations

import torch

from pyfp8gemm.host.fp8tensor import to_mn_major_tma_aligned

__version__ = "2.6.1+pyfp8gemm"   # the DeepGEMM API this module follows

_E4M3 = torch.float8_e4m3fn
_RECIPE_1D2D = (1, 128, 128)
_RECIPE_1D1D = (1, 1, 128)


def _unsupported(feature: str):
    raise NotImplementedError(f"pyfp8gemm.deep_gemm: {feature} is not supported")


# ---------------------------------------------------------------------------------------------
# Math helpers (deep_gemm.utils.math)
# ---------------------------------------------------------------------------------------------


def ceil_div(x: int, y: int) -> int:
    return (x + y - 1) // y


def align(x: int, y: int) -> int:
    return ceil_div(x, y) * y


def get_tma_aligned_size(x: int, element_size: int) -> int:
    return align(x, 16 // element_size)


def get_mn_major_tma_aligned_tensor(sf: torch.Tensor) -> torch.Tensor:
    """The same float32 scales with MN-major TMA-aligned strides: (1, align(mn, 4)) for 2-D,
    (align(mn, 4) * k, 1, align(mn, 4)) for 3-D (G, mn, k). No copy if already laid out so."""
    if not isinstance(sf, torch.Tensor):
        raise TypeError(f"sf: expected a torch.Tensor, got {type(sf).__name__}")
    if sf.dtype != torch.float32:
        raise TypeError(f"sf: expected dtype torch.float32, got {sf.dtype}")
    if sf.dim() == 2:
        return to_mn_major_tma_aligned(sf)
    if sf.dim() != 3:
        raise ValueError(f"sf: expected a 2-D or 3-D tensor, got shape {tuple(sf.shape)}")
    g, mn, k = sf.shape
    aligned = align(mn, 4)
    if sf.stride() == (aligned * k, 1, aligned) and sf.data_ptr() % 16 == 0:
        return sf
    storage = torch.zeros((g, k, aligned), dtype=torch.float32, device=sf.device)
    out = storage[:, :, :mn].transpose(1, 2)
    out.copy_(sf)
    return out


#: DeepGEMM v1's name of get_mn_major_tma_aligned_tensor (vLLM keeps a wrapper of this name).
get_col_major_tma_aligned_tensor = get_mn_major_tma_aligned_tensor


def _cast_to_fp8(blocks: torch.Tensor, reduce_dims, use_ue8m0: bool):
    amax = blocks.abs().float().amax(dim=reduce_dims, keepdim=True).clamp(1e-4)
    sf = amax / 448.0
    if use_ue8m0:
        sf = ceil_to_ue8m0(sf)
    return (blocks * (1.0 / sf)).to(_E4M3), sf


def ceil_to_ue8m0(x: torch.Tensor) -> torch.Tensor:
    """Round |x| up to a power of two (DeepGEMM's bit trick on float32)."""
    bits = x.abs().float().view(torch.int32)
    exp = ((bits >> 23) & 0xFF) + (bits & 0x7FFFFF).ne(0).to(torch.int32)
    return (exp.clamp(1, 254) << 23).view(torch.float32)


def per_token_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128):
    """(fp8 (m, n), sf float32 (m, ceil(n/gran_k))): one scale per row per gran_k columns."""
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor, got shape {tuple(x.shape)}")
    m, n = x.shape
    padded_n = align(n, gran_k)
    padded = torch.zeros((m, padded_n), dtype=x.dtype, device=x.device)
    padded[:, :n] = x
    view = padded.view(m, -1, gran_k)
    q, sf = _cast_to_fp8(view, (2,), use_ue8m0)
    return q.view(m, padded_n)[:, :n].contiguous(), sf.squeeze(2)


def per_channel_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128):
    """(fp8 (m, n), sf float32 (m / gran_k, n)): one scale per column per gran_k rows."""
    if x.dim() != 2 or x.shape[0] % gran_k:
        raise ValueError(f"x: expected a 2-D tensor with shape[0] % {gran_k} == 0, got shape "
                         f"{tuple(x.shape)}")
    m, n = x.shape
    view = x.view(-1, gran_k, n)
    q, sf = _cast_to_fp8(view, (1,), use_ue8m0)
    return q.view(m, n), sf.squeeze(1)


def per_block_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128):
    """(fp8 (m, n), sf float32 (ceil(m/128), ceil(n/gran_k))): one scale per block."""
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor, got shape {tuple(x.shape)}")
    m, n = x.shape
    padded = torch.zeros((align(m, 128), align(n, gran_k)), dtype=x.dtype, device=x.device)
    padded[:m, :n] = x
    view = padded.view(-1, 128, padded.shape[1] // gran_k, gran_k)
    q, sf = _cast_to_fp8(view, (1, 3), use_ue8m0)
    return q.view_as(padded)[:m, :n].contiguous(), sf.view(view.shape[0], view.shape[2])


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's metric: 1 - 2 * sum(x * y) / sum(x * x + y * y) in float64."""
    from pyfp8gemm.testing import calc_diff as _calc_diff

    return _calc_diff(x, y)


def bench_kineto(*args, **kwargs):
    _unsupported("bench_kineto (kineto kernel timing; use python -m bench)")


def bench(*args, **kwargs):
    _unsupported("bench (use python -m bench)")


# ---------------------------------------------------------------------------------------------
# Runtime knobs
# ---------------------------------------------------------------------------------------------


def set_num_sms(num_sms: int) -> None:
    from pyfp8gemm.host import device_info

    device_info.set_num_sms(num_sms)


def get_num_sms() -> int:
    from pyfp8gemm.host import device_info

    return device_info.get_num_sms()


_knobs = {"tc_util": 0, "pdl": False, "ignore_compile_dims": False, "block_size_multiple_of": 1}


def set_tc_util(tc_util: int) -> None:
    """Kept for DeepGEMM compatibility (pyfp8gemm's heuristic does not use it)."""
    if isinstance(tc_util, bool) or not isinstance(tc_util, int) or not 0 <= tc_util <= 100:
        raise ValueError(f"tc_util: expected an int in 0..100, got {tc_util!r}")
    _knobs["tc_util"] = tc_util


def get_tc_util() -> int:
    return _knobs["tc_util"] or 100


def set_pdl(enable: bool) -> None:
    """Kept for DeepGEMM compatibility (no programmatic dependent launch yet)."""
    _knobs["pdl"] = bool(enable)


def get_pdl() -> bool:
    return _knobs["pdl"]


def set_ignore_compile_dims(ignore: bool) -> None:
    """Kept for DeepGEMM compatibility (pyfp8gemm's kernels take M, N, K at run time)."""
    _knobs["ignore_compile_dims"] = bool(ignore)


def get_ignore_compile_dims() -> bool:
    return _knobs["ignore_compile_dims"]


def set_block_size_multiple_of(multiple) -> None:
    """Kept for DeepGEMM compatibility (not used by pyfp8gemm's heuristic)."""
    _knobs["block_size_multiple_of"] = multiple


def get_mk_alignment_for_contiguous_layout() -> int:
    from pyfp8gemm.host import grouped

    return grouped.get_mk_alignment_for_contiguous_layout()


def set_mk_alignment_for_contiguous_layout(alignment: int) -> None:
    from pyfp8gemm.host import grouped

    grouped.set_mk_alignment_for_contiguous_layout(alignment)


get_m_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout
get_k_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout


def get_theoretical_mk_alignment_for_contiguous_layout(expected_m=None) -> int:
    return 128


# ---------------------------------------------------------------------------------------------
# Recipes and scale layouts
# ---------------------------------------------------------------------------------------------


def _recipe(recipe, recipe_a, recipe_b, default=_RECIPE_1D2D):
    """The (gran_m, gran_n, gran_k) recipe of a call; NotImplementedError for SM100's ones."""
    if recipe is not None and (recipe_a is not None or recipe_b is not None):
        raise ValueError("recipe: give either recipe or recipe_a/recipe_b, not both "
                         "(DeepGEMM's rule)")
    if recipe_a is not None or recipe_b is not None:
        ra = tuple(recipe_a) if recipe_a is not None else (1, 128)
        rb = tuple(recipe_b) if recipe_b is not None else (128, 128)
        if ra != (1, 128) or rb not in ((128, 128), (1, 128)) :
            _unsupported(f"recipe_a={recipe_a}, recipe_b={recipe_b} (SM90 FP8 takes "
                         f"recipe_a (1, 128) and recipe_b (128, 128) or (1, 128))")
        recipe = (1, rb[0], 128)
    recipe = default if recipe is None else tuple(recipe)
    if recipe not in (_RECIPE_1D2D, _RECIPE_1D1D):
        _unsupported(f"recipe {recipe} (SM90 FP8 recipes: (1, 128, 128), (1, 1, 128))")
    return recipe


def transform_sf_into_required_layout(sf, mn, k, recipe, num_groups=None, is_sfa=None,
                                      disable_ue8m0_cast=False, psum_layout=None):
    """SM90 float scales: (1, 128) -> MN-major TMA-aligned; (128, 128) -> checked, as is."""
    if psum_layout is not None:
        _unsupported("transform_sf_into_required_layout(psum_layout=...)")
    recipe = tuple(recipe)
    if len(recipe) == 3:
        if is_sfa is None:
            raise ValueError("is_sfa: required with a 3-element recipe (DeepGEMM's rule)")
        gran_mn, gran_k = (recipe[0] if is_sfa else recipe[1]), recipe[2]
    elif len(recipe) == 2:
        if is_sfa is not None:
            raise ValueError("is_sfa: must be None with a 2-element recipe (DeepGEMM's rule)")
        gran_mn, gran_k = recipe
    else:
        raise ValueError(f"recipe: expected 2 or 3 elements, got {recipe}")
    if sf.dtype != torch.float32:
        _unsupported(f"{sf.dtype} scales (packed UE8M0 is SM100's format; SM90 takes float32)")
    if gran_k != 128 or gran_mn not in (1, 128):
        _unsupported(f"scale granularity ({gran_mn}, {gran_k})")
    expected = (ceil_div(mn, gran_mn), ceil_div(k, gran_k))
    if num_groups is not None:
        expected = (num_groups,) + expected
    if tuple(sf.shape) != expected:
        raise ValueError(f"sf: expected shape {expected} for mn={mn}, k={k}, granularity "
                         f"({gran_mn}, {gran_k}), got {tuple(sf.shape)}")
    if gran_mn == 1:
        return get_mn_major_tma_aligned_tensor(sf)
    return sf


# ---------------------------------------------------------------------------------------------
# GEMMs
# ---------------------------------------------------------------------------------------------


def _pair(name: str, operand):
    if not (isinstance(operand, (tuple, list)) and len(operand) == 2):
        raise TypeError(f"{name}: expected a (data, scale) pair of tensors, got "
                        f"{type(operand).__name__}")
    data, scale = operand
    if isinstance(scale, torch.Tensor) and scale.dtype != torch.float32:
        _unsupported(f"{name}[1] of dtype {scale.dtype} (packed UE8M0 scales are SM100's; SM90 "
                     f"takes float32 scales)")
    return data, scale


def fp8_gemm_nt(a, b, d: torch.Tensor, c: torch.Tensor | None = None, recipe=None,
                recipe_a=None, recipe_b=None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """D = C + A @ B^T: DeepGEMM's fp8_gemm_nt on SM90 (1D2D by default: bf16 d, no c;
    recipe (1, 1, 128): per-row b scales, float32 d, optional c)."""
    from pyfp8gemm.host import gemm

    if not isinstance(compiled_dims, str):
        raise TypeError(f"compiled_dims: expected a str, got {type(compiled_dims).__name__}")
    a_data, a_scale = _pair("a", a)
    b_data, b_scale = _pair("b", b)
    recipe = _recipe(recipe, recipe_a, recipe_b)
    if recipe == _RECIPE_1D2D and c is not None:
        raise ValueError("c: the (1, 128, 128) recipe (1D2D kernel, bf16 d) takes no c, as in "
                         "DeepGEMM; use recipe (1, 1, 128) with per-row b scales and a float32 d")
    if isinstance(a_data, torch.Tensor) and isinstance(b_data, torch.Tensor) \
            and isinstance(d, torch.Tensor) and a_data.dim() == 2 and b_data.dim() == 2:
        m, k = a_data.shape
        n = b_data.shape[0]
        if m == 0 or n == 0:
            return None
        if k == 0:
            if c is not None:
                if c is not d:
                    d.copy_(c)
            else:
                d.zero_()
            return None
    if recipe == _RECIPE_1D1D:
        from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d

        fp8_gemm_nt_1d1d((a_data, a_scale), (b_data, b_scale), d, c)
    else:
        gemm.fp8_gemm_nt((a_data, a_scale), (b_data, b_scale), d)
    return None


def _not_k_major(name: str):
    def unsupported(*args, **kwargs):
        _unsupported(f"{name}: SM90 FP8 GEMMs need K-major A and B (DeepGEMM's "
                     f"fp8_requires_k_major on SM90); call fp8_gemm_nt with K-major operands")

    unsupported.__name__ = name
    return unsupported


fp8_gemm_nn = _not_k_major("fp8_gemm_nn")
fp8_gemm_tn = _not_k_major("fp8_gemm_tn")
fp8_gemm_tt = _not_k_major("fp8_gemm_tt")
m_grouped_fp8_gemm_nn_contiguous = _not_k_major("m_grouped_fp8_gemm_nn_contiguous")
k_grouped_fp8_gemm_tn_contiguous = _not_k_major("k_grouped_fp8_gemm_tn_contiguous")


def m_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, grouped_layout: torch.Tensor,
                                     recipe=None, recipe_a=None, recipe_b=None,
                                     compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
                                     use_psum_layout: bool = False,
                                     ensure_zero_padding: bool = True,
                                     expected_m_for_psum_layout: int | None = None) -> None:
    """d[rows of group g] = A[rows] @ B[g]^T (bf16): DeepGEMM's contiguous grouped GEMM
    (grouped_layout: m_indices (M_sum,) or, with use_psum_layout, the (G,) end offsets)."""
    from pyfp8gemm.host import grouped

    if _recipe(recipe, recipe_a, recipe_b) != _RECIPE_1D2D:
        _unsupported("m_grouped_fp8_gemm_nt_contiguous with per-row b scales (1, 1, 128)")
    grouped.m_grouped_fp8_gemm_nt_contiguous(
        _pair("a", a), _pair("b", b), d, grouped_layout, use_psum_layout=use_psum_layout,
        expected_m=expected_m_for_psum_layout)
    return None


def m_grouped_fp8_gemm_nt_masked(a, b, d: torch.Tensor, masked_m: torch.Tensor,
                                 expected_m: int, recipe=None, recipe_a=None, recipe_b=None,
                                 compiled_dims: str = "nk",
                                 disable_ue8m0_cast: bool = False) -> None:
    """d[g, :masked_m[g]] = A[g, :masked_m[g]] @ B[g]^T (bf16): DeepGEMM's masked GEMM."""
    from pyfp8gemm.host import grouped

    if _recipe(recipe, recipe_a, recipe_b) != _RECIPE_1D2D:
        _unsupported("m_grouped_fp8_gemm_nt_masked with per-row b scales (1, 1, 128)")
    grouped.m_grouped_fp8_gemm_nt_masked(_pair("a", a), _pair("b", b), d, masked_m, expected_m)
    return None


fp8_m_grouped_gemm_nt_masked = m_grouped_fp8_gemm_nt_masked


def k_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, ks_cpu, grouped_layout: torch.Tensor,
                                     c: torch.Tensor | None = None, recipe=_RECIPE_1D1D,
                                     compiled_dims: str = "mn",
                                     use_psum_layout: bool = False) -> None:
    """d[g] = c[g] + A_g @ B_g^T (float32): DeepGEMM's SM90 k-grouped weight-gradient GEMM."""
    from pyfp8gemm.host import gemm_1d1d

    if tuple(recipe) != _RECIPE_1D1D:
        _unsupported(f"k_grouped_fp8_gemm_nt_contiguous with recipe {tuple(recipe)} (SM90 takes "
                     f"(1, 1, 128))")
    if use_psum_layout:
        _unsupported("k_grouped_fp8_gemm_nt_contiguous(use_psum_layout=True) (SM100 only)")
    gemm_1d1d.k_grouped_fp8_gemm_nt_contiguous(_pair("a", a), _pair("b", b), d, ks_cpu,
                                               grouped_layout, c)
    return None


# ---------------------------------------------------------------------------------------------
# DeepGEMM v1 names
# ---------------------------------------------------------------------------------------------


def gemm_fp8_fp8_bf16_nt(lhs, rhs, out: torch.Tensor) -> None:
    fp8_gemm_nt(lhs, rhs, out)


def m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, out: torch.Tensor,
                                               m_indices: torch.Tensor) -> None:
    m_grouped_fp8_gemm_nt_contiguous(lhs, rhs, out, m_indices)


def m_grouped_gemm_fp8_fp8_bf16_nt_masked(lhs, rhs, out: torch.Tensor, masked_m: torch.Tensor,
                                           expected_m: int) -> None:
    m_grouped_fp8_gemm_nt_masked(lhs, rhs, out, masked_m, expected_m)


def wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out: torch.Tensor) -> None:
    """v1: out += lhs @ rhs^T in float32 (1x128 scales on both)."""
    fp8_gemm_nt(lhs, rhs, out, c=out, recipe=_RECIPE_1D1D)


def k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out: torch.Tensor, batch_sizes) -> None:
    """v1: a loop of wgrad_gemm_fp8_fp8_fp32_nt over K groups of `batch_sizes` columns;
    lhs/rhs (M or N, sum(batch_sizes)) with 1x128 scales, out (G, M, N) accumulated."""
    lhs_data, lhs_scale = _pair("lhs", lhs)
    rhs_data, rhs_scale = _pair("rhs", rhs)
    start = 0
    for g, size in enumerate(batch_sizes):
        size = int(size)
        if size % 128:
            raise ValueError(f"batch_sizes[{g}]: expected a multiple of 128, got {size}")
        kb0, kb1 = start // 128, (start + size) // 128
        wgrad_gemm_fp8_fp8_fp32_nt(
            (lhs_data[:, start:start + size].contiguous(), lhs_scale[:, kb0:kb1]),
            (rhs_data[:, start:start + size].contiguous(), rhs_scale[:, kb0:kb1]), out[g])
        start += size


# ---------------------------------------------------------------------------------------------
# What SM90 pyfp8gemm does not have
# ---------------------------------------------------------------------------------------------


def _missing(name: str, why: str):
    def unsupported(*args, **kwargs):
        _unsupported(f"{name} ({why})")

    unsupported.__name__ = name
    return unsupported


for _name, _why in {
    "bf16_gemm_nt": "BF16 GEMMs", "bf16_gemm_nn": "BF16 GEMMs", "bf16_gemm_tn": "BF16 GEMMs",
    "bf16_gemm_tt": "BF16 GEMMs", "m_grouped_bf16_gemm_nt_contiguous": "BF16 GEMMs",
    "m_grouped_bf16_gemm_nt_masked": "BF16 GEMMs", "bf16_m_grouped_gemm_nt_masked": "BF16 GEMMs",
    "cublaslt_gemm_nt": "cuBLASLt GEMMs", "einsum": "einsum", "fp8_einsum": "fp8_einsum",
    "fp8_mqa_logits": "MQA logits", "fp8_paged_mqa_logits": "MQA logits",
    "fp8_fp4_mqa_logits": "MQA logits", "fp8_fp4_paged_mqa_logits": "MQA logits",
    "get_paged_mqa_logits_metadata": "MQA logits", "tf32_hc_prenorm_gemm": "hyper-connection",
    "get_mn_major_tma_aligned_packed_ue8m0_tensor": "packed UE8M0 scales (SM100)",
    "fp8_gemm_nt_skip_head_mid": "skip-head-mid GEMM",
}.items():
    globals()[_name] = _missing(_name, _why)
del _name, _why

# DeepGEMM 2.x's fp8_fp4_* names (FP4 itself is SM100's): the FP8 forms.
fp8_fp4_gemm_nt = fp8_gemm_nt
m_grouped_fp8_fp4_gemm_nt_contiguous = m_grouped_fp8_gemm_nt_contiguous
m_grouped_fp8_fp4_gemm_nt_masked = m_grouped_fp8_gemm_nt_masked
