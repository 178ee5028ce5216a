"""Speed regression suite for pyfp8gemm.fp8_gemm_nt (pytest-benchmark; needs a Hopper GPU).

Not part of the default test run (pyproject's testpaths is ["tests"]); run it by name:

    # save a baseline (in .benchmarks/, or where --benchmark-storage says)
    python -m pytest bench/test_regression.py --benchmark-autosave
    # later, after a change: compare with the latest saved run, fail if a median got 10% slower
    python -m pytest bench/test_regression.py --benchmark-compare --benchmark-compare-fail=median:10%

What is timed: one fp8_gemm_nt call followed by torch.cuda.synchronize(), so the wall-clock time
pytest-benchmark reads is the launch, the kernel and the wait for it. Before every round the
(untimed) setup flushes the L2 cache, so each call reads its inputs from HBM as it would in a
model. The first call (kernel compilation or a disk-cache load) and a few warm-up rounds happen
before timing. The tests never assert on speed: pytest-benchmark's --benchmark-compare-fail does
that, against a baseline taken on the same kind of GPU.

extra_info of each benchmark (in the saved JSON and in --benchmark-columns): the shape, the
device, `tflops` from pytest-benchmark's median (host sync included, so lower than the kernel's
own rate for small shapes) and `tflops_cuda_events`, the same median measured with CUDA events
the way `python -m bench --timing events` does (comparable with the CLI's tables).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from bench.inputs import make_gemm_inputs  # noqa: E402
from bench.metrics import calc_diff, tflops  # noqa: E402
from bench.shapes import Shape  # noqa: E402
from bench.timing import flush_l2, time_with_cuda_events  # noqa: E402


def _hopper_available() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
    except Exception:
        return False


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _hopper_available(), reason="needs an NVIDIA Hopper GPU (compute capability 9.0)"),
]

# A handful of representative shapes: decode-sized M (memory-bound), a mid-sized M, and two
# large compute-bound problems. Adding a shape is fine; renaming one breaks comparisons with
# saved baselines (pytest-benchmark matches benchmarks by test name).
REGRESSION_SHAPES = (
    Shape(64, 2112, 7168),
    Shape(128, 7168, 2048),
    Shape(4096, 4096, 7168),
    Shape(4096, 7168, 16384),
)

TIMED_ROUNDS = 100
WARMUP_ROUNDS = 10


@pytest.mark.benchmark(group="fp8_gemm_nt")
@pytest.mark.parametrize("shape", REGRESSION_SHAPES, ids=lambda shape: shape.label)
def test_fp8_gemm_nt_speed(benchmark, shape):
    import pyfp8gemm

    inputs = make_gemm_inputs(shape, seed=0)
    a = (inputs.a_fp8, inputs.a_scale)
    b = (inputs.b_fp8, inputs.b_scale)
    out = torch.empty((shape.m, shape.n), dtype=torch.bfloat16, device="cuda")

    def gemm_and_wait() -> None:
        pyfp8gemm.fp8_gemm_nt(a, b, out)
        torch.cuda.synchronize()

    def flush_and_wait() -> None:
        flush_l2()
        torch.cuda.synchronize()

    # The first call compiles or loads the kernel; it is checked and kept out of the timing.
    out.fill_(float("nan"))
    gemm_and_wait()
    difference = calc_diff(out.float(), inputs.reference)
    assert difference < 1e-3, f"wrong result at {shape.label}: calc_diff {difference:.2e}"

    benchmark.extra_info.update(
        shape=shape.label,
        m=shape.m,
        n=shape.n,
        k=shape.k,
        device=torch.cuda.get_device_name(),
        calc_diff=difference,
    )
    benchmark.pedantic(gemm_and_wait, setup=flush_and_wait, rounds=TIMED_ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    if benchmark.stats is None:  # --benchmark-disable: the call ran once, nothing was timed
        return
    median_seconds = benchmark.stats.stats.median
    benchmark.extra_info["tflops"] = round(tflops(shape, median_seconds * 1e3), 1)
    events_ms = time_with_cuda_events(lambda: pyfp8gemm.fp8_gemm_nt(a, b, out), warmup_ms=10, rep_ms=50)
    benchmark.extra_info["tflops_cuda_events"] = round(tflops(shape, events_ms), 1)
