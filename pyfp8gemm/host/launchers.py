"""Kernel launchers of the grouped and weight-gradient GEMM families, on validated tensors.

The public functions (host/grouped.py, host/gemm_1d1d.py) check their arguments, convert
layouts and dispatch CPU tensors to the reference backend; CUDA tensors in the layouts below
come here. Each launcher runs on torch's current stream, never synchronizes and allocates
nothing per call after the first (CUDA-graph capturable).

Kernel-ready layouts (what every launcher receives):
* FP8 data: float8_e4m3fn, contiguous, K-major, 16-byte aligned.
* 1x128 scales: float32, MN-major and TMA-aligned: a (rows, ceil(K/128)) view with strides
  (1, align(rows, 4)) (per group for 3-D operands: (G, rows, kb) with strides
  (kb * align(rows, 4), 1, align(rows, 4))).
* 128x128 scales: float32 contiguous (G, ceil(N/128), ceil(K/128)).
"""

from __future__ import annotations

import torch


def m_grouped_contiguous(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                         b_scale: torch.Tensor, d: torch.Tensor, m_indices: torch.Tensor,
                         expected_m: int, alignment: int) -> None:
    """d[rows of group g] = A[rows] @ B[g]^T (bf16), `m_indices` int32 (M_sum,) on the GPU: the
    group of each row, each group's segment starting at a multiple of `alignment`. The kernel
    reads the id at the first row of each of its BLOCK_M-row blocks (BLOCK_M <= alignment); a
    block whose id is -1 or not a group is written as zeros without loads."""
    from .launch import launch_grouped
    launch_grouped("m_grouped_contiguous", a_data, a_scale, b_data, b_scale, d, m_indices,
                   b_data.shape[0], expected_m, alignment)


def m_grouped_masked(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
                     b_scale: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor,
                     expected_m: int) -> None:
    """d[g, :masked_m[g]] = A[g, :masked_m[g]] @ B[g]^T (bf16); A (G, M_max, K), d (G, M_max, N),
    `masked_m` int32 (G,) on the GPU, read by the kernel only."""
    from .launch import launch_grouped
    launch_grouped("m_grouped_masked", a_data, a_scale, b_data, b_scale, d, masked_m,
                   b_data.shape[0], expected_m)


def gemm_1d1d(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
              b_scale: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None) -> None:
    """d = c + A @ B^T in FP32 (c None: d = A @ B^T; c may be d itself), both scales 1x128."""
    from .launch import launch_1d1d
    launch_1d1d(a_data, a_scale, b_data, b_scale, d, c)


def k_grouped(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor,
              b_scale: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None, ks: list[int],
              ks_tensor: torch.Tensor) -> None:
    """d[g] = c[g] + A_g @ B_g^T in FP32 for the concatenated K-major blocks A_g (M, k_g),
    B_g (N, k_g); scales 1x128 along K, MN-major over the concatenated K blocks. The first
    call per set of pointers and `ks` builds the groups' tensor-map table (a host-to-device
    copy): warm it up before CUDA-graph capture. `ks_tensor` is not read (`ks` says it all)."""
    from .launch import launch_1d1d
    launch_1d1d(a_data, a_scale, b_data, b_scale, d, c, "k_grouped", tuple(ks))
