"""The public GEMM functions: `fp8_gemm_nt` (DeepGEMM's convention) and `matmul` (torch's).

Both compute ``D = (A * scale_a) @ (B * scale_b)^T`` in bf16 with the dense 1D2D kernel:

* A, the activations: E4M3 (M, K) with FP32 scales per row per 128 K ("1x128");
* B, the weights: E4M3 (N, K) with FP32 scales per 128x128 block ("128x128");
* D: bf16 (M, N).

What the kernel needs, and why (the rules every input is checked against):

* K % 16 == 0: A and B rows are TMA-loaded, and TMA needs 16-byte aligned global row strides
  (K bytes of E4M3). K need not be a multiple of 128: the last K block is zero-filled by TMA.
* N % 8 == 0: D is TMA-stored, so its row stride (2N bytes of bf16) must be 16-byte aligned.
  N need not be a multiple of the tile: TMA clips the last tile.
* M >= 1 is anything (M == 0 returns at once, like torch).
* A's data, B's data and D are contiguous (K-major A and B, row-major D), start at 16-byte
  aligned addresses, and everything lives on one Hopper GPU (compute capability 9.0).
* A's scales are read in the MN-major, TMA-aligned layout (strides (1, align(M, 4))), what
  `FP8Tensor.scale` and DeepGEMM's get_mn_major_tma_aligned_tensor give. Scales in any other
  layout (e.g. row-major (M, ceil(K/128)), as a naive quantizer returns them) are converted with
  `to_mn_major_tma_aligned`: one small copy of M * ceil(K/128) floats, i.e. 1/32 of the bytes
  of A itself, one extra tiny kernel. Pass the aligned layout to avoid it.
* B's scales are read as a contiguous (ceil(N/128), ceil(K/128)) array; any other strides cost
  a copy of those few floats.

Bad input raises before anything runs: TypeError for the wrong kind of object or dtype,
ValueError for a wrong shape, layout, alignment or device (e.g. a CPU tensor), RuntimeError for
a GPU that is not a Hopper. The messages name the argument and the rule. The checks read only
tensor metadata (no device synchronization, no .item()), so a call stays cheap and can be
captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from pyfp8gemm.host import checks, device_info
from pyfp8gemm.host.fp8tensor import (
    BLOCK,
    QUANTIZABLE_DTYPES,
    FP8Tensor,
    quantize,
    to_mn_major_tma_aligned,
    unpack_operand,
)

__all__ = ["fp8_gemm_nt", "matmul", "K_ALIGNMENT", "N_ALIGNMENT"]

#: K must be a multiple of this: TMA needs 16-byte rows of E4M3 for A and B.
K_ALIGNMENT = 16
#: N must be a multiple of this: TMA needs 16-byte rows of bf16 for the output.
N_ALIGNMENT = 8

_E4M3 = torch.float8_e4m3fn
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

_K_RULE = "K % 16 == 0: TMA loads A and B rows of K E4M3 bytes and needs 16-byte aligned rows"
_N_RULE = "N % 8 == 0: TMA stores bf16 output rows of 2*N bytes and needs 16-byte aligned rows"


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


# ---------------------------------------------------------------------------------------------
# The kernel binder, imported on first use, and the fast path of a repeated call
# ---------------------------------------------------------------------------------------------

_bind_kernel = None


def _kernel_binder():
    """`pyfp8gemm.host.launch.bind`, imported the first time a GEMM runs: `bind(a_data,
    a_scale, b_data, b_scale, out)` returns a callable that launches the kernel on those
    validated tensors (torch's current stream), and has `.with_out(out)` for another output.

    Importing it loads numba-cuda and cuda-bindings (slow, and pointless on a machine that only
    validates inputs). The CPU tests replace this function with one returning a fake binder.
    """
    global _bind_kernel
    if _bind_kernel is None:
        from pyfp8gemm.host.launch import bind

        _bind_kernel = bind
    return _bind_kernel


class _CpuLaunch:
    """A "bound launch" of the CPU reference backend (host/cpu_backend.py): computes the
    kernel's numbers (FP32 promotion per 128-wide K block, bf16 rounding) into `out` when
    called. Never remembered by the fast path (it would keep the tensors alive)."""

    cacheable = False
    __slots__ = ("a_data", "a_scale", "b_data", "b_scale", "out")

    def __init__(self, a_data, a_scale, b_data, b_scale, out):
        self.a_data, self.a_scale, self.b_data, self.b_scale, self.out = (
            a_data, a_scale, b_data, b_scale, out)

    def __call__(self) -> None:
        from pyfp8gemm.host.cpu_backend import blockwise_gemm

        result = blockwise_gemm(self.a_data, self.a_scale, self.b_data, self.b_scale,
                                b_granularity="128x128")
        self.out.copy_(result)   # float32 -> bf16, round to nearest even (the kernel's rounding)

    def with_out(self, out):
        return _CpuLaunch(self.a_data, self.a_scale, self.b_data, self.b_scale,
                          out.view(self.out.shape))


def _cpu_binder():
    """The binder for CPU tensors: the reference backend. (scripts/host_overhead.py's
    fake-driver mode replaces it with _kernel_binder to time the GPU path on CPU tensors.)"""
    return _CpuLaunch


def _current_device_function():
    get = getattr(torch._C, "_cuda_getDevice", None)
    return get if get is not None else torch.cuda.current_device


#: torch's current CUDA device index: its C function where torch has one (the fast path asks on
#: every call; torch.cuda.current_device() is the same value behind two more Python calls).
_current_device = _current_device_function()

#: True while torch.compile / torch.export traces: the public functions then call the custom ops
#: (pyfp8gemm/ops.py) instead of the direct path (a function call, ~50 ns).
_is_compiling = torch.compiler.is_compiling


def _bind_and_run(a_data, a_scale, b_data, b_scale, out):
    """Bind the kernel to validated, kernel-ready tensors and run it, with their GPU as the
    current device (the launch uses that device's current stream and context). Returns the
    bound launch and the device index a repeated call must check (None: nothing to check)."""
    device = out.device
    if device.type != "cuda":   # CPU tensors: the reference backend (or a test's fake binder)
        bound = _cpu_binder()(a_data, a_scale, b_data, b_scale, out)
        bound()
        return bound, None
    bind = _kernel_binder()
    if device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            bound = bind(a_data, a_scale, b_data, b_scale, out)
            bound()
    else:
        bound = bind(a_data, a_scale, b_data, b_scale, out)
        bound()
    # With one GPU there is no other device to be current: nothing to check per call.
    return bound, (device.index if torch.cuda.device_count() > 1 else None)


def _run(bound, device_index) -> None:
    """A bound launch from the fast path, switching to its device only if another is current."""
    if device_index is None or device_index == _current_device():
        bound()
    else:
        with torch.cuda.device(device_index):
            bound()


# The fast path of a repeated call. The public functions key each call on the metadata of its
# tensors (pointer, shape, contiguity or strides, dtype, device of every tensor, the operand
# kinds, the set_num_sms value): everything the checks and the launch read. A key that passed
# the full checks once maps to its bound launch, so the same key passes them again and needs
# no conversion: the call goes straight to the launch. Any change (another pointer, shape,
# stride, dtype, device, granularity) is another key: it takes the full checks, which raise on
# bad input exactly as before. Calls that needed a conversion (row-major activation scales, a
# copied weight) are not remembered. Entries hold no tensors (the bound launch keeps pointers,
# so a stale entry is a few hundred bytes, not GPU memory). Bounded, oldest first out.
_FAST_PATH_SIZE = 1024
_fast_nt: dict = {}
_fast_matmul: dict = {}


def _remember(cache: dict, key, entry) -> None:
    if len(cache) >= _FAST_PATH_SIZE:
        try:
            cache.pop(next(iter(cache)), None)
        except (StopIteration, RuntimeError):   # emptied or changed by another thread
            pass
    cache[key] = entry


def clear_fast_path() -> None:
    """Forget every remembered call (the next call of each takes the full checks again)."""
    _fast_nt.clear()
    _fast_matmul.clear()


# ---------------------------------------------------------------------------------------------
# Checks shared by both entry points
# ---------------------------------------------------------------------------------------------


# Each check below first tests the common, valid case with a few direct comparisons and only
# calls the `checks` helper (which builds the message and raises) when that test fails: a valid
# call then costs a couple of microseconds of Python in total.


def _check_alignment_rules(k: int, n: int, k_name: str, n_name: str) -> None:
    if k <= 0 or k % K_ALIGNMENT or n <= 0 or n % N_ALIGNMENT:
        checks.check_multiple_of(k_name, k, K_ALIGNMENT, why=_K_RULE)
        checks.check_multiple_of(n_name, n, N_ALIGNMENT, why=_N_RULE)


def _tma_ready(name: str, t: torch.Tensor, hint: str = "") -> torch.Tensor:
    """Check that a 2-D tensor can be TMA-loaded or stored as a row-major array; return it with
    canonical row-major strides.

    torch calls a tensor contiguous even if a size-1 dimension carries an odd stride (e.g. a
    (1, K) view of a column), but a tensor map is built from every stride, so such a view is
    re-strided to (cols, 1): same memory, same elements, no copy.
    """
    rows, cols = t.shape
    if t.stride() == (cols, 1) and t.data_ptr() % 16 == 0:
        return t  # the usual case: row-major and aligned (cols is a multiple of 8 or 16 here)
    if not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous (row-major) tensor, got shape {tuple(t.shape)} with "
            f"strides {tuple(t.stride())}{hint}"
        )
    if t.stride() != (cols, 1):
        t = t.as_strided((rows, cols), (cols, 1))
    checks.check_16_byte_aligned(name, t)
    return t


def _check_devices(first_name: str, first: torch.Tensor, **others: torch.Tensor) -> None:
    """`first` is on a Hopper GPU (or the CPU: the reference backend) and every other tensor
    on the same device."""
    device = first.device
    if device.type != "cpu":
        device_info.require_hopper(device, first_name)
    for t in others.values():
        if t.device != device:
            checks.check_same_device(**{first_name: first}, **others)


def _kernel_ready_scales(a_scale: torch.Tensor, b_scale: torch.Tensor):
    """The scale layouts the kernel reads; a copy only if the given layout differs (see the
    module docstring for the cost)."""
    aligned_rows = (a_scale.shape[0] + 3) // 4 * 4
    if not (a_scale.stride() == (1, aligned_rows) and a_scale.data_ptr() % 16 == 0):
        a_scale = to_mn_major_tma_aligned(a_scale)  # one small copy
    if not b_scale.is_contiguous():
        b_scale = b_scale.contiguous()
    return a_scale, b_scale


# ---------------------------------------------------------------------------------------------
# fp8_gemm_nt: DeepGEMM's calling convention
# ---------------------------------------------------------------------------------------------


_PER_ROW_B_HINT = ("; per-row (1x128) scales on b are the 1D1D kernel's: pass a float32 out "
                   "(and optionally c) for D = C + A @ B^T in float32")


def _unpack_operand(name: str, operand, granularity: str):
    """fp8tensor.unpack_operand with the dense GEMM's hint for per-row b scales."""
    return unpack_operand(name, operand, granularity,
                          hint=_PER_ROW_B_HINT if name == "b" else "")


def _check_pair_scale_shape(scale_name, scale, rows, cols, granularity, data_name) -> None:
    """The scale of a (data, scale) pair has the shape its granularity implies; say so if it
    has the shape of the other granularity (the common mix-up)."""
    kb = _ceil_div(cols, BLOCK)
    per_row = (rows, kb)
    per_block = (_ceil_div(rows, BLOCK), kb)
    expected, other, other_name = (
        (per_row, per_block, "128x128") if granularity == "1x128" else (per_block, per_row, "1x128")
    )
    shape = tuple(scale.shape)
    if shape == expected:
        return
    why = f"{granularity} scales of {data_name} with shape {(rows, cols)}"
    if shape == other:
        why += (
            f"; this is the shape of {other_name} scales: "
            + ("activations (a) take 1x128 scales, weights (b) 128x128")
            + (_PER_ROW_B_HINT if scale_name.startswith("b") else "")
        )
    checks.check_shape(scale_name, scale, expected, why=why)


def fp8_gemm_nt(a, b, out: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """``out = (a_data * a_scale) @ (b_data * b_scale)^T`` in bf16: DeepGEMM's fp8_gemm_nt.

    Args:
        a: the activations, either a pair ``(data, scale)`` with data E4M3 (M, K) and scale
            float32 (M, ceil(K/128)) (one scale per row per 128 K), or a ``"1x128"`` FP8Tensor.
        b: the weights, either a pair ``(data, scale)`` with data E4M3 (N, K) and scale float32
            (ceil(N/128), ceil(K/128)) (one scale per 128x128 block), or a ``"128x128"``
            FP8Tensor of shape (N, K). "nt": both operands are K-major, B is used transposed.
        out: bf16 (M, N), contiguous; written in place.
        c: None for this (1D2D) kernel. With b scaled per row (1x128: a (data, scale) pair
            whose scale has shape (N, ceil(K/128)), or a "1x128" FP8Tensor) the call goes to
            the 1D1D kernel (pyfp8gemm.host.gemm_1d1d): ``out = c + A @ B^T`` in float32, where
            `c` is optional and `out` float32. A c or a float32 out with 128x128 b scales is an
            error, as in DeepGEMM.

    CPU tensors (all of them) are computed by the CPU reference backend (host/cpu_backend.py:
    the same per-128-K-block FP32 promotion and bf16 rounding; slow, for tests and CPU-only
    development) after the same checks as on the GPU: a shape the GPU refuses is refused here.
    Under torch.compile the call becomes the custom op torch.ops.pyfp8gemm.fp8_gemm_nt.

    Rules: K % 16 == 0, N % 8 == 0 (TMA's 16-byte row alignment), any M; every tensor on one
    Hopper GPU; data and out contiguous and 16-byte aligned.

    Scale layouts: a's scale is used as is when it has the MN-major TMA-aligned strides
    (1, align(M, 4)) (an FP8Tensor always has them); any other layout, e.g. row-major, is
    converted first at the cost of one copy of M * ceil(K/128) floats. A non-contiguous b scale
    is made contiguous (ceil(N/128) * ceil(K/128) floats). Scales are never misread.

    Returns:
        out.

    A repeated call with the same tensors (same pointers, shapes, strides, dtypes, devices)
    skips the checks and goes straight to the prebuilt launch; anything else is checked in
    full (see "The fast path of a repeated call" above).
    """
    if c is not None or _is_compiling():
        return _fp8_gemm_nt_slow(a, b, out, c)
    # The key: every tensor's metadata, read once (see _fast_nt). Pairs and FP8Tensors only;
    # anything else (or a pair holding non-tensors) takes the full checks, which say what is
    # wrong.
    ta, tb = type(a), type(b)
    if ta is FP8Tensor:
        a_data, a_scale, a_kind = a.data, a.scale, a.granularity
    elif (ta is tuple or ta is list) and len(a) == 2:
        (a_data, a_scale), a_kind = a, None
    else:
        return _fp8_gemm_nt_checked(a, b, out, None)
    if tb is FP8Tensor:
        b_data, b_scale, b_kind = b.data, b.scale, b.granularity
    elif (tb is tuple or tb is list) and len(b) == 2:
        (b_data, b_scale), b_kind = b, None
    else:
        return _fp8_gemm_nt_checked(a, b, out, None)
    try:
        key = (
            a_kind, b_kind, device_info._num_sms_limit,
            a_data.data_ptr(), a_data.shape, a_data.is_contiguous(), a_data.dtype, a_data.device,
            a_scale.data_ptr(), a_scale.shape, a_scale.stride(), a_scale.dtype, a_scale.device,
            b_data.data_ptr(), b_data.shape, b_data.is_contiguous(), b_data.dtype, b_data.device,
            b_scale.data_ptr(), b_scale.shape, b_scale.is_contiguous(), b_scale.dtype,
            b_scale.device,
            out.data_ptr(), out.shape, out.is_contiguous(), out.dtype, out.device,
        )
    except Exception:  # not tensors, or tensors without storage: the full checks say so
        return _fp8_gemm_nt_checked(a, b, out, None)
    entry = _fast_nt.get(key)
    if entry is None:
        return _fp8_gemm_nt_checked(a, b, out, key)
    bound, device_index = entry
    if device_index is None or device_index == _current_device():
        bound()
    else:
        with torch.cuda.device(device_index):
            bound()
    return out


def _b_is_per_row(b) -> bool:
    """Whether b carries 1x128 (per-row) scales: the 1D1D kernel's operand. A "1x128"
    FP8Tensor, or a pair whose scale has shape (N, ceil(K/128)) (never also the 128x128 shape:
    N % 8 == 0 makes N > ceil(N/128))."""
    if isinstance(b, FP8Tensor):
        return b.granularity == "1x128"
    if not (isinstance(b, (tuple, list)) and len(b) == 2):
        return False
    try:
        data, scale = b
        n, k = data.shape
        return tuple(scale.shape) == (n, _ceil_div(k, BLOCK)) and n != _ceil_div(n, BLOCK)
    except Exception:   # not a pair of 2-D tensors: the checks of the 1D2D path say what is wrong
        return False


def _dtype_of(t):
    return t.dtype if isinstance(t, torch.Tensor) else None


_NO_C_WHY = (
    "the 1D2D kernel (b with 128x128 block scales) computes D = A @ B^T in bf16 and takes "
    "no c, as DeepGEMM's SM90 1D2D kernel; for D = C + A @ B^T in float32 give b per-row "
    "(1x128) scales of shape (N, ceil(K/128)) (the 1D1D kernel) and a float32 out"
)


def _fp8_gemm_nt_slow(a, b, out, c) -> torch.Tensor:
    """fp8_gemm_nt off the fast path: with `c`, or under torch.compile."""
    if _b_is_per_row(b) and (c is not None or _dtype_of(out) != torch.bfloat16):
        from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d

        return fp8_gemm_nt_1d1d(a, b, out, c)
    if c is not None:
        raise ValueError(f"c: expected None: {_NO_C_WHY}")
    if not _is_compiling():
        return _fp8_gemm_nt_checked(a, b, out, None)
    # Traced (torch.compile, export): the checks on metadata here, then the custom op (its
    # implementations run the eager path on real tensors).
    a_data, a_scale, b_data, b_scale = _validate_nt(a, b, out)
    torch.ops.pyfp8gemm.fp8_gemm_nt(a_data, a_scale, b_data, b_scale, out)
    return out


def _operand_names(a, b):
    """How the messages name a's and b's data and scales (FP8Tensor or (data, scale) pair)."""
    names = []
    for name, operand in (("a", a), ("b", b)):
        if isinstance(operand, FP8Tensor):
            names += [f"{name}.data", f"{name}.scale"]
        else:
            names += [f"{name}[0] (data)", f"{name}[1] (scale)"]
    return tuple(names)


def _validate_nt(a, b, out):
    """The checks of fp8_gemm_nt that read only shapes and dtypes (what a traced call and the
    ops' fake implementations can check): returns (a_data, a_scale, b_data, b_scale)."""
    a_data, a_scale, a_data_name, a_scale_name = _unpack_operand("a", a, "1x128")
    b_data, b_scale, b_data_name, b_scale_name = _unpack_operand("b", b, "128x128")
    _check_out_1d2d(out)
    m, k = a_data.shape
    n, k_of_b = b_data.shape
    if k_of_b != k:
        _k_mismatch(a_data_name, k, b_data_name, b_data.shape)
    if not isinstance(a, FP8Tensor):
        _check_pair_scale_shape(a_scale_name, a_scale, m, k, "1x128", a_data_name)
    if not isinstance(b, FP8Tensor):
        _check_pair_scale_shape(b_scale_name, b_scale, n, k, "128x128", b_data_name)
    if out.shape != (m, n):
        checks.check_shape("out", out, (m, n), why=f"(M, N) from {a_data_name} (M, K) and "
                                                     f"{b_data_name} (N, K)")
    _check_int32_sizes(m, n, k, f"M (= {a_data_name}.shape[0])", f"N (= {b_data_name}.shape[0])",
                       f"K (= {a_data_name}.shape[1])")
    _check_alignment_rules(k, n, f"K (= {a_data_name}.shape[1])", f"N (= {b_data_name}.shape[0])")
    return a_data, a_scale, b_data, b_scale


def _check_out_1d2d(out) -> None:
    if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
        raise TypeError(f"out: expected dtype torch.bfloat16, got torch.float32: {_NO_C_WHY}")
    checks.check_tensor("out", out, dtypes=(torch.bfloat16,), ndim=2)


def _k_mismatch(a_data_name: str, k: int, b_data_name: str, b_shape) -> None:
    """Raise for a's K != b's K, saying that b is the (N, K) weight (and how to pass a
    transposed one)."""
    n, k_of_b = b_shape
    hint = (f"; {b_data_name} is the (N, K) weight, K-major (\"nt\": D = A @ B^T, as "
            f"torch.nn.Linear stores it)")
    if n == k:
        hint += (f"; b has shape {(n, k_of_b)} = (K, N): it looks transposed, pass the (N, K) "
                 f"weight itself (for an FP8Tensor w.t(), pass w; for plain data, "
                 f".t().contiguous() and transposed scales), or use pyfp8gemm.matmul(a, b), "
                 f"which takes the (K, N) view")
    raise ValueError(f"{a_data_name}.shape[1] and {b_data_name}.shape[1]: K must match, got "
                     f"{k} and {k_of_b}{hint}")


#: The smallest output tile any kernel config uses (for the tile count the kernel takes as int32).
_MIN_TILE_M, _MIN_TILE_N = 16, 16


def _check_int32_sizes(m: int, n: int, k: int, m_name: str, n_name: str, k_name: str) -> None:
    """Every size the kernel receives as int32: M, N, K, the K block count (< K) and the
    output tile count (the split-K whole-tile count is smaller)."""
    if m > checks.INT32_MAX or n > checks.INT32_MAX or k > checks.INT32_MAX:
        checks.check_int32_size(m_name, m)
        checks.check_int32_size(n_name, n)
        checks.check_int32_size(k_name, k)
    tiles = _ceil_div(m, _MIN_TILE_M) * _ceil_div(n, _MIN_TILE_N)
    if tiles > checks.INT32_MAX:
        checks.check_int32_size("the output tile count ceil(M/16) * ceil(N/16)", tiles,
                                why=f"M = {m}, N = {n}")


def _fp8_gemm_nt_checked(a, b, out, key) -> torch.Tensor:
    """fp8_gemm_nt with every check; remembers the call under `key` (unless None) when it
    needed no conversion."""
    if _b_is_per_row(b) and _dtype_of(out) != torch.bfloat16:
        return _fp8_gemm_nt_slow(a, b, out, None)
    a_data, a_scale, b_data, b_scale = _validate_nt(a, b, out)
    a_data_name, a_scale_name, b_data_name, b_scale_name = _operand_names(a, b)
    m = a_data.shape[0]

    # Device: one Hopper GPU (or the CPU: the reference backend) for everything.
    _check_devices(
        a_data_name, a_data,
        **{a_scale_name: a_scale, b_data_name: b_data, b_scale_name: b_scale, "out": out},
    )

    # Memory layouts TMA can use.
    a_data = _tma_ready(a_data_name, a_data, " (a is (M, K), K-major)")
    b_data = _tma_ready(
        b_data_name, b_data,
        " (b is the (N, K) weight, K-major; matmul() takes the transposed (K, N) view)",
    )
    out_2d = _tma_ready("out", out)
    if m == 0:
        return out

    a_scale_ready, b_scale_ready = _kernel_ready_scales(a_scale, b_scale)
    bound, device_index = _bind_and_run(a_data, a_scale_ready, b_data, b_scale_ready, out_2d)
    if (key is not None and a_scale_ready is a_scale and b_scale_ready is b_scale
            and getattr(bound, "cacheable", True)):
        _remember(_fast_nt, key, (bound, device_index))
    return out


# ---------------------------------------------------------------------------------------------
# matmul: torch's calling convention
# ---------------------------------------------------------------------------------------------


def _check_out_dtype(out_dtype) -> None:
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"out_dtype: expected a torch.dtype, got {type(out_dtype).__name__}")
    if out_dtype != torch.bfloat16:
        raise NotImplementedError(
            f"out_dtype: only torch.bfloat16 output is implemented for now, got {out_dtype}"
        )


def _check_float_input(name: str, x: torch.Tensor) -> None:
    """A plain tensor that matmul quantizes: bf16, fp16 or fp32 (an FP8 tensor without its
    scales cannot be used: its values mean nothing without them)."""
    if x.dtype in _FP8_DTYPES:
        raise TypeError(
            f"{name}: a bare {x.dtype} tensor has no scales; pass a pyfp8gemm.FP8Tensor, or a "
            f"bf16/fp16/fp32 tensor to quantize on the fly, or use fp8_gemm_nt((data, scale), ...)"
        )
    checks.check_tensor(name, x, dtypes=QUANTIZABLE_DTYPES)


def _weight_as_nk(b):
    """The (K, N) right operand as the kernel's (N, K) K-major E4M3 weight: (data, scale).

    * FP8Tensor that is the transposed view of an (N, K) weight (w.t()): its .t() is the
      original weight, contiguous: no copy.
    * FP8Tensor stored (K, N) row-major: 128x128 blocks transpose into 128x128 blocks, so the
      data and scales are transposed exactly, no requantization: one copy of K*N bytes.
    * plain tensor that is the transposed view of a contiguous (N, K) tensor: quantized as
      (N, K) straight away, no transpose copy.
    * any other plain (K, N) tensor, e.g. a contiguous one: quantized as it is (128x128 blocks
      of (K, N)), then the E4M3 result is transposed: the transpose copy costs K*N bytes, half
      of what transposing bf16 first would (and the result is the same, bit for bit: a block's
      amax and each element's rounding do not depend on the layout).
    """
    if isinstance(b, FP8Tensor):
        # Transposing the tensors directly (not through FP8Tensor.t(), which re-validates).
        data, scale = b.data.t(), b.scale.t()
        if data.is_contiguous():
            return data, scale
        return data.contiguous(), scale.contiguous()
    if b.t().is_contiguous():
        quantized = quantize(b.t(), "128x128")
        return quantized.data, quantized.scale
    quantized = quantize(b, "128x128").t()
    return quantized.data.contiguous(), quantized.scale.contiguous()


def matmul(
    a,
    b,
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``a @ b`` with FP8 tensor cores, torch-style: (..., M, K) @ (K, N) -> (..., M, N).

    Args:
        a: the activations: a bf16/fp16/fp32 tensor of shape (K,), (M, K) or (..., M, K)
            (leading dimensions are folded into M), quantized on the fly to E4M3 with 1x128
            scales; or a ``"1x128"`` FP8Tensor of shape (M, K).
        b: the (K, N) weight: a bf16/fp16/fp32 tensor, quantized on the fly with 128x128
            scales, or a ``"128x128"`` FP8Tensor. Weights are usually stored (N, K) (as in
            torch.nn.Linear); pass ``w.t()`` (or ``FP8Tensor.t()``): that transposed view is what
            the kernel reads, so it costs no copy, as with torch._scaled_mm. A contiguous
            (K, N) b works too, at the cost of one transpose copy of K*N bytes (after
            quantization, for a plain tensor).
        out: optional bf16 output of the result's shape, contiguous; written in place.
        out_dtype: torch.bfloat16 (the only output type implemented so far).

    Rules: K % 16 == 0 and N % 8 == 0 (TMA's 16-byte row alignment); a and b (and out) on one
    Hopper GPU. Quantizing on the fly adds a few small elementwise kernels per call; quantize
    weights once with ``pyfp8gemm.quantize(w, "128x128")`` to skip that for b.

    Returns:
        A bf16 tensor of shape (..., M, N) (or (N,) for a 1-D a): `out` if given.

    A repeated call with FP8Tensors a and b and the same tensors (pointers, shapes, strides,
    dtypes, devices; out or none) skips the checks and goes straight to the prebuilt launch
    (with out=None, after allocating the output).

    CPU tensors are computed by the CPU reference backend (slow, for tests) after the same
    checks as on the GPU. Under torch.compile the call becomes the custom ops
    torch.ops.pyfp8gemm.quantize (for float inputs) and torch.ops.pyfp8gemm.fp8_gemm.
    """
    if _is_compiling():
        return _matmul_traced(a, b, out, out_dtype)
    if type(a) is FP8Tensor and type(b) is FP8Tensor:
        a_data, a_scale, b_data, b_scale = a.data, a.scale, b.data, b.scale
        try:
            key = (
                a.granularity, b.granularity, out_dtype, device_info._num_sms_limit,
                a_data.data_ptr(), a_data.shape, a_data.is_contiguous(), a_data.dtype,
                a_data.device,
                a_scale.data_ptr(), a_scale.shape, a_scale.stride(), a_scale.dtype,
                a_scale.device,
                b_data.data_ptr(), b_data.shape, b_data.stride(), b_data.dtype, b_data.device,
                b_scale.data_ptr(), b_scale.shape, b_scale.stride(), b_scale.dtype,
                b_scale.device,
            ) + ((None,) if out is None else (
                out.data_ptr(), out.shape, out.is_contiguous(), out.dtype, out.device))
        except Exception:  # tensors without storage, or an `out` that is not a tensor
            key = None
        else:
            entry = _fast_matmul.get(key)
            if entry is not None:
                bound, device_index, out_shape, device = entry
                if out is None:
                    out = torch.empty(out_shape, dtype=torch.bfloat16, device=device)
                    bound = bound.with_out(out)
                _run(bound, device_index)
                return out
        return _matmul_checked(a, b, out, out_dtype, key)
    return _matmul_checked(a, b, out, out_dtype, None)


def _matmul_shapes(a, b):
    """matmul's operand checks that read only metadata (kinds, dtypes, granularities, ranks,
    K agreement, the int32 and TMA size rules): returns (leading_shape, M, K, N)."""
    if isinstance(a, FP8Tensor):
        if a.granularity != "1x128":
            raise ValueError(
                f"a: expected an FP8Tensor with granularity '1x128' (activations, one scale per "
                f"row per 128 K), got {a.granularity!r} (128x128 block scales are for the "
                f"weight b); quantize it with quantize(x, '1x128')"
            )
        leading_shape = tuple(a.shape[:-1])
        m, k = a.shape
    elif isinstance(a, torch.Tensor):
        _check_float_input("a", a)
        if a.dim() == 0:
            raise ValueError("a: expected a tensor of shape (K,), (M, K) or (..., M, K), got a "
                             "0-D tensor")
        # (K,) @ (K, N) -> (N,), as in torch: no M dimension in the result.
        leading_shape = tuple(a.shape[:-1])
        k = a.shape[-1]
        m = 1
        for size in leading_shape:
            m *= size
    else:
        raise TypeError(
            f"a: expected a torch.Tensor or a pyfp8gemm.FP8Tensor, got {type(a).__name__}"
        )
    if isinstance(b, FP8Tensor):
        if b.granularity != "128x128":
            raise ValueError(
                f"b: expected an FP8Tensor with granularity '128x128' (weights, one scale per "
                f"128x128 block), got {b.granularity!r} (1x128 scales are for the activations "
                f"a); quantize the weight with quantize(w, '128x128')"
            )
    elif isinstance(b, torch.Tensor):
        _check_float_input("b", b)
        if b.dim() != 2:
            raise ValueError(
                f"b: expected a 2-D (K, N) tensor, got shape {tuple(b.shape)} (batched or "
                f"1-D b is not supported)"
            )
    else:
        raise TypeError(
            f"b: expected a torch.Tensor or a pyfp8gemm.FP8Tensor, got {type(b).__name__}"
        )
    k_of_b, n = b.shape
    checks.check_same_size("K", "a.shape[-1]", k, "b.shape[0]", k_of_b)
    _check_int32_sizes(m, n, k, "M (= the product of a.shape[:-1])", "N (= b.shape[1])",
                       "K (= a.shape[-1])")
    _check_alignment_rules(k, n, "K (= a.shape[-1] = b.shape[0])", "N (= b.shape[1])")
    return leading_shape, m, k, n


def _matmul_checked(a, b, out, out_dtype, key) -> torch.Tensor:
    """matmul with every check; remembers the call under `key` (unless None: only FP8Tensor
    operands have one) when it needed no conversion or copy."""
    _check_out_dtype(out_dtype)

    # --- a: (..., M, K), remembered as its leading shape and a 2-D (M, K) operand ----------
    leading_shape, m, k, n = _matmul_shapes(a, b)
    a_device, b_device = a.device, b.device

    # --- devices and out ----------------------------------------------------------------------
    if a_device.type != "cpu":
        device_info.require_hopper(a_device, "a")
    if b_device != a_device:
        raise ValueError(f"b: expected the same device as a ({a_device}), got {b_device}")
    out_shape = leading_shape + (n,)
    if out is None:
        out = torch.empty(out_shape, dtype=torch.bfloat16, device=a_device)
    else:
        checks.check_tensor("out", out, dtypes=(torch.bfloat16,))
        if out.shape != out_shape:
            checks.check_shape("out", out, out_shape, why="a.shape[:-1] + (N,)")
        if out.device != a_device:
            raise ValueError(f"out: expected the same device as a ({a_device}), got {out.device}")
        if not out.is_contiguous():
            raise ValueError(
                f"out: expected a contiguous tensor, got strides {tuple(out.stride())}"
            )
    if m == 0:
        return out
    out_2d = _tma_ready("out", out.view(m, n))

    # --- operands in the kernel's form ------------------------------------------------------
    if isinstance(a, FP8Tensor):
        a_data = _tma_ready("a.data", a.data, " (a is (M, K), K-major)")
        a_scale = a.scale
    else:
        # reshape folds the leading dimensions (a view when a is contiguous); quantize writes
        # fresh contiguous E4M3 data and MN-major TMA-aligned scales.
        a_fp8 = quantize(a.reshape(m, k), "1x128")
        a_data, a_scale = a_fp8.data, a_fp8.scale
    b_data, b_scale = _weight_as_nk(b)
    b_data = _tma_ready("b", b_data)

    a_scale_ready, b_scale_ready = _kernel_ready_scales(a_scale, b_scale)
    bound, device_index = _bind_and_run(a_data, a_scale_ready, b_data, b_scale_ready, out_2d)
    # Remembered only if the kernel reads the caller's own memory: no copy of a's scales, of
    # b (a (K, N) FP8Tensor that is not the transposed view of an (N, K) weight) or its scales.
    if (key is not None and a_scale_ready is a_scale and getattr(bound, "cacheable", True)
            and b_data.data_ptr() == b.data.data_ptr()
            and b_scale_ready.data_ptr() == b.scale.data_ptr()):
        _remember(_fast_matmul, key, (bound, device_index, out.shape, out.device))
    return out


def _matmul_traced(a, b, out, out_dtype) -> torch.Tensor:
    """matmul under torch.compile / export: the metadata checks of _matmul_checked, then the
    custom ops (quantize for float inputs, fp8_gemm for the product), so that the graph holds
    no Python the compiler cannot see through."""
    _check_out_dtype(out_dtype)
    quantize_op = torch.ops.pyfp8gemm.quantize
    leading_shape, m, k, n = _matmul_shapes(a, b)
    if isinstance(a, FP8Tensor):
        a_data, a_scale = a.data, a.scale
    else:
        a_data, a_scale = quantize_op(a.reshape(m, k), "1x128")
    if isinstance(b, FP8Tensor):
        b_data, b_scale = b.data.t(), b.scale.t()
        if not b_data.is_contiguous():
            b_data, b_scale = b_data.contiguous(), b_scale.contiguous()
    elif b.t().is_contiguous():
        b_data, b_scale = quantize_op(b.t(), "128x128")
    else:
        b_data, b_scale = quantize_op(b, "128x128")
        b_data, b_scale = b_data.t().contiguous(), b_scale.t().contiguous()
    if b.device != a.device:
        raise ValueError(f"b: expected the same device as a ({a.device}), got {b.device}")
    result = torch.ops.pyfp8gemm.fp8_gemm(a_data, a_scale, b_data, b_scale)
    result = result.view(leading_shape + (n,))
    if out is None:
        return result
    checks.check_tensor("out", out, dtypes=(torch.bfloat16,))
    if out.shape != result.shape:
        checks.check_shape("out", out, result.shape, why="a.shape[:-1] + (N,)")
    out.copy_(result)
    return out
