"""Routing-layout helpers for mixture-of-experts layers: from top-k routing to the grouped GEMMs'
layouts and back.

A router picks, for each of T tokens, k experts (`topk_ids`, (T, k)) and their weights
(`topk_weights`, (T, k)). The grouped GEMMs want the tokens grouped by expert:

* contiguous layout (`m_grouped_fp8_gemm_nt_contiguous`): all (token, expert) pairs stacked in
  one (num_rows, H) tensor, expert by expert, each expert's segment starting at a multiple of
  the alignment and padded with zero rows whose `m_indices` is -1;
* masked layout (`m_grouped_fp8_gemm_nt_masked`): a (E, M_max, H) tensor, expert e's tokens in
  its first `masked_m[e]` rows.

    layout = contiguous_layout(topk_ids, num_experts)           # or masked_layout(...)
    a = permute_quantized(pyfp8gemm.quantize(x, "1x128"), layout)
    d = torch.empty(layout.num_rows, N, dtype=torch.bfloat16, device=x.device)
    pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(a, w, d, layout.m_indices)
    y = combine(d, layout, topk_weights)                         # (T, N)

Everything is a handful of vectorized torch ops on the routing tensors' device: no Python loop
over tokens or experts and no host synchronization, with two documented, opt-in exceptions
(`exact_size=True`, `on_overflow="error"`). Within an expert, tokens keep their order (a stable
sort), so the layouts are deterministic.

Sizing the contiguous layout without a sync: its true size, sum_e align(count_e, alignment),
depends on the counts, which live on the device. The layout is therefore allocated at the upper
bound ``floor((T*k + E*(alignment-1)) / alignment) * alignment`` rows (each expert wastes at
most alignment-1 rows, and the total is a multiple of the alignment); the rows past the last
expert's segment are padding (`m_indices` -1, zero rows, zero output, skipped by the kernel).
``exact_size=True`` reads the counts (one sync) and allocates exactly.

Slots whose expert id is outside [0, E) (e.g. -1, or experts of another rank in expert
parallelism) are not routed: they get no row and add nothing to `combine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyfp8gemm.host import checks
from pyfp8gemm.host.fp8tensor import FP8Tensor, to_mn_major_tma_aligned

__all__ = [
    "ContiguousLayout",
    "MaskedLayout",
    "contiguous_layout",
    "masked_layout",
    "permute",
    "permute_quantized",
    "combine",
    "contiguous_num_rows_bound",
    "validate_contiguous_layout",
]

_INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class ContiguousLayout:
    """Where each (token, expert) pair goes in the contiguous layout.

    Attributes:
        m_indices: int32 (num_rows,): the expert of each row, -1 for padding rows (the
            `m_indices` of m_grouped_fp8_gemm_nt_contiguous).
        psum: int32 (E,): cumulative, unaligned end of each expert's rows (the same layout for
            ``use_psum_layout=True``): expert e's rows are [align(psum[e-1]), psum[e]).
        token_of_row: int64 (num_rows,): the token each row holds, -1 for padding (the
            permutation: ``permuted = x[token_of_row]``).
        row_of_slot: int64 (T, k): the row of each (token, slot) pair, -1 for a slot not routed
            (the inverse permutation, used by `combine`).
        tokens_per_expert: int32 (E,): the number of pairs routed to each expert.
        num_rows: host int, the number of rows allocated (see the module docstring).
        alignment: host int, the segment alignment used.
        num_experts: host int, E.
        expected_m: host int, T*k/E rounded up (at least 1): the rows-per-group hint.
    """

    m_indices: torch.Tensor
    psum: torch.Tensor
    token_of_row: torch.Tensor
    row_of_slot: torch.Tensor
    tokens_per_expert: torch.Tensor
    num_rows: int
    alignment: int
    num_experts: int
    expected_m: int


@dataclass(frozen=True)
class MaskedLayout:
    """Where each (token, expert) pair goes in the masked layout (E, M_max).

    Attributes:
        masked_m: int32 (E,): rows used per expert, min(tokens_per_expert, M_max) (the
            `masked_m` of m_grouped_fp8_gemm_nt_masked).
        token_of_row: int64 (E, M_max): the token each row holds, -1 for unused rows.
        row_of_slot: int64 (T, k): the flat row (e * M_max + r) of each (token, slot) pair, -1
            for a slot not routed or dropped.
        tokens_per_expert: int32 (E,): pairs routed to each expert, before dropping.
        num_dropped: int64 0-d tensor on the device: pairs dropped because their expert already
            had M_max tokens (reading it synchronizes).
        max_tokens_per_expert: host int, M_max.
        num_experts: host int, E.
        expected_m: host int, min(T*k/E rounded up, M_max) (at least 1): the config hint.
    """

    masked_m: torch.Tensor
    token_of_row: torch.Tensor
    row_of_slot: torch.Tensor
    tokens_per_expert: torch.Tensor
    num_dropped: torch.Tensor
    max_tokens_per_expert: int
    num_experts: int
    expected_m: int


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def _check_topk_ids(topk_ids) -> None:
    checks.check_tensor("topk_ids", topk_ids, dtypes=_INDEX_DTYPES, ndim=2)


def contiguous_num_rows_bound(num_tokens: int, top_k: int, num_experts: int,
                              alignment: int | None = None) -> int:
    """The rows the contiguous layout needs at most for T tokens routed to k of E experts:
    ``floor((T*k + E*(alignment-1)) / alignment) * alignment`` (host arithmetic, no sync)."""
    if alignment is None:
        from pyfp8gemm.host.grouped import get_mk_alignment_for_contiguous_layout

        alignment = get_mk_alignment_for_contiguous_layout()
    return (num_tokens * top_k + num_experts * (alignment - 1)) // alignment * alignment


def _ranks(topk_ids: torch.Tensor, num_experts: int):
    """Per slot (flattened, T*k): its expert (E for not routed), whether it is routed, its rank
    among its expert's slots in token order; and the per-expert counts (E,) int64."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    routed = (flat >= 0) & (flat < num_experts)
    key = torch.where(routed, flat, torch.full_like(flat, num_experts))
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    order = torch.argsort(key, stable=True)
    first = torch.cumsum(counts, 0) - counts                  # each expert's first sorted slot
    rank_sorted = torch.arange(key.numel(), device=key.device) - first[key[order]]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return key, routed, rank, counts[:num_experts]


def _scatter_rows(num_rows: int, rows: torch.Tensor, keep: torch.Tensor, values: torch.Tensor):
    """An int64 (num_rows,) tensor, -1 except ``out[rows[i]] = values[i]`` where keep[i]."""
    out = torch.full((num_rows + 1,), -1, dtype=torch.int64, device=rows.device)
    target = torch.where(keep, rows, torch.full_like(rows, num_rows))   # a dummy last row
    out.scatter_(0, target, values)
    return out[:num_rows]


def contiguous_layout(topk_ids: torch.Tensor, num_experts: int, *, alignment: int | None = None,
                      exact_size: bool = False) -> ContiguousLayout:
    """The contiguous layout of a top-k routing (see the module docstring).

    Args:
        topk_ids: int32/int64 (T, k): the experts of each token; ids outside [0, E) are not
            routed.
        num_experts: E.
        alignment: segment alignment; default `get_mk_alignment_for_contiguous_layout()`.
        exact_size: allocate exactly sum_e align(count_e, alignment) rows; reads that sum on
            the host (ONE device synchronization). Default: the no-sync upper bound.

    Each expert's pairs take consecutive rows in token order, starting at a multiple of the
    alignment; the rows after them up to the next multiple are padding (-1), as are the rows
    past the last expert. No expert gets a row it does not need, so an expert with no token
    has an empty segment.
    """
    _check_topk_ids(topk_ids)
    _check_positive_int("num_experts", num_experts)
    from pyfp8gemm.host.grouped import ALIGNMENTS, get_mk_alignment_for_contiguous_layout

    if alignment is None:
        alignment = get_mk_alignment_for_contiguous_layout()
    _check_positive_int("alignment", alignment)
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment: expected one of {ALIGNMENTS}, got {alignment}")
    tokens, top_k = topk_ids.shape
    key, routed, rank, counts = _ranks(topk_ids, num_experts)
    aligned = (counts + alignment - 1) // alignment * alignment
    starts = torch.cumsum(aligned, 0) - aligned
    if exact_size:
        num_rows = int(aligned.sum())   # the documented synchronization
    else:
        num_rows = contiguous_num_rows_bound(tokens, top_k, num_experts, alignment)
    expert = key.clamp(max=num_experts - 1)
    rows = starts[expert] + rank
    row_of_slot = torch.where(routed, rows, torch.full_like(rows, -1))
    token = torch.arange(tokens * top_k, device=key.device) // top_k
    token_of_row = _scatter_rows(num_rows, rows, routed, token)
    m_indices = _scatter_rows(num_rows, rows, routed, key).to(torch.int32)
    psum = (starts + counts).to(torch.int32)
    return ContiguousLayout(
        m_indices=m_indices, psum=psum, token_of_row=token_of_row,
        row_of_slot=row_of_slot.view(tokens, top_k), tokens_per_expert=counts.to(torch.int32),
        num_rows=num_rows, alignment=alignment, num_experts=num_experts,
        expected_m=max(1, -(-tokens * top_k // num_experts)),
    )


def masked_layout(topk_ids: torch.Tensor, num_experts: int, max_tokens_per_expert: int, *,
                  on_overflow: str = "drop") -> MaskedLayout:
    """The masked layout (E, M_max) of a top-k routing (see the module docstring).

    Args:
        topk_ids: int32/int64 (T, k); ids outside [0, E) are not routed.
        num_experts: E.
        max_tokens_per_expert: M_max, the rows per expert (the buffers are (E, M_max, ...)).
        on_overflow: what happens to the pairs of an expert that got more than M_max tokens:
            "drop" (default, no sync): each expert keeps its first M_max tokens in token order;
            the others get no row (row_of_slot -1), contribute nothing to `combine` (the weights
            of the kept experts are not renormalized) and are counted in `num_dropped`.
            "error": raise ValueError if any pair would be dropped; reads the count on the host
            (ONE device synchronization).
    """
    _check_topk_ids(topk_ids)
    _check_positive_int("num_experts", num_experts)
    _check_positive_int("max_tokens_per_expert", max_tokens_per_expert)
    if on_overflow not in ("drop", "error"):
        raise ValueError(f"on_overflow: expected 'drop' or 'error', got {on_overflow!r}")
    tokens, top_k = topk_ids.shape
    m_max = max_tokens_per_expert
    key, routed, rank, counts = _ranks(topk_ids, num_experts)
    kept = routed & (rank < m_max)
    rows = key.clamp(max=num_experts - 1) * m_max + rank
    row_of_slot = torch.where(kept, rows, torch.full_like(rows, -1))
    token = torch.arange(tokens * top_k, device=key.device) // top_k
    token_of_row = _scatter_rows(num_experts * m_max, rows, kept, token)
    num_dropped = (counts - m_max).clamp(min=0).sum()
    if on_overflow == "error" and bool(num_dropped > 0):   # the documented synchronization
        worst = int(counts.max())
        raise ValueError(
            f"max_tokens_per_expert: {int(num_dropped)} (token, expert) pairs do not fit: an "
            f"expert got {worst} tokens, more than max_tokens_per_expert = {m_max} (use "
            f"on_overflow='drop' to drop them, or a larger M_max)"
        )
    return MaskedLayout(
        masked_m=counts.clamp(max=m_max).to(torch.int32),
        token_of_row=token_of_row.view(num_experts, m_max),
        row_of_slot=row_of_slot.view(tokens, top_k), tokens_per_expert=counts.to(torch.int32),
        num_dropped=num_dropped, max_tokens_per_expert=m_max, num_experts=num_experts,
        expected_m=max(1, min(m_max, -(-tokens * top_k // num_experts))),
    )


def _check_layout(layout) -> None:
    if not isinstance(layout, (ContiguousLayout, MaskedLayout)):
        raise TypeError(
            f"layout: expected a ContiguousLayout or MaskedLayout (from contiguous_layout / "
            f"masked_layout), got {type(layout).__name__}"
        )


def permute(x: torch.Tensor, layout) -> torch.Tensor:
    """The rows of `x` ((T, ...) any dtype, FP8 included) in the layout's order: (num_rows, ...)
    for a contiguous layout, (E, M_max, ...) for a masked one. Padding and unused rows are zero
    (the contiguous GEMM then writes zeros there too). One gather, no sync."""
    _check_layout(layout)
    checks.check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x: expected a (T, ...) tensor, got a 0-D tensor")
    tokens = layout.row_of_slot.shape[0]
    if x.shape[0] != tokens:
        raise ValueError(
            f"x: expected {tokens} rows (T, the tokens of topk_ids), got shape {tuple(x.shape)}"
        )
    checks.check_same_device(x=x, layout=layout.token_of_row)
    source = layout.token_of_row.reshape(-1)
    padding = source < 0
    is_fp8 = x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    values = x.view(torch.uint8) if is_fp8 else x            # +0.0 is all-zero bits in FP8
    out = values.index_select(0, source.clamp(min=0))
    out.masked_fill_(padding.view((-1,) + (1,) * (x.dim() - 1)), 0)
    if is_fp8:
        out = out.view(x.dtype)
    return out.view(tuple(layout.token_of_row.shape) + tuple(x.shape[1:]))


def permute_quantized(a, layout) -> tuple[torch.Tensor, torch.Tensor]:
    """The (data, scale) operand `a` of the grouped GEMM from per-token quantized activations.

    `a`: a "1x128" FP8Tensor (T, K) or a pair (data E4M3 (T, K), scale float32 (T, ceil(K/128))).
    Quantizing T tokens once and permuting is the same, bit for bit, as quantizing the permuted
    rows (1x128 scales belong to one row), and k times less work. Returns data and scales in the
    kernel's layouts: contiguous (num_rows, K) with MN-major TMA-aligned scales, or masked
    (E, M_max, K) with per-group MN-major TMA-aligned scales. Padding rows: zero data, zero
    scale.
    """
    if isinstance(a, FP8Tensor):
        if a.granularity != "1x128":
            raise ValueError(f"a: expected granularity '1x128', got {a.granularity!r}")
        data, scale = a.data, a.scale
    elif isinstance(a, (tuple, list)) and len(a) == 2:
        data, scale = a
        checks.check_tensor("a[0] (data)", data, dtypes=(torch.float8_e4m3fn,), ndim=2)
        checks.check_tensor("a[1] (scale)", scale, dtypes=(torch.float32,), ndim=2)
        if scale.shape[0] != data.shape[0]:
            raise ValueError(f"a[1] (scale): expected {data.shape[0]} rows (one per token), "
                             f"got shape {tuple(scale.shape)}")
    else:
        raise TypeError(f"a: expected a pyfp8gemm.FP8Tensor or a (data, scale) pair, got "
                        f"{type(a).__name__}")
    permuted_data = permute(data, layout)
    permuted_scale = permute(scale, layout)
    if isinstance(layout, ContiguousLayout):
        return permuted_data, to_mn_major_tma_aligned(permuted_scale)
    from pyfp8gemm.host.grouped import to_grouped_mn_major_tma_aligned

    return permuted_data, to_grouped_mn_major_tma_aligned(permuted_scale)


def combine(y: torch.Tensor, layout, topk_weights: torch.Tensor, *,
            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Un-permute the experts' outputs and sum them per token, weighted:
    ``out[t] = sum_j topk_weights[t, j] * y[row_of_slot[t, j]]`` over the routed slots j.

    Args:
        y: the grouped GEMM's output, (num_rows, N) (contiguous) or (E, M_max, N) (masked).
        layout: the layout `y` was computed in.
        topk_weights: (T, k) floating point.
        out_dtype: default y's dtype.

    Summed in float32, slot 0 first (deterministic); slots not routed or dropped add nothing
    (their rows are never read, so garbage or NaN in unused rows of y cannot leak in).
    """
    _check_layout(layout)
    checks.check_tensor("y", y)
    checks.check_tensor("topk_weights", topk_weights,
                        dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64),
                        ndim=2)
    row_of_slot = layout.row_of_slot
    tokens, top_k = row_of_slot.shape
    checks.check_shape("topk_weights", topk_weights, (tokens, top_k),
                       why="(T, k), the shape of topk_ids")
    rows_shape = tuple(layout.token_of_row.shape)
    if y.dim() != len(rows_shape) + 1 or tuple(y.shape[:-1]) != rows_shape:
        checks.check_shape("y", y, rows_shape + (None,),
                           why="the layout's rows followed by N")
    checks.check_same_device(y=y, topk_weights=topk_weights, layout=row_of_slot)
    n = y.shape[-1]
    flat = y.reshape(-1, n)
    routed = row_of_slot >= 0
    gathered = flat.index_select(0, row_of_slot.reshape(-1).clamp(min=0)).view(tokens, top_k, n)
    gathered = gathered.float() * topk_weights.float().unsqueeze(2)
    gathered = torch.where(routed.unsqueeze(2), gathered, torch.zeros((), device=y.device))
    out = gathered[:, 0].clone() if top_k else torch.zeros(tokens, n, device=y.device)
    for j in range(1, top_k):   # k is small (a loop over slots, not tokens or experts)
        out += gathered[:, j]
    return out.to(out_dtype or y.dtype)


def validate_contiguous_layout(m_indices: torch.Tensor, num_groups: int,
                               alignment: int | None = None) -> None:
    """Debugging aid: raise ValueError unless `m_indices` is a well-formed contiguous layout
    (ids in [-1, G), every block's rows its first row's id or -1). Reads the ids on the host:
    on a CUDA tensor this SYNCHRONIZES (the GEMM itself never checks this on the GPU)."""
    checks.check_tensor("m_indices", m_indices, dtypes=(torch.int32,), ndim=1)
    _check_positive_int("num_groups", num_groups)
    from pyfp8gemm.host.grouped import _check_blocks_on_cpu, get_mk_alignment_for_contiguous_layout

    if alignment is None:
        alignment = get_mk_alignment_for_contiguous_layout()
    ids = m_indices.cpu()
    bad = (ids < -1) | (ids >= num_groups)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"m_indices: row {row} holds group {int(ids[row])}, outside [-1, "
                         f"{num_groups}) (the GEMM treats such a block as padding)")
    _check_blocks_on_cpu(ids, alignment)
