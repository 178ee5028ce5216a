"""What pyfp8gemm needs to know about the GPU: its SM count and whether it is a Hopper.

Two small jobs live here.

1. The SM budget. The GEMM kernels are persistent: the launcher starts one CTA per SM and each
   CTA walks over output tiles until none are left. `get_num_sms()` says how many SMs that is.
   By default it is every SM of the current device; `set_num_sms(n)` lowers it (DeepGEMM's
   semantics), e.g. to leave SMs free for a communication kernel that runs at the same time.
   The value set is "use at most n SMs": on a device with fewer SMs, that device's count wins.

2. The architecture gate. The kernels use Hopper-only instructions (wgmma, TMA, setmaxnreg) and
   are assembled for sm_90a, which runs on compute capability 9.0 and nothing else (not even
   Blackwell, 10.x). `require_hopper(device, argname)` turns "wrong device" into an exception
   that names the argument, the GPU and its capability, instead of a launch failure later.

Everything is cached per device index, so the checks on the hot path are dictionary lookups:
no device synchronization, no driver calls after the first time.
"""

from __future__ import annotations

import torch

__all__ = [
    "get_num_sms",
    "set_num_sms",
    "device_sm_count",
    "is_hopper",
    "require_hopper",
    "HOPPER_CAPABILITY",
]

# Compute capability the sm_90a cubins run on (H100, H200, H800, H20).
HOPPER_CAPABILITY = (9, 0)

#: The most SMs of any Hopper part (H100/H200/H800 SXM: 132; H100 PCIe 114, H20 78):
#: set_num_sms's limit on a machine without a GPU.
MAX_HOPPER_SMS = 132

# Per device index: the number of SMs, and (name, capability). Filled on first use.
_sm_count_by_device: dict[int, int] = {}
_name_and_capability_by_device: dict[int, tuple[str, tuple[int, int]]] = {}

# The devices require_hopper has already accepted: its fast path is one set lookup.
_verified_hopper_devices: set[torch.device] = set()

# The value given to set_num_sms, or None for "all SMs of the device".
_num_sms_limit: int | None = None


def _device_index(device: torch.device | int | str | None) -> int:
    """The CUDA device index meant by `device` (None: the current device)."""
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    if device in _verified_hopper_devices:
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


def _name_and_capability(index: int) -> tuple[str, tuple[int, int]]:
    cached = _name_and_capability_by_device.get(index)
    if cached is None:
        props = torch.cuda.get_device_properties(index)
        cached = (props.name, (props.major, props.minor))
        _name_and_capability_by_device[index] = cached
    return cached


def device_sm_count(device: torch.device | int | str | None = None) -> int:
    """The number of SMs of a CUDA device (all of them, ignoring set_num_sms). Cached."""
    index = _device_index(device)
    count = _sm_count_by_device.get(index)
    if count is None:
        count = torch.cuda.get_device_properties(index).multi_processor_count
        _sm_count_by_device[index] = count
    return count


def get_num_sms(device: torch.device | int | str | None = None) -> int:
    """How many SMs the persistent kernels may use on `device` (default: the current device).

    That is the device's SM count, or the value given to set_num_sms if it is smaller. Without
    any CUDA device the value set is returned (so host code and tests can run on a CPU); if none
    was set either, a RuntimeError says so.
    """
    if not torch.cuda.is_available():
        if _num_sms_limit is None:
            raise RuntimeError(
                "get_num_sms(): no CUDA device is available and set_num_sms() was not called"
            )
        return _num_sms_limit
    count = device_sm_count(device)
    if _num_sms_limit is None:
        return count
    return min(_num_sms_limit, count)


def set_num_sms(num_sms: int) -> None:
    """Let the GEMM kernels use at most `num_sms` SMs (DeepGEMM's set_num_sms).

    The value must be an integer with 1 <= num_sms <= the current device's SM count (without a
    CUDA device: <= 132, the most any Hopper part has). It holds for every later call until it is set again.
    To go back to all SMs, set the device's count: `set_num_sms(device_sm_count())`.
    """
    global _num_sms_limit
    # bool is an int subclass; True SMs makes no sense.
    if isinstance(num_sms, bool) or not isinstance(num_sms, int):
        raise TypeError(f"set_num_sms(num_sms): expected an int, got {type(num_sms).__name__}")
    if num_sms < 1:
        raise ValueError(f"set_num_sms(num_sms): num_sms must be >= 1, got {num_sms}")
    if torch.cuda.is_available():
        count = device_sm_count()
        if num_sms > count:
            index = torch.cuda.current_device()
            name, _ = _name_and_capability(index)
            raise ValueError(
                f"set_num_sms(num_sms): num_sms must be <= the {count} SMs of cuda:{index} "
                f"({name}), got {num_sms}"
            )
    elif num_sms > MAX_HOPPER_SMS:
        raise ValueError(
            f"set_num_sms(num_sms): num_sms must be <= {MAX_HOPPER_SMS}, the most SMs any Hopper "
            f"GPU has (H100/H200/H800 SXM; no CUDA device here to check against), got {num_sms}"
        )
    _num_sms_limit = num_sms


def is_hopper(device: torch.device | int | str | None = None) -> bool:
    """True if `device` is a CUDA device of compute capability 9.0 (what sm_90a runs on)."""
    if isinstance(device, (torch.device, str)) and torch.device(device).type != "cuda":
        return False
    if not torch.cuda.is_available():
        return False
    _, capability = _name_and_capability(_device_index(device))
    return capability == HOPPER_CAPABILITY


def require_hopper(device: torch.device, argname: str) -> None:
    """Raise unless `device` (the device of argument `argname`) is a Hopper GPU.

    - not a CUDA device (e.g. a CPU tensor): ValueError, the argument is wrong;
    - a CUDA GPU that is not sm_90: RuntimeError naming the GPU and its capability, since the
      kernels are built for sm_90a only and the driver would refuse to run them.
    """
    if device in _verified_hopper_devices:
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(
            f"{argname} is on {device}; pyfp8gemm's kernels run on CUDA tensors only "
            f"(an NVIDIA Hopper GPU, sm_90): move it with .cuda() (CPU tensors go to the slow "
            f"reference backend instead)"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    name, capability = _name_and_capability(index)
    if capability != HOPPER_CAPABILITY:
        major, minor = capability
        raise RuntimeError(
            f"{argname} is on cuda:{index} ({name}, compute capability {major}.{minor}); "
            f"pyfp8gemm's kernels are built for Hopper (sm_90a: H100, H200, H800, H20, "
            f"compute capability 9.0) and cannot run on this GPU"
        )
    if device.index is not None:
        _verified_hopper_devices.add(device)
