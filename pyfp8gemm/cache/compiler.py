"""The compile pipeline: kernel factory -> PTX -> post-edits -> cubin, cached on disk.

1. numba-cuda turns the factory's Python function into PTX for sm_90a (cc=(9, 0, "a"): the
   arch-specific ISA that wgmma and setmaxnreg need), with launch bounds (threads, 1) so ptxas
   knows the register cap and honours setmaxnreg.
2. Post-edits on the PTX text:
   - the mangled entry name becomes the config's readable name (what profilers show);
   - tensor-map parameters become `.param .align 64 .b8 name[128]` and their loads become the
     parameter's address: the CUtensorMap is passed *by value* as a __grid_constant__, so a
     launch copies nothing to device memory and stays CUDA-graph capturable.
3. ptxas from the pip wheel assembles the cubin (never the driver's JIT: the driver may be older
   than NVVM's PTX version; a cubin built by a newer ptxas still loads).

`compile_kernel(spec)` memoizes in memory and on disk (pyfp8gemm.cache.store), keyed by the
spec's config, a hash of every source file that shapes the PTX, and the tool versions.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import store, toolchain

ARCH = "sm_90a"
COMPUTE_CAPABILITY = (9, 0, "a")

_PACKAGE = Path(__file__).resolve().parent.parent
# Every file whose text can change a kernel's PTX: the device code and this pipeline.
_SOURCES = sorted((_PACKAGE / "device").glob("*.py")) + [Path(__file__).resolve()]


@dataclass(frozen=True)
class KernelSpec:
    """What to compile: a kernel factory's output plus how to build and name it."""
    name: str                               # readable entry name, unique per specialization
    make_kernel: Callable[[], Callable]     # returns the Python kernel function (not compiled)
    signature: tuple                        # numba types of the parameters
    threads: int                            # block size (for launch bounds)
    tensormap_params: tuple = ()            # parameter indices passed as CUtensorMap by value
    config: dict = field(default_factory=dict)  # everything else that specializes the kernel


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    cubin: bytes
    meta: dict      # registers, spills, smem, compile seconds, versions


def kernel_to_ptx(pyfunc, signature, threads) -> str:
    """numba-cuda: Python kernel -> PTX text for sm_90a with launch bounds (threads, 1)."""
    from numba import cuda
    ptx, _ = cuda.compile_ptx(pyfunc, signature, cc=COMPUTE_CAPABILITY,
                              launch_bounds=(threads, 1))
    return ptx


def rename_entry(ptx: str, name: str) -> str:
    """Replace numba's mangled entry name (and its `_param_i` names) by `name`."""
    match = re.search(r"\.entry\s+(\S+?)\s*\(", ptx)
    if match is None:
        raise toolchain.CompileError("no .entry in the PTX numba-cuda produced")
    return ptx.replace(match.group(1), name)


def tensormaps_by_value(ptx: str, name: str, param_indices) -> str:
    """Turn u64 parameters into 128-byte, 64-aligned by-value CUtensorMap parameters.

    The kernel reads them as u64 "addresses"; each `ld.param.u64 %rd, [p]` becomes the generic
    address of the parameter itself (mov + cvta.param), which is what cp.async.bulk.tensor and
    prefetch.tensormap take for a __grid_constant__ tensor map.
    """
    for i in param_indices:
        param = f"{name}_param_{i}"
        decl = f".param .u64 {param}"
        if decl not in ptx:
            raise toolchain.CompileError(f"{name}: parameter {i} is not a u64 ({param})")
        ptx = ptx.replace(decl, f".param .align 64 .b8 {param}[128]")
        ptx, loads = re.subn(
            rf"ld\.param\.u64\s+(%rd\d+),\s*\[{re.escape(param)}\];",
            rf"mov.b64 \1, {param};\n\tcvta.param.u64 \1, \1;", ptx)
        if re.search(rf"\[{re.escape(param)}(\+\d+)?\]", ptx):
            raise toolchain.CompileError(f"{name}: tensor map {i} is read in an unexpected way")
    return ptx


def build(spec: KernelSpec) -> tuple[bytes, dict]:
    """Compile one kernel from scratch; returns (cubin, meta)."""
    start = time.perf_counter()
    ptx = kernel_to_ptx(spec.make_kernel(), spec.signature, spec.threads)
    ptx_seconds = time.perf_counter() - start
    ptx = rename_entry(ptx, spec.name)
    ptx = tensormaps_by_value(ptx, spec.name, spec.tensormap_params)
    cubin, info = toolchain.ptxas_verbose(ptx, arch=ARCH)
    usage = toolchain.parse_ptxas_info(info).get(spec.name, {})
    meta = dict(name=spec.name, threads=spec.threads, ptx_seconds=round(ptx_seconds, 3),
                compile_seconds=round(time.perf_counter() - start, 3), **usage)
    return cubin, meta


def cache_key(spec: KernelSpec) -> dict:
    """Everything that changes the cubin."""
    return dict(name=spec.name, config=spec.config, threads=spec.threads,
                signature=[str(t) for t in spec.signature],
                tensormap_params=list(spec.tensormap_params), arch=ARCH,
                sources=store.source_hash(_SOURCES), versions=toolchain.versions())


_compiled: dict[str, CompiledKernel] = {}


def compile_kernel(spec: KernelSpec) -> CompiledKernel:
    """The cubin for `spec`: from this process's memory, else the disk cache, else built."""
    kernel = _compiled.get(spec.name)
    if kernel is None:
        cubin, meta = store.get_or_build(cache_key(spec), lambda: build(spec))
        kernel = _compiled[spec.name] = CompiledKernel(spec.name, cubin, meta)
    return kernel
