"""The environment report that `python -m pyfp8gemm` prints.

It answers "can pyfp8gemm run here, and with what?": the Python packages and their versions, what
torch sees (CUDA build, GPUs, compute capability, SM count), the NVIDIA driver, the CUDA tools
the compiler uses (ptxas, cuobjdump, nvdisasm, from pip wheels), and the kernel cache directory.

Nothing here needs a GPU: every probe that can fail is caught and reported as text.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field

import torch

#: The compute capability the kernels are built for (sm_90a: H100, H200, H800, H20).
HOPPER_CAPABILITY = (9, 0)

#: Distributions whose versions the report lists, in this order.
PACKAGES = ("torch", "numpy", "numba-cuda", "numba", "llvmlite", "cuda-bindings",
            "cuda-pathfinder", "cuda-toolkit")

#: The command-line tools the compile pipeline and `inspect` use.
TOOLS = ("ptxas", "cuobjdump", "nvdisasm")


@dataclass
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    sm_count: int
    memory_gib: float

    @property
    def is_hopper(self) -> bool:
        return self.capability == HOPPER_CAPABILITY


@dataclass
class Report:
    """Everything the report prints; `sections` keeps (title, [(key, value), ...]) in order."""

    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    gpus: list[Gpu] = field(default_factory=list)
    current_index: int | None = None  # torch's current CUDA device, the one the kernels use
    cuda_error: str | None = None     # why torch sees no GPU, when it sees none

    @property
    def current_gpu(self) -> Gpu | None:
        return next((g for g in self.gpus if g.index == self.current_index), None)

    @property
    def hopper(self) -> Gpu | None:
        """The current CUDA device if it is a Hopper, else None."""
        gpu = self.current_gpu
        return gpu if gpu is not None and gpu.is_hopper else None

    def render(self) -> str:
        width = max((len(key) for _, rows in self.sections for key, _ in rows), default=0)
        lines = []
        for title, rows in self.sections:
            lines.append(title)
            lines.extend(f"  {key.ljust(width)}  {value}" for key, value in rows)
            lines.append("")
        return "\n".join(lines).rstrip("\n")


def optional_import(module_name: str):
    """Import `module_name`, or return None if that module itself does not exist.

    An ImportError raised *inside* an existing module (a real bug, a missing dependency)
    propagates: only the module's absence counts as "not available".
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            return None
        raise


def _package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _driver_version() -> str:
    """The driver's CUDA version, e.g. "13.0", from cuDriverGetVersion (no cuInit needed)."""
    try:
        from cuda.bindings import driver
    except ImportError as error:
        return f"unknown (cuda-bindings not importable: {error})"
    try:
        result, version = driver.cuDriverGetVersion()
    except Exception as error:  # no libcuda.so: cuda-bindings raises while loading it
        return f"no NVIDIA driver found (libcuda could not be loaded: {type(error).__name__})"
    if result != driver.CUresult.CUDA_SUCCESS:
        return f"unknown (cuDriverGetVersion returned {result})"
    return f"CUDA {version // 1000}.{version % 1000 // 10} ({version})"


def _gpus() -> tuple[list[Gpu], int | None, str | None]:
    """The GPUs torch sees and the current one's index, or ([], None, why none)."""
    if torch.version.cuda is None:
        return [], None, "this torch is a CPU-only build"
    try:
        available = torch.cuda.is_available()
    except Exception as error:
        return [], None, f"torch.cuda.is_available() failed: {error}"
    if not available:
        return [], None, "torch.cuda.is_available() is False (no GPU or no driver)"
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(
            index=index,
            name=props.name,
            capability=(props.major, props.minor),
            sm_count=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
        ))
    return gpus, torch.cuda.current_device(), None


def default_cache_dir() -> str:
    """$PYFP8GEMM_CACHE_DIR, else ~/.cache/pyfp8gemm (used when pyfp8gemm.cache.store is absent)."""
    return os.environ.get("PYFP8GEMM_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "pyfp8gemm"
    )


def _cache_dir() -> str:
    store = optional_import("pyfp8gemm.cache.store")
    if store is None:
        return default_cache_dir()
    try:
        return str(store.cache_dir())
    except Exception as error:
        return f"unknown (pyfp8gemm.cache.store.cache_dir() failed: {error})"


def _cache_status() -> str:
    """On, off (and why), read-only or not created yet: creates nothing (docs/CACHE.md)."""
    store = optional_import("pyfp8gemm.cache.store")
    if store is None or not hasattr(store, "describe_status"):
        return "unknown (pyfp8gemm.cache.store.describe_status is not in this version)"
    try:
        return store.describe_status()
    except Exception as error:
        return f"unknown ({type(error).__name__}: {error})"


def _toolchain_rows() -> list[tuple[str, str]]:
    toolchain = optional_import("pyfp8gemm.cache.toolchain")
    if toolchain is None:
        return [("toolchain", "not available (pyfp8gemm.cache.toolchain is not in this version)")]
    rows = []
    for tool in TOOLS:
        try:
            rows.append((tool, str(toolchain.find_tool(tool))))
        except Exception as error:
            rows.append((tool, f"not found ({error})"))
    try:
        for name, value in toolchain.versions().items():
            rows.append((f"version {name}", "not installed" if value is None else str(value)))
    except Exception as error:
        rows.append(("versions", f"unknown ({type(error).__name__}: {error})"))
    return rows


def collect() -> Report:
    """Probe the environment. Never raises for a missing GPU, driver or tool."""
    import pyfp8gemm

    report = Report()
    report.sections.append(("pyfp8gemm", [
        ("version", pyfp8gemm.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]))
    report.sections.append(("Packages", [(name, _package_version(name)) for name in PACKAGES]))

    report.gpus, report.current_index, report.cuda_error = _gpus()
    gpu_rows = [
        ("torch CUDA build", torch.version.cuda or "none (CPU-only build)"),
        ("driver", _driver_version()),
    ]
    if report.gpus:
        for gpu in report.gpus:
            current = " (current)" if gpu.index == report.current_index and len(report.gpus) > 1 else ""
            gpu_rows.append((
                f"GPU {gpu.index}{current}",
                f"{gpu.name}, compute capability {gpu.capability[0]}.{gpu.capability[1]}, "
                f"{gpu.sm_count} SMs, {gpu.memory_gib:.0f} GiB",
            ))
    else:
        gpu_rows.append(("GPUs", f"none ({report.cuda_error})"))
    report.sections.append(("CUDA", gpu_rows))

    report.sections.append(("Toolchain (pip wheels)", _toolchain_rows()))
    report.sections.append(("Kernel cache", [
        ("directory", _cache_dir()),
        ("set by", "$PYFP8GEMM_CACHE_DIR" if os.environ.get("PYFP8GEMM_CACHE_DIR")
         else "default (set $PYFP8GEMM_CACHE_DIR to move it)"),
        ("status", _cache_status()),
    ]))
    return report


def no_hopper_message(report: Report) -> str:
    """The plain sentence printed when there is nothing to self-check on."""
    gpu = report.current_gpu
    if gpu is not None:
        found = (f"the current GPU is {gpu.name} with compute capability "
                 f"{gpu.capability[0]}.{gpu.capability[1]}")
    else:
        found = f"no CUDA GPU is visible: {report.cuda_error}"
    return (
        f"No Hopper GPU found ({found}). pyfp8gemm's kernels need compute capability 9.0 "
        f"(H100, H200, H800, H20), so the self-check was skipped. Quantization, the reference "
        f"GEMM and the compiler toolchain work without one."
    )


def run(selfcheck: bool = True) -> int:
    """Print the report; on a Hopper GPU run the self-check. Returns the process exit code."""
    report = collect()
    print(report.render())
    print()
    gpu = report.hopper
    if gpu is None:
        print(no_hopper_message(report))
        return 0
    print(f"Hopper GPU found: {gpu.name} (GPU {gpu.index}, {gpu.sm_count} SMs).")
    if not selfcheck:
        print("Self-check skipped (--no-selfcheck).")
        return 0
    module = optional_import("pyfp8gemm.host.selfcheck")
    if module is None:
        print("Self-check: not available in this version (pyfp8gemm.host.selfcheck is missing).")
        return 0
    sys.stdout.flush()
    exit_code = module.run_selfcheck()
    return 0 if exit_code is None else int(exit_code)
