"""Input checks shared by every public entry point.

Each helper checks one rule and raises with a message that names the argument and the rule, e.g.
``a: expected dtype torch.float8_e4m3fn, got torch.float16``. The convention:

* TypeError: the wrong kind of object, or the wrong dtype.
* ValueError: the right kind of object with the wrong rank, shape, layout, alignment or device.

The helpers only read tensor metadata (dtype, shape, strides, device, data pointer): none of them
touches tensor contents, so none of them synchronizes with the GPU.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

#: The two scale granularities: per row per 128 K (activations), per 128x128 block (weights).
GRANULARITIES = ("1x128", "128x128")

__all__ = [
    "check_tensor",
    "check_int32_size",
    "check_fp8_pair",
    "check_granularity",
    "check_same_device",
    "check_shape",
    "check_same_size",
    "check_multiple_of",
    "check_16_byte_aligned",
]


def _dtype_list(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d) for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    ndim: int | None = None,
) -> None:
    """`t` is a torch.Tensor (TypeError), of one of `dtypes` (TypeError), with `ndim` dims
    (ValueError)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_list(dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}"
        )


def check_granularity(name: str, granularity) -> None:
    """`granularity` is "1x128" or "128x128"."""
    if not isinstance(granularity, str):
        raise TypeError(
            f"{name}: expected one of {GRANULARITIES}, got {type(granularity).__name__} "
            f"{granularity!r}"
        )
    if granularity not in GRANULARITIES:
        raise ValueError(f"{name}: expected one of {GRANULARITIES}, got {granularity!r}")


def check_fp8_pair(name: str, operand, data_ndim: int, scale_ndim: int, *,
                   what: str = "a (data, scale) pair of tensors or a pyfp8gemm.FP8Tensor"):
    """`operand` is a (data, scale) pair: E4M3 data of `data_ndim` dimensions and float32
    scales of `scale_ndim`. Returns (data, scale, data_name, scale_name); `what` words the
    TypeError for anything else."""
    if not (isinstance(operand, (tuple, list)) and len(operand) == 2):
        raise TypeError(f"{name}: expected {what}, got {type(operand).__name__}")
    data, scale = operand
    data_name, scale_name = f"{name}[0] (data)", f"{name}[1] (scale)"
    check_tensor(data_name, data, dtypes=(torch.float8_e4m3fn,), ndim=data_ndim)
    check_tensor(scale_name, scale, dtypes=(torch.float32,), ndim=scale_ndim)
    return data, scale, data_name, scale_name


#: The largest size a kernel parameter (int32) can carry.
INT32_MAX = 2**31 - 1


def check_int32_size(name: str, value: int, *, why: str = "") -> None:
    """`value` fits the kernels' int32 parameters (sizes, counts, offsets): ctypes would
    otherwise wrap 2^31 to a negative number and 2^32 + 64 to 64 without a word."""
    if value > INT32_MAX:
        raise ValueError(
            f"{name} = {value} is too large: the kernels take sizes as int32 (at most "
            f"2^31 - 1 = {INT32_MAX}){'; ' + why if why else ''}"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    """All keyword-named tensors live on one device, e.g. check_same_device(a=a, b=b, out=out)."""
    items = list(tensors.items())
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected the same device as {first_name} ({first.device}), "
                f"got {t.device}"
            )


def check_shape(
    name: str, t, expected: Iterable[int | None], *, why: str | None = None
) -> None:
    """`t.shape` equals `expected`, where None matches any size. `why` says where the expected
    shape comes from, e.g. "(M, N) from a (M, K) and b (N, K)"."""
    expected = tuple(expected)
    shape = tuple(t.shape)
    matches = len(shape) == len(expected) and all(
        want is None or want == got for want, got in zip(expected, shape)
    )
    if not matches:
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected)
        shown += ",)" if len(expected) == 1 else ")"
        because = f" ({why})" if why else ""
        raise ValueError(f"{name}: expected shape {shown}{because}, got {shape}")


def check_same_size(what: str, name_a: str, size_a: int, name_b: str, size_b: int) -> None:
    """Two sizes that must agree, e.g. check_same_size("K", "a.shape[1]", 256, "b.shape[1]", 384)
    raises "a.shape[1] and b.shape[1]: K must match, got 256 and 384"."""
    if size_a != size_b:
        raise ValueError(f"{name_a} and {name_b}: {what} must match, got {size_a} and {size_b}")


def check_multiple_of(name: str, value: int, divisor: int, *, why: str | None = None) -> None:
    """`value` is a positive multiple of `divisor`, e.g. K % 16 == 0 for TMA's 16-byte rows."""
    if value <= 0 or value % divisor != 0:
        because = f" ({why})" if why else ""
        raise ValueError(
            f"{name}: expected a positive multiple of {divisor}{because}, got {value}"
        )


def check_16_byte_aligned(name: str, t: torch.Tensor) -> None:
    """The start address and every stride but the last are multiples of 16 bytes: what TMA
    needs from a global tensor."""
    if t.data_ptr() % 16 != 0:
        raise ValueError(
            f"{name}: expected a 16-byte aligned start address, got data_ptr() % 16 == "
            f"{t.data_ptr() % 16} (a sliced view? call .contiguous() on a fresh copy)"
        )
    itemsize = t.element_size()
    for dim in range(t.dim() - 1):
        stride_bytes = t.stride(dim) * itemsize
        # Size-1 dimensions too: a tensor map is built from every stride, used or not.
        if stride_bytes % 16 != 0:
            raise ValueError(
                f"{name}: expected dimension {dim}'s stride to be a multiple of 16 bytes "
                f"(TMA), got {t.stride(dim)} elements = {stride_bytes} bytes"
            )
