"""`Linear`: torch.nn.Linear with FP8 forward, dgrad and wgrad; `convert`: swap a model's
eligible nn.Linear modules for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from pyfp8gemm.nn import functional as F_fp8

__all__ = ["Linear", "convert", "ConversionReport", "eligibility"]

logger = logging.getLogger("pyfp8gemm.nn")


class Linear(torch.nn.Linear):
    """A drop-in for torch.nn.Linear whose three GEMMs run in FP8 (DeepSeek-V3's recipe; see
    `pyfp8gemm.nn.functional.linear`).

    Same constructor (in_features, out_features, bias=True, device=None, dtype=None), same
    initialization, same parameters (`weight`, `bias`: the high-precision master copies, which
    the optimizer updates and `state_dict` saves), same state_dict keys: a torch.nn.Linear
    checkpoint loads into it and back. The FP8 weight is a cache, never saved: it is remade
    after each update of the weight (keyed on the parameter's version counter).

    in_features and out_features must be multiples of 16 (the FP8 GEMMs' TMA rows); other
    sizes raise at construction. A parameter with a ``main_grad`` attribute gets its FP32
    weight gradient accumulated there (Megatron's convention) instead of in ``.grad``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        reason = _shape_reason(in_features, out_features)
        if reason is not None:
            raise ValueError(f"pyfp8gemm.nn.Linear({in_features}, {out_features}): {reason}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F_fp8.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", fp8=True"

    @classmethod
    def from_linear(cls, module: torch.nn.Linear) -> "Linear":
        """A pyfp8gemm Linear sharing `module`'s parameters (the same Parameter objects, so an
        optimizer built before keeps working), hooks, attributes and training mode: `module`
        itself, its class changed. Raises ValueError if it is not eligible (see `eligibility`)."""
        reason = eligibility(module)
        if reason is not None:
            raise ValueError(f"cannot convert {module!r}: {reason}")
        module.__class__ = cls
        return module


def _shape_reason(in_features: int, out_features: int) -> str | None:
    bad = [f"{name} = {size}" for name, size in (("in_features", in_features),
                                                 ("out_features", out_features))
           if size <= 0 or size % F_fp8.FEATURE_ALIGNMENT]
    if bad:
        return (f"{' and '.join(bad)} not a positive multiple of {F_fp8.FEATURE_ALIGNMENT} "
                f"(the FP8 GEMMs' TMA loads need 16-byte rows)")
    return None


def eligibility(module) -> str | None:
    """None if `module` can become a pyfp8gemm Linear, else why not (one sentence)."""
    if isinstance(module, Linear):
        return "already a pyfp8gemm.nn.Linear"
    if type(module) is not torch.nn.Linear:
        if isinstance(module, torch.nn.Linear):
            return (f"a subclass of nn.Linear ({type(module).__qualname__}): its forward, or "
                    f"code that reads its weight directly (e.g. nn.MultiheadAttention's "
                    f"out_proj), would bypass the FP8 forward")
        return f"not an nn.Linear ({type(module).__qualname__})"
    reason = _shape_reason(module.in_features, module.out_features)
    if reason is not None:
        return reason
    weight = module.weight
    if weight.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"weight dtype {weight.dtype} (bf16, fp16 or fp32 master weights only)"
    if weight.device.type not in ("cpu", "cuda"):
        return f"weight on {weight.device} (CPU or a Hopper GPU only)"
    return None


@dataclass
class ConversionReport:
    """What `convert` did: `model` (the converted model: the same object unless the model
    itself was a converted Linear), `converted` (qualified names of the swapped modules) and
    `skipped` ({name: why} for every nn.Linear left alone)."""

    model: torch.nn.Module
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"pyfp8gemm.nn.convert: {len(self.converted)} Linear modules converted, "
                 f"{len(self.skipped)} left alone"]
        lines += [f"  left alone: {name or '<root>'}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def convert(model: torch.nn.Module, *,
            filter_fn: Callable[[str, torch.nn.Module], bool] | None = None) -> ConversionReport:
    """Swap every eligible torch.nn.Linear in `model` for a pyfp8gemm.nn.Linear, in place.

    Eligible: exactly torch.nn.Linear (not a subclass), in_features and out_features multiples
    of 16, bf16/fp16/fp32 weights on the CPU or a GPU, and ``filter_fn(name, module)`` true if
    given (e.g. ``lambda name, m: name != "lm_head"`` keeps the output head in high precision).
    A converted module keeps its Parameter objects (weights are shared, not copied: an
    optimizer made before still updates them), hooks, attributes and mode; its state_dict is
    unchanged.

    Returns a `ConversionReport` (.model, .converted, .skipped with the reason for each
    nn.Linear left alone); each skip is also logged at INFO level on the "pyfp8gemm.nn" logger.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    report = ConversionReport(model)
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear):
            continue
        reason = eligibility(module)
        if reason is None and filter_fn is not None and not filter_fn(name, module):
            reason = "excluded by filter_fn"
        if reason is None:
            Linear.from_linear(module)
            report.converted.append(name)
        else:
            report.skipped[name] = reason
            logger.info("pyfp8gemm.nn.convert: left %s alone: %s", name or "<root>", reason)
    return report
