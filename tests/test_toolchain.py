"""CPU tests of pyfp8gemm.cache.toolchain: the wheel's ptxas/cuobjdump/nvdisasm and their readers."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyfp8gemm.cache import toolchain
from pyfp8gemm.cache.toolchain import CompileError

# A tiny sm_90a kernel: a warpgroup fence (WARPGROUP.ARRIVE in SASS) and a global store (STG),
# with launch bounds so that its setmaxnreg is honoured (USETMAXREG).
TINY_KERNEL_PTX = textwrap.dedent("""\
    .version 8.0
    .target sm_90a
    .address_size 64

    .visible .entry tiny_store(
        .param .u64 tiny_store_param_0
    )
    .maxntid 128, 1, 1
    .minnctapersm 1
    {
        .reg .b32 %r<4>;
        .reg .b64 %rd<4>;

        ld.param.u64 %rd1, [tiny_store_param_0];
        cvta.to.global.u64 %rd2, %rd1;
        mov.u32 %r1, %tid.x;
        wgmma.fence.sync.aligned;
        setmaxnreg.inc.sync.aligned.u32 232;
        mul.wide.u32 %rd3, %r1, 4;
        add.s64 %rd2, %rd2, %rd3;
        st.global.u32 [%rd2], %r1;
        ret;
    }
    """)


def spilling_kernel_ptx(values: int = 64) -> str:
    """A kernel keeping ``values`` floats live at once: spills when registers are capped."""
    lines = [
        ".version 8.0", ".target sm_90a", ".address_size 64",
        ".visible .entry spill_me(.param .u64 p0)", "{",
        f".reg .f32 %f<{values + 1}>;", ".reg .b64 %rd<2>;",
        "ld.param.u64 %rd1, [p0];", "cvta.to.global.u64 %rd1, %rd1;",
    ]
    lines += [f"ld.global.volatile.f32 %f{i}, [%rd1+{4 * i}];" for i in range(values)]
    lines.append(f"mov.f32 %f{values}, 0f00000000;")
    lines += [f"fma.rn.f32 %f{values}, %f{values - 1 - i}, %f{i}, %f{values};" for i in range(values)]
    lines += [f"st.global.f32 [%rd1+{4 * (i + values)}], %f{i};" for i in range(values)]
    lines += [f"st.global.f32 [%rd1], %f{values};", "ret;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tiny_cubin():
    return toolchain.ptxas(TINY_KERNEL_PTX)


@pytest.mark.parametrize("name", ["ptxas", "cuobjdump", "nvdisasm"])
def test_find_tool_prefers_the_pip_wheel(name):
    path = toolchain.find_tool(name)
    assert os.path.isfile(path) and os.access(path, os.X_OK)
    assert "site-packages" in Path(path).parts, f"{name} resolved outside the wheels: {path}"


def test_find_tool_rejects_unknown_names():
    with pytest.raises(ValueError):
        toolchain.find_tool("nvcc-but-not-really")


def test_find_tool_names_the_pip_package_when_missing(monkeypatch):
    monkeypatch.setattr(toolchain, "_pathfinder_tool", lambda name: None)
    monkeypatch.setattr(toolchain, "_wheel_tool_from_namespace_package", lambda name: None)
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    toolchain.find_tool.cache_clear()
    try:
        with pytest.raises(toolchain.ToolchainError, match=r"cuda-toolkit\[cuobjdump\]"):
            toolchain.find_tool("cuobjdump")
    finally:
        toolchain.find_tool.cache_clear()


def test_versions_lists_the_toolchain():
    found = toolchain.versions()
    for key in ("numba_cuda", "numba", "llvmlite", "cuda_bindings", "nvvm", "ptxas", "torch"):
        assert key in found, key
    assert found["numba_cuda"] and found["cuda_bindings"]
    assert found["ptxas"].count(".") == 2 and found["ptxas"].split(".")[0].isdigit()
    assert found["nvvm"][0].isdigit(), found["nvvm"]
    assert toolchain.versions() is found  # computed once per process


def test_ptxas_builds_a_cubin_with_the_intended_sass(tiny_cubin):
    assert tiny_cubin[:4] == b"\x7fELF"
    sass_text = toolchain.sass(tiny_cubin)
    assert "sm_90a" in sass_text
    assert "WARPGROUP.ARRIVE" in sass_text
    counts = toolchain.count_opcodes(sass_text, ("STG", "WARPGROUP.ARRIVE", "USETMAXREG", "QGMMA"))
    assert counts == {"STG": 1, "WARPGROUP.ARRIVE": 1, "USETMAXREG": 1, "QGMMA": 0}


def test_resource_usage_reads_registers(tiny_cubin):
    usage = toolchain.resource_usage(tiny_cubin)
    assert set(usage) == {"tiny_store"}
    entry = usage["tiny_store"]
    assert entry["registers"] == 232  # setmaxnreg.inc 232 sets the kernel's register count
    assert entry["spill_store_bytes"] == entry["spill_load_bytes"] == 0
    assert entry["stack_bytes"] == 0 and entry["static_smem_bytes"] == 0


def test_spill_bytes_from_the_cubin_match_ptxas_verbose():
    cubin, info = toolchain.ptxas_verbose(spilling_kernel_ptx(), extra_flags=["--maxrregcount", "24"])
    from_ptxas = toolchain.parse_ptxas_info(info)["spill_me"]
    from_cubin = toolchain.resource_usage(cubin)["spill_me"]
    assert from_ptxas["spill_store_bytes"] > 0 and from_ptxas["spill_load_bytes"] > 0
    for key in ("registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes"):
        assert from_cubin[key] == from_ptxas[key], key


def test_ptxas_verbose_reports_resources():
    cubin, info = toolchain.ptxas_verbose(TINY_KERNEL_PTX)
    assert cubin[:4] == b"\x7fELF"
    assert "Used 232 registers" in info
    assert toolchain.parse_ptxas_info(info)["tiny_store"]["registers"] == 232


def test_bad_ptx_raises_compile_error_with_ptxas_message():
    bad = TINY_KERNEL_PTX.replace("st.global.u32", "st.glob.u32")
    with pytest.raises(CompileError) as caught:
        toolchain.ptxas(bad)
    message = str(caught.value)
    assert "Unknown modifier '.glob'" in message  # ptxas's own words
    assert "st.glob.u32 [%rd2], %r1;" in message  # and the offending PTX line
    assert "error" in caught.value.log


def test_ignored_setmaxnreg_is_an_error():
    # Without .minnctapersm ptxas cannot tell the register count at entry and drops setmaxnreg
    # (C7508), which would silently cost performance.
    without_bounds = TINY_KERNEL_PTX.replace(".minnctapersm 1\n", "")
    with pytest.raises(CompileError, match="setmaxnreg"):
        toolchain.ptxas(without_bounds)
    cubin = toolchain.ptxas(without_bounds, allow_ignored_setmaxnreg=True)
    assert toolchain.count_opcodes(toolchain.sass(cubin), ("USETMAXREG",)) == {"USETMAXREG": 0}


def test_ptxas_warnings_picks_warning_lines():
    log_text = (
        "ptxas info    : (C7508) Potential Performance Loss: 'setmaxnreg' ignored; unable to\n"
        "ptxas info    : 0 bytes gmem\n"
        "ptxas warning : Unresolved extern function 'foo'\n"
    )
    assert len(toolchain.ptxas_warnings(log_text)) == 2


def test_count_opcodes_reads_predicated_and_modified_instructions():
    sass_text = textwrap.dedent("""\
            Function : k
        /*0070*/   @!P0 USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xe8 ;   /* 0x000000e8000079c8 */
        /*0080*/   SYNCS.EXCH.64 URZ, [UR4], UR6 ;                  /* 0x0000000000007000 */
        /*0090*/   @P1 SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R3], R2 ; /* 0x0 */
        /*00a0*/   QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24, gsb0 ; /* 0x0 */
        /*00b0*/   UTMALDG.2D [UR16], [UR4] ;                       /* 0x0 */
        /*00c0*/   UTMASTG.2D [UR4], [UR6] ;                        /* 0x0 */
        /*00d0*/   EXIT ;                                           /* 0x0 */
        """)
    assert toolchain.count_opcodes(sass_text) == {
        "QGMMA": 1, "UTMALDG": 1, "UTMASTG": 1, "USETMAXREG": 1, "SYNCS": 2,
    }


# ---------------------------------------------------------------------------------------------
# The pip wheels suffice: compile with every system CUDA toolkit hidden
# ---------------------------------------------------------------------------------------------

# Runs inside the private mount namespace: numba-cuda -> PTX for sm_90a -> our ptxas -> cubin.
_COMPILE_WITHOUT_SYSTEM_TOOLKIT = textwrap.dedent("""\
    import os, shutil, sys
    hidden = sys.argv[1:]
    for folder in hidden:
        assert not os.path.exists(os.path.join(folder, "bin", "ptxas")), folder
    for tool in ("nvcc", "ptxas"):
        found = shutil.which(tool)
        assert found is None or "site-packages" in found, f"system {tool} still visible: {found}"

    from numba import cuda, float32, int32

    def add_one(x, n):
        i = cuda.grid(1)
        if i < n:
            x[i] += float32(1.0)

    ptx, _ = cuda.compile_ptx(add_one, (float32[:], int32), cc=(9, 0, "a"))
    assert ".target sm_90a" in ptx

    from pyfp8gemm.cache import toolchain
    assert "site-packages" in toolchain.find_tool("ptxas")
    cubin = toolchain.ptxas(ptx)
    assert cubin[:4] == b"\\x7fELF"
    assert toolchain.count_opcodes(toolchain.sass(cubin), ("FADD",))["FADD"] == 1
    print("COMPILED", len(cubin), "bytes with", toolchain.find_tool("ptxas"))
    """)


def _system_toolkit_folders() -> list[str]:
    """Existing system CUDA toolkit folders (real paths, deduplicated)."""
    candidates = [str(p) for p in Path("/usr/local").glob("cuda*")] + ["/opt/cuda"]
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(os.environ[variable])
    folders = {os.path.realpath(c) for c in candidates if os.path.isdir(c)}
    return sorted(f for f in folders if "site-packages" not in Path(f).parts)


def _system_tool_files(hidden_folders: list[str]) -> list[str]:
    """CUDA tools on PATH outside the wheels and outside the hidden folders (e.g. wrappers in
    /usr/local/bin). These are hidden one by one: hiding their folder could hide /usr/bin."""
    files = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        for tool in ("nvcc", "ptxas", "cuobjdump", "nvdisasm", "nvlink", "fatbinary"):
            path = os.path.join(folder, tool)
            real = os.path.realpath(path)
            if (os.path.isfile(path) and "site-packages" not in Path(real).parts
                    and not any(real.startswith(h + os.sep) for h in hidden_folders)):
                files.append(os.path.abspath(path))
    return sorted(set(files))


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_compiles_with_the_system_cuda_toolkit_hidden(tmp_path):
    if not _unshare_works():
        pytest.skip("unshare -m is unavailable or not permitted here")
    # Is there a system toolkit to hide? (On the CI machine: /usr/local/cuda -> cuda-13.0, plus
    # nvcc/ptxas wrappers in /usr/local/bin.) Without one the test still runs, proving less.
    system_nvcc = shutil.which("nvcc")
    hidden_folders = _system_toolkit_folders()
    hidden_files = _system_tool_files(hidden_folders)
    print(f"system nvcc: {system_nvcc}; hiding folders {hidden_folders} and files {hidden_files}")

    script = tmp_path / "compile_without_system_toolkit.py"
    script.write_text(_COMPILE_WITHOUT_SYSTEM_TOOLKIT)
    mounts = [f"mount -t tmpfs -o ro tmpfs '{folder}'" for folder in hidden_folders]
    # /dev/null is not executable, so a bind over a tool makes `which` and exec skip it.
    mounts += [f"mount --bind /dev/null '{file}'" for file in hidden_files]
    shell = " && ".join([*mounts, f"exec '{sys.executable}' '{script}' " +
                         " ".join(f"'{f}'" for f in hidden_folders)])
    environment = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "COMPILED" in result.stdout
