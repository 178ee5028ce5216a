"""Warm-up, cache export / import and strict mode, into temporary cache dirs (CPU, no GPU).

Real compiles are few: one kernel (a tiny shape set) is compiled once for the whole file
(module fixture); the rest runs on that cache or on fake providers.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest

import pyfp8gemm
from pyfp8gemm import warmup as _warmup_function  # noqa: F401  (the public name resolves)
from pyfp8gemm.cache import archive, compiler, store
from pyfp8gemm.warmup import (
    DEFAULT_NUM_SMS, SPEC_PROVIDERS, kernel_specs, parse_m_range, parse_shapes,
    register_spec_provider, warmup,
)

# One weight whose every M in 1..64 picks the same kernel (checked below): one real compile.
SHAPE, M_RANGE = (2112, 7168), (33, 64)   # (M <= 32 takes the narrow A tiles)


def _reset_process_caches():
    compiler._compiled.clear()
    store.kernel_memory.clear()
    store.reset_disk_state()


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache dir warmed for SHAPE x M_RANGE (in this process: jobs=1) and its result."""
    root = tmp_path_factory.mktemp("warm") / "cache"
    saved = os.environ.get("PYFP8GEMM_CACHE_DIR")
    os.environ["PYFP8GEMM_CACHE_DIR"] = str(root)
    _reset_process_caches()
    try:
        result = warmup([SHAPE], M_RANGE, jobs=1, progress=False)
    finally:
        os.environ["PYFP8GEMM_CACHE_DIR"] = saved
        _reset_process_caches()
    return root, result


@pytest.fixture
def cache_at(monkeypatch):
    def point(root):
        monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(root))
        monkeypatch.delenv("PYFP8GEMM_JIT", raising=False)
        _reset_process_caches()
    yield point
    _reset_process_caches()


# ---------------------------------------------------------------------------------------------
# Enumeration (no compiles)
# ---------------------------------------------------------------------------------------------


def test_the_public_name_is_the_warmup_function():
    assert callable(pyfp8gemm.warmup) and "warmup" in pyfp8gemm.__all__
    import pyfp8gemm.warmup as module   # the submodule shadows the package attribute ...
    assert callable(module)              # ... and still calls warmup


def test_distinct_ms_collapse_to_distinct_kernels():
    few = kernel_specs([SHAPE], M_RANGE)
    assert len(few) == 1  # (what the module fixture compiles)
    many = kernel_specs([SHAPE, (7168, 2048)], (1, 16384))
    names = [spec.name for spec in many]
    assert len(set(names)) == len(names) and 1 < len(names) < 40
    assert few[0].name in names


def test_specs_follow_the_sm_count():
    assert ({s.name for s in kernel_specs([SHAPE], (1, 4096), num_sms=DEFAULT_NUM_SMS)}
            != {s.name for s in kernel_specs([SHAPE], (1, 4096), num_sms=78)})


def test_providers_are_extensible():
    calls = []

    def grouped_provider(shapes, ms, num_sms):
        calls.append((shapes, len(ms), num_sms))
        return []

    try:
        register_spec_provider(grouped_provider)
        register_spec_provider(grouped_provider)   # once only
        assert SPEC_PROVIDERS.count(grouped_provider) == 1
        kernel_specs([(4096, 7168), (4096, 7168)], 100, num_sms=132)
        assert calls == [([(4096, 7168)], 100, 132)]
    finally:
        SPEC_PROVIDERS.remove(grouped_provider)


def test_shapes_from_a_model():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(7168, 2112), torch.nn.ReLU(),
                                torch.nn.Linear(2112, 4096), torch.nn.Linear(100, 10))
    assert parse_shapes(model) == [(2112, 7168), (4096, 2112)]   # (100 -> 10: no kernel)


@pytest.mark.parametrize("shapes, match", [
    ([(2112, 7000)], r"shapes\[0\] .*K % 16 == 0"), ([(2112,)], r"shapes\[0\] must be"),
    ([(0, 7168)], ">= 1"), ("2112,7168", "pairs"),
])
def test_bad_shapes_are_refused(shapes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        parse_shapes(shapes)


def test_m_ranges():
    assert parse_m_range(16) == range(1, 17) and parse_m_range("8:16") == range(8, 17)
    assert parse_m_range([3, 1, 3]) == [1, 3]
    for bad in ((0, 4), (5, 4), "x:y", [0], []):
        with pytest.raises(ValueError, match="m_range"):
            parse_m_range(bad)


def test_warmup_refuses_when_the_disk_cache_is_off(cache_at, tmp_path, monkeypatch):
    cache_at(tmp_path / "cache")
    monkeypatch.setenv("PYFP8GEMM_DISABLE_DISK_CACHE", "1")
    with pytest.raises(RuntimeError, match="disk cache, which is off"):
        warmup([SHAPE], M_RANGE, jobs=1, progress=False)


# ---------------------------------------------------------------------------------------------
# Warm-up, strict mode, export / import (one real compile, in the module fixture)
# ---------------------------------------------------------------------------------------------


def test_warmup_compiles_what_the_shapes_need(warm_cache, cache_at):
    root, result = warm_cache
    assert (result.kernels, result.compiled, result.cached, result.failed) == (1, 1, 0, [])
    assert result.cache_entries == 1 and result.cache_bytes > 0
    assert result.cache_dir == str(root.resolve()) and "1 compiled" in str(result)
    cache_at(root)
    again = warmup([SHAPE], M_RANGE, jobs=1, progress=False)   # nothing left to compile
    assert (again.compiled, again.cached) == (0, 1)


def test_strict_mode_runs_from_a_warm_cache_and_refuses_a_miss(warm_cache, cache_at,
                                                               monkeypatch):
    root, _ = warm_cache
    cache_at(root)
    monkeypatch.setenv("PYFP8GEMM_JIT", "error")
    (needed,) = kernel_specs([SHAPE], M_RANGE)
    assert compiler.compile_kernel(needed).name == needed.name     # a hit: no compile
    (missing,) = [s for s in kernel_specs([SHAPE], (4096, 4096)) if s.name != needed.name]
    with pytest.raises(compiler.KernelNotCachedError,
                       match=f"{missing.name}.*python -m pyfp8gemm warmup.*--groups G"):
        compiler.compile_kernel(missing)


def test_export_import_round_trip_into_a_fresh_dir(warm_cache, cache_at, tmp_path,
                                                   monkeypatch):
    root, _ = warm_cache
    cache_at(root)
    file = tmp_path / "kernels.tar.gz"
    exported = archive.export_cache(file)
    assert exported.entries == 1 and file.stat().st_size == exported.bytes
    with tarfile.open(file) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        assert all(m.uid == 0 and m.uname == "" and m.mtime == 0 for m in tar.getmembers())
    assert names[0] == "manifest.json" and len(manifest["entries"]) == 1
    assert str(root) not in file.read_bytes().decode("latin-1")   # no paths

    fresh = tmp_path / "fresh-cache"
    cache_at(fresh)
    result = archive.import_cache(file)
    assert (result.imported, result.already, result.skipped, result.refused) == (1, 0, [], [])
    (needed,) = kernel_specs([SHAPE], M_RANGE)
    assert compiler.is_cached(needed)
    # (monkeypatch: a plain os.environ write outlived the test when the variable had not been
    # set before, and made later tests' compiles errors)
    monkeypatch.setenv("PYFP8GEMM_JIT", "error")
    assert compiler.compile_kernel(needed).cubin == store.KernelStore(root).read(
        store.key_of(compiler.cache_key(needed))).payload
    assert archive.import_cache(file).already == 1


def _rewrite_archive(source, target, edit):
    """Copy an archive, passing each (name, bytes) through `edit` (None drops it)."""
    import io

    with tarfile.open(source) as tar_in, tarfile.open(target, "w:gz") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read()
            edited = edit(member.name, data)
            if edited is None:
                continue
            name, data = edited
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar_out.addfile(info, io.BytesIO(data))


def test_import_refuses_entries_that_do_not_match_their_key(warm_cache, cache_at, tmp_path):
    root, _ = warm_cache
    cache_at(root)
    good = tmp_path / "good.tar.gz"
    archive.export_cache(good)
    other_key = "0" * 64

    def under_another_key(name, data):
        if name == "manifest.json":
            manifest = json.loads(data)
            for item in manifest["entries"]:
                item["key"], item["file"] = other_key, f"entries/{other_key}.entry"
            return name, json.dumps(manifest).encode()
        return f"entries/{other_key}.entry", data

    def flipped_byte(name, data):
        return name, data if name == "manifest.json" else data[:-1] + bytes([data[-1] ^ 1])

    def with_a_stowaway(name, data):
        return ("../../outside.entry", data) if name != "manifest.json" else (name, data)

    cache_at(tmp_path / "fresh")
    for edit, reason in ((under_another_key, "not a valid entry of its key"),
                         (flipped_byte, "checksum or key differs"),
                         (with_a_stowaway, "not an entry file")):
        bad = tmp_path / f"{edit.__name__}.tar.gz"
        _rewrite_archive(good, bad, edit)
        result = archive.import_cache(bad)
        assert result.imported == 0 and len(result.refused) == 1, result
        assert reason in result.refused[0][1]
    assert store.disk_store().keys() == []
    assert not (tmp_path / "outside.entry").exists()


def test_import_skips_entries_of_other_toolchains_and_says_so(warm_cache, cache_at, tmp_path,
                                                              monkeypatch):
    root, _ = warm_cache
    cache_at(root)
    file = tmp_path / "kernels.tar.gz"
    archive.export_cache(file)
    cache_at(tmp_path / "fresh")
    real = compiler.toolchain.versions()
    monkeypatch.setattr(compiler.toolchain, "versions", lambda: {**real, "ptxas": "99.0.0"})
    result = archive.import_cache(file)
    assert result.imported == 0 and len(result.skipped) == 1
    assert f"ptxas {real['ptxas']} (here 99.0.0)" in result.skipped[0][1]
    assert "other toolchain versions" in str(result)


def test_not_an_archive(tmp_path, cache_at):
    cache_at(tmp_path / "cache")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(archive.ArchiveError, match="not a readable tar archive"):
        archive.import_cache(junk)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "pyfp8gemm", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_cache_info_export_import(warm_cache, tmp_path):
    root, _ = warm_cache
    info = run_cli("cache", "info", "--json", env_extra={"PYFP8GEMM_CACHE_DIR": str(root)})
    assert info.returncode == 0, info.stderr
    status = json.loads(info.stdout)
    assert (status["trusted"], status["entries"], status["usable"]) == (True, 1, True)
    file = tmp_path / "k.tar.gz"
    out = run_cli("cache", "export", str(file), env_extra={"PYFP8GEMM_CACHE_DIR": str(root)})
    assert out.returncode == 0 and "exported 1 kernels" in out.stdout, out.stderr
    fresh = tmp_path / "fresh"
    out = run_cli("cache", "import", str(file), env_extra={"PYFP8GEMM_CACHE_DIR": str(fresh)})
    assert out.returncode == 0 and "imported 1 kernels" in out.stdout, out.stderr
    out = run_cli("warmup", "--shapes", f"{SHAPE[0]},{SHAPE[1]}", "--m-range", "33:64",
                  "--jobs", "1", env_extra={"PYFP8GEMM_CACHE_DIR": str(fresh)})
    assert out.returncode == 0 and "0 compiled, 1 already cached" in out.stdout, out.stderr


def test_cli_warmup_argument_errors():
    out = run_cli("warmup")
    assert out.returncode == 2 and "--shapes" in out.stderr
    out = run_cli("warmup", "--shapes", "2112,7000")
    assert out.returncode == 2 and "K % 16 == 0" in out.stderr


def test_cli_report_creates_no_cache_dir_and_says_when_it_is_off(tmp_path):
    root = tmp_path / "never-made"
    out = run_cli("--no-selfcheck", env_extra={"PYFP8GEMM_CACHE_DIR": str(root)})
    assert out.returncode == 0, out.stderr
    assert not root.exists()
    assert "not created yet" in out.stdout
    out = run_cli("--no-selfcheck", env_extra={"PYFP8GEMM_CACHE_DIR": str(root),
                                               "PYFP8GEMM_DISABLE_DISK_CACHE": "1"})
    assert "off ($PYFP8GEMM_DISABLE_DISK_CACHE is set)" in out.stdout


def test_cli_help_says_what_inspect_does():
    out = run_cli("--help")
    assert "compile every kernel and show registers/spills/SASS" in out.stdout
    assert "show the kernel cache" not in out.stdout
    assert "warmup" in out.stdout and "cache" in out.stdout


def test_grouped_and_wgrad_providers_add_their_kernels():
    """--groups / --wgrad add the MoE grouped and weight-gradient kernels those shapes need
    (enumerated only: nothing compiles here)."""
    from pyfp8gemm.warmup import (
        _kernel_specs_for, grouped_spec_provider, kernel_specs, wgrad_spec_provider,
    )

    shapes, ms = [(4096, 7168)], (1, 4096)
    dense = {s.name for s in kernel_specs(shapes, ms, providers=[_kernel_specs_for])}
    more = {s.name for s in kernel_specs(shapes, ms, providers=[
        _kernel_specs_for, grouped_spec_provider([8]), wgrad_spec_provider])}
    assert dense < more
    assert any("m_grouped_contiguous" in name for name in more - dense)
    assert any("m_grouped_masked" in name for name in more - dense)
    assert any(name.startswith("fp8_gemm_1d1d") and name.endswith("_acc") for name in more)
    with pytest.raises(ValueError, match="groups must be positive"):
        grouped_spec_provider([0])


def test_inspect_compiles_in_parallel_first(monkeypatch):
    """`inspect --jobs N` has warm-up compile the missing kernels in N processes before it
    reads every cubin back (here: no kernels, so nothing compiles)."""
    import importlib

    import pyfp8gemm.host.kernels as kernels
    inspect_module = importlib.import_module("pyfp8gemm.inspect")
    warmup_module = importlib.import_module("pyfp8gemm.warmup")

    calls = []
    monkeypatch.setattr(warmup_module, "warmup", lambda **kw: calls.append(kw))
    monkeypatch.setattr(kernels, "all_kernel_specs", lambda: [])
    assert inspect_module.inspect_all(jobs=3) == []
    assert calls == [dict(all_kernels=True, jobs=3, progress=False)]
    assert inspect_module.inspect_all(jobs=1) == [] and len(calls) == 1


def test_grouped_warmup_compiles_the_kernels_of_each_shape(monkeypatch):
    """With shape-compiled grouped kernels (the default), warm-up names the kernel of each
    (N, groups), the very kernel a launch of that shape plans; with them off, one per tile."""
    from pyfp8gemm.warmup import grouped_spec_provider, kernel_specs

    shapes, ms = [(4096, 7168), (2048, 7168)], (1024,)
    monkeypatch.setenv("PYFP8GEMM_SPECIALIZE_SHAPES", "1")
    named = {s.name for s in kernel_specs(shapes, ms, providers=[grouped_spec_provider([8, 6])])}
    for n in (4096, 2048):
        for groups in (8, 6):
            assert any(name.endswith(f"_shape{n}x{groups}x132") for name in named
                       if "masked" in name)
            assert any(name.endswith(f"_shape{n}x{groups}x0") for name in named
                       if "contiguous" in name)
    monkeypatch.setenv("PYFP8GEMM_SPECIALIZE_SHAPES", "0")
    generic = {s.name for s in kernel_specs(shapes, ms, providers=[grouped_spec_provider([8, 6])])}
    assert not any("_shape" in name for name in generic) and len(generic) < len(named)
