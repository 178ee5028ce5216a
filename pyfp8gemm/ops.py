"""pyfp8gemm's GEMMs and quantizer as torch custom ops: ``torch.ops.pyfp8gemm.*``.

Registered when ``pyfp8gemm`` is imported. Each op has a fake (meta) implementation, so
torch.compile, torch.export and FakeTensor tracing see its output shapes, strides and dtypes
without running it, and one real implementation for CPU and CUDA tensors (the eager path:
the kernels on a Hopper GPU, the reference backend on the CPU)::

    torch.ops.pyfp8gemm.fp8_gemm_nt(a_data, a_scale, b_data, b_scale, out) -> None   # mutates out
    torch.ops.pyfp8gemm.fp8_gemm(a_data, a_scale, b_data, b_scale) -> Tensor         # new bf16 (M, N)
    torch.ops.pyfp8gemm.quantize(x, granularity) -> (data, scale)

The public functions (pyfp8gemm.fp8_gemm_nt, matmul, quantize) call these ops only while
torch.compile / torch.export traces (``torch.compiler.is_compiling()``); in eager mode they
take their direct path, because a trip through the dispatcher costs more than the whole
direct call (docs/TORCH.md has the figures). So ``torch.compile(fullgraph=True)`` of a model
that calls ``pyfp8gemm.matmul`` traces with no graph break, and eager calls stay as cheap as
before.

Other modules register their ops the same way with `custom_op` (host/op_registry.py,
re-exported here): same namespace, a
fake implementation that checks shapes the way the eager path does, the eager function as the
real implementation (docs/TORCH.md, "Registering another op").
"""

from __future__ import annotations

import torch

from pyfp8gemm.host import fp8tensor, gemm
from pyfp8gemm.host.op_registry import NAMESPACE, custom_op, is_compiling

__all__ = ["NAMESPACE", "custom_op", "is_compiling", "fp8_gemm_nt", "fp8_gemm", "quantize"]

# ---------------------------------------------------------------------------------------------
# fp8_gemm_nt (in place) and fp8_gemm (functional): the dense 1D2D GEMM
# ---------------------------------------------------------------------------------------------


def _fp8_gemm_nt_fake(a_data, a_scale, b_data, b_scale, out) -> None:
    gemm._validate_nt((a_data, a_scale), (b_data, b_scale), out)
    return None


@custom_op("fp8_gemm_nt", mutates_args=("out",), fake=_fp8_gemm_nt_fake)
def fp8_gemm_nt(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                b_scale: torch.Tensor, out: torch.Tensor) -> None:
    """out = (a_data * a_scale) @ (b_data * b_scale)^T in bf16 (pyfp8gemm.fp8_gemm_nt with
    (data, scale) pairs): a (M, K) E4M3 with float32 (M, ceil(K/128)) scales, b (N, K) E4M3
    with float32 (ceil(N/128), ceil(K/128)) scales, out bf16 (M, N)."""
    gemm.fp8_gemm_nt((a_data, a_scale), (b_data, b_scale), out)


def _fp8_gemm_fake(a_data, a_scale, b_data, b_scale) -> torch.Tensor:
    out = a_data.new_empty((a_data.shape[0], b_data.shape[0]), dtype=torch.bfloat16)
    gemm._validate_nt((a_data, a_scale), (b_data, b_scale), out)
    return out


@custom_op("fp8_gemm", fake=_fp8_gemm_fake)
def fp8_gemm(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
             b_scale: torch.Tensor) -> torch.Tensor:
    """The functional fp8_gemm_nt: returns a new bf16 (M, N) tensor (what a traced
    pyfp8gemm.matmul calls)."""
    out = torch.empty((a_data.shape[0], b_data.shape[0]), dtype=torch.bfloat16,
                      device=a_data.device)
    gemm.fp8_gemm_nt((a_data, a_scale), (b_data, b_scale), out)
    return out


# ---------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------


def _quantize_fake(x, granularity):
    fp8tensor._check_quantize_args(x, granularity)
    rows, cols = x.shape
    data = torch.empty_like(x, dtype=torch.float8_e4m3fn, memory_format=torch.contiguous_format)
    if granularity == "1x128":
        scale = fp8tensor._empty_mn_major_tma_aligned(rows, fp8tensor._ceil_div(cols, 128),
                                                      x.device)
    else:
        scale = x.new_empty(fp8tensor.expected_scale_shape(rows, cols, granularity),
                            dtype=torch.float32)
    return data, scale


@custom_op("quantize", fake=_quantize_fake)
def quantize(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """pyfp8gemm.quantize as (data, scale): E4M3 data of x's shape and float32 scales (1x128:
    (rows, ceil(cols/128)) MN-major TMA-aligned; 128x128: contiguous (ceil(rows/128),
    ceil(cols/128)))."""
    q = fp8tensor.quantize(x, granularity)
    return q.data, q.scale
