"""`linear(input, weight, bias=None)`: torch.nn.functional.linear with DeepSeek-V3's FP8 recipe
in the forward pass and in both gradients.

The three GEMMs of a Linear (T tokens, K = in_features, N = out_features):

=========  =============================  ==========================================  =========
product    math                            operands (FP8 E4M3, FP32 block scales)      GEMM
=========  =============================  ==========================================  =========
forward    y (T, N) = x (T, K) @ W^T       x 1x128 (per token per 128 K);              1D2D, bf16
                                           W 128x128
dgrad      dX (T, K) = dY (T, N) @ W       dY 1x128 (per token per 128 N);             1D2D, bf16
                                           W^T: W's 128x128 quantization transposed
wgrad      dW (N, K) = dY^T (N, T) @ X     dY^T and X^T 1x128 along the tokens          1D1D, FP32
=========  =============================  ==========================================  =========

* W is quantized once per weight update, not per call: the FP8 weight is cached against the
  parameter's ``_version`` (every in-place update, e.g. an optimizer step, bumps it), its data
  pointer, shape, dtype and device. W^T for the dgrad is the same 128x128 quantization
  transposed (128x128 blocks transpose exactly: no requantization); the kernel reads B K-major,
  so W^T is a (K, N) copy of the FP8 data, kept with the forward's cache entry. When the input
  needs a gradient, the fused kernel (Hopper, bf16 / float32 weight) writes W and W^T in one
  read of the weight; otherwise W^T is copied from W on the first backward.
* x is quantized in the forward pass both ways at once (rows for the forward GEMM, tokens for
  the wgrad, `quantize_rowwise_and_transposed`), and only the FP8 X^T is kept for the backward
  pass (1 byte per element instead of bf16's 2). dY is quantized both ways at once in the
  backward pass. Token counts that are not multiples of 16 are padded with zero tokens for the
  wgrad (TMA's 16-byte rows); the last 128-token scale block covers the real tokens only.
* The weight gradient is accumulated in FP32: into ``weight.main_grad`` when the parameter has
  one (Megatron's convention: the 1D1D GEMM adds into it in place, ``d = c = main_grad``, and
  the backward returns no weight gradient, or a zero one if the parameter has the
  ``grad_added_to_main_grad`` attribute, which is then set True); otherwise the FP32 product is
  returned from the backward as usual (cast to the weight's dtype) and autograd adds it into
  ``.grad``.

Dtypes as in torch.nn.functional.linear: the output (and dX) has the input's dtype; under
autocast (bf16 or fp16) the output has the autocast dtype. The GEMMs always write bf16
(forward, dgrad) or FP32 (wgrad) and the result is cast. The inputs are quantized from the
dtype they come in (an fp32 master weight is quantized from fp32, not from a bf16 copy).

Shapes: in_features and out_features must be multiples of 16 (K % 16 for the forward GEMM's
TMA rows, N % 16 for the dgrad's; the others follow). Any number of tokens, leading batch
dimensions, a 1-D input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from pyfp8gemm.host import checks
from pyfp8gemm.host.fp8tensor import FP8Tensor, quantize
from pyfp8gemm.host.quantize_training import (
    quantize_rowwise_and_transposed,
    quantize_weight_and_transposed,
)

__all__ = ["linear", "FEATURE_ALIGNMENT", "clear_weight_cache", "quantized_weight"]

#: in_features and out_features must be multiples of this (TMA's 16-byte rows of E4M3 in the
#: forward and dgrad GEMMs, whose K are in_features and out_features).
FEATURE_ALIGNMENT = 16

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# ---------------------------------------------------------------------------------------------
# The GEMMs (imported on first use: pyfp8gemm.host.gemm loads the kernel machinery lazily)
# ---------------------------------------------------------------------------------------------


def _gemm_1d2d(a, b, out: torch.Tensor) -> torch.Tensor:
    from pyfp8gemm.host.gemm import fp8_gemm_nt

    return fp8_gemm_nt(a, b, out)


def _gemm_1d1d(a, b, d: torch.Tensor, c) -> torch.Tensor:
    from pyfp8gemm.host.gemm_1d1d import fp8_gemm_nt_1d1d

    return fp8_gemm_nt_1d1d(a, b, d, c)


# ---------------------------------------------------------------------------------------------
# The weight cache: one quantization per weight update
# ---------------------------------------------------------------------------------------------


@dataclass
class _QuantizedWeight:
    key: tuple
    w: FP8Tensor                       # (N, K), 128x128: the forward's B operand
    wt: tuple | None = None            # (data (K, N) contiguous, scale (kbK, kbN) contiguous)

    def transposed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W^T as the dgrad GEMM's K-major (K, N) B operand: the 128x128 quantization
        transposed (exact), the E4M3 data copied once into (K, N) row-major."""
        if self.wt is not None:
            return self.wt
        wt = (self.w.data.t().contiguous(), self.w.scale.t().contiguous())
        if not torch.compiler.is_compiling():   # traced: no state outside the graph
            self.wt = wt
        return wt


_weight_cache = WeakTensorKeyDictionary()


def _weight_key(weight: torch.Tensor) -> tuple:
    return (weight._version, weight.data_ptr(), tuple(weight.shape), weight.dtype, weight.device)


def quantized_weight(weight: torch.Tensor, transposed: bool = False) -> _QuantizedWeight:
    """The 128x128 FP8 quantization of `weight`, from the cache if the weight has not changed
    since (same _version, data pointer, shape, dtype, device), else made and cached. With
    `transposed` (a dgrad will follow), a new entry also holds W^T, made in the same pass
    (`quantize_weight_and_transposed`); otherwise `transposed()` copies it on first use."""
    if torch.compiler.is_compiling():
        # Traced: the weight's quantization is part of the graph (the cache's weak dictionary
        # cannot be traced; a compiled step quantizes its weights on every call).
        return _QuantizedWeight(None, quantize(weight.detach(), "128x128"))
    key = _weight_key(weight)
    entry = _weight_cache.get(weight)
    if entry is None or entry.key != key:
        with torch.no_grad():
            if transposed:
                entry = _QuantizedWeight(key, *quantize_weight_and_transposed(weight.detach()))
            else:
                entry = _QuantizedWeight(key, quantize(weight.detach(), "128x128"))
        _weight_cache[weight] = entry
    return entry


def clear_weight_cache() -> None:
    """Forget every cached FP8 weight (the next call of each Linear quantizes its weight)."""
    _weight_cache.clear()


# ---------------------------------------------------------------------------------------------
# The autograd Function
# ---------------------------------------------------------------------------------------------


def _no_autocast(device_type: str):
    """The GEMMs' own numerics, whatever autocast says (the CPU backend uses bmm, which CPU
    autocast would run in bf16)."""
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _forward_gemm(x_rows: FP8Tensor, entry: _QuantizedWeight, tokens: int, n: int,
                  device) -> torch.Tensor:
    out = torch.empty((tokens, n), dtype=torch.bfloat16, device=device)
    if tokens:
        _gemm_1d2d(x_rows, entry.w, out)
    return out


class _FP8LinearFunction(torch.autograd.Function):
    """y (T, N) = x (T, K) @ W^T in FP8, with FP8 dgrad and wgrad (see the module docstring).
    Inputs: the 2-D input, the weight, the output dtype, whether the wgrad is needed."""

    @staticmethod
    def forward(ctx, x2, weight, out_dtype, needs_wgrad):
        device_type = x2.device.type
        with _no_autocast(device_type):
            entry = quantized_weight(weight, transposed=ctx.needs_input_grad[0])
            x_rows, x_t = quantize_rowwise_and_transposed(x2, transposed=needs_wgrad)
            out = _forward_gemm(x_rows, entry, x2.shape[0], weight.shape[0], x2.device)
        ctx.entry = entry
        ctx.x_t = x_t
        ctx.x_dtype = x2.dtype
        ctx.weight = weight if needs_wgrad else None
        ctx.shapes = (x2.shape[0], x2.shape[1], weight.shape[0])
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        tokens, k, n = ctx.shapes
        need_dx = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1] and ctx.x_t is not None
        grad_input = grad_weight = None
        device_type = grad_out.device.type
        with _no_autocast(device_type):
            dy = grad_out.reshape(tokens, n)
            if dy.dtype not in _FLOAT_DTYPES:
                dy = dy.float()
            dy_rows, dy_t = quantize_rowwise_and_transposed(
                dy, rowwise=need_dx, transposed=need_dw)
            if need_dx:
                grad_input = torch.empty((tokens, k), dtype=torch.bfloat16, device=dy.device)
                if tokens:
                    _gemm_1d2d(dy_rows, ctx.entry.transposed(), grad_input)
                grad_input = grad_input.to(ctx.x_dtype)
            if need_dw:
                grad_weight = _weight_gradient(ctx.weight, dy_t, ctx.x_t, n, k)
        ctx.x_t = None   # free the FP8 activations as soon as they are used
        return grad_input, grad_weight, None, None


def _weight_gradient(weight: torch.Tensor, dy_t: FP8Tensor, x_t: FP8Tensor, n: int, k: int):
    """dW = dY^T @ X on the 1D1D GEMM, FP32: into weight.main_grad (returns None, or a zero
    gradient for Megatron's grad_added_to_main_grad), or returned for autograd's .grad."""
    main_grad = getattr(weight, "main_grad", None)
    if main_grad is None:
        grad = torch.empty((n, k), dtype=torch.float32, device=dy_t.device)
        _gemm_1d1d(dy_t, x_t, grad, None)
        return grad if weight.dtype == torch.float32 else grad.to(weight.dtype)
    _check_main_grad(main_grad, weight)
    _gemm_1d1d(dy_t, x_t, main_grad, main_grad)   # main_grad += dY^T X, in place, FP32
    if hasattr(weight, "grad_added_to_main_grad"):
        weight.grad_added_to_main_grad = True
        # Megatron's DDP hooks expect a gradient here; it carries nothing (the real one is in
        # main_grad), zeros rather than uninitialized memory.
        return torch.zeros_like(weight)
    return None


def _check_main_grad(main_grad, weight: torch.Tensor) -> None:
    if not isinstance(main_grad, torch.Tensor):
        raise TypeError(f"weight.main_grad: expected a torch.Tensor (or None), got "
                        f"{type(main_grad).__name__}")
    if main_grad.dtype != torch.float32:
        raise TypeError(f"weight.main_grad: expected dtype torch.float32 (the weight gradient "
                        f"is accumulated in FP32), got {main_grad.dtype}")
    checks.check_shape("weight.main_grad", main_grad, weight.shape, why="the weight's shape")
    if main_grad.device != weight.device:
        raise ValueError(f"weight.main_grad: expected the weight's device ({weight.device}), "
                         f"got {main_grad.device}")
    if not main_grad.is_contiguous():
        raise ValueError(f"weight.main_grad: expected a contiguous tensor (the 1D1D GEMM "
                         f"accumulates into it in place), got strides {main_grad.stride()}")


# ---------------------------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------------------------


def _check_linear_args(input, weight, bias) -> None:
    checks.check_tensor("input", input, dtypes=_FLOAT_DTYPES)
    checks.check_tensor("weight", weight, dtypes=_FLOAT_DTYPES, ndim=2)
    if input.dim() == 0:
        raise ValueError("input: expected a tensor of shape (in_features,) or (..., in_features), "
                         "got a 0-D tensor")
    n, k = weight.shape
    if input.shape[-1] != k:
        raise ValueError(f"input: expected last dimension in_features = weight.shape[1] = {k}, "
                         f"got shape {tuple(input.shape)}")
    for name, size in (("in_features (weight.shape[1])", k), ("out_features (weight.shape[0])", n)):
        if size <= 0 or size % FEATURE_ALIGNMENT:
            raise ValueError(
                f"{name}: expected a positive multiple of {FEATURE_ALIGNMENT}, got {size} (the "
                f"FP8 GEMMs' TMA loads need 16-byte rows: in_features is the forward GEMM's K, "
                f"out_features the dgrad GEMM's K); keep this layer in torch.nn.Linear "
                f"(pyfp8gemm.nn.convert does)"
            )
    if bias is not None:
        checks.check_tensor("bias", bias, dtypes=_FLOAT_DTYPES)
        checks.check_shape("bias", bias, (n,), why="(out_features,)")
    checks.check_same_device(input=input, weight=weight, **({} if bias is None else {"bias": bias}))


def linear(input: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ weight^T + bias`` with FP8 GEMMs in the forward and backward passes: a drop-in
    for torch.nn.functional.linear on in_features, out_features multiples of 16.

    Args:
        input: (..., in_features) or (in_features,), bf16 / fp16 / fp32, CPU (reference
            backend) or a Hopper GPU.
        weight: (out_features, in_features), the high-precision weight (quantized to FP8
            128x128 once per update, see the module docstring). A ``main_grad`` attribute
            receives the FP32 weight gradient (Megatron's convention).
        bias: None or (out_features,).

    Returns:
        (..., out_features) in input's dtype (the autocast dtype under autocast).
    """
    _check_linear_args(input, weight, bias)
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        out_dtype = torch.get_autocast_dtype(device_type)
    else:
        if input.dtype != weight.dtype:
            raise RuntimeError(
                f"input and weight: expected the same dtype outside autocast (as "
                f"torch.nn.functional.linear), got {input.dtype} and {weight.dtype}"
            )
        out_dtype = input.dtype
    k = input.shape[-1]
    n = weight.shape[0]
    leading = tuple(input.shape[:-1])
    x2 = input.reshape(-1, k)

    grad_on = torch.is_grad_enabled()
    needs_wgrad = grad_on and weight.requires_grad
    if grad_on and (input.requires_grad or weight.requires_grad):
        out = _FP8LinearFunction.apply(x2, weight, out_dtype, needs_wgrad)
    else:
        with torch.no_grad(), _no_autocast(device_type):
            entry = quantized_weight(weight)
            x_rows, _ = quantize_rowwise_and_transposed(x2.detach(), transposed=False)
            out = _forward_gemm(x_rows, entry, x2.shape[0], n, input.device).to(out_dtype)
    out = out.reshape(*leading, n)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out
