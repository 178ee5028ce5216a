"""pyfp8gemm: DeepGEMM-class FP8 GEMMs for NVIDIA Hopper, written in Python.

Public API:
    quantize(x, granularity) -> FP8Tensor        E4M3 with "1x128" or "128x128" FP32 scales
    FP8Tensor                                     data + scale (+ layouts), .dequantize(), .t()
    to_mn_major_tma_aligned(scale)                the kernel's layout for 1x128 scales
    fp8_gemm_nt(a, b, out), matmul(a, b, ...)     the GEMMs (pyfp8gemm/host/gemm.py)
    set_num_sms(n), get_num_sms()                 SM budget (pyfp8gemm/host/device_info.py)
    pyfp8gemm.testing                             calc_diff, reference_gemm
    pyfp8gemm.ops                                 torch.ops.pyfp8gemm.* custom ops (torch.compile)
    pyfp8gemm.deep_gemm                           DeepGEMM drop-in (its SM90 names, conventions)

CPU tensors work everywhere (a slow reference backend, for tests); CUDA tensors need a Hopper GPU.

The GEMM and device-info modules import numba-cuda and cuda-bindings, which take a while to load,
so they are imported on first use (module __getattr__, PEP 562): `import pyfp8gemm` stays quick
and works on machines without a GPU.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version as _distribution_version

from pyfp8gemm import testing
from pyfp8gemm.host.fp8tensor import FP8Tensor, quantize, to_mn_major_tma_aligned
# The custom ops (torch.ops.pyfp8gemm.*) exist as soon as pyfp8gemm is imported: a traced
# pyfp8gemm.quantize / matmul / fp8_gemm_nt calls them. (Light: no numba, no CUDA.)
from pyfp8gemm import ops
from pyfp8gemm.host import gemm_1d1d as _gemm_1d1d_ops, grouped as _grouped_ops  # noqa: F401  (their ops)

try:
    __version__ = _distribution_version("pyfp8gemm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> the module that defines it, imported on first access.
_LAZY_EXPORTS = {
    "fp8_gemm_nt": "pyfp8gemm.host.gemm",
    "matmul": "pyfp8gemm.host.gemm",
    "set_num_sms": "pyfp8gemm.host.device_info",
    "get_num_sms": "pyfp8gemm.host.device_info",
    "fp8_gemm_nt_1d1d": "pyfp8gemm.host.gemm_1d1d",
    "k_grouped_fp8_gemm_nt_contiguous": "pyfp8gemm.host.gemm_1d1d",
    "quantize_transposed": "pyfp8gemm.host.quantize_training",
    "quantize_rowwise_and_transposed": "pyfp8gemm.host.quantize_training",
    "quantize_weight_and_transposed": "pyfp8gemm.host.quantize_training",
    "m_grouped_fp8_gemm_nt_contiguous": "pyfp8gemm.host.grouped",
    "m_grouped_fp8_gemm_nt_masked": "pyfp8gemm.host.grouped",
    "fp8_m_grouped_gemm_nt_masked": "pyfp8gemm.host.grouped",
    "get_mk_alignment_for_contiguous_layout": "pyfp8gemm.host.grouped",
    "set_mk_alignment_for_contiguous_layout": "pyfp8gemm.host.grouped",
    "get_m_alignment_for_contiguous_layout": "pyfp8gemm.host.grouped",
    "quantize_grouped": "pyfp8gemm.host.grouped",
    "warmup": "pyfp8gemm.warmup",
}


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pyfp8gemm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "FP8Tensor",
    "quantize",
    "to_mn_major_tma_aligned",
    "testing",
    "ops",
] + list(_LAZY_EXPORTS)
