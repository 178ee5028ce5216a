"""The fused quantization kernels under compute-sanitizer (memcheck / racecheck) on small odd
shapes: partial tiles, token padding, W^T.

    compute-sanitizer --tool memcheck python scripts/sanitize_quantize.py
"""
import torch

from pyfp8gemm.host import quantize_kernel, quantize_training as qt
from pyfp8gemm.host.fp8tensor import quantize

for dtype in (torch.bfloat16, torch.float32):
    w = torch.randn(272, 400, device="cuda").to(dtype)
    assert quantize_kernel.applies_128x128(w, transposed=True)
    qt.quantize_weight_and_transposed(w)
    quantize(torch.randn(129, 48, device="cuda").to(dtype), "128x128")
x = torch.randn(200, 272, device="cuda").to(torch.bfloat16)
assert quantize_kernel.applies(x)
qt.quantize_rowwise_and_transposed(x, pad_to=128)
qt.quantize_rowwise_and_transposed(x[:77], transposed=False)
qt.quantize_transposed(x[:5])
torch.cuda.synchronize()
print("quantize kernels ran")
