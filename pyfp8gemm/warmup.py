"""Warm-up: compile ahead of time every kernel pyfp8gemm can pick for given weight shapes.

    import pyfp8gemm
    pyfp8gemm.warmup([(2112, 7168), (7168, 2048)], m_range=(1, 16384), jobs=8)
    pyfp8gemm.warmup(model)                     # the (N, K) of every eligible nn.Linear

    python -m pyfp8gemm warmup --shapes 2112,7168 7168,2048 --m-range 1:16384 --jobs 8

For each weight (N, K) and each M in the range, the heuristic picks a kernel; the distinct
kernels (a few dozen, whatever the range: M matters only through the configuration it picks)
are compiled into the disk cache in parallel processes. Needs no GPU: the number of SMs the
heuristic plans for is an option (132, the H100/H200 SXM, by default), so a build machine can
fill a cache for a fleet (then `python -m pyfp8gemm cache export/import`). With the cache warm,
`PYFP8GEMM_JIT=error` makes any kernel that is still missing an error instead of a compile on the
hot path.

Which kernels a shape needs comes from spec providers (SPEC_PROVIDERS): functions
``(shapes, ms, num_sms) -> iterable of KernelSpec``. The dense GEMM's is built in; other op
families add theirs with ``register_spec_provider``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["warmup", "WarmupResult", "SPEC_PROVIDERS", "register_spec_provider",
           "kernel_specs", "parse_shapes", "parse_m_range", "DEFAULT_NUM_SMS", "DEFAULT_M_RANGE"]

DEFAULT_NUM_SMS = 132           # H100 / H200 SXM
DEFAULT_M_RANGE = (1, 16384)

SpecProvider = Callable[[list, Sequence[int], int], Iterable]


def _kernel_specs_for(shapes: list[tuple[int, int]], ms: Sequence[int], num_sms: int) -> list:
    """The dense GEMM's kernels for weights `shapes` and token counts `ms`: the one place that
    names the heuristic and the spec factory (a rename there is a change here only)."""
    from .host.heuristics import choose_config
    from .host.kernels import kernel_spec
    from .host.problem import GemmProblem

    configs = set()
    for n, k in shapes:
        for m in ms:
            configs.add(choose_config(GemmProblem(m, n, k), num_sms).config)
    return [kernel_spec(cfg) for cfg in sorted(configs, key=lambda cfg: cfg.name)]


def _every_kernel_spec() -> list:
    """Every kernel that serves any shape (``--all``; not the grouped GEMMs' kernels compiled
    for one (N, G): those come from shapes and groups)."""
    from .host.kernels import all_kernel_specs

    return all_kernel_specs()


SPEC_PROVIDERS: list[SpecProvider] = [_kernel_specs_for]


def grouped_spec_provider(groups: Sequence[int]) -> SpecProvider:
    """The MoE grouped GEMMs' kernels (m-grouped contiguous and masked) for experts of weight
    (N, K), `groups` experts per GPU, M read as the expected rows per expert."""
    groups = tuple(int(g) for g in groups)
    if not groups or min(groups) < 1:
        raise ValueError(f"groups must be positive ints, got {groups!r}")

    def provider(shapes, ms, num_sms):
        from .host.heuristics import choose_config
        from .host.kernels import kernel_spec
        from .host.problem import GemmProblem

        configs = set()
        for n, k in shapes:
            for g in groups:
                for m in ms:
                    for kind, rows in (("m_grouped_contiguous", m * g), ("m_grouped_masked", m)):
                        problem = GemmProblem(rows, n, k, kind, g, expected_m=m)
                        configs.add(choose_config(problem, num_sms).config)
        return [kernel_spec(cfg) for cfg in sorted(configs, key=lambda cfg: cfg.name)]
    return provider


def wgrad_spec_provider(shapes, ms, num_sms):
    """The weight-gradient kernels of weights (N, K) trained on M tokens: dW (N, K) = dY^T X,
    a 1D1D (N, K, M) GEMM in FP32, with and without accumulation (main_grad), and the fused
    quantization kernels that make its operands."""
    from .host.heuristics import choose_config
    from .host.kernels import kernel_spec
    from .host.problem import GemmProblem

    from .host.kernels import QUANTIZE_VARIANTS, quantize_kernel_spec

    configs = {choose_config(GemmProblem(n, k, m, out_dtype="f32", accumulate=acc,
                                         separate_c=separate), num_sms).config
               for n, k in shapes for m in ms
               for acc, separate in ((False, False), (True, False), (True, True))}
    # and the fused quantization kernels of the training layers' activations and gradients
    return ([kernel_spec(cfg) for cfg in sorted(configs, key=lambda cfg: cfg.name)]
            + [quantize_kernel_spec(*variant) for variant in QUANTIZE_VARIANTS])


def register_spec_provider(provider: SpecProvider) -> SpecProvider:
    """Add an op family's ``(shapes, ms, num_sms) -> specs`` to warm-up (usable as decorator)."""
    if not callable(provider):
        raise TypeError(f"provider must be callable, got {type(provider).__name__}")
    if provider not in SPEC_PROVIDERS:
        SPEC_PROVIDERS.append(provider)
    return provider


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _weight_shapes_of_module(module) -> list[tuple[int, int]]:
    """(N, K) of every nn.Linear (or subclass, e.g. pyfp8gemm.nn.Linear) whose shape the
    kernels take (K % 16 == 0, N % 8 == 0)."""
    import torch

    shapes = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            n, k = sub.out_features, sub.in_features
            if k % 16 == 0 and n % 8 == 0:
                shapes.append((n, k))
    return shapes


def parse_shapes(shapes) -> list[tuple[int, int]]:
    """Weight shapes as a sorted, duplicate-free list of (N, K): from (N, K) pairs, "N,K"
    strings or a torch.nn.Module (its eligible nn.Linear layers)."""
    if hasattr(shapes, "modules") and callable(shapes.modules):
        return sorted(set(_weight_shapes_of_module(shapes)))
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Iterable):
        raise TypeError("shapes must be (N, K) pairs or an nn.Module, got "
                        f"{type(shapes).__name__}")
    result = set()
    for i, shape in enumerate(shapes):
        if isinstance(shape, str):
            shape = shape.replace("x", ",").split(",")
        try:
            n, k = (int(v) for v in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shapes[{i}] must be an (N, K) pair of integers, got {shape!r}") \
                from None
        if n < 1 or k < 1:
            raise ValueError(f"shapes[{i}] = ({n}, {k}): N and K must be >= 1")
        if k % 16 or n % 8:
            raise ValueError(f"shapes[{i}] = ({n}, {k}): the kernels need K % 16 == 0 and "
                             "N % 8 == 0 (16-byte rows of A/B and of the bf16 output)")
        result.add((n, k))
    return sorted(result)


def parse_m_range(m_range) -> range | list[int]:
    """M values: an int (1..M), an inclusive (lo, hi) pair, "lo:hi" / "M", a range, or any
    iterable of ints. Every M must be >= 1."""
    if isinstance(m_range, str):
        parts = m_range.split(":")
        try:
            bounds = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"m_range must look like 'LO:HI' or 'MAX', got {m_range!r}") \
                from None
        if len(bounds) not in (1, 2):
            raise ValueError(f"m_range must look like 'LO:HI' or 'MAX', got {m_range!r}")
        m_range = bounds[0] if len(bounds) == 1 else tuple(bounds)
    if isinstance(m_range, bool):
        raise TypeError("m_range must be an int, a (lo, hi) pair or an iterable of ints")
    if isinstance(m_range, int):
        m_range = (1, m_range)
    if isinstance(m_range, tuple) and len(m_range) == 2 and all(
            isinstance(v, int) for v in m_range):
        lo, hi = m_range
        if not 1 <= lo <= hi:
            raise ValueError(f"m_range ({lo}, {hi}) must satisfy 1 <= lo <= hi")
        return range(lo, hi + 1)
    if isinstance(m_range, range):
        ms = m_range
    elif isinstance(m_range, Iterable):
        ms = sorted({int(m) for m in m_range})
    else:
        raise TypeError("m_range must be an int, a (lo, hi) pair or an iterable of ints, got "
                        f"{type(m_range).__name__}")
    if len(ms) == 0 or min(ms) < 1:
        raise ValueError("m_range must hold at least one M, every M >= 1")
    return ms


def kernel_specs(shapes, m_range=DEFAULT_M_RANGE, *, num_sms: int = DEFAULT_NUM_SMS,
                 all_kernels: bool = False, providers: Sequence[SpecProvider] | None = None
                 ) -> list:
    """The distinct KernelSpecs warm-up would compile (sorted by name)."""
    if isinstance(num_sms, bool) or not isinstance(num_sms, int) or num_sms < 1:
        raise ValueError(f"num_sms must be a positive int, got {num_sms!r}")
    specs = {}
    if all_kernels:
        specs.update((spec.name, spec) for spec in _every_kernel_spec())
    if shapes is not None:
        weights, ms = parse_shapes(shapes), parse_m_range(m_range)
        for provider in (SPEC_PROVIDERS if providers is None else providers):
            specs.update((spec.name, spec) for spec in provider(weights, ms, num_sms))
    return [specs[name] for name in sorted(specs)]


# ---------------------------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------------------------


@dataclass
class WarmupResult:
    """What a warm-up did."""
    kernels: int                      # distinct kernels the shapes need
    compiled: int                     # compiled now
    cached: int                       # were in the cache already
    seconds: float
    cache_dir: str
    cache_entries: int
    cache_bytes: int
    failed: list[tuple[str, str]] = field(default_factory=list)   # (kernel, error)

    def __str__(self) -> str:
        line = (f"warm-up: {self.kernels} kernels ({self.compiled} compiled, {self.cached} "
                f"already cached) in {self.seconds:.1f} s; cache {self.cache_dir}: "
                f"{self.cache_entries} kernels, {self.cache_bytes / 2**20:.1f} MiB")
        for name, error in self.failed:
            line += f"\n  FAILED {name}: {error}"
        return line


def _use_cache_dir(path: str) -> None:
    """Worker initializer: compile into the parent's cache directory."""
    from .cache import store

    os.environ[store.CACHE_DIR_ENV] = path


def _compile_one(spec) -> tuple[str, float]:
    from .cache.compiler import compile_kernel

    start = time.perf_counter()
    compile_kernel(spec, jit="allow")   # warm-up compiles even under PYFP8GEMM_JIT=error
    return spec.name, time.perf_counter() - start


def _progress_line(done: int, total: int, name: str) -> None:
    print(f"\rwarm-up [{done}/{total}] {name:64.64}", end="", file=sys.stderr, flush=True)


def warmup(shapes=None, m_range=DEFAULT_M_RANGE, *, num_sms: int = DEFAULT_NUM_SMS,
           jobs: int | None = None, all_kernels: bool = False, progress: bool = True,
           providers: Sequence[SpecProvider] | None = None, groups: Sequence[int] = (),
           wgrad: bool = False) -> WarmupResult:
    """Compile into the disk cache every kernel the heuristic can pick for `shapes`.

    shapes: weight (N, K) pairs (or "N,K" strings), or a torch.nn.Module (its nn.Linear
        layers); None with all_kernels=True: every kernel that serves any shape.
    m_range: token counts M: an int (1..M), an inclusive (lo, hi) pair, or an iterable of M.
    num_sms: SMs the heuristic plans for (the target GPU's; 132 for H100/H200 SXM).
    jobs: parallel compile processes (default: the CPU count); 1 compiles in this process.
    all_kernels: also every kernel that serves any shape (`inspect`'s set; the grouped GEMMs'
        shape-compiled kernels need `shapes` and `groups`).
    progress: a progress line on stderr.
    providers: spec providers to use instead of SPEC_PROVIDERS.
    groups: also the MoE grouped GEMMs for these experts-per-GPU counts (M: rows per expert).
    wgrad: also the weight-gradient (1D1D) GEMMs of training (M: tokens per step).

    Returns a WarmupResult (kernels, compiled, cached, seconds, cache size, failures). Raises
    RuntimeError when the disk cache is off (disabled, or a directory it does not trust).
    """
    from .cache import compiler, store

    start = time.perf_counter()
    if shapes is None and not all_kernels:
        raise ValueError("warmup needs shapes (weight (N, K) pairs or a model) or "
                         "all_kernels=True")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    disk = None if store.disk_cache_disabled() else store.disk_store()
    if disk is None:
        raise RuntimeError(f"warm-up fills the disk cache, which is off here ("
                           f"{store.cache_dir()}: {store.describe_status()})")
    if groups or wgrad:
        providers = list(SPEC_PROVIDERS if providers is None else providers)
        providers += [grouped_spec_provider(groups)] if groups else []
        providers += [wgrad_spec_provider] if wgrad else []
    specs = kernel_specs(shapes, m_range, num_sms=num_sms, all_kernels=all_kernels,
                         providers=providers)
    todo = [spec for spec in specs if not compiler.is_cached(spec)]
    failed: list[tuple[str, str]] = []
    done = 0
    jobs = min(jobs or os.cpu_count() or 1, len(todo)) or 1

    def finished(name: str) -> None:
        nonlocal done
        done += 1
        if progress:
            _progress_line(done, len(todo), name)

    if jobs == 1:
        for spec in todo:
            try:
                _compile_one(spec)
            except Exception as error:  # report every failure, compile the rest
                failed.append((spec.name, f"{type(error).__name__}: {error}"))
            finished(spec.name)
    else:
        context = multiprocessing.get_context("spawn")  # no forked numba/CUDA state
        with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_use_cache_dir,
                initargs=(str(disk.root),)) as pool:
            futures = {pool.submit(_compile_one, spec): spec for spec in todo}
            for future in concurrent.futures.as_completed(futures):
                spec = futures[future]
                try:
                    future.result()
                except Exception as error:
                    failed.append((spec.name, f"{type(error).__name__}: {error}"))
                finished(spec.name)
    if progress and todo:
        print(file=sys.stderr)
    entries, size = disk.usage()
    return WarmupResult(kernels=len(specs), compiled=len(todo) - len(failed),
                        cached=len(specs) - len(todo), seconds=time.perf_counter() - start,
                        cache_dir=str(disk.root), cache_entries=entries, cache_bytes=size,
                        failed=sorted(failed))


class _CallableModule(types.ModuleType):
    """`pyfp8gemm.warmup(...)` works even where the submodule shadows the function on the
    package (after `import pyfp8gemm.warmup`, the package attribute is this module)."""

    def __call__(self, *args, **kwargs):
        return warmup(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
