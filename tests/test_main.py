"""`python -m pyfp8gemm`: the report, the no-Hopper exit, the self-check and inspect dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from pyfp8gemm import __main__ as cli
from pyfp8gemm.host import report


def _hopper_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _run_module(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "pyfp8gemm", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.skipif(_hopper_available(), reason="a Hopper GPU is present: the self-check runs")
def test_main_without_hopper_says_so_and_exits_0(tmp_path):
    cache = tmp_path / "kernel-cache"
    result = _run_module(env_extra={"PYFP8GEMM_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "No Hopper GPU found" in out
    assert "self-check was skipped" in out
    # The report's sections, with real values from this environment.
    assert torch.__version__ in out
    for heading in ("Packages", "CUDA", "Toolchain", "Kernel cache"):
        assert heading in out
    assert str(cache) in out and "$PYFP8GEMM_CACHE_DIR" in out
    assert "driver" in out and "ptxas" in out


def test_version_flag():
    result = _run_module("--version")
    assert result.returncode == 0
    import pyfp8gemm

    assert result.stdout.strip() == f"pyfp8gemm {pyfp8gemm.__version__}"


def test_unknown_argument_is_an_error():
    result = _run_module("--frobnicate")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr


# ------------------------------------------------------------------------------------------------
# In-process, with a fake GPU: what happens on Hopper and on other GPUs
# ------------------------------------------------------------------------------------------------


def _fake_gpus(monkeypatch, capability):
    gpu = report.Gpu(index=0, name="Fake GPU", capability=capability, sm_count=132, memory_gib=80.0)
    monkeypatch.setattr(report, "_gpus", lambda: ([gpu], 0, None))


def _fake_module(monkeypatch, name, **attributes):
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.mark.parametrize("selfcheck_result", [0, 1, 3])
def test_on_hopper_the_selfcheck_runs_and_sets_the_exit_code(monkeypatch, capsys, selfcheck_result):
    _fake_gpus(monkeypatch, (9, 0))
    calls = []
    _fake_module(monkeypatch, "pyfp8gemm.host.selfcheck",
                 run_selfcheck=lambda: calls.append(1) or selfcheck_result)
    assert cli.main([]) == selfcheck_result
    assert calls == [1]
    out = capsys.readouterr().out
    assert "Hopper GPU found: Fake GPU" in out
    assert "compute capability 9.0, 132 SMs" in out


def test_no_selfcheck_flag(monkeypatch, capsys):
    _fake_gpus(monkeypatch, (9, 0))
    _fake_module(monkeypatch, "pyfp8gemm.host.selfcheck",
                 run_selfcheck=lambda: pytest.fail("the self-check must not run"))
    assert cli.main(["--no-selfcheck"]) == 0
    assert "Self-check skipped" in capsys.readouterr().out


def test_on_hopper_without_a_selfcheck_module(monkeypatch, capsys):
    _fake_gpus(monkeypatch, (9, 0))
    real_import = report.optional_import
    monkeypatch.setattr(report, "optional_import",
                        lambda name: None if name == "pyfp8gemm.host.selfcheck" else real_import(name))
    assert cli.main([]) == 0
    assert "Self-check: not available" in capsys.readouterr().out


def test_other_gpu_is_not_hopper(monkeypatch, capsys):
    _fake_gpus(monkeypatch, (8, 0))
    _fake_module(monkeypatch, "pyfp8gemm.host.selfcheck",
                 run_selfcheck=lambda: pytest.fail("the self-check must not run"))
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "No Hopper GPU found (the current GPU is Fake GPU with compute capability 8.0)" in out


def test_missing_toolchain_and_store_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(tmp_path / "c"))
    real_import = report.optional_import
    missing = {"pyfp8gemm.cache.toolchain", "pyfp8gemm.cache.store"}
    monkeypatch.setattr(report, "optional_import",
                        lambda name: None if name in missing else real_import(name))
    text = report.collect().render()
    assert "toolchain" in text and "not available" in text
    assert str(tmp_path / "c") in text


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv("PYFP8GEMM_CACHE_DIR", raising=False)
    assert report.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "pyfp8gemm")
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", "/somewhere/else")
    assert report.default_cache_dir() == "/somewhere/else"


def test_driver_version_never_raises():
    text = report._driver_version()
    assert text.startswith("CUDA ") or "driver" in text or text.startswith("unknown")


def test_optional_import_only_swallows_the_missing_module_itself(monkeypatch, tmp_path):
    assert report.optional_import("pyfp8gemm.no_such_module") is None
    assert report.optional_import("pyfp8gemm.host.checks") is not None
    # A module that exists but lacks one of its own dependencies is a real error: it must raise,
    # not read as "not available".
    package = tmp_path / "probe_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("import not_a_real_dependency_4711\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dependency_4711"):
        report.optional_import("probe_package.broken")
    assert report.optional_import("probe_package.absent") is None


# ------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["inspect"], ["inspect", "--json"], ["inspect", "--help"]])
def test_inspect_passes_its_arguments_through(monkeypatch, argv):
    received = []
    _fake_module(monkeypatch, "pyfp8gemm.inspect",
                 main=lambda args: received.append(list(args)) or 7)
    assert cli.main(argv) == 7
    assert received == [argv[1:]]


def test_inspect_missing_module(monkeypatch, capsys):
    real_import = report.optional_import
    monkeypatch.setattr(report, "optional_import",
                        lambda name: None if name == "pyfp8gemm.inspect" else real_import(name))
    assert cli.main(["inspect", "--json"]) == 1
    assert "not available" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    # README.md promises `python -m pytest -q` as the test command; .ci/run must run exactly it.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as readme, open(os.path.join(root, ".ci", "run")) as ci:
        readme_text, ci_lines = readme.read(), [line.strip() for line in ci]
    assert "python -m pytest -q        # the tests" in readme_text
    assert ci_lines[-1] == "python -m pytest -q"
