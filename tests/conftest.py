"""Shared pytest setup.

* The `gpu` marker: a test marked `@pytest.mark.gpu` needs an NVIDIA Hopper GPU (compute
  capability 9.0) and is skipped, with the reason, everywhere else (CI has no GPU).
* The `seed` fixture: a fresh random seed per test, printed so that a failure can be replayed
  (pytest shows a failing test's captured output).
* A private kernel cache: the tests compile into a temporary directory (PYFP8GEMM_CACHE_DIR,
  set before collection and shared by pytest-xdist workers), never into the user's real
  ~/.cache/pyfp8gemm. PYFP8GEMM_TEST_CACHE_DIR=DIR makes them use DIR instead (e.g. a GPU run
  whose kernels `python -m pyfp8gemm warmup` compiled beforehand).
* One m-grouped kernel per tile for every shape: PYFP8GEMM_SPECIALIZE_SHAPES=0 unless the
  environment sets it (the suite's dozens of (N, groups) would each compile a kernel of their
  own); test_grouped_gpu checks the shape-compiled kernels against these bit for bit.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

TEST_CACHE_ENV = "PYFP8GEMM_TEST_CACHE_DIR"


def pytest_configure(config):
    """Point the kernel cache at a temporary directory before any test module is imported.

    The controller sets PYFP8GEMM_TEST_CACHE_DIR too, so xdist workers (started with its
    environment) share the one directory instead of compiling every kernel each."""
    chosen = os.environ.get(TEST_CACHE_ENV)
    if not chosen:
        config._pyfp8gemm_temp_cache = tempfile.mkdtemp(prefix="pyfp8gemm-test-cache-")
        chosen = os.path.join(config._pyfp8gemm_temp_cache, "kernels")
        os.environ[TEST_CACHE_ENV] = chosen
    config._pyfp8gemm_saved_env = {name: os.environ.get(name)
                                   for name in ("PYFP8GEMM_CACHE_DIR", TEST_CACHE_ENV,
                                                "PYFP8GEMM_SPECIALIZE_SHAPES")}
    os.environ["PYFP8GEMM_CACHE_DIR"] = chosen
    os.environ.setdefault("PYFP8GEMM_SPECIALIZE_SHAPES", "0")


def pytest_unconfigure(config):
    temp = getattr(config, "_pyfp8gemm_temp_cache", None)
    for name, value in getattr(config, "_pyfp8gemm_saved_env", {}).items():
        if name == TEST_CACHE_ENV and temp:
            value = None  # ours: gone with the directory
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if temp:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def private_kernel_cache():
    """The session's kernel cache directory; fails loudly if a test run would use the real one."""
    chosen = os.environ[TEST_CACHE_ENV]
    assert os.environ.get("PYFP8GEMM_CACHE_DIR") == chosen, (
        "the tests must compile into their own cache (tests/conftest.py sets PYFP8GEMM_CACHE_DIR)")
    return chosen


def hopper_available() -> bool:
    """True if torch sees a CUDA device of compute capability 9.0 as its current device."""
    try:
        return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
    except Exception:  # a broken driver install counts as "no GPU" for skipping purposes
        return False


def _why_no_hopper() -> str:
    if torch.version.cuda is None:
        return "needs a Hopper GPU; this torch is a CPU-only build"
    if not torch.cuda.is_available():
        return "needs a Hopper GPU; torch.cuda.is_available() is False"
    major, minor = torch.cuda.get_device_capability()
    return f"needs a Hopper GPU (capability 9.0); the current GPU has {major}.{minor}"


def pytest_collection_modifyitems(config, items):
    if hopper_available():
        return
    skip_gpu = pytest.mark.skip(reason=_why_no_hopper())
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def seed() -> int:
    value = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {value}")
    return value


@pytest.fixture
def generator(seed) -> torch.Generator:
    """A CPU torch.Generator seeded with this test's fresh seed."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def fp8_allclose(monkeypatch):
    """opcheck's schema test compares every input before and after the call with
    torch.allclose, which torch does not implement for float8 on the CPU ("mul_cpu_reduced_float"
    not implemented for 'Float8_e4m3fn'); compare FP8 tensors bit for bit instead."""
    allclose = torch.allclose

    def fp8_aware(a, b, *args, **kwargs):
        if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        return allclose(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "allclose", fp8_aware)


@pytest.fixture(autouse=True)
def restore_contiguous_alignment():
    """Tests that set the m-grouped contiguous layout's alignment (64 or 128) leave it as they
    found it."""
    from pyfp8gemm.host import grouped

    saved = grouped.get_mk_alignment_for_contiguous_layout()
    yield
    grouped.set_mk_alignment_for_contiguous_layout(saved)
