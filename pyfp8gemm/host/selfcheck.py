"""The self-check `python -m pyfp8gemm` runs on a Hopper GPU: is the GEMM right here, how fast?

For a few shapes (a DeepSeek-V3 projection, a large square-ish one, a tiny one and an odd one
with tails in M, N and K) it:

1. makes random bf16 inputs x (M, K) and w (N, K) and quantizes them (x: 1x128, w: 128x128);
2. fills the output with NaN, so any element the kernel fails to write stays visible;
3. runs `fp8_gemm_nt` and compares the result, with DeepGEMM's calc_diff, against
   - the exact product of the dequantized FP8 inputs (`testing.reference_gemm`): a correct
     kernel differs only by bf16 output rounding, ~1e-6; the bar is 1e-5;
   - the fp32 product of the unquantized inputs: this includes the FP8 quantization error
     itself, ~7e-4 for random data; the bar is 1e-3.

Then it times 4096x4096x7168 with CUDA events (warm-up first, median of many calls) and prints
the TFLOPS it saw. The first call of each shape includes compiling (or loading from the disk
cache) its kernel; its time is shown separately.
"""

from __future__ import annotations

import statistics
import time
import traceback
from dataclasses import dataclass

import torch

from pyfp8gemm.host.fp8tensor import quantize
from pyfp8gemm.host.gemm import fp8_gemm_nt
from pyfp8gemm.host import device_info
from pyfp8gemm.testing import calc_diff, fp32_product, reference_gemm

__all__ = ["run_selfcheck", "CHECK_SHAPES", "TIMING_SHAPE"]

#: (M, N, K) shapes checked for correctness.
CHECK_SHAPES = (
    (128, 2112, 7168),   # DeepSeek-V3 fused QKV-A projection, a decode-sized batch
    (4096, 4096, 7168),  # a large GEMM: many tiles, every SM busy, multicast configs
    (7, 576, 576),       # tiny: one partial tile
    (333, 1000, 1040),   # odd: M, N and K all leave partial tiles (K = 8 * 128 + 16)
)
#: The shape whose speed is reported.
TIMING_SHAPE = (4096, 4096, 7168)

#: Pass marks (see the module docstring).
MAX_DIFF_VS_REFERENCE = 1e-5
MAX_DIFF_VS_FP32 = 1e-3

WARMUP_CALLS = 10
TIMED_CALLS = 50


@dataclass
class CheckResult:
    shape: tuple[int, int, int]
    diff_vs_fp32: float = float("nan")
    diff_vs_reference: float = float("nan")
    unwritten: int = -1          # outputs still NaN after the call
    first_call_s: float = float("nan")
    config: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return (
            not self.error
            and self.unwritten == 0
            and self.diff_vs_reference < MAX_DIFF_VS_REFERENCE
            and self.diff_vs_fp32 < MAX_DIFF_VS_FP32
        )


def _config_name(m: int, n: int, k: int) -> str:
    """The heuristic's choice for the shape, for the table (blank if it cannot be told)."""
    try:
        from pyfp8gemm.host.heuristics import choose_dense

        return choose_dense(m, n, k, device_info.get_num_sms()).name
    except Exception:
        return ""


def check_shape(m: int, n: int, k: int) -> CheckResult:
    """Run one shape; never raises (an exception becomes the result's error text)."""
    result = CheckResult((m, n, k), config=_config_name(m, n, k))
    try:
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        a, b = quantize(x, "1x128"), quantize(w, "128x128")
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")

        torch.cuda.synchronize()
        start = time.perf_counter()
        fp8_gemm_nt(a, b, out)
        torch.cuda.synchronize()
        result.first_call_s = time.perf_counter() - start

        result.unwritten = int(out.isnan().sum())
        result.diff_vs_reference = calc_diff(out, reference_gemm(a, b))
        result.diff_vs_fp32 = calc_diff(out, fp32_product(x, w))
    except Exception as error:  # report it, go on with the other shapes
        result.error = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return result


def measure_tflops(m: int, n: int, k: int) -> tuple[float, float]:
    """(median milliseconds, TFLOPS) of fp8_gemm_nt on random inputs, timed with CUDA events."""
    a = quantize(torch.randn(m, k, dtype=torch.bfloat16, device="cuda"), "1x128")
    b = quantize(torch.randn(n, k, dtype=torch.bfloat16, device="cuda"), "128x128")
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(WARMUP_CALLS):  # compile/load, and bring the clocks up
        fp8_gemm_nt(a, b, out)
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(TIMED_CALLS)
    ]
    for start, end in events:
        start.record()
        fp8_gemm_nt(a, b, out)
        end.record()
    torch.cuda.synchronize()
    milliseconds = statistics.median(start.elapsed_time(end) for start, end in events)
    tflops = 2 * m * n * k / (milliseconds * 1e-3) / 1e12
    return milliseconds, tflops


def _format_row(r: CheckResult) -> str:
    m, n, k = r.shape
    verdict = "PASS" if r.passed else "FAIL"
    return (
        f"{m:>6} {n:>6} {k:>6}  {r.diff_vs_fp32:>12.2e}  {r.diff_vs_reference:>12.2e}  "
        f"{r.unwritten:>9}  {r.first_call_s:>9.2f}s  {verdict:<4}  {r.config}"
    )


def run_selfcheck() -> int:
    """Check the GEMM on a few shapes and report its speed. Returns 0 if all pass, else 1."""
    if not torch.cuda.is_available() or not device_info.is_hopper():
        print("Self-check: needs a Hopper GPU (compute capability 9.0); none is current.")
        return 1
    index = torch.cuda.current_device()
    print(
        f"Self-check on {torch.cuda.get_device_name(index)} (cuda:{index}, "
        f"{device_info.get_num_sms()} SMs used): D = A @ B^T, E4M3 in (A 1x128, B 128x128 "
        f"scales), bf16 out."
    )
    print(
        f"Pass: calc_diff < {MAX_DIFF_VS_FP32:g} vs the fp32 product of the unquantized inputs, "
        f"< {MAX_DIFF_VS_REFERENCE:g} vs the exact product of the FP8 inputs, every output "
        f"written (the output starts as NaN)."
    )
    print()
    header = (
        f"{'M':>6} {'N':>6} {'K':>6}  {'diff vs fp32':>12}  {'diff vs fp8':>12}  "
        f"{'unwritten':>9}  {'1st call':>10}  {'':<4}  config"
    )
    print(header)
    print("-" * len(header))
    results = []
    for shape in CHECK_SHAPES:
        result = check_shape(*shape)
        results.append(result)
        print(_format_row(result), flush=True)
        if result.error:
            print(f"       error: {result.error}")

    all_passed = all(r.passed for r in results)
    print()
    m, n, k = TIMING_SHAPE
    try:
        milliseconds, tflops = measure_tflops(m, n, k)
        print(
            f"Speed: {m}x{n}x{k}: {milliseconds * 1e3:.1f} us per GEMM (median of {TIMED_CALLS}, "
            f"CUDA events, after {WARMUP_CALLS} warm-up calls) = {tflops:.0f} TFLOPS"
        )
    except Exception as error:
        traceback.print_exc()
        print(f"Speed: not measured ({type(error).__name__}: {error})")
        all_passed = False

    failed = sum(not r.passed for r in results)
    if all_passed:
        print(f"Self-check passed: {len(results)} of {len(results)} shapes correct.")
        return 0
    print(f"Self-check FAILED: {failed} of {len(results)} shapes wrong (see above).")
    return 1
