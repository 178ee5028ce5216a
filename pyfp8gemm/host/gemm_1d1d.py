"""The weight-gradient GEMMs of FP8 training: 1D1D `fp8_gemm_nt_1d1d` and the k-grouped
`k_grouped_fp8_gemm_nt_contiguous` (DeepGEMM's SM90 recipe (1, 1, 128): both operands carry
1x128 scales, the output is FP32 and may accumulate onto `c`).

Both compute ``D = C + A @ B^T`` in FP32 with DeepSeek-V3's two-level accumulation (one FP32
promotion per 128-wide K block, scaled by ``scale_a[row, kb] * scale_b[col, kb]``):

* ``fp8_gemm_nt_1d1d(a, b, d, c=None)``: a (M, K), b (N, K), d and c (M, N) float32. In the
  weight gradient dW = dY^T X of a Linear, M = out_features, N = in_features, K = tokens.
* ``k_grouped_fp8_gemm_nt_contiguous(a, b, d, ks, ks_tensor, c=None)``: G independent products
  d[g] = c[g] + A_g @ B_g^T with A_g (M, k_g), B_g (N, k_g) (the per-expert weight gradients of
  an MoE layer: k_g = the tokens routed to expert g), in DeepGEMM's contiguous layout.

What the kernels need, and why (every input is checked against it):

* K % 16 == 0: TMA loads rows of K E4M3 bytes and needs 16-byte aligned rows. (k-grouped: each
  k_g % 128 == 0, DeepGEMM's rule, so every group starts on a whole scale block.)
* N % 4 == 0: D (and C) are FP32 rows of 4*N bytes, TMA-stored/loaded, 16-byte aligned.
* Data, d and c contiguous, 16-byte aligned; every size fits the kernels' int32 parameters.
* Scales: 1x128, read MN-major and TMA-aligned (strides (1, align(rows, 4))), what
  `FP8Tensor.scale` and DeepGEMM's get_mn_major_tma_aligned_tensor give; another layout is
  converted (one copy of rows * ceil(K/128) floats).

CPU tensors run through the CPU reference backend (`host/cpu_backend.py`, the kernels' exact
per-block FP32 promotion); CUDA tensors go to the kernel launchers (`host/launchers.py`) in the
kernel-ready layouts. A CUDA tensor never falls back to the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from pyfp8gemm.host import checks, device_info, launchers
from pyfp8gemm.host.fp8tensor import (
    BLOCK, FP8Tensor, to_mn_major_tma_aligned, unpack_operand,
)
from pyfp8gemm.host.op_registry import custom_op

__all__ = [
    "fp8_gemm_nt_1d1d",
    "k_grouped_fp8_gemm_nt_contiguous",
    "K_ALIGNMENT",
    "N_ALIGNMENT_FP32",
    "K_GROUP_ALIGNMENT",
]

#: K must be a multiple of this: TMA needs 16-byte rows of E4M3 for A and B.
K_ALIGNMENT = 16
#: N must be a multiple of this: TMA needs 16-byte rows of float32 for D and C.
N_ALIGNMENT_FP32 = 4
#: Every group's K of the k-grouped GEMM is a multiple of this (DeepGEMM's SM90 rule).
K_GROUP_ALIGNMENT = 128

_E4M3 = torch.float8_e4m3fn
_K_RULE = "K % 16 == 0: TMA loads A and B rows of K E4M3 bytes and needs 16-byte aligned rows"
_N_RULE = ("N % 4 == 0: TMA stores (and loads) float32 D and C rows of 4*N bytes and needs "
           "16-byte aligned rows")
_KG_RULE = ("k-grouped: every group's K is a multiple of 128 (whole 1x128 scale blocks per "
            "group, DeepGEMM's layout); 0 is allowed (then d[g] = c[g])")


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _align(n: int, alignment: int) -> int:
    return _ceil_div(n, alignment) * alignment


def _runs_on_cpu_backend(device: torch.device) -> bool:
    """CPU tensors are computed by the reference backend; everything else needs the kernels.
    (The CPU tests replace this to drive the kernel path with a fake launcher.)"""
    return device.type == "cpu"


def _on_device(device: torch.device):
    """The launch's device as torch's current device (the launchers use its current stream)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _blockwise_gemm(*args, **kwargs) -> torch.Tensor:
    from pyfp8gemm.host import cpu_backend   # imported on first CPU use

    return cpu_backend.blockwise_gemm(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Operand unpacking and checks
# ---------------------------------------------------------------------------------------------


def _unpack_1x128(name: str, operand):
    """(data, scale, data_name, scale_name) of a 1x128 FP8Tensor or a (data, scale) pair; a
    128x128 FP8Tensor is refused with the 1D1D rule."""
    return unpack_operand(
        name, operand, "1x128", role="one scale per row per 128 K",
        hint=(": an FP32 output or a c needs 1x128 scales on both operands (the 1D1D kernel; "
              "as in DeepGEMM, 128x128 weight scales only go with a bf16 output and no c)"))


def _check_1x128_scale_shape(scale_name, scale, rows, cols, data_name) -> None:
    kb = _ceil_div(cols, BLOCK)
    expected = (rows, kb)
    shape = tuple(scale.shape)
    if shape == expected:
        return
    why = f"1x128 scales of {data_name} with shape {(rows, cols)}: one per row per 128 K"
    if shape == (_ceil_div(rows, BLOCK), kb):
        why += (
            "; this is the shape of 128x128 block scales: an FP32 output or a c needs 1x128 "
            "scales on both operands (the 1D1D kernel; as in DeepGEMM, 128x128 weight scales "
            "only go with a bf16 output and no c, through fp8_gemm_nt)"
        )
    checks.check_shape(scale_name, scale, expected, why=why)


def _row_major(name: str, t: torch.Tensor, hint: str = "") -> torch.Tensor:
    """A contiguous, 16-byte aligned tensor with canonical strides (size-1 dims re-strided,
    no copy); raise otherwise."""
    if not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous (row-major) tensor, got shape {tuple(t.shape)} with "
            f"strides {tuple(t.stride())}{hint}"
        )
    canonical, step = [], 1
    for size in reversed(t.shape):
        canonical.insert(0, step)
        step *= size
    canonical = tuple(canonical)
    if t.stride() != canonical:
        t = t.as_strided(t.shape, canonical)
    if t.numel() > 0:
        checks.check_16_byte_aligned(name, t)
    return t


def _check_fp32_output(name: str, t, shape, why: str) -> None:
    checks.check_tensor(name, t, dtypes=(torch.float32,), ndim=len(shape))
    checks.check_shape(name, t, shape, why=why)


def _check_c(c, d, shape, why: str):
    """c: None, d itself, or a float32 tensor of d's shape on d's device; returns (c, c_is_d)."""
    if c is None:
        return None, False
    if c is d:
        return c, True
    _check_fp32_output("c", c, shape, why)
    checks.check_same_device(d=d, c=c)
    if c.numel() > 0 and d.numel() > 0 and _overlaps(c, d):
        raise ValueError(
            "c: overlaps d's memory without being d itself; pass c=d to accumulate in place, "
            "or a separate tensor"
        )
    return c, False


def _overlaps(x: torch.Tensor, y: torch.Tensor) -> bool:
    if x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr():
        return False
    x0, x1 = x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()
    y0, y1 = y.data_ptr(), y.data_ptr() + y.numel() * y.element_size()
    return x0 < y1 and y0 < x1


def _require_device(first_name: str, first: torch.Tensor, **others: torch.Tensor) -> None:
    """Everything on `first`'s device, and that a CPU or a Hopper GPU."""
    checks.check_same_device(**{first_name: first}, **others)
    if not _runs_on_cpu_backend(first.device):
        device_info.require_hopper(first.device, first_name)


# ---------------------------------------------------------------------------------------------
# fp8_gemm_nt_1d1d
# ---------------------------------------------------------------------------------------------


def fp8_gemm_nt_1d1d(a, b, d: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """``d = c + (a_data * a_scale) @ (b_data * b_scale)^T`` in FP32: DeepGEMM's fp8_gemm_nt with
    recipe (1, 1, 128) (its wgrad GEMM).

    Args:
        a: (M, K): a ``"1x128"`` FP8Tensor or a pair ``(data, scale)`` with data E4M3 (M, K)
            and scale float32 (M, ceil(K/128)) (one per row per 128 K).
        b: (N, K), the same form: a ``"1x128"`` FP8Tensor or ``(data (N, K), scale (N,
            ceil(K/128)))`` (per-row B scales; a 128x128 B is an error here).
        d: float32 (M, N), contiguous; written in place.
        c: None (d = A @ B^T), d itself (d += A @ B^T: accumulation, e.g. of a weight gradient
            over micro-batches), or another float32 (M, N) tensor (d = c + A @ B^T; c is read
            only and must not overlap d).

    Rules: K % 16 == 0 (K == 0 is allowed: d = c, or zeros), N % 4 == 0, any M; everything on
    one device: the CPU (reference backend) or a Hopper GPU (the 1D1D kernel). Scales in a
    layout other than MN-major TMA-aligned cost one small copy.

    Returns:
        d.
    """
    a_data, a_scale, a_data_name, a_scale_name = _unpack_1x128("a", a)
    b_data, b_scale, b_data_name, b_scale_name = _unpack_1x128("b", b)
    if torch.compiler.is_compiling():     # traced: one opaque op that mutates d
        torch.ops.pyfp8gemm.fp8_gemm_nt_1d1d(a_data, a_scale, b_data, b_scale, d,
                                             None if c is d else c, c is d)
        return d
    m, k = a_data.shape
    n, k_of_b = b_data.shape
    checks.check_same_size("K", f"{a_data_name}.shape[1]", k, f"{b_data_name}.shape[1]", k_of_b)
    if not isinstance(a, FP8Tensor):
        _check_1x128_scale_shape(a_scale_name, a_scale, m, k, a_data_name)
    if not isinstance(b, FP8Tensor):
        _check_1x128_scale_shape(b_scale_name, b_scale, n, k, b_data_name)
    why = f"(M, N) from {a_data_name} (M, K) and {b_data_name} (N, K)"
    if not isinstance(d, torch.Tensor):
        raise TypeError(f"d: expected a torch.Tensor, got {type(d).__name__}")
    if d.dtype != torch.float32:
        raise TypeError(
            f"d: expected dtype torch.float32 (the 1D1D GEMM accumulates and writes FP32), got "
            f"{d.dtype}; a bf16 output takes 128x128 weight scales through fp8_gemm_nt"
        )
    _check_fp32_output("d", d, (m, n), why)
    c, c_is_d = _check_c(c, d, (m, n), why)
    if k != 0:
        checks.check_multiple_of(f"K (= {a_data_name}.shape[1])", k, K_ALIGNMENT, why=_K_RULE)
    if n % N_ALIGNMENT_FP32:
        checks.check_multiple_of(f"N (= {b_data_name}.shape[0])", n, N_ALIGNMENT_FP32,
                                 why=_N_RULE)
    for size_name, size in (("M", m), ("N", n), ("K", k), ("M * N", m * n),
                            ("M * K", m * k), ("N * K", n * k)):
        checks.check_int32_size(size_name, size)

    others = {a_scale_name: a_scale, b_data_name: b_data, b_scale_name: b_scale, "d": d}
    if c is not None and not c_is_d:
        others["c"] = c
    _require_device(a_data_name, a_data, **others)

    a_data = _row_major(a_data_name, a_data, " (a is (M, K), K-major)")
    b_data = _row_major(b_data_name, b_data, " (b is (N, K), K-major)")
    d_ready = _row_major("d", d)
    if c is not None and not c_is_d:
        c = _row_major("c", c)

    if m == 0 or n == 0:
        return d
    if k == 0:
        if c is None:
            d.zero_()
        elif not c_is_d:
            d.copy_(c)
        return d

    if _runs_on_cpu_backend(d.device):
        product = _blockwise_gemm(a_data, a_scale, b_data, b_scale, b_granularity="1x128")
        if c is None:
            d.copy_(product)
        else:
            torch.add(c, product, out=d)   # c may be d itself: an elementwise in-place add
        return d

    a_scale = to_mn_major_tma_aligned(a_scale)
    b_scale = to_mn_major_tma_aligned(b_scale)
    with _on_device(d.device):
        launchers.gemm_1d1d(a_data, a_scale, b_data, b_scale, d_ready, c)
    return d


# ---------------------------------------------------------------------------------------------
# k_grouped_fp8_gemm_nt_contiguous
# ---------------------------------------------------------------------------------------------


def _unpack_flat(name: str, operand):
    return checks.check_fp8_pair(
        name, operand, 1, 2, what="a (data, scale) pair: data E4M3 1-D, the groups' K-major "
                                  "(rows, k_g) blocks concatenated; scale float32 (rows, "
                                  "sum(k_g) / 128)")


def _check_ks(ks, ks_tensor, num_groups: int) -> list[int]:
    if isinstance(ks, torch.Tensor) or not isinstance(ks, Sequence):
        raise TypeError(
            f"ks: expected a list of Python ints (each group's K, known on the host), got "
            f"{type(ks).__name__}"
        )
    ks = list(ks)
    for g, k in enumerate(ks):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"ks[{g}]: expected an int, got {type(k).__name__}")
        if k < 0 or k % K_GROUP_ALIGNMENT:
            raise ValueError(
                f"ks[{g}]: expected a non-negative multiple of {K_GROUP_ALIGNMENT} ({_KG_RULE}), "
                f"got {k}"
            )
    if len(ks) != num_groups:
        raise ValueError(
            f"ks: expected {num_groups} entries (one per group: d.shape[0] = {num_groups}), got "
            f"{len(ks)}"
        )
    checks.check_tensor("ks_tensor", ks_tensor, dtypes=(torch.int32,), ndim=1)
    checks.check_shape("ks_tensor", ks_tensor, (num_groups,), why="one int32 K per group")
    if ks_tensor.device.type == "cpu":   # comparing a GPU tensor's values would synchronize
        if ks_tensor.tolist() != ks:
            raise ValueError(f"ks_tensor: expected the values of ks {ks}, got {ks_tensor.tolist()}")
    return ks


def k_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, ks, ks_tensor: torch.Tensor,
                                     c: torch.Tensor | None = None) -> torch.Tensor:
    """``d[g] = c[g] + A_g @ B_g^T`` in FP32 for G groups of different K: DeepGEMM's
    k_grouped_fp8_gemm_nt_contiguous (SM90), e.g. the weight gradients of G experts.

    Args:
        a: ``(data, scale)``: data E4M3, 1-D of sum(ks) * M elements: the groups' K-major
            A_g (M, k_g) blocks flattened and concatenated (A_g = data[M * sum(ks[:g]) :
            M * sum(ks[:g+1])].view(M, k_g)); scale float32 (M, sum(ks) / 128), the 1x128
            scales along K of every group side by side (group g's are columns sum(ks[:g])/128
            onwards), best MN-major TMA-aligned (another layout costs a copy).
        b: the same for B_g (N, k_g): data of sum(ks) * N elements, scale (N, sum(ks) / 128).
        d: float32 (G, M, N), contiguous; written in place.
        ks: list of G Python ints, each group's K: a multiple of 128, 0 allowed (then
            d[g] = c[g], or zeros without c).
        ks_tensor: int32 (G,) on the device of the data, the same values (the kernel reads it;
            its values are compared with ks when it is on the CPU, never on a GPU, which would
            synchronize).
        c: None, d itself (accumulate), or a float32 (G, M, N) tensor not overlapping d.

    Rules: N % 4 == 0 (FP32 rows of D), each k_g % 128 == 0; one device for everything.

    Returns:
        d.
    """
    a_data, a_scale, a_data_name, a_scale_name = _unpack_flat("a", a)
    b_data, b_scale, b_data_name, b_scale_name = _unpack_flat("b", b)
    if torch.compiler.is_compiling():     # traced: one opaque op that mutates d
        torch.ops.pyfp8gemm.k_grouped_fp8_gemm_nt_contiguous(
            a_data, a_scale, b_data, b_scale, d, list(ks), ks_tensor, None if c is d else c,
            c is d)
        return d
    if not isinstance(d, torch.Tensor):
        raise TypeError(f"d: expected a torch.Tensor, got {type(d).__name__}")
    if d.dtype != torch.float32:
        raise TypeError(f"d: expected dtype torch.float32 (FP32 accumulation output), got "
                        f"{d.dtype}")
    checks.check_tensor("d", d, ndim=3)
    num_groups, m, n = d.shape
    ks = _check_ks(ks, ks_tensor, num_groups)
    c, c_is_d = _check_c(c, d, (num_groups, m, n), "(G, M, N) = d.shape")
    total_k = sum(ks)
    kb_total = total_k // BLOCK
    checks.check_shape(a_data_name, a_data, (total_k * m,),
                       why=f"sum(ks) * M = {total_k} * {m}: the groups' (M, k_g) blocks, M = "
                           f"d.shape[1]")
    checks.check_shape(b_data_name, b_data, (total_k * n,),
                       why=f"sum(ks) * N = {total_k} * {n}: the groups' (N, k_g) blocks, N = "
                           f"d.shape[2]")
    checks.check_shape(a_scale_name, a_scale, (m, kb_total),
                       why="(M, sum(ks) / 128): 1x128 scales along K of every group")
    checks.check_shape(b_scale_name, b_scale, (n, kb_total),
                       why="(N, sum(ks) / 128): 1x128 scales along K of every group")
    if n % N_ALIGNMENT_FP32:
        checks.check_multiple_of("N (= d.shape[2])", n, N_ALIGNMENT_FP32, why=_N_RULE)
    for size_name, size in (("G", num_groups), ("M", m), ("N", n), ("sum(ks)", total_k),
                            ("sum(ks) * M", total_k * m), ("sum(ks) * N", total_k * n),
                            ("G * M * N", num_groups * m * n)):
        checks.check_int32_size(size_name, size)

    others = {a_scale_name: a_scale, b_data_name: b_data, b_scale_name: b_scale, "d": d,
              "ks_tensor": ks_tensor}
    if c is not None and not c_is_d:
        others["c"] = c
    _require_device(a_data_name, a_data, **others)
    a_data = _row_major(a_data_name, a_data)
    b_data = _row_major(b_data_name, b_data)
    d_ready = _row_major("d", d)
    if c is not None and not c_is_d:
        c = _row_major("c", c)
    if num_groups == 0 or m == 0 or n == 0:
        return d

    if _runs_on_cpu_backend(d.device):
        a_offset = b_offset = kb_offset = 0
        for g, k in enumerate(ks):
            if k == 0:
                if c is None:
                    d[g].zero_()
                elif not c_is_d:
                    d[g].copy_(c[g])
                continue
            kb = k // BLOCK
            product = _blockwise_gemm(
                a_data[a_offset:a_offset + m * k].view(m, k),
                a_scale[:, kb_offset:kb_offset + kb],
                b_data[b_offset:b_offset + n * k].view(n, k),
                b_scale[:, kb_offset:kb_offset + kb],
                b_granularity="1x128",
            )
            if c is None:
                d[g].copy_(product)
            else:
                torch.add(c[g], product, out=d[g])
            a_offset += m * k
            b_offset += n * k
            kb_offset += kb
        return d

    a_scale = to_mn_major_tma_aligned(a_scale)
    b_scale = to_mn_major_tma_aligned(b_scale)
    with _on_device(d.device):
        launchers.k_grouped(a_data, a_scale, b_data, b_scale, d_ready, c, ks, ks_tensor)
    return d


# ---------------------------------------------------------------------------------------------
# torch custom ops (torch.compile sees an opaque op that mutates d). C aliasing D is passed as
# a flag: an op's inputs may not alias the tensor it mutates. The eager checks run when the op
# executes; the fake implementations only declare the mutation.
# ---------------------------------------------------------------------------------------------


def _fake_1d1d(a_data, a_scale, b_data, b_scale, d, c, accumulate_into_d) -> None:
    return None


def _fake_k_grouped(a_data, a_scale, b_data, b_scale, d, ks, ks_tensor, c,
                    accumulate_into_d) -> None:
    return None


@custom_op("fp8_gemm_nt_1d1d", mutates_args=("d",), fake=_fake_1d1d)
def _fp8_gemm_nt_1d1d_op(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                         b_scale: torch.Tensor, d: torch.Tensor, c: Optional[torch.Tensor],
                         accumulate_into_d: bool) -> None:
    """fp8_gemm_nt_1d1d with (data, scale) pairs; mutates d (c = d with accumulate_into_d)."""
    fp8_gemm_nt_1d1d((a_data, a_scale), (b_data, b_scale), d, d if accumulate_into_d else c)


@custom_op("k_grouped_fp8_gemm_nt_contiguous", mutates_args=("d",), fake=_fake_k_grouped)
def _k_grouped_op(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                  b_scale: torch.Tensor, d: torch.Tensor, ks: list[int], ks_tensor: torch.Tensor,
                  c: Optional[torch.Tensor], accumulate_into_d: bool) -> None:
    """k_grouped_fp8_gemm_nt_contiguous with (data, scale) pairs; mutates d."""
    k_grouped_fp8_gemm_nt_contiguous((a_data, a_scale), (b_data, b_scale), d, ks, ks_tensor,
                                     d if accumulate_into_d else c)
