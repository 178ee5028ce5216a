"""Shared pytest setup.

* The `gpu` marker: a test marked `@pytest.mark.gpu` needs an NVIDIA Hopper GPU (compute
  capability 9.0) and is skipped, with the reason, everywhere else (CI has no GPU).
* The `seed` fixture: a fresh random seed per test, printed so that a failure can be replayed
  (pytest shows a failing test's captured output).
"""

from __future__ import annotations

import os

import pytest
import torch


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
