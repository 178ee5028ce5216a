"""The GEMM implementations the benchmark puts side by side (the table's columns).

A provider turns one problem (bench.inputs.GemmInputs) into a `PreparedGemm`: a callable that
launches the GEMM into a preallocated bf16 output and returns it. Everything a provider needs
beforehand (other scale layouts, per-tensor quantization, the output buffer) happens in
`prepare`, outside the timed call, so that every column times the GEMM alone.

- pyfp8gemm          pyfp8gemm.fp8_gemm_nt((a, a_scale), (b, b_scale), out): the library under test.
- deepgemm           deep_gemm.fp8_gemm_nt, the same call, when `import deep_gemm` works.
- cublas-blockwise   torch._scaled_mm with 1x128 / 128x128 scales (cuBLASLt, CUDA >= 12.9).
- cublas-tensorwise  torch._scaled_mm with one scale per tensor: plain FP8, no fine-grained scales.
- torch-bf16         torch.matmul in bf16 (cuBLAS).

How torch._scaled_mm recognises block-wise scaling (aten/src/ATen/native/cuda/ScaledBlas.cpp,
`is_blockwise_1x128_scaling` / `is_blockwise_128x128_scaling`, checked on (a, scale_a) and on
(b.t(), scale_b.t())):
- a (M, K) row-major, scale_a (M, ceil(K/128)) with strides exactly (1, M): column-major, no padding;
- b (K, N) column-major, i.e. our row-major (N, K) weights transposed, and scale_b.t() of shape
  (ceil(N/128), ceil(K/128)) with strides (ceil(K/128), 1), i.e. scale_b = w_scale.t();
- out_dtype bf16; K and N multiples of 16. We also require K % 128 == 0 (whole scale blocks).
  cuBLASLt itself then refuses some shapes (CUBLAS_STATUS_NOT_SUPPORTED, seen for M % 4 != 0):
  those cells are skipped, not failed.
Some torch builds want the weight scales' row stride padded to a multiple of 4 floats; prepare
tries the plain layout first and that one second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bench.inputs import GemmInputs, align, quantize_per_tensor
from bench.metrics import BF16, FP8_BLOCKWISE, FP8_TENSORWISE


class ShapeNotSupported(Exception):
    """This provider cannot run this shape (the message says which rule); the cell is skipped."""


@dataclass
class PreparedGemm:
    run: Callable[[], torch.Tensor]  # launches the GEMM on the current stream, returns `output`
    output: torch.Tensor  # (M, N) bf16, written by every run


class Provider:
    key = ""  # what --providers takes
    name = ""  # what the table and plot show
    operand_format = FP8_BLOCKWISE  # decides the bytes counted for GB/s
    description = ""

    def unavailable_reason(self) -> str | None:
        """None if the provider can run here, else a short reason (e.g. an import error)."""
        return None

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        raise NotImplementedError


def _empty_output(inputs: GemmInputs) -> torch.Tensor:
    m, n, _ = inputs.shape
    return torch.empty((m, n), dtype=torch.bfloat16, device=inputs.a_fp8.device)


def _prepare_nt_call(gemm, inputs: GemmInputs) -> PreparedGemm:
    """`gemm((a, a_scale), (b, b_scale), out)` in DeepGEMM's fp8_gemm_nt convention."""
    a = (inputs.a_fp8, inputs.a_scale)
    b = (inputs.b_fp8, inputs.b_scale)
    out = _empty_output(inputs)

    def run() -> torch.Tensor:
        gemm(a, b, out)
        return out

    return PreparedGemm(run, out)


def _require_scaled_mm_alignment(inputs: GemmInputs) -> None:
    _, n, k = inputs.shape
    if k % 16 or n % 16:
        raise ShapeNotSupported("torch._scaled_mm needs N and K to be multiples of 16")


class Pyfp8gemmProvider(Provider):
    key = "pyfp8gemm"
    name = "pyfp8gemm"
    description = "pyfp8gemm.fp8_gemm_nt, 1x128 / 128x128 scales (the library under test)"

    def unavailable_reason(self) -> str | None:
        try:
            import pyfp8gemm
        except Exception as error:  # the library is young: any import failure just hides the column
            return f"import pyfp8gemm failed: {type(error).__name__}: {error}"
        if not hasattr(pyfp8gemm, "fp8_gemm_nt"):
            return "pyfp8gemm has no fp8_gemm_nt yet"
        return None

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        import pyfp8gemm

        # The kernel's rules (docs/INTERFACES.md): TMA needs 16-byte rows of A, B (K e4m3 bytes)
        # and D (N bf16 values).
        _, n, k = inputs.shape
        if k % 16 or n % 8:
            raise ShapeNotSupported("pyfp8gemm needs K % 16 == 0 and N % 8 == 0 (16-byte TMA rows)")
        return _prepare_nt_call(pyfp8gemm.fp8_gemm_nt, inputs)


class DeepGemmProvider(Provider):
    key = "deepgemm"
    name = "DeepGEMM"
    description = "deep_gemm.fp8_gemm_nt (SM90 1D2D kernel), 1x128 / 128x128 scales"

    def unavailable_reason(self) -> str | None:
        try:
            import deep_gemm
        except Exception as error:
            return f"import deep_gemm failed: {type(error).__name__}: {error}"
        if not (hasattr(deep_gemm, "fp8_gemm_nt") or hasattr(deep_gemm, "gemm_fp8_fp8_bf16_nt")):
            return "deep_gemm has neither fp8_gemm_nt nor gemm_fp8_fp8_bf16_nt"
        return None

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        import deep_gemm

        # Current DeepGEMM calls it fp8_gemm_nt; releases before mid-2025 gemm_fp8_fp8_bf16_nt.
        gemm = getattr(deep_gemm, "fp8_gemm_nt", None) or deep_gemm.gemm_fp8_fp8_bf16_nt
        # The activation scales are already MN-major and TMA-aligned, as DeepGEMM wants them on
        # SM90, so it does no layout work inside the timed call.
        return _prepare_nt_call(gemm, inputs)


class CublasBlockwiseProvider(Provider):
    key = "cublas-blockwise"
    name = "cuBLAS block-wise"
    description = "torch._scaled_mm with 1x128 / 128x128 scales (cuBLASLt)"

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        _require_scaled_mm_alignment(inputs)
        if inputs.shape.k % 128:
            raise ShapeNotSupported("cuBLAS block-wise scaling needs K to be a multiple of 128")
        a = inputs.a_fp8  # (M, K) row-major
        b = inputs.b_fp8.t()  # (K, N) column-major
        # (M, K/128) with strides (1, M): our scales are (1, align(M, 4)), so repack when M % 4 != 0.
        scale_a = inputs.a_scale.t().contiguous().t()
        out = _empty_output(inputs)

        first_error: Exception | None = None
        for scale_b in self._weight_scale_layouts(inputs.b_scale):

            def run(scale_b=scale_b) -> torch.Tensor:
                torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=torch.bfloat16, out=out)
                return out

            try:
                run()  # torch checks the scale layouts on the host, before launching
            except (RuntimeError, ValueError) as error:  # torch's TORCH_CHECK / TORCH_CHECK_VALUE
                first_error = first_error or error
                continue
            return PreparedGemm(run, out)
        assert first_error is not None
        if "CUBLAS_STATUS_NOT_SUPPORTED" in str(first_error):
            # torch accepted the layouts, cuBLASLt has no kernel: with torch 2.11 / CUDA 13 on an
            # H200 this happens when M % 4 != 0 (M = 1, 330, 333 failed; 8, 100, 332 ran).
            raise ShapeNotSupported(
                "cuBLASLt has no block-wise kernel for this shape (CUBLAS_STATUS_NOT_SUPPORTED; seen for M % 4 != 0)"
            )
        raise first_error

    @staticmethod
    def _weight_scale_layouts(w_scale: torch.Tensor):
        """scale_b = w_scale.t(); first as is, then with w_scale's rows padded to 4 floats."""
        yield w_scale.t()
        rows, cols = w_scale.shape
        if cols % 4:
            padded = torch.empty((rows, align(cols, 4)), dtype=w_scale.dtype, device=w_scale.device)
            padded[:, :cols] = w_scale
            yield padded[:, :cols].t()


class CublasTensorwiseProvider(Provider):
    key = "cublas-tensorwise"
    name = "cuBLAS per-tensor"
    operand_format = FP8_TENSORWISE
    description = "torch._scaled_mm with one fp32 scale per tensor (cuBLASLt): no fine-grained scaling"

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        _require_scaled_mm_alignment(inputs)
        a, scale_a = quantize_per_tensor(inputs.a_bf16)
        w, scale_b = quantize_per_tensor(inputs.b_bf16)
        b = w.t()  # (K, N) column-major
        out = _empty_output(inputs)

        def run() -> torch.Tensor:
            torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=torch.bfloat16, out=out)
            return out

        return PreparedGemm(run, out)


class TorchBf16Provider(Provider):
    key = "torch-bf16"
    name = "bf16 matmul"
    operand_format = BF16
    description = "torch.matmul in bf16 (cuBLAS), the unquantized inputs"

    def prepare(self, inputs: GemmInputs) -> PreparedGemm:
        a = inputs.a_bf16
        b = inputs.b_bf16.t()
        out = _empty_output(inputs)

        def run() -> torch.Tensor:
            torch.matmul(a, b, out=out)
            return out

        return PreparedGemm(run, out)


# Column order: the library, its FP8 peers, then the references without block scaling.
ALL_PROVIDERS: tuple[Provider, ...] = (
    Pyfp8gemmProvider(),
    DeepGemmProvider(),
    CublasBlockwiseProvider(),
    CublasTensorwiseProvider(),
    TorchBf16Provider(),
)
PROVIDERS_BY_KEY: dict[str, Provider] = {provider.key: provider for provider in ALL_PROVIDERS}
PROVIDER_NAMES: dict[str, str] = {provider.key: provider.name for provider in ALL_PROVIDERS}
BASELINE_KEY = "cublas-blockwise"


def select_providers(keys: list[str] | None) -> list[Provider]:
    """The providers named (in table order), or all of them."""
    if not keys:
        return list(ALL_PROVIDERS)
    unknown = [key for key in keys if key not in PROVIDERS_BY_KEY]
    if unknown:
        raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS_BY_KEY)}")
    return [provider for provider in ALL_PROVIDERS if provider.key in keys]
