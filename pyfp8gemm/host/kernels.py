"""Every kernel the library can launch, as compile specs: what `inspect`, warm-up and the
compare script enumerate, and what the launch core loads."""

from __future__ import annotations

import functools

from ..cache.compiler import KernelSpec
from ..device import gemm_1d1d, gemm_1d2d, quantize
from ..device.config import GemmConfig


def kernel_spec(cfg: GemmConfig) -> KernelSpec:
    """How to build the kernel of one configuration (for the compile cache and `inspect`):
    the family's factory, its declared parameters and which of them are tensor maps."""
    if cfg.scaling == "1d1d":
        make, params, tensormaps = gemm_1d1d.make_fp8_gemm_1d1d, gemm_1d1d.params_of(cfg), \
            gemm_1d1d.tensormap_params_of(cfg)
    else:
        make, params, tensormaps = gemm_1d2d.make_fp8_gemm_1d2d, gemm_1d2d.params_of(cfg), \
            gemm_1d2d.TENSORMAP_PARAMS
    return KernelSpec(name=cfg.name, make_kernel=functools.partial(make, cfg),
                      signature=tuple(t for _, t in params), threads=cfg.threads,
                      tensormap_params=tensormaps, config=cfg.__dict__.copy())


#: The fused quantization kernels (rowwise, transposed): both layouts, or one of them.
QUANTIZE_VARIANTS = ((True, True), (True, False), (False, True))


def quantize_kernel_spec(rowwise: bool, transposed: bool) -> KernelSpec:
    """The fused 1x128 quantization kernel (device/quantize.py) making the chosen layouts."""
    make = functools.partial(quantize.make_quantize_1x128, rowwise, transposed)
    name = make().__name__
    return KernelSpec(name=name, make_kernel=make, signature=tuple(t for _, t in quantize.PARAMS),
                      threads=quantize.THREADS,
                      config=dict(kind="quantize_1x128", rowwise=rowwise, transposed=transposed,
                                  smem_bytes=quantize.SMEM_BYTES))


#: The fused 128x128 quantization kernels (input dtype, with W^T).
QUANTIZE_128X128_VARIANTS = tuple((dtype, transposed) for dtype in quantize.BLOCK_DTYPES
                                  for transposed in (True, False))


def quantize_128x128_kernel_spec(dtype: str, transposed: bool) -> KernelSpec:
    """The fused 128x128 (weight) quantization kernel (device/quantize.py) for a bf16 or float32
    input, making W, or W and W^T."""
    make = functools.partial(quantize.make_quantize_128x128, dtype, transposed)
    name = make().__name__
    return KernelSpec(name=name, make_kernel=make,
                      signature=tuple(t for _, t in quantize.BLOCK_PARAMS),
                      threads=quantize.THREADS,
                      config=dict(kind="quantize_128x128", dtype=dtype, transposed=transposed,
                                  smem_bytes=quantize.block_smem_bytes(dtype, transposed)))


def all_kernel_specs() -> list[KernelSpec]:
    """One spec per distinct kernel the library can launch: every GEMM the heuristics can pick
    and the quantization kernels."""
    from .heuristics import all_configs
    return ([kernel_spec(cfg) for cfg in all_configs()]
            + [quantize_kernel_spec(*variant) for variant in QUANTIZE_VARIANTS]
            + [quantize_128x128_kernel_spec(*variant) for variant in QUANTIZE_128X128_VARIANTS])
