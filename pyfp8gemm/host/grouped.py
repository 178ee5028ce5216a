"""M-grouped FP8 GEMMs for mixture-of-experts layers: the contiguous and the masked layout.

Both compute, per group (expert) g, ``D_g = (A_g * scale_a) @ (B[g] * scale_b)^T`` in bf16 with
DeepGEMM's numerics (1x128 activation scales, 128x128 weight scales, FP32 promotion per
128-wide K block), and take DeepGEMM's arguments (../shared/DEEPGEMM_API.md, 2.4 and 2.5):

* `m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices)`: the rows of all groups stacked in one
  (M_sum, K) A, each group's segment starting at a multiple of the alignment
  (`get_mk_alignment_for_contiguous_layout()`, 128 by default, 64 settable). `m_indices` names
  each row's group (-1: padding); or, with ``use_psum_layout=True``, a (G,) tensor of
  cumulative group ends. Prefill and training.
* `m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m)`: a (G, M_max, K) A of which
  group g uses its first ``masked_m[g]`` rows; `masked_m` lives on the GPU and only the kernel
  reads it, so the call never synchronizes and a CUDA graph replays it with new counts. Decode.

The semantics, exactly (the CPU backend below computes the same thing, the GPU kernels too):

Contiguous. The rows form blocks of `alignment` rows, [i * alignment, (i + 1) * alignment). The
group of a block is the id in its FIRST row, ``g = m_indices[i * alignment]``:
* 0 <= g < G: every row r of the block is written with ``A[r] @ B[g]^T``, including rows of the
  block marked -1 (the padding at the end of a group's last block: DeepGEMM's rule; they come
  out zero when A's padding rows are zero, as `pyfp8gemm.moe.permute` makes them);
* any other id (-1 for padding; out-of-range ids >= G or < -1 are treated the same way): the
  whole block is written with zeros and nothing of A or B is read for it.
So every row of d is written. Checking that ids are in range or constant per block would need
the ids on the host (a device synchronization): on CUDA tensors they are not checked, and an
out-of-range id can never make the kernel read or write out of bounds. On CPU tensors, where it
costs nothing, a block mixing two groups raises ValueError.
With ``use_psum_layout=True``, ``m_indices`` is int32 (G,) with ``psum[g]`` the end (exclusive,
unaligned) of group g, whose rows are [align(psum[g-1], alignment), psum[g]) (psum[-1] = 0). It
is turned into the per-row form on the device (a few vectorized torch ops, no sync): rows of a
group keep its id, all others are -1. Rows outside every group are therefore written too: zeros
for a block that holds no group's row, ``A[r] @ B[g]^T`` for the gap rows at the end of group
g's last block (DeepGEMM leaves them unspecified). Group ends past M_sum are clipped to M_sum.

Masked. ``d[g, :m_g] = A[g, :m_g] @ B[g]^T`` with ``m_g = min(max(masked_m[g], 0), M_max)``;
rows at or past m_g are left untouched (neither read nor written), so a group with
masked_m[g] == 0 costs nothing. `expected_m` (both GEMMs) is a hint for the kernel's
configuration only: it never changes which rows are written or what they hold beyond the FP32
summation order of another configuration (last bits).

Operands. `a`: an FP8Tensor ("1x128") or a (data, scale) pair; `b`: a (data, scale) pair with
data E4M3 (G, N, K) and scale float32 (G, ceil(N/128), ceil(K/128)) (see `quantize_grouped`);
`d`: bf16, contiguous. Shapes: K % 16 == 0 and N % 8 == 0 (TMA's 16-byte rows, as in
fp8_gemm_nt); every size the kernel takes as int32 (M_sum, G * M_max, N, K, G * N) < 2^31. B
must be K-major (contiguous (G, N, K)). Activation scales in another layout than the kernel's
(MN-major, TMA-aligned, per group for the masked A) are converted (one small copy).

Devices. CUDA tensors run the GPU kernels (pyfp8gemm.host.launchers) on a Hopper GPU and never
fall back to the CPU; CPU tensors run the CPU reference backend (slow; for tests and
development). Bad input raises TypeError / ValueError naming the argument and the rule.
"""

from __future__ import annotations

from typing import Optional

import torch

from pyfp8gemm.host import checks
from pyfp8gemm.host.op_registry import custom_op
from pyfp8gemm.host.fp8tensor import (
    BLOCK,
    QUANTIZABLE_DTYPES,
    FP8Tensor,
    quantize,
    to_mn_major_tma_aligned,
    unpack_operand,
)

__all__ = [
    "m_grouped_fp8_gemm_nt_contiguous",
    "m_grouped_fp8_gemm_nt_masked",
    "fp8_m_grouped_gemm_nt_masked",
    "get_mk_alignment_for_contiguous_layout",
    "set_mk_alignment_for_contiguous_layout",
    "get_m_alignment_for_contiguous_layout",
    "psum_to_m_indices",
    "quantize_grouped",
    "to_grouped_mn_major_tma_aligned",
    "K_ALIGNMENT",
    "N_ALIGNMENT",
    "ALIGNMENTS",
]

#: K must be a multiple of this: TMA needs 16-byte rows of E4M3 for A and B.
K_ALIGNMENT = 16
#: N must be a multiple of this: TMA needs 16-byte rows of bf16 for D.
N_ALIGNMENT = 8
#: The alignments the contiguous layout may use (DeepGEMM: 128, and 64 since its PR #350).
ALIGNMENTS = (64, 128)

_E4M3 = torch.float8_e4m3fn
_K_RULE = "K % 16 == 0: TMA loads A and B rows of K E4M3 bytes and needs 16-byte aligned rows"
_N_RULE = "N % 8 == 0: TMA stores bf16 output rows of 2*N bytes and needs 16-byte aligned rows"
_TMA_ALIGN_FLOATS = 4

_mk_alignment = 128

#: True while torch.compile / torch.export traces: the public functions then call the ops.
_is_compiling = torch.compiler.is_compiling


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _align(a: int, b: int) -> int:
    return _ceil_div(a, b) * b


# ---------------------------------------------------------------------------------------------
# The contiguous layout's alignment
# ---------------------------------------------------------------------------------------------


def get_mk_alignment_for_contiguous_layout() -> int:
    """The row alignment of each group's segment in the contiguous layout (128 by default):
    DeepGEMM's function of the same name. Engines size their buffers with it."""
    return _mk_alignment


def get_m_alignment_for_contiguous_layout() -> int:
    """DeepGEMM's older name of `get_mk_alignment_for_contiguous_layout`."""
    return _mk_alignment


def set_mk_alignment_for_contiguous_layout(alignment: int) -> None:
    """Set the contiguous layout's segment alignment: 128 (default) or 64.

    64 halves the padding of small groups; the kernel then uses 64-row blocks. It applies to
    every later contiguous call (and the `pyfp8gemm.moe` helpers' default), process-wide.
    """
    global _mk_alignment
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        raise TypeError(f"alignment: expected an int (64 or 128), got {type(alignment).__name__}")
    if alignment not in ALIGNMENTS:
        raise ValueError(
            f"alignment: expected one of {ALIGNMENTS} (the kernel's BLOCK_M for the contiguous "
            f"layout), got {alignment}"
        )
    _mk_alignment = alignment


# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------


def to_grouped_mn_major_tma_aligned(scale: torch.Tensor) -> torch.Tensor:
    """`scale` ((G, rows, kb) float32, any strides) in the per-group MN-major TMA-aligned layout.

    The result has the same values and shape and strides (kb * align(rows, 4), 1,
    align(rows, 4)): a contiguous (G, kb, align(rows, 4)) buffer with zero pad entries, what
    DeepGEMM's get_mn_major_tma_aligned_tensor returns for 3-D input and what the masked kernel
    TMA-loads. A tensor already laid out so is returned as is (no copy).
    """
    checks.check_tensor("scale", scale, dtypes=(torch.float32,), ndim=3)
    groups, rows, kb = scale.shape
    padded = _align(rows, _TMA_ALIGN_FLOATS)
    if scale.numel() == 0 or (
        scale.stride() == (kb * padded, 1, padded) and scale.data_ptr() % 16 == 0
    ):
        return scale
    allocate = torch.empty if padded == rows else torch.zeros
    storage = allocate((groups, kb, padded), dtype=torch.float32, device=scale.device)
    view = storage[:, :, :rows].transpose(1, 2)
    view.copy_(scale)
    return view


def quantize_grouped(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 3-D (G, rows, cols) bf16/fp16/fp32 tensor group by group: (data, scale).

    * "128x128" (the experts' weights B (G, N, K)): data E4M3 (G, N, K) contiguous, scale
      float32 (G, ceil(N/128), ceil(K/128)) contiguous: the `b` of both grouped GEMMs.
    * "1x128" (the masked layout's activations A (G, M_max, K)): data E4M3 (G, M_max, K), scale
      float32 (G, M_max, ceil(K/128)) in the per-group MN-major TMA-aligned layout
      (`to_grouped_mn_major_tma_aligned`): the `a` of the masked GEMM.

    Each group's blocks are exactly those `pyfp8gemm.quantize` makes of that group alone (same
    scale rule, same rounding, NaN scales for non-finite blocks). Vectorized, no host sync.
    """
    checks.check_tensor("x", x, dtypes=QUANTIZABLE_DTYPES, ndim=3)
    checks.check_granularity("granularity", granularity)
    groups, rows, cols = x.shape
    if granularity == "1x128":
        q = quantize(x.reshape(groups * rows, cols), "1x128")
        data = q.data.view(groups, rows, cols)
        return data, to_grouped_mn_major_tma_aligned(q.scale.reshape(groups, rows, -1))
    # 128x128 blocks must not straddle two groups: pad each group's rows to a multiple of 128
    # (zeros never raise a block's amax), quantize all groups as one 2-D tensor, cut the pad.
    padded_rows = _align(rows, BLOCK)
    if padded_rows != rows:
        x = torch.nn.functional.pad(x, (0, 0, 0, padded_rows - rows))
    q = quantize(x.reshape(groups * padded_rows, cols), "128x128")
    data = q.data.view(groups, padded_rows, cols)
    if padded_rows != rows:
        data = data[:, :rows].contiguous()
    scale = q.scale.view(groups, padded_rows // BLOCK, -1)
    return data, scale


def psum_to_m_indices(psum: torch.Tensor, num_rows: int,
                      alignment: int | None = None) -> torch.Tensor:
    """The per-row group ids (int32 (num_rows,), -1 outside every group) of a PSUM layout.

    `psum` int32 (G,): group g's rows are [align(psum[g-1], alignment), psum[g]), psum[-1] = 0.
    Computed on psum's device with vectorized ops, no synchronization (a searchsorted over the
    group ends). Out-of-order or out-of-range ends never produce an id outside [-1, G).
    """
    if alignment is None:
        alignment = _mk_alignment
    groups = psum.numel()
    device = psum.device
    rows = torch.arange(num_rows, device=device, dtype=torch.int64)
    if groups == 0:
        return torch.full((num_rows,), -1, dtype=torch.int32, device=device)
    ends = psum.reshape(-1).to(torch.int64)
    starts = torch.zeros_like(ends)
    starts[1:] = (ends[:-1] + alignment - 1).div(alignment, rounding_mode="floor") * alignment
    group = torch.searchsorted(ends, rows, right=True)       # groups whose end is <= the row
    clamped = group.clamp(max=groups - 1)
    inside = (group < groups) & (rows >= starts[clamped]) & (rows < ends[clamped])
    return torch.where(inside, clamped, torch.full_like(clamped, -1)).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _unpack_a(name: str, a, ndim: int):
    """(data, scale, data_name, scale_name) of the activations: a (data, scale) pair, or (2-D
    only) a "1x128" FP8Tensor."""
    if isinstance(a, FP8Tensor):
        unpacked = unpack_operand(name, a, "1x128")       # the granularity check
        if a.data.dim() != ndim:
            raise ValueError(
                f"{name}: expected a {ndim}-D operand, got an FP8Tensor of shape "
                f"{tuple(a.data.shape)}"
                + ("; pass the masked A as a (data, scale) pair from quantize_grouped(x, '1x128')"
                   if ndim == 3 else "")
            )
        return unpacked
    return checks.check_fp8_pair(name, a, ndim, ndim)


def _unpack_b(b):
    """(data (G, N, K), scale (G, ceil(N/128), ceil(K/128))) of the grouped weights."""
    if isinstance(b, FP8Tensor):
        if b.data.dim() != 3:
            raise ValueError(
                f"b: expected the experts' weights as a (G, N, K) operand, got an FP8Tensor of "
                f"shape {tuple(b.data.shape)}; pass (data, scale) from "
                f"pyfp8gemm.quantize_grouped(w, '128x128') (data (G, N, K), scale "
                f"(G, ceil(N/128), ceil(K/128)))"
            )
        if b.granularity != "128x128":
            raise ValueError(f"b: expected granularity '128x128', got {b.granularity!r}")
        b = (b.data, b.scale)
    data, scale, _, _ = checks.check_fp8_pair(
        "b", b, 3, 3, what="a (data, scale) pair of tensors (data E4M3 (G, N, K), scale "
                           "float32 (G, ceil(N/128), ceil(K/128)))")
    groups, n, k = data.shape
    expected = (groups, _ceil_div(n, BLOCK), _ceil_div(k, BLOCK))
    if tuple(scale.shape) != expected:
        why = f"(G, ceil(N/128), ceil(K/128)) 128x128 scales of b[0] with shape {(groups, n, k)}"
        if tuple(scale.shape) == (groups, n, _ceil_div(k, BLOCK)):
            why += "; this is the shape of per-row 1x128 scales: the weights take 128x128 blocks"
        checks.check_shape("b[1] (scale)", scale, expected, why=why)
    if groups < 1:
        raise ValueError(f"b[0] (data): expected at least one group, got shape {(groups, n, k)}")
    return data, scale


def _check_a_scale_shape(scale_name: str, scale: torch.Tensor, data_shape, data_name: str):
    expected = tuple(data_shape[:-1]) + (_ceil_div(data_shape[-1], BLOCK),)
    if tuple(scale.shape) != expected:
        checks.check_shape(scale_name, scale, expected,
                           why=f"1x128 scales (one per row per 128 K) of {data_name} with shape "
                               f"{tuple(data_shape)}")


def _check_nk(n: int, k: int, n_name: str, k_name: str) -> None:
    if k <= 0 or k % K_ALIGNMENT or n <= 0 or n % N_ALIGNMENT:
        checks.check_multiple_of(k_name, k, K_ALIGNMENT, why=_K_RULE)
        checks.check_multiple_of(n_name, n, N_ALIGNMENT, why=_N_RULE)


def _check_expected_m(expected_m, *, required: bool) -> None:
    if expected_m is None and not required:
        return
    if isinstance(expected_m, bool) or not isinstance(expected_m, int):
        raise TypeError(
            f"expected_m: expected a positive Python int (a host-side hint of the rows per "
            f"group), got {type(expected_m).__name__}"
            + ("; do not pass a tensor (reading it would synchronize)"
               if isinstance(expected_m, torch.Tensor) else "")
        )
    if expected_m <= 0:
        raise ValueError(f"expected_m: expected a positive int (rows per group, a hint), got "
                         f"{expected_m}")


def _check_devices(**tensors: torch.Tensor) -> torch.device:
    """All on one device, CPU or CUDA; return it. A CUDA device must be a Hopper GPU."""
    checks.check_same_device(**tensors)
    name, first = next(iter(tensors.items()))
    device = first.device
    if device.type == "cuda":
        from pyfp8gemm.host import device_info

        device_info.require_hopper(device, name)
    elif device.type != "cpu":
        raise ValueError(
            f"{name}: expected CUDA tensors (an NVIDIA Hopper GPU) or CPU tensors (the "
            f"reference backend), got device {device}"
        )
    return device


def _check_contiguous(name: str, t: torch.Tensor, hint: str = "") -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor, got shape {tuple(t.shape)} with strides "
            f"{tuple(t.stride())}{hint}"
        )


def _tma_ready(name: str, t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor with canonical strides, checked for a 16-byte aligned start (what
    TMA reads or writes as a row-major array)."""
    if t.numel():
        # torch calls a tensor with an odd stride on a size-1 dimension contiguous, but a
        # tensor map is built from every stride
        strides, step = [], 1
        for size in reversed(t.shape):
            strides.append(step)
            step *= size
        strides = tuple(reversed(strides))
        if t.stride() != strides:
            t = t.as_strided(t.shape, strides)
        checks.check_16_byte_aligned(name, t)
    return t


def _check_layout_tensor(name: str, t, length: int, why: str, device) -> None:
    checks.check_tensor(name, t, dtypes=(torch.int32,), ndim=1)
    if t.shape[0] != length:
        checks.check_shape(name, t, (length,), why=why)
    if t.device != device:
        raise ValueError(
            f"{name}: expected the same device as the operands ({device}), got {t.device}"
            + (" (it is read by the kernel on the GPU; keep it there, no copy to the host)"
               if device.type == "cuda" else "")
        )
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(t.stride())}")


# ---------------------------------------------------------------------------------------------
# Contiguous layout
# ---------------------------------------------------------------------------------------------


def m_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, m_indices: torch.Tensor, *,
                                     use_psum_layout: bool = False,
                                     expected_m: int | None = None) -> torch.Tensor:
    """``d[rows of group g] = A[rows] @ B[g]^T`` in bf16: DeepGEMM's
    m_grouped_fp8_gemm_nt_contiguous (see the module docstring for the exact row semantics).

    Args:
        a: the stacked activations: a "1x128" FP8Tensor (M_sum, K) or a pair (data E4M3
            (M_sum, K), scale float32 (M_sum, ceil(K/128))).
        b: the experts' weights: a pair (data E4M3 (G, N, K), scale float32
            (G, ceil(N/128), ceil(K/128))), e.g. from `quantize_grouped(w, "128x128")`.
        d: bf16 (M_sum, N), contiguous; every row is written.
        m_indices: int32 on a's device: (M_sum,) group id per row, each group's segment starting
            at a multiple of `get_mk_alignment_for_contiguous_layout()`, -1 for padding rows
            (blocks starting with -1 are written as zeros); or, with ``use_psum_layout=True``,
            (G,) cumulative (unaligned) group ends.
        use_psum_layout: read `m_indices` as DeepGEMM's PSUM layout.
        expected_m: rows per group, a hint for the kernel configuration (default M_sum / G).

    Returns:
        d.
    """
    a_data, a_scale, b_data, b_scale, m_indices = _validate_contiguous(
        a, b, d, m_indices, use_psum_layout, expected_m)
    if _is_compiling():
        torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_contiguous(
            a_data, a_scale, b_data, b_scale, d, m_indices, use_psum_layout, expected_m)
        return d
    a_data_name = "a.data" if isinstance(a, FP8Tensor) else "a[0] (data)"
    a_scale_name = "a.scale" if isinstance(a, FP8Tensor) else "a[1] (scale)"
    device = _check_devices(**{a_data_name: a_data, a_scale_name: a_scale,
                               "b[0] (data)": b_data, "b[1] (scale)": b_scale, "d": d,
                               "m_indices": m_indices})
    a_data = _tma_ready(a_data_name, a_data)
    b_data = _tma_ready("b[0] (data)", b_data)
    d_ready = _tma_ready("d", d)
    m_sum, groups = a_data.shape[0], b_data.shape[0]
    if m_sum == 0:
        return d
    if expected_m is None:
        expected_m = max(1, m_sum // groups)
    alignment = _mk_alignment

    if device.type == "cpu":
        if use_psum_layout:
            _check_psum_on_cpu(m_indices, m_sum, alignment)
            row_groups = psum_to_m_indices(m_indices, m_sum, alignment)
        else:
            row_groups = m_indices
            _check_blocks_on_cpu(m_indices, alignment)
        _contiguous_on_cpu(a_data, a_scale, b_data, b_scale, d_ready, row_groups, alignment)
        return d

    from pyfp8gemm.host import launchers

    with torch.cuda.device(device):
        a_scale = to_mn_major_tma_aligned(a_scale)
        b_scale = b_scale.contiguous()
        row_groups = (psum_to_m_indices(m_indices, m_sum, alignment) if use_psum_layout
                      else m_indices)
        launchers.m_grouped_contiguous(a_data, a_scale, b_data, b_scale, d_ready, row_groups,
                                       int(expected_m), alignment)
    return d


def _validate_contiguous(a, b, d, m_indices, use_psum_layout, expected_m):
    """The checks of m_grouped_fp8_gemm_nt_contiguous that read only metadata (shapes, dtypes,
    strides, devices: what a traced call and the op's fake implementation can check).
    Returns (a_data, a_scale, b_data, b_scale, m_indices)."""
    a_data, a_scale, a_data_name, a_scale_name = _unpack_a("a", a, 2)
    b_data, b_scale = _unpack_b(b)
    checks.check_tensor("d", d, dtypes=(torch.bfloat16,), ndim=2)
    if not isinstance(use_psum_layout, bool):
        raise TypeError(f"use_psum_layout: expected a bool, got {type(use_psum_layout).__name__}")
    _check_expected_m(expected_m, required=False)

    m_sum, k = a_data.shape
    groups, n, k_of_b = b_data.shape
    if k_of_b != k:
        checks.check_same_size("K", f"{a_data_name}.shape[1]", k, "b[0] (data).shape[2]", k_of_b)
    if not isinstance(a, FP8Tensor):
        _check_a_scale_shape(a_scale_name, a_scale, a_data.shape, a_data_name)
    if tuple(d.shape) != (m_sum, n):
        checks.check_shape("d", d, (m_sum, n), why=f"(M_sum, N) from {a_data_name} (M_sum, K) "
                                                   f"and b[0] (G, N, K)")
    _check_nk(n, k, "N (= b[0].shape[1])", f"K (= {a_data_name}.shape[1])")
    checks.check_int32_size("M_sum (a's rows)", m_sum)
    checks.check_int32_size("N", n)
    checks.check_int32_size("K", k)
    checks.check_int32_size("G * N (b's rows)", groups * n)
    checks.check_same_device(**{a_data_name: a_data, a_scale_name: a_scale,
                                "b[0] (data)": b_data, "b[1] (scale)": b_scale, "d": d})
    if use_psum_layout:
        _check_layout_tensor("m_indices", m_indices, groups,
                             "use_psum_layout=True: the (G,) cumulative group ends", d.device)
    else:
        _check_layout_tensor("m_indices", m_indices, m_sum,
                             "(M_sum,): the group of each row of a", d.device)
    _check_contiguous(a_data_name, a_data, " (a is (M_sum, K), K-major)")
    _check_contiguous("b[0] (data)", b_data, " (b is (G, N, K), K-major: the 'nt' layout)")
    _check_contiguous("d", d)
    return a_data, a_scale, b_data, b_scale, m_indices


def _check_blocks_on_cpu(m_indices: torch.Tensor, alignment: int) -> None:
    """CPU only (free there): every row's id is its block's first id or -1."""
    m_sum = m_indices.shape[0]
    blocks = _ceil_div(m_sum, alignment)
    padded = torch.full((blocks * alignment,), -1, dtype=torch.int64)
    padded[:m_sum] = m_indices.to(torch.int64)
    per_block = padded.view(blocks, alignment)
    first = per_block[:, :1]
    bad = (per_block != first) & (per_block != -1)
    if bool(bad.any()):
        row = int(bad.reshape(-1).nonzero()[0, 0])
        block = row // alignment
        raise ValueError(
            f"m_indices: row {row} has group {int(padded[row])} but its {alignment}-row block "
            f"(rows {block * alignment}..{block * alignment + alignment - 1}) starts with group "
            f"{int(first[block, 0])}: each group's segment must start at a multiple of "
            f"get_mk_alignment_for_contiguous_layout() = {alignment} (pad segments with -1 rows; "
            f"pyfp8gemm.moe.contiguous_layout builds such a layout)"
        )


def _check_psum_on_cpu(psum: torch.Tensor, m_sum: int, alignment: int) -> None:
    """CPU only: the group ends never decrease and stay inside a. (An end below its group's
    aligned start, e.g. psum[g] == psum[g-1], is an empty group.)"""
    ends = psum.to(torch.int64)
    bad = (ends[1:] < ends[:-1]).nonzero()
    if bad.numel():
        g = int(bad[0, 0]) + 1
        raise ValueError(
            f"m_indices (use_psum_layout=True): psum[{g}] = {int(ends[g])} is smaller than "
            f"psum[{g - 1}] = {int(ends[g - 1])}: psum holds cumulative group ends (group g's "
            f"rows are [align(psum[g-1], {alignment}), psum[g])), so it never decreases"
        )
    if ends.numel() and int(ends[-1]) > m_sum:
        raise ValueError(
            f"m_indices (use_psum_layout=True): the last group ends at psum[-1] = "
            f"{int(ends[-1])}, past a's {m_sum} rows"
        )


def _contiguous_on_cpu(a_data, a_scale, b_data, b_scale, d, row_groups, alignment) -> None:
    """The CPU backend of the contiguous layout: each block takes its first row's group."""
    from pyfp8gemm.host.cpu_backend import blockwise_gemm

    groups = b_data.shape[0]
    m_sum = a_data.shape[0]
    block_ids = row_groups[::alignment].to(torch.int64)
    row_block_ids = block_ids.repeat_interleave(alignment)[:m_sum]
    valid = (row_block_ids >= 0) & (row_block_ids < groups)
    d[~valid] = 0
    for g in torch.unique(row_block_ids[valid]).tolist():     # CPU tensors: no device sync
        rows = (row_block_ids == g).nonzero().squeeze(1)
        product = blockwise_gemm(a_data[rows], a_scale[rows], b_data[g], b_scale[g],
                                 b_granularity="128x128")
        d[rows] = product.to(torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Masked layout
# ---------------------------------------------------------------------------------------------


def m_grouped_fp8_gemm_nt_masked(a, b, d: torch.Tensor, masked_m: torch.Tensor,
                                 expected_m: int) -> torch.Tensor:
    """``d[g, :masked_m[g]] = A[g, :masked_m[g]] @ B[g]^T`` in bf16: DeepGEMM's
    m_grouped_fp8_gemm_nt_masked. Rows at or past masked_m[g] are left untouched.

    Args:
        a: a pair (data E4M3 (G, M_max, K), scale float32 (G, M_max, ceil(K/128))), e.g. from
            `quantize_grouped(x, "1x128")`.
        b: a pair (data E4M3 (G, N, K), scale float32 (G, ceil(N/128), ceil(K/128))).
        d: bf16 (G, M_max, N), contiguous.
        masked_m: int32 (G,) on a's device: the rows used per group, read by the kernel only
            (never by the host on CUDA: no synchronization, CUDA-graph replayable with new
            values). Values are clamped to [0, M_max].
        expected_m: a positive int, the rows per group the caller expects: a configuration
            hint only (see the module docstring).

    Returns:
        d.
    """
    a_data, a_scale, b_data, b_scale = _validate_masked(a, b, d, masked_m, expected_m)
    if _is_compiling():
        torch.ops.pyfp8gemm.m_grouped_fp8_gemm_nt_masked(
            a_data, a_scale, b_data, b_scale, d, masked_m, expected_m)
        return d
    device = _check_devices(**{"a[0] (data)": a_data, "a[1] (scale)": a_scale,
                               "b[0] (data)": b_data, "b[1] (scale)": b_scale, "d": d,
                               "masked_m": masked_m})
    a_data = _tma_ready("a[0] (data)", a_data)
    b_data = _tma_ready("b[0] (data)", b_data)
    d_ready = _tma_ready("d", d)
    if a_data.shape[1] == 0:
        return d

    if device.type == "cpu":
        _masked_on_cpu(a_data, a_scale, b_data, b_scale, d_ready, masked_m)
        return d

    from pyfp8gemm.host import launchers

    with torch.cuda.device(device):
        a_scale = to_grouped_mn_major_tma_aligned(a_scale)
        b_scale = b_scale.contiguous()
        launchers.m_grouped_masked(a_data, a_scale, b_data, b_scale, d_ready, masked_m,
                                   int(expected_m))
    return d


def _validate_masked(a, b, d, masked_m, expected_m):
    """The metadata checks of m_grouped_fp8_gemm_nt_masked (see _validate_contiguous).
    Returns (a_data, a_scale, b_data, b_scale)."""
    a_data, a_scale, a_data_name, a_scale_name = _unpack_a("a", a, 3)
    b_data, b_scale = _unpack_b(b)
    checks.check_tensor("d", d, dtypes=(torch.bfloat16,), ndim=3)
    _check_expected_m(expected_m, required=True)

    groups_a, m_max, k = a_data.shape
    groups, n, k_of_b = b_data.shape
    if groups_a != groups:
        checks.check_same_size("the group count G", f"{a_data_name}.shape[0]", groups_a,
                               "b[0] (data).shape[0]", groups)
    if k_of_b != k:
        checks.check_same_size("K", f"{a_data_name}.shape[2]", k, "b[0] (data).shape[2]", k_of_b)
    _check_a_scale_shape(a_scale_name, a_scale, a_data.shape, a_data_name)
    if tuple(d.shape) != (groups, m_max, n):
        checks.check_shape("d", d, (groups, m_max, n),
                           why=f"(G, M_max, N) from {a_data_name} (G, M_max, K) and b[0] (G, N, K)")
    _check_nk(n, k, "N (= b[0].shape[1])", f"K (= {a_data_name}.shape[2])")
    checks.check_int32_size("G * M_max (a's rows)", groups * m_max)
    checks.check_int32_size("N", n)
    checks.check_int32_size("K", k)
    checks.check_int32_size("G * N (b's rows)", groups * n)
    checks.check_same_device(**{a_data_name: a_data, a_scale_name: a_scale,
                                "b[0] (data)": b_data, "b[1] (scale)": b_scale, "d": d})
    _check_layout_tensor("masked_m", masked_m, groups, "(G,): the rows used in each group",
                         d.device)
    _check_contiguous(a_data_name, a_data, " (a is (G, M_max, K), K-major)")
    _check_contiguous("b[0] (data)", b_data, " (b is (G, N, K), K-major: the 'nt' layout)")
    _check_contiguous("d", d)
    return a_data, a_scale, b_data, b_scale


#: DeepGEMM's legacy name (kept in its __init__, used by vLLM and SGLang).
fp8_m_grouped_gemm_nt_masked = m_grouped_fp8_gemm_nt_masked


def _masked_on_cpu(a_data, a_scale, b_data, b_scale, d, masked_m) -> None:
    """The CPU backend of the masked layout: rows past the clamped count stay untouched."""
    from pyfp8gemm.host.cpu_backend import blockwise_gemm

    m_max = a_data.shape[1]
    counts = masked_m.to(torch.int64).clamp(0, m_max).tolist()   # CPU tensor: no device sync
    for g, rows in enumerate(counts):
        if rows:
            product = blockwise_gemm(a_data[g, :rows], a_scale[g, :rows], b_data[g], b_scale[g],
                                     b_granularity="128x128")
            d[g, :rows] = product.to(torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# torch custom ops (torch.compile sees an opaque op that mutates d)
# ---------------------------------------------------------------------------------------------


def _contiguous_fake(a_data, a_scale, b_data, b_scale, d, m_indices, use_psum_layout=False,
                     expected_m=None) -> None:
    _validate_contiguous((a_data, a_scale), (b_data, b_scale), d, m_indices, use_psum_layout,
                         expected_m)
    return None


def _masked_fake(a_data, a_scale, b_data, b_scale, d, masked_m, expected_m) -> None:
    _validate_masked((a_data, a_scale), (b_data, b_scale), d, masked_m, expected_m)
    return None


@custom_op("m_grouped_fp8_gemm_nt_contiguous", mutates_args=("d",), fake=_contiguous_fake)
def _contiguous_op(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                   b_scale: torch.Tensor, d: torch.Tensor, m_indices: torch.Tensor,
                   use_psum_layout: bool = False, expected_m: Optional[int] = None) -> None:
    """m_grouped_fp8_gemm_nt_contiguous with (data, scale) pairs; mutates d."""
    m_grouped_fp8_gemm_nt_contiguous((a_data, a_scale), (b_data, b_scale), d, m_indices,
                                     use_psum_layout=use_psum_layout, expected_m=expected_m)


@custom_op("m_grouped_fp8_gemm_nt_masked", mutates_args=("d",), fake=_masked_fake)
def _masked_op(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
               b_scale: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor,
               expected_m: int) -> None:
    """m_grouped_fp8_gemm_nt_masked with (data, scale) pairs; mutates d."""
    m_grouped_fp8_gemm_nt_masked((a_data, a_scale), (b_data, b_scale), d, masked_m, expected_m)
