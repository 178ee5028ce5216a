"""compile_kernel's cache key is complete, both caches use it, what is loaded is checked, and
strict mode ($PYFP8GEMM_JIT=error) refuses to compile. CPU only, with fake builds (no numba)."""

import json
import logging
from pathlib import Path

import pytest

from pyfp8gemm.cache import compiler, store, toolchain
from pyfp8gemm.cache.compiler import KernelNotCachedError, KernelSpec, cache_key

PACKAGE = Path(compiler.__file__).resolve().parent.parent


def make_nothing():
    """A stand-in kernel factory (never called: the builds are fake)."""


def make_something_else():
    """Another factory."""


SPEC = KernelSpec(name="fake_kernel_m128", make_kernel=make_nothing, signature=("int64", "int32"),
                  threads=384, tensormap_params=(0,), config={"block_m": 128, "stages": 5})


def fake_cubin(spec: KernelSpec, registers: int) -> bytes:
    return b"\x7fELF" + json.dumps({spec.name: registers}).encode()


def fake_resource_usage(cubin: bytes) -> dict:
    """What cuobjdump would read from a fake cubin: the registers it was made with."""
    usage = json.loads(cubin[4:])
    return {name: {"registers": regs, "spill_store_bytes": 0, "spill_load_bytes": 0,
                   "stack_bytes": 0, "static_smem_bytes": 0, "local_bytes": 0}
            for name, regs in usage.items()}


@pytest.fixture(autouse=True)
def fake_pipeline(tmp_path, monkeypatch):
    """Fresh caches in a temporary dir; build() and cuobjdump faked; counts builds."""
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYFP8GEMM_JIT", raising=False)
    monkeypatch.delenv("PYFP8GEMM_DISABLE_DISK_CACHE", raising=False)
    builds = []

    def build(spec):
        builds.append(spec.name)
        return fake_cubin(spec, 168), dict(name=spec.name, threads=spec.threads,
                                           ptx_seconds=0.1, compile_seconds=0.2, registers=168)

    monkeypatch.setattr(compiler, "build", build)
    monkeypatch.setattr(compiler.toolchain, "resource_usage", fake_resource_usage)
    compiler._compiled.clear()
    store.kernel_memory.clear()
    store.reset_disk_state()
    yield builds
    compiler._compiled.clear()
    store.kernel_memory.clear()
    store.reset_disk_state()
    compiler._sources_digest.cache_clear()


def key(spec=SPEC) -> str:
    return store.key_of(cache_key(spec))


def new_process():
    compiler._compiled.clear()
    store.kernel_memory.clear()
    store.reset_disk_state()


# ---------------------------------------------------------------------------------------------
# Every ingredient is in the key
# ---------------------------------------------------------------------------------------------


def test_the_sources_are_everything_that_shapes_the_cubin():
    sources = set(compiler.pipeline_sources())
    device = {p for p in (PACKAGE / "device").rglob("*.py") if "__pycache__" not in p.parts}
    assert device and device <= sources
    assert PACKAGE / "cache" / "compiler.py" in sources      # the PTX post-edits
    assert PACKAGE / "cache" / "toolchain.py" in sources     # ptxas's flags and checks


@pytest.mark.parametrize("change", [
    dict(name="fake_kernel_m64"), dict(signature=("int64", "int64")), dict(threads=256),
    dict(tensormap_params=(1,)), dict(config={"block_m": 128, "stages": 4}),
    dict(make_kernel=make_something_else),
], ids=lambda change: next(iter(change)))
def test_each_spec_field_and_the_factory_change_the_key(change):
    assert key(KernelSpec(**{**SPEC.__dict__, **change})) != key()


def test_a_source_edit_changes_the_key(tmp_path, monkeypatch):
    source = tmp_path / "gemm_kernel.py"
    source.write_text("STAGES = 5\n")
    monkeypatch.setattr(compiler, "pipeline_sources", lambda: [source])
    compiler._sources_digest.cache_clear()
    before = key()
    source.write_text("STAGES = 6\n")
    compiler._sources_digest.cache_clear()   # (a new process)
    assert key() != before


def test_the_factorys_own_module_is_hashed(tmp_path, monkeypatch):
    """A factory outside pyfp8gemm/device (e.g. tests/microkernels.py): its file is in the key."""
    module_file = tmp_path / "my_kernels.py"
    module_file.write_text("def make():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_kernels

    spec = KernelSpec(**{**SPEC.__dict__, "make_kernel": my_kernels.make})
    assert cache_key(spec)["factory_source"] is not None
    before = key(spec)
    module_file.write_text("def make():\n    return 1\n")
    compiler._sources_digest.cache_clear()
    assert key(spec) != before
    assert cache_key(SPEC)["factory_source"] is not None  # this test file: not a pipeline file


def test_each_tool_version_changes_the_key(monkeypatch):
    real = toolchain.versions()
    assert {"ptxas", "nvvm", "libnvvm", "numba_cuda", "llvmlite"} <= set(real)
    before = key()
    for name in real:
        monkeypatch.setattr(compiler.toolchain, "versions",
                            lambda name=name: {**real, name: f"{real[name]}-other"})
        assert key() != before, name


@pytest.mark.parametrize("options, change", [
    ("PTXAS_OPTIONS", dict(opt_level=2)), ("PTXAS_OPTIONS", dict(extra_flags=("-lineinfo",))),
    ("PTXAS_OPTIONS", dict(arch="sm_90")), ("NVVM_OPTIONS", dict(fastmath=True)),
    ("NVVM_OPTIONS", dict(lineinfo=True)), ("NVVM_OPTIONS", dict(debug=True)),
])
def test_compiler_options_change_the_key(monkeypatch, options, change):
    before = key()
    monkeypatch.setattr(compiler, options, {**getattr(compiler, options), **change})
    assert key() != before


def test_the_arch_changes_the_key(monkeypatch):
    before = key()
    monkeypatch.setattr(compiler, "ARCH", "sm_100a")
    assert key() != before


@pytest.mark.parametrize("variable", compiler.NUMBA_CODEGEN_ENV)
def test_codegen_relevant_numba_settings_change_the_key(monkeypatch, variable):
    monkeypatch.delenv(variable, raising=False)
    before = key()
    monkeypatch.setenv(variable, "1")
    assert key() != before


def test_a_numba_config_file_changes_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = key()
    (tmp_path / ".numba_config.yaml").write_text("opt: 0\n")
    assert key() != before


def test_settings_that_do_not_shape_code_keep_the_key(monkeypatch):
    before = key()
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    monkeypatch.setenv("PYFP8GEMM_CACHE_LOCK_TIMEOUT", "5")
    assert key() == before


def test_the_key_holds_no_paths():
    """Keys are portable (cache archives): names and hashes, never where files live."""
    text = json.dumps(cache_key(SPEC))
    assert str(PACKAGE) not in text and str(Path.home()) not in text
    assert str(Path(__file__).parent) not in text


# ---------------------------------------------------------------------------------------------
# Both caches use the full key
# ---------------------------------------------------------------------------------------------


def test_the_memory_cache_tells_same_named_kernels_apart(fake_pipeline):
    """Keyed by name alone, a different spec with the same name got the other's kernel."""
    other = KernelSpec(**{**SPEC.__dict__, "config": {"block_m": 64, "stages": 5}})
    first, second = compiler.compile_kernel(SPEC), compiler.compile_kernel(other)
    assert first is not second and fake_pipeline == [SPEC.name, SPEC.name]
    assert compiler.compile_kernel(SPEC) is first and len(fake_pipeline) == 2


def test_registers_come_from_the_cubin_not_the_metadata(fake_pipeline, tmp_path):
    compiler.compile_kernel(SPEC)
    disk = store.disk_store()
    # A forger (or an old bug) writes 64 registers into the metadata of a 168-register cubin.
    entry = disk.read(key())
    disk.put(key(), entry.payload, {**entry.meta, "registers": 64}, parts=entry.parts)
    new_process()
    kernel = compiler.compile_kernel(SPEC)
    assert kernel.meta["registers"] == 168 and len(fake_pipeline) == 1  # a disk hit


@pytest.mark.parametrize("damage", [
    lambda meta: {k: v for k, v in meta.items() if k != "threads"},     # a field is missing
    lambda meta: {**meta, "threads": "384"},                               # of the wrong type
    lambda meta: {**meta, "threads": 128},                                 # another kernel's
])
def test_invalid_metadata_is_rebuilt(fake_pipeline, damage, caplog):
    compiler.compile_kernel(SPEC)
    disk = store.disk_store()
    entry = disk.read(key())
    disk.put(key(), entry.payload, damage(entry.meta), parts=entry.parts)
    new_process()
    with caplog.at_level(logging.WARNING, logger="pyfp8gemm.cache.store"):
        kernel = compiler.compile_kernel(SPEC)
    assert kernel.meta["threads"] == 384 and len(fake_pipeline) == 2
    assert any("rebuilt" in r.getMessage() for r in caplog.records)


def test_a_cubin_without_the_kernel_is_rebuilt(fake_pipeline):
    compiler.compile_kernel(SPEC)
    disk = store.disk_store()
    entry = disk.read(key())
    disk.put(key(), fake_cubin(KernelSpec(**{**SPEC.__dict__, "name": "x"}), 168), entry.meta,
             parts=entry.parts)
    new_process()
    assert compiler.compile_kernel(SPEC).cubin == fake_cubin(SPEC, 168)
    assert len(fake_pipeline) == 2


# ---------------------------------------------------------------------------------------------
# Strict mode
# ---------------------------------------------------------------------------------------------


def test_strict_mode_refuses_to_compile_a_missing_kernel(fake_pipeline, monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_JIT", "error")
    with pytest.raises(KernelNotCachedError) as raised:
        compiler.compile_kernel(SPEC)
    message = str(raised.value)
    assert SPEC.name in message and "python -m pyfp8gemm warmup" in message
    assert "PYFP8GEMM_JIT" in message
    assert fake_pipeline == []  # nothing compiled
    assert not compiler.is_cached(SPEC)


def test_strict_mode_loads_what_the_cache_holds(fake_pipeline, monkeypatch):
    compiler.compile_kernel(SPEC, jit="allow")    # e.g. warm-up
    new_process()
    monkeypatch.setenv("PYFP8GEMM_JIT", "error")
    assert compiler.is_cached(SPEC)
    assert compiler.compile_kernel(SPEC).name == SPEC.name and len(fake_pipeline) == 1


def test_jit_warn_compiles_and_says_so(fake_pipeline, monkeypatch, caplog):
    monkeypatch.setenv("PYFP8GEMM_JIT", "warn")
    with caplog.at_level(logging.WARNING, logger="pyfp8gemm.cache.compiler"):
        compiler.compile_kernel(SPEC)
    assert fake_pipeline == [SPEC.name]
    assert any("hot path" in r.getMessage() for r in caplog.records)


def test_a_bad_jit_value_is_refused(monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_JIT", "sometimes")
    with pytest.raises(ValueError, match="PYFP8GEMM_JIT must be one of"):
        compiler.jit_mode()
