"""The CUDA command-line tools pyfp8gemm needs, found in the pip wheels and wrapped as functions.

* ``find_tool(name)``: the path of ``ptxas``, ``cuobjdump`` or ``nvdisasm``. The binaries from the
  NVIDIA pip wheels (``site-packages/nvidia/cu13/bin``) win over any system CUDA toolkit, so the
  cubins do not depend on what happens to be installed under /usr/local/cuda.
* ``ptxas(ptx)`` / ``ptxas_verbose(ptx)``: PTX -> cubin for sm_90a. We assemble with the ``ptxas``
  program, not nvJitLink: nvJitLink compiles relocatably and silently drops ``setmaxnreg``
  (warning C7504), and so does ptxas when it cannot tell the register count at entry (C7508).
  Both warnings are errors here, because they silently cost performance.
* ``sass(cubin)``, ``resource_usage(cubin)``, ``count_opcodes(sass_text)``: read back what the
  assembler made (registers, spills, shared memory, key instructions).
* ``versions()``: every tool and library version that changes a cubin (for cache keys and reports).

Nothing here needs a GPU or a driver.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "ToolchainError",
    "CompileError",
    "find_tool",
    "versions",
    "ptxas",
    "ptxas_verbose",
    "ptxas_warnings",
    "parse_ptxas_info",
    "sass",
    "resource_usage",
    "count_opcodes",
    "KEY_OPCODES",
]

log = logging.getLogger(__name__)

# Which pip extra of the `cuda-toolkit` meta-package ships each tool (for error messages).
_PIP_EXTRA_OF_TOOL = {"ptxas": "nvcc", "cuobjdump": "cuobjdump", "nvdisasm": "nvdisasm"}

# ptxas/cuobjdump finish in well under a second on our kernels; this only guards against a hang.
_TOOL_TIMEOUT_S = 600

# SASS opcodes that show a Hopper GEMM kernel is built as intended (see HOPPER_NOTES.md).
KEY_OPCODES = ("QGMMA", "UTMALDG", "UTMASTG", "USETMAXREG", "SYNCS")


class ToolchainError(RuntimeError):
    """A CUDA tool is missing or did not run (not a problem with the code it was given)."""


class CompileError(RuntimeError):
    """ptxas rejected a PTX module, or assembled it in a way that silently loses performance.

    ``log`` holds the ptxas output (errors, warnings, ``-v`` info) for programmatic checks.
    """

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


# ---------------------------------------------------------------------------------------------
# Finding the tools
# ---------------------------------------------------------------------------------------------


def _is_in_site_packages(path: str) -> bool:
    """True if ``path`` lies inside a Python site-packages (i.e. comes from a pip wheel)."""
    parts = Path(path).parts
    return "site-packages" in parts or "dist-packages" in parts


def _wheel_tool_from_namespace_package(name: str) -> str | None:
    """Look for ``name`` in the bin folders of the ``nvidia`` namespace package (pip wheels)."""
    try:
        import nvidia  # namespace package that the nvidia-* wheels install into
    except ImportError:
        return None
    # cu13 wheels share nvidia/cu13/bin; older (cu12) wheels used one folder per component.
    sub_dirs = ("cu13/bin", "cuda_nvcc/bin", "cuda_cuobjdump/bin", "cuda_nvdisasm/bin")
    for root in getattr(nvidia, "__path__", ()):
        for sub_dir in sub_dirs:
            candidate = os.path.join(root, sub_dir, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def _pathfinder_tool(name: str) -> str | None:
    """cuda.pathfinder's answer (wheels first, then conda, CUDA_HOME, the system toolkit)."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
    except ImportError:
        return None
    try:
        return find_nvidia_binary_utility(name)
    except Exception as error:  # unsupported name, odd install: fall through to our own search
        log.debug("cuda.pathfinder could not look up %s: %s", name, error)
        return None


@functools.cache
def find_tool(name: str) -> str:
    """Absolute path of the CUDA tool ``name`` ("ptxas", "cuobjdump" or "nvdisasm").

    Order: the pip wheel (via cuda.pathfinder, else the ``nvidia`` namespace package), then PATH,
    then whatever cuda.pathfinder finds outside the wheels (CUDA_HOME, conda, system toolkit).
    Raises ToolchainError naming the pip package that provides the tool if none is found.
    """
    if name not in _PIP_EXTRA_OF_TOOL:
        raise ValueError(f"unknown tool {name!r}; expected one of {sorted(_PIP_EXTRA_OF_TOOL)}")
    from_pathfinder = _pathfinder_tool(name)
    if from_pathfinder and _is_in_site_packages(from_pathfinder):
        return from_pathfinder
    from_wheel = _wheel_tool_from_namespace_package(name)
    if from_wheel:
        return from_wheel
    fallback = shutil.which(name) or from_pathfinder
    if fallback:
        log.warning("using %s from outside the pip wheels: %s", name, fallback)
        return fallback
    extra = _PIP_EXTRA_OF_TOOL[name]
    raise ToolchainError(
        f"cannot find the CUDA tool {name!r}: install it with "
        f"`pip install \"cuda-toolkit[{extra}]==13.*\"` (or put a CUDA toolkit's bin on PATH)"
    )


def _run_tool(name: str, args: Sequence[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a CUDA tool and return the finished process (text output); raise if it cannot run."""
    command = [find_tool(name), *args]
    try:
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ToolchainError(f"could not run {' '.join(command)}: {error}") from error


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _libnvvm_release(libnvvm_path: str) -> str:
    """Release of the libNVVM file in use: its wheel's version, else its path and size.

    libNVVM's own API version (nvvmVersion, e.g. 2.0) stays the same across CUDA releases,
    so on its own it would not tell two NVVM builds apart in a cache key.
    """
    real_path = os.path.realpath(libnvvm_path)
    for distribution in ("nvidia-nvvm", "nvidia-cuda-nvcc", "nvidia-cuda-nvcc-cu12"):
        try:
            dist = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            if "libnvvm" in file.name and os.path.realpath(dist.locate_file(file)) == real_path:
                return dist.version
    return f"{real_path} ({os.path.getsize(real_path)} bytes)"


def _nvvm_versions() -> dict[str, str]:
    """libNVVM as numba-cuda uses it (through cuda.bindings.nvvm). Needs no GPU or driver.

    We ask cuda.bindings directly rather than importing numba.cuda (~0.5 s) because this runs
    on the hot path of a warm disk cache, where nothing else needs numba.
    """
    try:
        from cuda.bindings import nvvm

        major, minor = nvvm.version()
        ir_version = ".".join(str(part) for part in nvvm.ir_version())
        from cuda.pathfinder import load_nvidia_dynamic_lib

        release = _libnvvm_release(load_nvidia_dynamic_lib("nvvm").abs_path)
    except Exception as error:  # report, don't crash: versions() is also used for diagnostics
        return {"nvvm": f"unavailable ({type(error).__name__}: {error})"}
    return {"nvvm": f"{major}.{minor}", "nvvm_ir": ir_version, "libnvvm": release}


def _ptxas_version() -> str:
    """``ptxas --version`` as "13.5.37" (from its "V13.5.37" token)."""
    output = _run_tool("ptxas", ["--version"]).stdout
    match = re.search(r"\bV(\d+\.\d+\.\d+)", output) or re.search(r"release (\d+\.\d+)", output)
    if not match:
        raise ToolchainError(f"cannot parse the ptxas version from: {output!r}")
    return match.group(1)


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions of everything that shapes a cubin, computed once per process (~0.1 s).

    Keys: numba_cuda, numba, llvmlite, cuda_bindings, nvvm (libNVVM API version, from
    cuda.bindings as numba-cuda uses it), nvvm_ir, libnvvm (the libNVVM release), ptxas
    (e.g. "13.5.37"), torch. A package that is not installed reads None. Python packages are
    read from their metadata, so this does not import torch or numba.
    """
    result: dict[str, str | None] = {
        "numba_cuda": _package_version("numba-cuda"),
        "numba": _package_version("numba"),
        "llvmlite": _package_version("llvmlite"),
        "cuda_bindings": _package_version("cuda-bindings"),
    }
    result.update(_nvvm_versions())
    result["ptxas"] = _ptxas_version()
    result["torch"] = _package_version("torch")
    return result


# ---------------------------------------------------------------------------------------------
# PTX -> cubin
# ---------------------------------------------------------------------------------------------

# ptxas reports a dropped setmaxnreg as an "info" line, e.g.
#   ptxas info : (C7508) Potential Performance Loss: 'setmaxnreg' ignored; unable to determine ...
#   ptxas info : (C7504) Potential Performance Loss: 'setmaxnreg' ignored to maintain ...
_SETMAXNREG_IGNORED = re.compile(r"setmaxnreg'? ignored|\(C750[48]\)")
_WARNING_LINE = re.compile(r"warning|Potential Performance Loss", re.IGNORECASE)
_PTXAS_ERROR_LOCATION = re.compile(r"line (\d+); error")


def ptxas_warnings(ptxas_log: str) -> list[str]:
    """The warning lines of a ptxas log, including 'Potential Performance Loss' info lines."""
    return [line.strip() for line in ptxas_log.splitlines() if _WARNING_LINE.search(line)]


def _quote_error_lines(ptx: str, ptxas_log: str, context: int = 1) -> str:
    """The PTX lines that ptxas's errors point at ("kernel.ptx, line 12; error : ..."), numbered."""
    ptx_lines = ptx.splitlines()
    quoted = []
    for line_number in sorted({int(n) for n in _PTXAS_ERROR_LOCATION.findall(ptxas_log)})[:5]:
        first = max(1, line_number - context)
        last = min(len(ptx_lines), line_number + context)
        for number in range(first, last + 1):
            marker = ">" if number == line_number else " "
            quoted.append(f"{marker}{number:6d} | {ptx_lines[number - 1]}")
        quoted.append("")
    return "\n".join(quoted)


def _assemble(
    ptx: str, arch: str, opt_level: int, extra_flags: Iterable[str], verbose: bool,
    allow_ignored_setmaxnreg: bool,
) -> tuple[bytes, str]:
    """Run ptxas on ``ptx`` in a private temp dir; return (cubin bytes, ptxas stdout+stderr)."""
    flags = [f"-arch={arch}", f"-O{int(opt_level)}", *extra_flags]
    if verbose:
        flags.append("-v")
    with tempfile.TemporaryDirectory(prefix="pyfp8gemm-ptxas-") as work_dir:
        Path(work_dir, "kernel.ptx").write_text(ptx)
        process = _run_tool("ptxas", [*flags, "kernel.ptx", "-o", "kernel.cubin"], cwd=work_dir)
        ptxas_log = (process.stdout + process.stderr).strip()
        cubin_path = Path(work_dir, "kernel.cubin")
        if process.returncode != 0 or not cubin_path.is_file():
            quoted = _quote_error_lines(ptx, ptxas_log)
            raise CompileError(
                f"ptxas {' '.join(flags)} failed (exit {process.returncode}):\n{ptxas_log}"
                + (f"\n\nat:\n{quoted}" if quoted else ""),
                log=ptxas_log,
            )
        cubin = cubin_path.read_bytes()
    warnings = ptxas_warnings(ptxas_log)
    if not allow_ignored_setmaxnreg and any(_SETMAXNREG_IGNORED.search(w) for w in warnings):
        raise CompileError(
            "ptxas ignored setmaxnreg, which silently costs registers and speed. Give the "
            "kernel launch bounds (.maxntid and .minnctapersm, i.e. launch_bounds=(threads, 1)) "
            f"and assemble it whole (not relocatable):\n{ptxas_log}",
            log=ptxas_log,
        )
    for warning in warnings:
        log.warning("ptxas: %s", warning)
    return cubin, ptxas_log


def ptxas(
    ptx: str, arch: str = "sm_90a", opt_level: int = 3, extra_flags: Sequence[str] = (), *,
    allow_ignored_setmaxnreg: bool = False,
) -> bytes:
    """Assemble PTX text into a cubin (bytes) with the wheel's ptxas.

    Raises CompileError with ptxas's messages (and the PTX lines they point at) on failure, and
    also when ptxas says it ignored ``setmaxnreg`` (unless ``allow_ignored_setmaxnreg``). Other
    warnings are logged at WARNING.
    """
    cubin, _ = _assemble(ptx, arch, opt_level, extra_flags, False, allow_ignored_setmaxnreg)
    return cubin


def ptxas_verbose(
    ptx: str, arch: str = "sm_90a", opt_level: int = 3, extra_flags: Sequence[str] = (), *,
    allow_ignored_setmaxnreg: bool = False,
) -> tuple[bytes, str]:
    """Like ``ptxas`` with ``-v``: returns (cubin, ptxas info text).

    The info text holds per function the registers, spills, stack, shared memory and any
    warnings; ``parse_ptxas_info`` turns it into numbers, ``ptxas_warnings`` picks the warnings.
    """
    return _assemble(ptx, arch, opt_level, extra_flags, True, allow_ignored_setmaxnreg)


def parse_ptxas_info(info_text: str) -> dict[str, dict[str, int]]:
    """Per-function numbers from ``ptxas -v`` output.

    Returns {function: {registers, spill_store_bytes, spill_load_bytes, stack_bytes,
    static_smem_bytes}}; a number ptxas did not print reads 0.
    """
    functions: dict[str, dict[str, int]] = {}
    current = None
    for line in info_text.splitlines():
        if match := re.search(r"Function properties for (\S+)", line):
            current = functions.setdefault(match.group(1), _empty_usage())
        elif match := re.search(r"Compiling entry function '([^']+)'", line):
            current = functions.setdefault(match.group(1), _empty_usage())
        elif current is not None:
            if match := re.search(r"(\d+) bytes stack frame", line):
                current["stack_bytes"] = int(match.group(1))
            if match := re.search(r"(\d+) bytes spill stores", line):
                current["spill_store_bytes"] = int(match.group(1))
            if match := re.search(r"(\d+) bytes spill loads", line):
                current["spill_load_bytes"] = int(match.group(1))
            if match := re.search(r"Used (\d+) registers", line):
                current["registers"] = int(match.group(1))
            if match := re.search(r"(\d+) bytes smem", line):
                current["static_smem_bytes"] = int(match.group(1))
    return functions


# ---------------------------------------------------------------------------------------------
# Reading cubins back
# ---------------------------------------------------------------------------------------------


def _run_on_cubin(tool: str, args: Sequence[str], cubin: bytes) -> str:
    """Run ``tool args kernel.cubin`` on a temp copy of ``cubin`` and return its stdout."""
    with tempfile.TemporaryDirectory(prefix="pyfp8gemm-cubin-") as work_dir:
        Path(work_dir, "kernel.cubin").write_bytes(cubin)
        process = _run_tool(tool, [*args, "kernel.cubin"], cwd=work_dir)
    if process.returncode != 0:
        raise ToolchainError(
            f"{tool} {' '.join(args)} failed (exit {process.returncode}): {process.stderr.strip()}"
        )
    return process.stdout


def sass(cubin: bytes) -> str:
    """The SASS of every function in ``cubin`` (``cuobjdump -sass``), as text."""
    return _run_on_cubin("cuobjdump", ["-sass"], cubin)


# A SASS instruction line: "/*0070*/  @!P0 USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xe8 ;"
_SASS_INSTRUCTION = re.compile(r"/\*([0-9a-fA-F]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)", re.MULTILINE)


def _sass_instructions(sass_text: str) -> Iterable[tuple[str | None, int, str]]:
    """Yield (function name, byte offset, opcode with modifiers) for each SASS instruction."""
    function = None
    for line in sass_text.splitlines():
        if match := _SASS_FUNCTION.match(line):
            function = match.group(1)
        elif match := _SASS_INSTRUCTION.search(line):
            yield function, int(match.group(1), 16), match.group(2)


def count_opcodes(sass_text: str, names: Sequence[str] = KEY_OPCODES) -> dict[str, int]:
    """How many SASS instructions have an opcode starting with each of ``names``.

    E.g. "SYNCS" counts SYNCS.ARRIVE.TRANS64.A1T0 and SYNCS.PHASECHK.TRANS64.TRYWAIT alike.
    """
    counts = dict.fromkeys(names, 0)
    for _, _, opcode in _sass_instructions(sass_text):
        for name in names:
            if opcode.startswith(name):
                counts[name] += 1
    return counts


def _empty_usage() -> dict[str, int]:
    return {
        "registers": 0,
        "spill_store_bytes": 0,
        "spill_load_bytes": 0,
        "stack_bytes": 0,
        "static_smem_bytes": 0,
        "local_bytes": 0,
    }


def _local_access_bytes(opcode: str) -> int:
    """Bytes moved by one STL/LDL instruction, from its width modifier (default 32 bits)."""
    for modifier, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if modifier in opcode:
            return size
    return 4


def _spill_offsets(elf_text: str) -> dict[str, set[int]]:
    """Offsets of spill/refill instructions per function, from the cubin's EIATTR_ANNOTATIONS.

    ``cuobjdump -elf`` prints them under ``.nv.info.<function>`` as "SpillRefill : Offset : 0x170".
    """
    offsets: dict[str, set[int]] = {}
    function = None  # the function whose .nv.info section we are in, if any
    for line in elf_text.splitlines():
        # Section headers start in column 0: ".nv.info.NAME", ".text.NAME", ".section .symtab".
        if match := re.match(r"(?:\.section\s+)?\.(\S+)\s*$", line):
            section = match.group(1)
            function = section[len("nv.info."):] if section.startswith("nv.info.") else None
        elif function is not None:
            for offset in re.findall(r"SpillRefill\s*:\s*Offset\s*:\s*(0x[0-9a-fA-F]+)", line):
                offsets.setdefault(function, set()).add(int(offset, 16))
    return offsets


def _spill_bytes(cubin: bytes) -> dict[str, tuple[int, int]]:
    """(spill store bytes, spill load bytes) per function, counted from the cubin itself.

    ptxas marks every spill and refill instruction in the cubin (EIATTR_ANNOTATIONS); summing the
    widths of those STL/LDL instructions gives exactly the "bytes spill stores/loads" that
    ``ptxas -v`` prints, without needing the ptxas log.
    """
    offsets = _spill_offsets(_run_on_cubin("cuobjdump", ["-elf"], cubin))
    totals: dict[str, tuple[int, int]] = {}
    for function, offset, opcode in _sass_instructions(sass(cubin)):
        if function is None or offset not in offsets.get(function, ()):
            continue
        stores, loads = totals.get(function, (0, 0))
        if opcode.startswith("STL"):
            stores += _local_access_bytes(opcode)
        elif opcode.startswith("LDL"):
            loads += _local_access_bytes(opcode)
        totals[function] = (stores, loads)
    return totals


def resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    """Per-function resources of ``cubin``: {name: {registers, spill_store_bytes,
    spill_load_bytes, stack_bytes, static_smem_bytes, local_bytes}}.

    Registers, stack, static shared memory and local memory come from
    ``cuobjdump --dump-resource-usage``; spill bytes from the spill annotations (only looked up
    when a function uses stack or local memory, since spills need a stack frame).
    """
    text = _run_on_cubin("cuobjdump", ["--dump-resource-usage"], cubin)
    usage: dict[str, dict[str, int]] = {}
    function = None
    for line in text.splitlines():
        if match := re.match(r"\s*Function\s+([^\s:]+)\s*:", line):
            function = match.group(1)
            usage[function] = _empty_usage()
        elif function is not None and "REG:" in line:
            fields = dict(re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", line))
            entry = usage[function]
            entry["registers"] = int(fields.get("REG", 0))
            entry["stack_bytes"] = int(fields.get("STACK", 0))
            entry["static_smem_bytes"] = int(fields.get("SHARED", 0))
            entry["local_bytes"] = int(fields.get("LOCAL", 0))
    if any(entry["stack_bytes"] or entry["local_bytes"] for entry in usage.values()):
        for function, (stores, loads) in _spill_bytes(cubin).items():
            if function in usage:
                usage[function]["spill_store_bytes"] = stores
                usage[function]["spill_load_bytes"] = loads
    return usage
