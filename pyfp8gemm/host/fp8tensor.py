"""FP8 tensors with fine-grained scales, and the quantizer that makes them.

The numerics follow DeepSeek-V3's FP8 recipe (see DESIGN.md):

* Every value is stored as E4M3 (``torch.float8_e4m3fn``, largest finite value 448).
* Every block of values has one FP32 *decode* scale: ``x ~= data * scale``.
* Activations use ``"1x128"`` blocks: one scale per row per 128 consecutive columns.
  Weights use ``"128x128"`` blocks: one scale per 128x128 tile.

How the scales are laid out in memory matters, because the GEMM kernel TMA-loads them:

* ``"1x128"``: the logical scale tensor has shape ``(rows, ceil(cols / 128))``. It is stored
  MN-major (the row index is the fast one) in a contiguous ``(ceil(cols / 128), align(rows, 4))``
  float32 buffer, so that one K block's scales for BLOCK_M consecutive rows are one contiguous,
  16-byte aligned run (TMA needs 16-byte aligned strides: 4 floats). ``FP8Tensor.scale`` is the
  ``(rows, ceil(cols / 128))`` view of that buffer with strides ``(1, align(rows, 4))``: exactly
  what DeepGEMM's ``get_mn_major_tma_aligned_tensor`` returns. The pad entries hold zeros.
* ``"128x128"``: shape ``(ceil(rows / 128), ceil(cols / 128))``, contiguous row-major.
  ``FP8Tensor.t()`` gives the transposed view without copying (data and scale both transposed).

Partial blocks (rows or columns not a multiple of 128) take their amax over the valid elements
only; the padding never reaches ``data``, which always has exactly the input's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyfp8gemm.host import checks, quantize_kernel

__all__ = [
    "FP8Tensor",
    "quantize",
    "to_mn_major_tma_aligned",
    "is_mn_major_tma_aligned",
    "GRANULARITIES",
    "BLOCK",
    "E4M3_MAX",
    "AMAX_MIN",
]

#: The two scale granularities: activations ("1x128") and weights ("128x128").
GRANULARITIES = checks.GRANULARITIES

#: Width (and, for weights, height) of one scaling block.
BLOCK = 128

#: Largest finite value of float8_e4m3fn. A block's amax is mapped onto it.
E4M3_MAX = 448.0

#: A block's amax is clamped to at least this before dividing by E4M3_MAX, so an all-zero block
#: gets a tiny positive scale (1e-4 / 448) instead of a division by zero. This is DeepGEMM's
#: choice (`.clamp(1e-4)` in its per_token_cast_to_fp8). It also means blocks whose amax is below
#: 1e-4 are quantized relative to 1e-4, i.e. with less precision than they could have: such
#: values are far below anything that matters next to the rest of a bf16 activation or weight.
AMAX_MIN = 1e-4

#: Input dtypes quantize() accepts.
QUANTIZABLE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

#: TMA needs 16-byte aligned global strides: 4 float32 scales.
_TMA_ALIGN_FLOATS = 4


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _align(n: int, alignment: int) -> int:
    return _ceil_div(n, alignment) * alignment


def _block_scales(amax: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Decode scales from per-block amax (float32) and per-block "all values finite" flags.

    scale = max(amax, AMAX_MIN) / E4M3_MAX, and NaN for any block holding a NaN or +-inf: its
    values then all decode to NaN, so nothing computed from them can look like a real number.
    """
    # Divide by a tensor, not a Python number: torch on CUDA turns "tensor / number" into a
    # multiplication by the rounded reciprocal, one ulp off the division the CPU does. A tensor
    # divisor gives the correctly rounded quotient on every device, so CPU and GPU agree bitwise.
    e4m3_max = torch.full((), E4M3_MAX, dtype=amax.dtype, device=amax.device)
    scale = amax.clamp_min(AMAX_MIN) / e4m3_max
    # A Python float in torch.where is a scalar operand: no tensor is made, no host sync.
    return torch.where(finite, scale, float("nan"))


def _to_e4m3(scaled: torch.Tensor) -> torch.Tensor:
    """Round float32 values (already divided by their scale) to E4M3, nearest-even.

    The clamp is a guard: x / (amax / 448) can come out a rounding error above 448. torch
    saturates such values today, but clamping keeps the result independent of that. NaN stays NaN.
    """
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


# --------------------------------------------------------------------------------------------
# The MN-major, TMA-aligned layout of 1x128 scales
# --------------------------------------------------------------------------------------------


def is_mn_major_tma_aligned(scale: torch.Tensor) -> bool:
    """True if `scale` (rows, kb) float32 has strides (1, align(rows, 4)) and a 16-byte
    aligned start, i.e. the layout the GEMM kernel TMA-loads activation scales from."""
    if not isinstance(scale, torch.Tensor) or scale.dim() != 2 or scale.dtype != torch.float32:
        return False
    if scale.numel() == 0:
        return True  # nothing to load; torch picks arbitrary strides for empty tensors
    rows = scale.shape[0]
    # Strides are compared even for size-1 dimensions: the kernel builds its tensor map from
    # align(rows, 4), whatever torch would consider equivalent.
    return (
        scale.stride() == (1, _align(rows, _TMA_ALIGN_FLOATS))
        and scale.data_ptr() % 16 == 0
    )


def _empty_mn_major_tma_aligned(rows: int, kb: int, device) -> torch.Tensor:
    """A zero-filled (rows, kb) float32 view of a contiguous (kb, align(rows, 4)) buffer."""
    storage = torch.zeros((kb, _align(rows, _TMA_ALIGN_FLOATS)), dtype=torch.float32, device=device)
    return storage[:, :rows].t()


def to_mn_major_tma_aligned(scale: torch.Tensor) -> torch.Tensor:
    """Return `scale` ((rows, kb) float32, any strides) in the MN-major TMA-aligned layout.

    The result has the same values and shape, strides (1, align(rows, 4)), and lives in a
    contiguous (kb, align(rows, 4)) buffer whose pad entries are zero. A tensor already laid out
    so is returned as is (no copy). Like DeepGEMM's get_mn_major_tma_aligned_tensor (2-D case).
    """
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale: expected a torch.Tensor, got {type(scale).__name__}")
    if scale.dtype != torch.float32:
        raise TypeError(f"scale: expected dtype torch.float32, got {scale.dtype}")
    if scale.dim() != 2:
        raise ValueError(f"scale: expected a 2-D (rows, kb) tensor, got shape {tuple(scale.shape)}")
    if is_mn_major_tma_aligned(scale):
        return scale
    rows, kb = scale.shape
    aligned = _empty_mn_major_tma_aligned(rows, kb, scale.device)
    aligned.copy_(scale)
    return aligned


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


def _quantize_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = x.shape
    kb = _ceil_div(cols, BLOCK)
    if quantize_kernel.applies(x):        # bf16 on a Hopper GPU: one fused kernel, same bits
        data = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
        scale = _empty_mn_major_tma_aligned(rows, kb, x.device)
        quantize_kernel.launch(x, rows=(data, scale))
        return data, scale
    # Zero-pad the last partial block: zeros never raise an amax, so it covers valid elements only.
    padded = F.pad(x.float(), (0, kb * BLOCK - cols))
    blocks = padded.reshape(rows, kb, BLOCK)

    amax = blocks.abs().amax(dim=2)                       # (rows, kb)
    finite = torch.isfinite(blocks).all(dim=2)            # (rows, kb)
    scale = _block_scales(amax, finite)

    data = _to_e4m3(blocks / scale.unsqueeze(2)).view(rows, kb * BLOCK)[:, :cols].contiguous()

    aligned_scale = _empty_mn_major_tma_aligned(rows, kb, x.device)
    aligned_scale.copy_(scale)
    return data, aligned_scale


def _quantize_128x128_fused(x: torch.Tensor, transposed: bool):
    """The fused kernel's (data, scale, (data_t, scale_t) or None) of x (N, K): W, and W^T
    with its scales (K, N) / (ceil(K/128), ceil(N/128)), all contiguous (the caller checked
    quantize_kernel.applies_128x128)."""
    rows, cols = x.shape
    rb, kb = _ceil_div(rows, BLOCK), _ceil_div(cols, BLOCK)
    data = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rb, kb, dtype=torch.float32, device=x.device)
    wt = None
    if transposed:
        wt = (torch.empty(cols, rows, dtype=torch.float8_e4m3fn, device=x.device),
              torch.empty(kb, rb, dtype=torch.float32, device=x.device))
    quantize_kernel.launch_128x128(x, data, scale, transposed=wt)
    return data, scale, wt


def _quantize_128x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = x.shape
    rb, kb = _ceil_div(rows, BLOCK), _ceil_div(cols, BLOCK)
    if quantize_kernel.applies_128x128(x):   # bf16 / fp32 on a Hopper GPU: one kernel, same bits
        return _quantize_128x128_fused(x, transposed=False)[:2]
    padded = F.pad(x.float(), (0, kb * BLOCK - cols, 0, rb * BLOCK - rows))
    tiles = padded.reshape(rb, BLOCK, kb, BLOCK)             # tile (i, j) is tiles[i, :, j, :]

    amax = tiles.abs().amax(dim=(1, 3))                   # (rb, kb)
    finite = torch.isfinite(tiles).all(dim=3).all(dim=1)  # (rb, kb)
    scale = _block_scales(amax, finite)

    scaled = tiles / scale.view(rb, 1, kb, 1)
    data = _to_e4m3(scaled).view(rb * BLOCK, kb * BLOCK)[:rows, :cols].contiguous()
    return data, scale.contiguous()


def _check_quantize_args(x, granularity) -> None:
    checks.check_tensor("x", x, dtypes=QUANTIZABLE_DTYPES, ndim=2)
    checks.check_granularity("granularity", granularity)


def quantize(x: torch.Tensor, granularity: str) -> "FP8Tensor":
    """Quantize a 2-D bf16/fp16/fp32 tensor (CPU or CUDA) to an E4M3 `FP8Tensor`.

    granularity: "1x128" (one scale per row per 128 columns: activations) or "128x128" (one scale
    per 128x128 block: weights).

    For every block: ``scale = max(amax, 1e-4) / 448`` where amax is the largest |x| over the
    block's valid elements (a partial last block ignores the padding), and
    ``data = round_to_nearest_even_e4m3(x / scale)`` with ``x / scale`` computed in float32.
    ``result.dequantize()`` gives ``data * scale`` back.

    Non-finite input: a block holding any NaN or +-inf gets a NaN scale and NaN data, so every
    element of it dequantizes to NaN and every GEMM output that depends on it is NaN. Nothing
    turns into a finite, wrong value silently.

    The work is a handful of vectorized torch ops on `x`'s device: no Python loop over blocks,
    no host synchronization. Under torch.compile it is the custom op
    torch.ops.pyfp8gemm.quantize (pyfp8gemm/ops.py).
    """
    _check_quantize_args(x, granularity)
    if torch.compiler.is_compiling():
        data, scale = torch.ops.pyfp8gemm.quantize(x, granularity)
        return FP8Tensor._unchecked(data, scale, granularity)
    if granularity == "1x128":
        data, scale = _quantize_1x128(x)
    else:
        data, scale = _quantize_128x128(x)
    return FP8Tensor(data, scale, granularity)


# --------------------------------------------------------------------------------------------
# FP8Tensor
# --------------------------------------------------------------------------------------------


def expected_scale_shape(rows: int, cols: int, granularity: str) -> tuple[int, int]:
    """Logical scale shape of a (rows, cols) tensor quantized with `granularity`."""
    if granularity == "1x128":
        return (rows, _ceil_div(cols, BLOCK))
    return (_ceil_div(rows, BLOCK), _ceil_div(cols, BLOCK))


class FP8Tensor:
    """A 2-D E4M3 tensor with its FP32 block scales: ``x ~= data * scale`` blockwise.

    Attributes:
        data: ``torch.float8_e4m3fn``, shape (rows, cols).
        scale: ``torch.float32`` logical scale view.
            "1x128": shape (rows, ceil(cols/128)), strides (1, align(rows, 4)) (MN-major,
            TMA-aligned; see the module docstring and `to_mn_major_tma_aligned`).
            "128x128": shape (ceil(rows/128), ceil(cols/128)); row-major from `quantize`,
            transposed after `.t()`.
        granularity: "1x128" or "128x128".

    The constructor checks dtypes, ranks, shapes, devices and the 1x128 scale layout, and raises
    TypeError / ValueError naming the argument otherwise. It never copies; pass a 1x128 scale of
    another layout through `to_mn_major_tma_aligned` first.
    """

    __slots__ = ("data", "scale", "granularity")

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, granularity: str):
        checks.check_granularity("granularity", granularity)
        checks.check_tensor("data", data, dtypes=(torch.float8_e4m3fn,), ndim=2)
        checks.check_tensor("scale", scale, dtypes=(torch.float32,), ndim=2)
        checks.check_same_device(data=data, scale=scale)
        rows, cols = data.shape
        checks.check_shape(
            "scale",
            scale,
            expected_scale_shape(rows, cols, granularity),
            why=f"the {granularity} scales of data with shape {(rows, cols)}",
        )
        if granularity == "1x128" and not is_mn_major_tma_aligned(scale):
            raise ValueError(
                f"scale: 1x128 scales must be MN-major and TMA-aligned, i.e. strides "
                f"{(1, _align(rows, _TMA_ALIGN_FLOATS))} and a 16-byte aligned start; got strides "
                f"{tuple(scale.stride())} (convert with pyfp8gemm.to_mn_major_tma_aligned(scale))"
            )
        self.data = data
        self.scale = scale
        self.granularity = granularity

    @classmethod
    def _unchecked(cls, data: torch.Tensor, scale: torch.Tensor, granularity: str) -> "FP8Tensor":
        """An FP8Tensor of parts known to be valid (a quantizer's output), without the checks
        (which read data pointers: not possible on the FakeTensors of a traced graph)."""
        self = object.__new__(cls)
        self.data = data
        self.scale = scale
        self.granularity = granularity
        return self

    # -- saving and loading -------------------------------------------------------------------

    def __reduce__(self):
        # Plain tensors and a string, rebuilt by _rebuild_fp8_tensor, which is on torch's
        # safe list: torch.load(path) (weights_only=True, the default) loads a saved FP8Tensor.
        # torch.save keeps each tensor's storage, offset and strides, so the 1x128 scale comes
        # back in its MN-major TMA-aligned layout.
        return (_rebuild_fp8_tensor, (self.data, self.scale, self.granularity))

    # -- plain properties ---------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def size(self, dim: int | None = None):
        return self.data.size() if dim is None else self.data.size(dim)

    def dim(self) -> int:
        return 2

    @property
    def ndim(self) -> int:
        return 2

    def __repr__(self) -> str:
        return (
            f"FP8Tensor(shape={tuple(self.shape)}, granularity={self.granularity!r}, "
            f"scale_shape={tuple(self.scale.shape)}, scale_strides={tuple(self.scale.stride())}, "
            f"device={self.device})"
        )

    # -- conversions --------------------------------------------------------------------------

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``data * scale`` as a new (rows, cols) tensor on the same device, computed in `dtype`
        (float32 by default; float64 makes the product exact). `dtype` must be a floating
        point dtype (an integer one would truncate the values)."""
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
        if not dtype.is_floating_point or dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise TypeError(
                f"dtype: expected a floating point dtype to dequantize into (torch.float32, "
                f"torch.float64, torch.bfloat16 or torch.float16), got {dtype} (an integer or "
                f"FP8 result would silently truncate data * scale)"
            )
        rows, cols = self.shape
        if self.granularity == "1x128":
            # Each scale covers 128 consecutive columns: repeat it along the columns.
            kb = self.scale.shape[1]
            per_element = (
                self.scale.to(dtype).unsqueeze(2).expand(rows, kb, BLOCK).reshape(rows, kb * BLOCK)
            )
        else:
            sr, sc = self.scale.shape
            per_element = (
                self.scale.to(dtype)[:, None, :, None]   # each scale covers a 128x128 tile
                .expand(sr, BLOCK, sc, BLOCK)
                .reshape(sr * BLOCK, sc * BLOCK)
            )
        return self.data.to(dtype) * per_element[:rows, :cols]

    def t(self) -> "FP8Tensor":
        """The transpose, as views of the same memory (128x128 only).

        A 128x128 block grid transposes into a 128x128 block grid, so (data.t(), scale.t()) is
        again a valid FP8Tensor. A 1x128 tensor does not: its transpose would need 128x1 blocks.
        """
        if self.granularity != "128x128":
            raise ValueError(
                f"t(): only 128x128 FP8Tensors can be transposed without requantizing; this one "
                f"is {self.granularity} (its transpose would need 128x1 blocks)"
            )
        return FP8Tensor(self.data.t(), self.scale.t(), self.granularity)

    @property
    def T(self) -> "FP8Tensor":
        return self.t()

    def to(self, device, non_blocking: bool = False) -> "FP8Tensor":
        """A copy on `device` (returns self if already there); layouts are preserved."""
        device = torch.device(device)
        if device == self.device:
            return self
        data = self.data.to(device, non_blocking=non_blocking)
        if self.granularity == "1x128":
            # .to() would compact the padded (1, align(rows, 4)) strides; lay the copy out again.
            scale = to_mn_major_tma_aligned(self.scale.to(device, non_blocking=non_blocking))
        else:
            # Dense tensors (row-major or a transposed view) keep their strides through .to().
            scale = self.scale.to(device, non_blocking=non_blocking)
        return FP8Tensor(data, scale, self.granularity)

    def cuda(self, device=None, non_blocking: bool = False) -> "FP8Tensor":
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to(device, non_blocking=non_blocking)

    def cpu(self) -> "FP8Tensor":
        return self.to("cpu")


def _rebuild_fp8_tensor(data: torch.Tensor, scale: torch.Tensor, granularity: str) -> FP8Tensor:
    """torch.load's way back to an FP8Tensor (see FP8Tensor.__reduce__): checked as any new
    FP8Tensor."""
    return FP8Tensor(data, scale, granularity)


# torch.load(weights_only=True), torch's default, accepts only safe-listed globals.
torch.serialization.add_safe_globals([_rebuild_fp8_tensor])


def unpack_operand(name: str, operand, granularity: str, role: str | None = None,
                   hint: str = ""):
    """(data, scale, data_name, scale_name) of a GEMM operand: an FP8Tensor or a (data, scale)
    pair.

    Checks the kind of object, dtypes and ranks, and the granularity of an FP8Tensor (`role`
    and `hint` word the message; each GEMM family passes its own). The scale shape of a pair is
    checked later, once M, N and K are known.
    """
    if isinstance(operand, FP8Tensor):
        if operand.granularity != granularity:
            if role is None:
                role = ("activations, one scale per row per 128 K" if granularity == "1x128"
                        else "weights, one scale per 128x128 block")
            raise ValueError(
                f"{name}: expected an FP8Tensor with granularity {granularity!r} ({role}), got "
                f"{operand.granularity!r}; quantize it with quantize(x, {granularity!r})"
                + hint
            )
        return operand.data, operand.scale, f"{name}.data", f"{name}.scale"
    return checks.check_fp8_pair(name, operand, 2, 2)
