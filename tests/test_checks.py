"""The shared input checks: each rule passes good input and names the argument and rule on bad."""

from __future__ import annotations

import pytest
import torch

from pyfp8gemm import quantize
from pyfp8gemm.host import checks


def test_check_tensor_accepts_and_rejects():
    x = torch.zeros(4, 8, dtype=torch.float16)
    checks.check_tensor("a", x, dtypes=(torch.float16,), ndim=2)
    with pytest.raises(TypeError, match=r"^a: expected a torch.Tensor, got list$"):
        checks.check_tensor("a", [[1.0]])
    with pytest.raises(TypeError, match=r"^a: expected dtype torch.float8_e4m3fn, got torch.float16$"):
        checks.check_tensor("a", x, dtypes=(torch.float8_e4m3fn,))
    with pytest.raises(TypeError, match="expected dtype torch.bfloat16 or torch.float32, got"):
        checks.check_tensor("out", x, dtypes=(torch.bfloat16, torch.float32))
    with pytest.raises(ValueError, match=r"^b: expected a 3-D tensor, got 2-D with shape \(4, 8\)$"):
        checks.check_tensor("b", x, ndim=3)


def test_check_granularity():
    checks.check_granularity("granularity", "1x128")
    checks.check_granularity("granularity", "128x128")
    with pytest.raises(ValueError, match="granularity: expected one of"):
        checks.check_granularity("granularity", "128x1")
    with pytest.raises(TypeError, match="granularity: expected one of"):
        checks.check_granularity("granularity", 128)


def test_check_int32_size():
    checks.check_int32_size("M", 2**31 - 1)
    for value in (2**31, 2**32 + 64):
        with pytest.raises(ValueError, match=rf"^M = {value} is too large: .*int32"):
            checks.check_int32_size("M", value)


def test_check_same_device():
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    checks.check_same_device(a=cpu, b=torch.ones(3))
    checks.check_same_device()
    with pytest.raises(ValueError, match=r"^out: expected the same device as a \(cpu\), got meta$"):
        checks.check_same_device(a=cpu, b=cpu, out=meta)


def test_check_shape():
    x = torch.zeros(4, 8)
    checks.check_shape("out", x, (4, 8))
    checks.check_shape("out", x, (None, 8))
    with pytest.raises(ValueError, match=r"^out: expected shape \(4, 9\) \(\(M, N\)\), got \(4, 8\)$"):
        checks.check_shape("out", x, (4, 9), why="(M, N)")
    with pytest.raises(ValueError, match=r"out: expected shape \(\*, 9\), got \(4, 8\)"):
        checks.check_shape("out", x, (None, 9))
    with pytest.raises(ValueError, match=r"expected shape \(4,\), got \(4, 8\)"):
        checks.check_shape("out", x, (4,))


def test_check_same_size():
    checks.check_same_size("K", "a.shape[1]", 256, "b.shape[1]", 256)
    with pytest.raises(ValueError, match=r"^a.shape\[1\] and b.shape\[1\]: K must match, got 256 and 384$"):
        checks.check_same_size("K", "a.shape[1]", 256, "b.shape[1]", 384)


def test_check_multiple_of():
    checks.check_multiple_of("K", 4096, 16)
    with pytest.raises(ValueError, match=r"^K: expected a positive multiple of 16 \(TMA\), got 100$"):
        checks.check_multiple_of("K", 100, 16, why="TMA")
    with pytest.raises(ValueError, match="N: expected a positive multiple of 8, got 0"):
        checks.check_multiple_of("N", 0, 8)


def test_check_16_byte_aligned():
    fp8 = torch.zeros(4, 64, dtype=torch.float8_e4m3fn)
    checks.check_16_byte_aligned("a", fp8)
    checks.check_16_byte_aligned("a", fp8[:, :32])              # 64-byte row stride
    with pytest.raises(ValueError, match="a: expected a 16-byte aligned start address"):
        checks.check_16_byte_aligned("a", fp8[:, 1:])
    odd_rows = torch.zeros(4, 40, dtype=torch.float8_e4m3fn)    # 40-byte rows
    with pytest.raises(ValueError, match=r"b: expected dimension 0's stride to be a multiple of 16 bytes \(TMA\), got 40 elements = 40 bytes"):
        checks.check_16_byte_aligned("b", odd_rows)
    bf16 = torch.zeros(4, 12, dtype=torch.bfloat16)             # 24-byte rows
    with pytest.raises(ValueError, match="out: expected dimension 0's stride .* 24 bytes"):
        checks.check_16_byte_aligned("out", bf16)
    checks.check_16_byte_aligned("out", torch.zeros(4, 16, dtype=torch.bfloat16))


def test_checks_read_no_tensor_data():
    # Meta tensors have no data: every metadata check must still work on them.
    meta = torch.empty(4, 64, dtype=torch.float8_e4m3fn, device="meta")
    checks.check_tensor("a", meta, dtypes=(torch.float8_e4m3fn,), ndim=2)
    checks.check_shape("a", meta, (4, 64))


def test_check_fp8_pair():
    data, scale = torch.zeros(4, 256, dtype=torch.float8_e4m3fn), torch.ones(4, 2)
    assert checks.check_fp8_pair("a", (data, scale), 2, 2)[2:] == ("a[0] (data)", "a[1] (scale)")
    with pytest.raises(TypeError, match=r"^b: expected a pair, got int$"):
        checks.check_fp8_pair("b", 3, 2, 2, what="a pair")
    with pytest.raises(TypeError, match=r"a\[1\] \(scale\)"):
        checks.check_fp8_pair("a", (data, scale.double()), 2, 2)
    with pytest.raises(ValueError, match=r"a\[0\] \(data\)"):
        checks.check_fp8_pair("a", (data, scale), 3, 2)
