"""Registering pyfp8gemm's torch custom ops: ``torch.ops.pyfp8gemm.<name>``.

The host modules that define public functions (host/grouped.py, host/gemm_1d1d.py) and
pyfp8gemm/ops.py (the dense GEMM and the quantizer) register their ops with `custom_op`, so the
host layer does not import the public API to do it. `pyfp8gemm.ops` re-exports these names.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

__all__ = ["NAMESPACE", "custom_op", "is_compiling"]

#: The torch.library namespace of every pyfp8gemm op: torch.ops.pyfp8gemm.<name>.
NAMESPACE = "pyfp8gemm"

#: True while torch.compile / torch.export traces (the public functions then call the ops).
is_compiling = torch.compiler.is_compiling


def custom_op(
    name: str,
    *,
    mutates_args: Iterable[str] | str = (),
    fake: Callable,
    device_types: Iterable[str] = ("cpu", "cuda"),
):
    """Decorator: register `impl` as ``torch.ops.pyfp8gemm.<name>`` with fake implementation
    `fake`; returns the op (a torch.library.CustomOpDef, callable like the function).

    The schema comes from `impl`'s type annotations (Tensor, Tensor | None, int, float, bool,
    str, list[int], ...; return None, Tensor or a tuple of Tensors). `impl` is the eager
    function on real tensors, the same one for every device type in `device_types` (the eager
    path itself chooses kernel or CPU backend). `fake` gets FakeTensors: it checks what can be
    checked from metadata and returns empty outputs of the right shape, dtype and strides (None
    for an op that only mutates). Name every mutated tensor argument in `mutates_args`.

        @custom_op("m_grouped_fp8_gemm_nt_masked", mutates_args=("d",), fake=_masked_fake)
        def _masked_op(a_data: Tensor, a_scale: Tensor, b_data: Tensor, b_scale: Tensor,
                       d: Tensor, masked_m: Tensor, expected_m: int) -> None:
            m_grouped_fp8_gemm_nt_masked((a_data, a_scale), (b_data, b_scale), d, masked_m,
                                         expected_m)
    """
    if isinstance(mutates_args, str):
        mutates_args = (mutates_args,)

    def register(impl: Callable):
        op = torch.library.custom_op(
            f"{NAMESPACE}::{name}", mutates_args=tuple(mutates_args),
            device_types=tuple(device_types),
        )(impl)
        op.register_fake(fake)
        return op

    return register
