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

`compile_kernel(spec)` memoizes in memory and on disk (pyfp8gemm.cache.store), both keyed by
`cache_key(spec)`: every field of the spec, the factory that makes the kernel, a hash of every
source file that shapes the cubin (the device code, this pipeline and its PTX edits, the
toolchain wrapper and its ptxas flags, the factory's module), the NVVM and ptxas options, the
codegen-relevant numba settings, the tool versions and the GPU arch. What it loads is checked:
required metadata fields and types, and the facts the cubin itself holds (registers, spills,
stack) read from the cubin, never taken from the metadata.

`$PYFP8GEMM_JIT=error` (strict mode) makes a kernel that is in neither cache raise
KernelNotCachedError instead of compiling on the hot path; `python -m pyfp8gemm warmup` fills the
cache ahead of time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import fast_inline, store, toolchain

ARCH = "sm_90a"
COMPUTE_CAPABILITY = (9, 0, "a")

log = logging.getLogger(__name__)

JIT_ENV = "PYFP8GEMM_JIT"

_PACKAGE = Path(__file__).resolve().parent.parent


def pipeline_sources() -> list[Path]:
    """Every file whose text can change a cubin: the device code (all of pyfp8gemm/device),
    this pipeline (the PTX edits), the inlining speed-up it compiles under and the toolchain
    wrapper (ptxas's flags and checks)."""
    device = sorted(p for p in (_PACKAGE / "device").rglob("*.py") if "__pycache__" not in p.parts)
    return device + [Path(__file__).resolve(), Path(fast_inline.__file__).resolve(),
                     Path(toolchain.__file__).resolve()]


# numba-cuda's options for kernel_to_ptx, spelled out so that they are in the key. `opt` is left
# to numba (NUMBA_OPT, in numba_settings below).
NVVM_OPTIONS = dict(cc=list(COMPUTE_CAPABILITY), debug=False, lineinfo=False, fastmath=False,
                    launch_bounds="(threads, 1)")
# ptxas's options for build (toolchain._assemble adds -v): in the key too.
PTXAS_OPTIONS = dict(arch=ARCH, opt_level=3, extra_flags=())

# Environment variables through which numba changes the code it generates (numba reads them
# at import; an edit between processes must not reuse a cubin built under other settings).
NUMBA_CODEGEN_ENV = (
    "NUMBA_OPT", "NUMBA_DEBUG", "NUMBA_DEBUGINFO", "NUMBA_CUDA_DEBUGINFO", "NUMBA_BOUNDSCHECK",
    "NUMBA_FASTMATH", "NUMBA_EXTEND_VARIABLE_LIFETIMES", "NUMBA_LOOP_VECTORIZE",
    "NUMBA_SLP_VECTORIZE", "NUMBA_LLVM_REFPRUNE_PASS", "NUMBA_LLVM_REFPRUNE_FLAGS",
    "NUMBA_CUDA_ENABLE_NRT", "NUMBA_CUDA_DEBUG_POLY", "NUMBA_CUDA_DEBUG_POLY_USE_TYPED_CONST",
    "NUMBA_FORCE_CUDA_CC", "NUMBA_CUDA_DEFAULT_PTX_CC", "NUMBA_DISABLE_JIT",
    "NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_USE_NVIDIA_BINDING",
)
_NUMBA_CONFIG_FILE = ".numba_config.yaml"  # numba also reads settings from this file in the cwd


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
    """numba-cuda: Python kernel -> PTX text for sm_90a with launch bounds (threads, 1), its
    IR inlining sped up (cache/fast_inline.py: half the compile time, the same PTX)."""
    from numba import cuda
    with fast_inline.faster_inlining():
        ptx, _ = cuda.compile_ptx(pyfunc, signature, cc=COMPUTE_CAPABILITY,
                                  debug=NVVM_OPTIONS["debug"], lineinfo=NVVM_OPTIONS["lineinfo"],
                                  fastmath=NVVM_OPTIONS["fastmath"], launch_bounds=(threads, 1))
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
        decl = re.compile(rf"\.param \.u64 {re.escape(param)}\b")   # not _param_12 for _param_1
        if not decl.search(ptx):
            raise toolchain.CompileError(f"{name}: parameter {i} is not a u64 ({param})")
        ptx = decl.sub(f".param .align 64 .b8 {param}[128]", ptx)
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
    cubin, info = toolchain.ptxas_verbose(ptx, arch=PTXAS_OPTIONS["arch"],
                                          opt_level=PTXAS_OPTIONS["opt_level"],
                                          extra_flags=PTXAS_OPTIONS["extra_flags"])
    usage = toolchain.parse_ptxas_info(info).get(spec.name, {})
    meta = dict(name=spec.name, threads=spec.threads, ptx_seconds=round(ptx_seconds, 3),
                compile_seconds=round(time.perf_counter() - start, 3), **usage)
    return cubin, meta


# ---------------------------------------------------------------------------------------------
# The cache key
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sources_digest(files: tuple[str, ...]) -> str:
    """source_hash of `files`, once per process: the code a process compiles from is the code
    it imported, so hashing it at first use is exact (tests call cache_clear after edits)."""
    return store.source_hash(files)


def _factory(spec: KernelSpec) -> Callable:
    factory = spec.make_kernel
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def _factory_source(spec: KernelSpec) -> str | None:
    """The file of the module that defines the spec's factory, if not already a pipeline
    source (e.g. tests/microkernels.py): its text shapes the kernel too."""
    module = sys.modules.get(getattr(_factory(spec), "__module__", None) or "")
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return None if path in pipeline_sources() else str(path)


def _key_value(value: Any) -> Any:
    """A spec field as stable JSON: containers recursively, numba types by their name, callables
    by their qualified name (never a repr holding a memory address)."""
    if isinstance(value, dict):
        return {str(k): _key_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_key_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    if dataclasses.is_dataclass(value):
        return _key_value(dataclasses.asdict(value))
    return str(value)


def numba_settings() -> dict:
    """The codegen-relevant numba settings of this process: NUMBA_CODEGEN_ENV and the hash of a
    .numba_config.yaml in the working directory, if any."""
    settings = {name: os.environ[name] for name in NUMBA_CODEGEN_ENV if name in os.environ}
    try:
        settings[_NUMBA_CONFIG_FILE] = hashlib.sha256(
            Path(_NUMBA_CONFIG_FILE).read_bytes()).hexdigest()
    except OSError:
        pass
    return settings


def environment_parts() -> dict:
    """The part of every cache key that depends on this installation rather than on the kernel:
    arch, compiler options, numba settings, pipeline sources, tool versions. (A cache archive's
    entry is usable here only where these match: pyfp8gemm.cache.archive.)"""
    return dict(arch=ARCH, nvvm_options=NVVM_OPTIONS, ptxas_options=_key_value(PTXAS_OPTIONS),
                numba_settings=numba_settings(),
                sources=_sources_digest(tuple(str(p) for p in pipeline_sources())),
                versions=toolchain.versions())


def cache_key(spec: KernelSpec) -> dict:
    """Everything that changes the cubin of `spec` (the key parts; store.key_of hashes them)."""
    fields = {f.name: _key_value(getattr(spec, f.name)) for f in dataclasses.fields(spec)
              if f.name != "make_kernel"}
    factory_file = _factory_source(spec)
    return dict(name=spec.name, spec=fields, factory=_key_value(_factory(spec)),
                factory_source=_sources_digest((factory_file,)) if factory_file else None,
                **environment_parts())


# ---------------------------------------------------------------------------------------------
# compile_kernel: memory, disk, build (or refuse, in strict mode)
# ---------------------------------------------------------------------------------------------


class KernelNotCachedError(RuntimeError):
    """Strict mode ($PYFP8GEMM_JIT=error): a kernel is in neither cache."""


_JIT_MODES = {"": "allow", "1": "allow", "on": "allow", "allow": "allow", "true": "allow",
              "yes": "allow", "warn": "warn", "error": "error", "0": "error", "off": "error",
              "false": "error", "no": "error"}


def jit_mode() -> str:
    """'allow' (default), 'warn' (compile, with a warning) or 'error', from $PYFP8GEMM_JIT."""
    raw = os.environ.get(JIT_ENV, "")
    try:
        return _JIT_MODES[raw.strip().lower()]
    except KeyError:
        raise ValueError(f"${JIT_ENV} must be one of allow, warn, error (or 1/0), got "
                         f"{raw!r}") from None


def _not_cached_message(spec: KernelSpec) -> str:
    disk = store.describe_status()
    return (
        f"pyfp8gemm: kernel {spec.name} is not in the kernel cache ({store.cache_dir()}: {disk})"
        f" and ${JIT_ENV}=error forbids compiling it on the hot path. Build it ahead of time "
        f"with `python -m pyfp8gemm warmup --shapes N,K [N,K ...] --m-range 1:MAX_M` (your "
        f"weights' shapes and token counts; add `--groups G` for the MoE grouped GEMMs, "
        f"whose kernels are compiled for each (N, G); `python -m pyfp8gemm warmup --all` "
        f"builds every kernel that serves any shape) with this pyfp8gemm and toolchain, or "
        f"import a cache built elsewhere "
        f"(`python -m pyfp8gemm cache import FILE`), or unset {JIT_ENV}.")


def _build_unless_strict(spec: KernelSpec, jit: str | None) -> tuple[bytes, dict]:
    mode = jit or jit_mode()
    if mode == "error":
        raise KernelNotCachedError(_not_cached_message(spec))
    if mode == "warn":
        log.warning("pyfp8gemm: compiling kernel %s on the hot path (not in the cache)",
                    spec.name)
    return build(spec)


# Metadata fields every entry must have, with their types (facts about the cubin itself are
# not taken from here: they are read from the cubin).
_REQUIRED_META = {"name": str, "threads": int, "ptx_seconds": (int, float),
                  "compile_seconds": (int, float)}


def _validator(spec: KernelSpec) -> Callable[[bytes, dict], dict]:
    def validate(cubin: bytes, meta: dict) -> dict:
        for name, types in _REQUIRED_META.items():
            if name not in meta:
                raise KeyError(f"metadata field {name!r} is missing")
            if not isinstance(meta[name], types) or isinstance(meta[name], bool):
                raise TypeError(f"metadata field {name!r} is a {type(meta[name]).__name__}")
        if meta["name"] != spec.name or meta["threads"] != spec.threads:
            raise ValueError(f"metadata of {meta['name']!r} ({meta['threads']} threads), not of "
                             f"{spec.name!r} ({spec.threads} threads)")
        if not cubin.startswith(b"\x7fELF"):
            raise ValueError("the payload is not a cubin (no ELF header)")
        toolchain.find_tool("cuobjdump")  # a missing tool is an install problem: raise as such
        try:
            usage = toolchain.resource_usage(cubin)
        except toolchain.ToolchainError as error:
            raise ValueError(f"cuobjdump cannot read the cubin: {error}") from error
        if spec.name not in usage:
            raise ValueError(f"the cubin holds {sorted(usage)}, not {spec.name}")
        return {**meta, **usage[spec.name]}   # registers, spills, stack: the cubin's own
    return validate


_compiled: dict[str, CompiledKernel] = {}


def compile_kernel(spec: KernelSpec, *, jit: str | None = None) -> CompiledKernel:
    """The cubin for `spec`: from this process's memory, else the disk cache, else built.

    Both caches are keyed by `cache_key(spec)`. `jit` overrides $PYFP8GEMM_JIT ('allow',
    'warn', 'error'); in 'error' mode a kernel in neither cache raises KernelNotCachedError.
    meta's registers / spill / stack / local / static smem figures are read from the cubin.
    """
    parts = cache_key(spec)
    key = store.key_of(parts)
    kernel = _compiled.get(key)
    if kernel is None:
        cubin, meta = store.get_or_build(parts, lambda: _build_unless_strict(spec, jit),
                                         validate=_validator(spec))
        kernel = _compiled.setdefault(key, CompiledKernel(spec.name, cubin, meta))
    return kernel


def is_cached(spec: KernelSpec) -> bool:
    """Whether `spec`'s kernel is in this process's memory or in the disk cache (a valid
    entry), without building it."""
    parts = cache_key(spec)
    key = store.key_of(parts)
    if key in _compiled or key in store.kernel_memory:
        return True
    disk = None if store.disk_cache_disabled() else store.disk_store()
    return disk is not None and disk.read(key) is not None
