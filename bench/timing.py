"""Timing a GPU function: the median of many runs, the L2 cache flushed before each.

Three ways, chosen with `--timing`:

- "do_bench": triton.testing.do_bench(fn, warmup, rep, return_mode="median"). It zeroes a 256 MB
  buffer before every run (which flushes the H200's 60 MB L2), times each run with CUDA events
  and returns the median in milliseconds. This is how ../shared/ANCHORS.md's first table was
  measured: about 100 ms of back-to-back calls, so sustained clocks and the host's launch
  overhead are both in the number.
- "events": the same method without triton, written out below.
- "profiler": the kernels' own durations as the torch profiler (CUPTI) reports them, over a
  short burst of calls, each after an L2 flush. Host overhead is left out and the GPU stays at
  boost clock, like DeepGEMM's `bench_kineto`; ANCHORS.md's second table was measured this way.
  These numbers run higher than do_bench's: compare only numbers taken the same way.

"auto" picks "do_bench" when triton imports, else "events".

Every function here takes `fn`, a callable that launches the work on the current stream and
returns without synchronizing, and returns milliseconds per call.
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch

TIMING_METHODS = ("auto", "do_bench", "events", "profiler")

L2_FLUSH_BYTES = 256 * 1024 * 1024  # several times any Hopper L2 (H100: 50 MB, H200: 60 MB)

_l2_flush_buffer: torch.Tensor | None = None


def triton_is_available() -> bool:
    try:
        import triton.testing  # noqa: F401
    except Exception:
        return False
    return True


def resolve_timing_method(method: str) -> str:
    """Turn "auto" into the method that will actually run."""
    if method not in TIMING_METHODS:
        raise ValueError(f"unknown timing method {method!r}; known: {', '.join(TIMING_METHODS)}")
    if method == "auto":
        return "do_bench" if triton_is_available() else "events"
    if method == "do_bench" and not triton_is_available():
        raise RuntimeError("--timing do_bench needs triton (pip install triton); try --timing events")
    return method


def flush_l2() -> None:
    """Overwrite a buffer far larger than the L2, so the next kernel finds its inputs in HBM."""
    global _l2_flush_buffer
    if _l2_flush_buffer is None:
        _l2_flush_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    _l2_flush_buffer.zero_()


def interleaved_times(contenders: dict[str, Callable[[], object]], rounds: int,
                      warmup: int = 10) -> dict[str, list[float]]:
    """Each contender's time in every round (ms; CUDA events around one call, L2 flushed
    before it). Every round launches all contenders in rotating order, so that drift of the
    clock and power over the seconds of a run hits them alike (the method of the A/B scripts;
    compare medians, or per-round ratios). `warmup` calls of each first."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    torch.cuda.synchronize()
    events = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            flush_l2()
            start.record()
            contenders[name]()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: [s.elapsed_time(e) for s, e in ev] for name, ev in events.items()}


def time_with_do_bench(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def time_with_cuda_events(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    """do_bench's method, without triton: estimate, warm up, then time each run between events."""
    fn()
    torch.cuda.synchronize()

    # Estimate the time of one call (flush included) to turn milliseconds into run counts.
    estimate_start = torch.cuda.Event(enable_timing=True)
    estimate_end = torch.cuda.Event(enable_timing=True)
    estimate_start.record()
    for _ in range(5):
        flush_l2()
        fn()
    estimate_end.record()
    torch.cuda.synchronize()
    estimated_ms = max(estimate_start.elapsed_time(estimate_end) / 5, 1e-3)
    warmup_runs = max(1, int(warmup_ms / estimated_ms))
    timed_runs = max(1, int(rep_ms / estimated_ms))

    for _ in range(warmup_runs):
        fn()

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(timed_runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(timed_runs)]
    for start, end in zip(starts, ends):
        flush_l2()  # not timed: it runs before `start` is recorded
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in zip(starts, ends))


def _kernel_events(profile) -> list:
    """The GPU-side events (kernels, memsets, copies) of a finished torch.profiler run."""
    from torch.autograd import DeviceType

    return [event for event in profile.events() if event.device_type == DeviceType.CUDA]


def time_with_profiler(fn: Callable[[], object], warmup_ms: float, burst_calls: int = 30) -> float:
    """Median per-call GPU time of `fn`'s kernels over a burst, from the profiler's kernel records.

    Each call is preceded by an L2 flush; the flush's own kernels are recognised by name
    (profiled once on their own) and left out. When every call launches the same number of
    kernels, per-call times are the sums of consecutive kernels and the median is returned;
    otherwise the mean over the burst.
    """
    import warnings

    from torch.profiler import ProfilerActivity, profile

    # torch warns that each profiling cycle clears the last one's events; we read each at once.
    warnings.filterwarnings("ignore", message="Profiler clears events", category=UserWarning)

    # Warm up for about warmup_ms (JIT, autotuning, clocks).
    fn()
    torch.cuda.synchronize()
    warmup_start = torch.cuda.Event(enable_timing=True)
    warmup_end = torch.cuda.Event(enable_timing=True)
    warmup_start.record()
    fn()
    warmup_end.record()
    torch.cuda.synchronize()
    one_call_ms = max(warmup_start.elapsed_time(warmup_end), 1e-3)
    for _ in range(max(1, int(warmup_ms / one_call_ms))):
        fn()
    torch.cuda.synchronize()

    with profile(activities=[ProfilerActivity.CUDA]) as flush_only:
        flush_l2()
        torch.cuda.synchronize()
    flush_kernel_names = {event.name for event in _kernel_events(flush_only)}

    with profile(activities=[ProfilerActivity.CUDA]) as burst:
        for _ in range(burst_calls):
            flush_l2()
            fn()
        torch.cuda.synchronize()
    kernels = [event for event in _kernel_events(burst) if event.name not in flush_kernel_names]
    if not kernels:
        raise RuntimeError("the profiler recorded no kernels for this call")
    kernels.sort(key=lambda event: event.time_range.start)
    durations_ms = [event.time_range.elapsed_us() / 1e3 for event in kernels]

    if len(durations_ms) % burst_calls == 0:
        kernels_per_call = len(durations_ms) // burst_calls
        per_call = [
            sum(durations_ms[i : i + kernels_per_call]) for i in range(0, len(durations_ms), kernels_per_call)
        ]
        return statistics.median(per_call)
    return sum(durations_ms) / burst_calls


def make_timer(method: str, warmup_ms: float, rep_ms: float) -> Callable[[Callable[[], object]], float]:
    """A function fn -> milliseconds per call, for a resolved timing method."""
    if method == "do_bench":
        return lambda fn: time_with_do_bench(fn, warmup_ms, rep_ms)
    if method == "events":
        return lambda fn: time_with_cuda_events(fn, warmup_ms, rep_ms)
    if method == "profiler":
        return lambda fn: time_with_profiler(fn, warmup_ms)
    raise ValueError(f"unknown timing method {method!r}")
