"""The raw launch's ctypes structures against cuda-bindings' own (CPU, no driver needed).

driver.LaunchConfig / LaunchAttribute are what the ctypes cuLaunchKernelEx hands the driver, so
they must be cuda.h's CUlaunchConfig / CUlaunchAttribute byte for byte. cuda-bindings builds
those structs from cuda.h itself: filled with the same distinct values, both must hold the same
bytes, and have the same sizes.
"""

import ctypes

import pytest
from cuda.bindings import driver as cu

from pyfp8gemm.host import driver


def bindings_bytes(struct, size: int) -> bytes:
    return ctypes.string_at(struct.getPtr(), size)


def test_sizes_match_cuda_bindings():
    assert ctypes.sizeof(driver.LaunchConfig) == cu.sizeof(cu.CUlaunchConfig) == 56
    assert ctypes.sizeof(driver.LaunchAttribute) == cu.sizeof(cu.CUlaunchAttribute) == 72
    assert ctypes.sizeof(driver.LaunchAttributeValue) == cu.sizeof(cu.CUlaunchAttributeValue) == 64
    assert ctypes.alignment(driver.LaunchConfig) == 8
    assert ctypes.alignment(driver.LaunchAttribute) == 8


def test_field_offsets():
    offsets = {name: getattr(driver.LaunchConfig, name).offset
               for name, _ in driver.LaunchConfig._fields_}
    assert offsets == {"gridDimX": 0, "gridDimY": 4, "gridDimZ": 8, "blockDimX": 12,
                       "blockDimY": 16, "blockDimZ": 20, "sharedMemBytes": 24, "hStream": 32,
                       "attrs": 40, "numAttrs": 48}
    assert driver.LaunchAttribute.id.offset == 0
    assert driver.LaunchAttribute.value.offset == 8
    assert driver.LaunchAttributeValue.clusterDim.offset == 0


def bindings_attribute(x, y, z):
    attr = cu.CUlaunchAttribute()
    attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = x, y, z
    return attr


def test_attribute_bytes_match_cuda_bindings():
    ours = driver.LaunchAttribute()
    ours.id = driver.CLUSTER_DIMENSION
    ours.value.clusterDim.x, ours.value.clusterDim.y, ours.value.clusterDim.z = 2, 3, 5
    assert bytes(ours) == bindings_bytes(bindings_attribute(2, 3, 5), 72)
    assert driver.CLUSTER_DIMENSION == 4          # cuda.h: CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION


@pytest.mark.parametrize("stream", [0, 0x7F00_1234_5678_9ABC])
def test_config_bytes_match_cuda_bindings(stream):
    """Every field distinct (grid 0x101.., block 0x202.., ...), the stream a full 64-bit value,
    the attribute pointer compared by what it points at."""
    values = dict(gridDimX=0x1010101, gridDimY=0x1020304, gridDimZ=0x1050607,
                  blockDimX=0x2010101, blockDimY=0x2020304, blockDimZ=0x2050607,
                  sharedMemBytes=0x3A0B0C0D)
    theirs = cu.CUlaunchConfig()
    for name, value in values.items():
        setattr(theirs, name, value)
    theirs.hStream = cu.CUstream(stream)
    theirs.attrs = [bindings_attribute(2, 1, 1)]
    theirs.numAttrs = 1

    ours = driver.raw_launch_config(values["gridDimX"], values["blockDimX"],
                                    values["sharedMemBytes"], 2, stream)
    for name, value in values.items():
        setattr(ours, name, value)

    theirs_bytes = bindings_bytes(theirs, 56)
    ours_bytes = bytes(ours)
    # Everything but the attribute pointer (bytes 40..47) is the same, padding included.
    assert ours_bytes[:40] == theirs_bytes[:40]
    assert ours_bytes[48:] == theirs_bytes[48:]
    assert int.from_bytes(ours_bytes[32:40], "little") == stream
    # The pointers differ (each struct owns its attribute), what they point at does not.
    their_attrs = int.from_bytes(theirs_bytes[40:48], "little")
    our_attrs = int.from_bytes(ours_bytes[40:48], "little")
    assert ctypes.string_at(our_attrs, 72) == ctypes.string_at(their_attrs, 72)
    assert ctypes.string_at(our_attrs, 72) == bytes(ours._attribute)


def test_raw_launch_config_layout_values():
    config = driver.raw_launch_config(132, 384, 200_000, 2, 0xABC)
    assert (config.gridDimX, config.gridDimY, config.gridDimZ) == (132, 1, 1)
    assert (config.blockDimX, config.blockDimY, config.blockDimZ) == (384, 1, 1)
    assert config.sharedMemBytes == 200_000 and config.hStream == 0xABC
    assert config.numAttrs == 1 and config.attrs[0].id == driver.CLUSTER_DIMENSION
    cluster = config.attrs[0].value.clusterDim
    assert (cluster.x, cluster.y, cluster.z) == (2, 1, 1)


def test_foreign_function_calls_through_the_prototype():
    """LAUNCH_KERNEL_EX on a C function of the same shape (libc's pthread_equal(a, b): 0 when
    a != b, the extra arguments ignored): the config travels as a pointer, the rest as
    pointer-sized integers, the result comes back as an int."""
    libc = ctypes.CDLL(None)
    fn = driver.LAUNCH_KERNEL_EX(ctypes.cast(libc.pthread_equal, ctypes.c_void_p).value)
    config = driver.raw_launch_config(1, 128, 0, 1, 0)
    assert fn(config, 0x7F00_0000_1000, 0x7F00_0000_2000, None) == 0


def test_foreign_function_passes_the_config_address_and_full_pointers():
    """What the driver would receive: the config's own address (the structure is passed by
    reference, not copied), the CUfunction handle and the params address as full 64-bit
    values, NULL for `extra`."""
    received = []

    def fake_driver(config, function, params, extra):
        received.append((ctypes.addressof(config.contents), function, params, extra))
        return 700

    fn = driver.LAUNCH_KERNEL_EX(fake_driver)
    config = driver.raw_launch_config(132, 384, 1000, 2, 0x7F00_1234_5678)
    assert fn(config, 0x7F12_3456_789A, 0x7FFF_0000_1230, None) == 700
    assert received == [(ctypes.addressof(config), 0x7F12_3456_789A, 0x7FFF_0000_1230, None)]


def test_launch_parts_build_one_config_per_stream_and_raise_named_errors():
    calls = []
    parts = driver.LaunchParts(lambda *args: calls.append(args) or 0, 0xF00,
                               lambda stream: driver.raw_launch_config(8, 128, 0, 1, stream),
                               "some_kernel")
    parts.launch(5, 0x1000)
    parts.launch(5, 0x1000)
    parts.launch(6, 0x1000)
    assert len(calls) == 3 and calls[0][0] is calls[1][0] is parts.configs[5]
    assert parts.configs[6].hStream == 6
    parts.fn = lambda *args: 2                     # CUDA_ERROR_OUT_OF_MEMORY
    with pytest.raises(driver.CudaDriverError,
                       match="cuLaunchKernelEx for kernel some_kernel failed: "
                             "CUDA_ERROR_OUT_OF_MEMORY"):
        parts.launch(5, 0x1000)


def test_launch_parts_keep_a_bounded_number_of_streams(monkeypatch):
    monkeypatch.setattr(driver.LaunchParts, "MAX_STREAMS", 3)
    parts = driver.LaunchParts(lambda *args: 0, 0, lambda stream: object(), "k")
    for stream in range(5):
        parts.config_for(stream)
    assert list(parts.configs) == [2, 3, 4]


def test_error_message_names_call_and_kernel():
    message = driver.error_message(1, "cuLaunchKernelEx", "fp8_gemm_128x64")
    assert message.startswith(
        "cuLaunchKernelEx for kernel fp8_gemm_128x64 failed: CUDA_ERROR_INVALID_VALUE (")
    assert "CUresult 123456" in driver.error_message(123456, "cuLaunchKernelEx", "k")


def test_raw_launch_can_be_disabled(monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_DISABLE_RAW_LAUNCH", "1")
    assert driver._resolve_raw_launch_function() is None
