"""The CUDA driver calls pyfp8gemm makes (through cuda.bindings), each turned into a Python
exception that names the call and the kernel when it fails.

- `tensormap_2d(...)`: cuTensorMapEncodeTiled for a 2-D row-major tensor, memoized: encoding
  costs a few microseconds of Python, and the same (pointer, shape, box) repeats call to call.
- `LoadedKernel`: a cubin loaded into the device's primary context (the one torch uses), its
  dynamic shared-memory limit raised, and `launch(grid, stream, params)` via cuLaunchKernelEx
  with a cluster dimension.
- The raw launch (the per-call hot path): the driver's cuLaunchKernelEx called through ctypes
  with a `CUlaunchConfig` (and its one cluster-dimension `CUlaunchAttribute`) laid out once in
  ctypes memory per (kernel, grid, stream), so a launch is one foreign call with four pointers.
  `LaunchConfig` / `LaunchAttribute` copy cuda.h's layout (tests/test_raw_launch.py compares
  their bytes with cuda-bindings' own structs). Without the driver's function pointer, the
  cuda-bindings wrapper does the same job (`raw_launch_function()` is None).
"""

from __future__ import annotations

import ctypes
import functools
import os

from cuda.bindings import driver as cu


class CudaDriverError(RuntimeError):
    """A CUDA driver call failed."""


def check(result, call: str, kernel: str | None = None):
    """Unpack a cuda.bindings result tuple, raising CudaDriverError on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise CudaDriverError(error_message(err, call, kernel))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def error_message(err, call: str, kernel: str | None = None) -> str:
    """"<call> for kernel <kernel> failed: CUDA_ERROR_... (<the driver's description>)" for a
    CUresult or a plain int error code (what the raw ctypes launch returns)."""
    try:
        err = cu.CUresult(int(err))
        name = err.name
    except ValueError:                     # a code this cuda-bindings does not know
        name = f"CUresult {int(err)}"
    try:
        status, text = cu.cuGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        if status != cu.CUresult.CUDA_SUCCESS or not detail:
            detail = "no description from the driver"
    except Exception:                       # no driver to ask (unknown code, CPU-only machine)
        detail = "no description from the driver"
    where = f" for kernel {kernel}" if kernel else ""
    return f"{call}{where} failed: {name} ({detail})"


# ----------------------------------------------------------------------------------------------
# Tensor maps
# ----------------------------------------------------------------------------------------------

DTYPE_FP8 = cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_UINT8     # e4m3 moves as bytes
DTYPE_F32 = cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT32
DTYPE_BF16 = cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16

_SWIZZLE = {
    0: cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_NONE,
    16: cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_NONE,   # 16-byte panels, no swizzle
    32: cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_32B,
    64: cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_64B,
    128: cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
}


@functools.lru_cache(maxsize=4096)
def tensormap_2d(dtype, address: int, inner: int, outer: int, row_stride_bytes: int,
                 box_inner: int, box_outer: int, swizzle_bytes: int = 0) -> cu.CUtensorMap:
    """A TMA descriptor for a 2-D tensor [outer][inner] (inner contiguous).

    Out-of-bounds boxes read zeros (the M/N/K tails) and out-of-bounds stores are dropped.
    """
    u64, u32 = cu.cuuint64_t, cu.cuuint32_t
    return check(cu.cuTensorMapEncodeTiled(
        dtype, 2, address,
        [u64(inner), u64(outer)], [u64(row_stride_bytes)],
        [u32(box_inner), u32(box_outer)], [u32(1), u32(1)],
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        _SWIZZLE[swizzle_bytes],
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
        "cuTensorMapEncodeTiled")


def tensormap_bytes(tensormap: cu.CUtensorMap) -> bytes:
    """The 128 bytes of an encoded tensor map (to place it in device memory)."""
    return ctypes.string_at(tensormap.getPtr(), 128)


def tensormap_3d(dtype, address: int, dims, strides_bytes, box, swizzle_bytes: int = 0
                 ) -> cu.CUtensorMap:
    """A TMA descriptor for a 3-D tensor: `dims` (innermost first), the byte strides of the
    two outer dimensions, the box. Out-of-bounds reads are zeros, stores are dropped (per
    dimension: a box never runs into the next slice of an outer dimension)."""
    u64, u32 = cu.cuuint64_t, cu.cuuint32_t
    return check(cu.cuTensorMapEncodeTiled(
        dtype, 3, address, [u64(d) for d in dims], [u64(s) for s in strides_bytes],
        [u32(b) for b in box], [u32(1), u32(1), u32(1)],
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        _SWIZZLE[swizzle_bytes],
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
        "cuTensorMapEncodeTiled")


# ----------------------------------------------------------------------------------------------
# The raw launch: cuLaunchKernelEx through ctypes
# ----------------------------------------------------------------------------------------------

class LaunchDim3(ctypes.Structure):
    """`struct { unsigned int x, y, z; } clusterDim` of cuda.h's CUlaunchAttributeValue."""
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class LaunchAttributeValue(ctypes.Union):
    """cuda.h's `union CUlaunchAttributeValue`: 64 bytes (`char pad[64]`), pointer-aligned (its
    CUaccessPolicyWindow member holds a `void*`); `clusterDim` sits at offset 0. Only the
    members pyfp8gemm writes are named."""
    _fields_ = [("pad", ctypes.c_char * 64), ("clusterDim", LaunchDim3),
                ("_pointer_alignment", ctypes.c_void_p)]


class LaunchAttribute(ctypes.Structure):
    """cuda.h's `struct CUlaunchAttribute`: `CUlaunchAttributeID id` (an enum: 4 bytes),
    `char pad[8 - sizeof(id)]`, `CUlaunchAttributeValue value`: 72 bytes."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", LaunchAttributeValue)]


class LaunchConfig(ctypes.Structure):
    """cuda.h's `struct CUlaunchConfig`: seven unsigned ints (grid, block, shared memory), then
    `CUstream hStream`, `CUlaunchAttribute *attrs`, `unsigned int numAttrs`: 56 bytes."""
    _fields_ = [
        ("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint),
        ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(LaunchAttribute)),
        ("numAttrs", ctypes.c_uint),
    ]


#: `CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
#: void **extra)`. A CFUNCTYPE releases the GIL during the call, like cuda-bindings does.
LAUNCH_KERNEL_EX = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(LaunchConfig), ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p)

#: The CUDA version whose cuLaunchKernelEx ABI the structures above copy (unchanged from 11.8
#: through 13.x).
LAUNCH_KERNEL_EX_ABI = 12000

CLUSTER_DIMENSION = int(cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
CUDA_ERROR_INVALID_CONTEXT = int(cu.CUresult.CUDA_ERROR_INVALID_CONTEXT)

_UNRESOLVED = object()
_raw_launch_function = _UNRESOLVED


def _resolve_raw_launch_function():
    """The driver's cuLaunchKernelEx as a ctypes function: from cuda-bindings'
    cuGetProcAddress (the legacy-default-stream variant, the one whose stream 0 is torch's
    default stream), else from libcuda.so.1's exported symbol, else None."""
    if os.environ.get("PYFP8GEMM_DISABLE_RAW_LAUNCH") == "1":
        return None
    address = 0
    try:
        result = cu.cuGetProcAddress(
            b"cuLaunchKernelEx", LAUNCH_KERNEL_EX_ABI,
            cu.CUdriverProcAddress_flags.CU_GET_PROC_ADDRESS_LEGACY_STREAM)
        if result[0] == cu.CUresult.CUDA_SUCCESS:
            address = int(result[1] or 0)
    except Exception:
        address = 0
    if not address:
        try:
            address = ctypes.cast(ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx,
                                  ctypes.c_void_p).value or 0
        except (OSError, AttributeError):
            address = 0
    return LAUNCH_KERNEL_EX(address) if address else None


def raw_launch_function():
    """The ctypes cuLaunchKernelEx (resolved once), or None: then launches go through
    cuda-bindings. `PYFP8GEMM_DISABLE_RAW_LAUNCH=1` forces None."""
    global _raw_launch_function
    if _raw_launch_function is _UNRESOLVED:
        _raw_launch_function = _resolve_raw_launch_function()
    return _raw_launch_function


def raw_launch_config(grid: int, threads: int, smem_bytes: int, cluster_size: int,
                      stream: int) -> LaunchConfig:
    """A CUlaunchConfig in ctypes memory with one cluster-dimension attribute (kept alive by
    the returned structure)."""
    attribute = LaunchAttribute()
    attribute.id = CLUSTER_DIMENSION
    attribute.value.clusterDim.x, attribute.value.clusterDim.y = cluster_size, 1
    attribute.value.clusterDim.z = 1
    config = LaunchConfig(grid, 1, 1, threads, 1, 1, smem_bytes, stream or None,
                          ctypes.pointer(attribute), 1)
    config._attribute = attribute             # noqa: SLF001 (keeps the attribute alive)
    return config


class LaunchParts:
    """What a prebuilt launch of one kernel at one grid size needs, per call:
    `err = fn(configs.get(stream) or config_for(stream), function, params_address, None)`.

    `fn` is the ctypes cuLaunchKernelEx (`function` the raw CUfunction handle, `configs` maps a
    raw stream handle to its LaunchConfig) or, without it, a cuda-bindings wrapper with the
    same calling convention. One config per stream, never written after it is built: two
    threads launching the same kernel on different streams cannot see each other's stream
    (a shared config whose stream field is written per call could, since the driver call runs
    without the GIL).
    """

    MAX_STREAMS = 256

    def __init__(self, fn, function, build_config, kernel_name: str):
        self.fn, self.function, self.kernel_name = fn, function, kernel_name
        self._build_config = build_config
        self.configs: dict = {}

    def config_for(self, stream: int):
        config = self.configs.get(stream)
        if config is None:
            config = self._build_config(stream)
            if len(self.configs) >= self.MAX_STREAMS:
                # Dropped, not freed under a running launch: the caller holds its own reference.
                evict_oldest(self.configs)
            self.configs[stream] = config
        return config

    def launch(self, stream: int, params_address: int) -> None:
        """One launch, with the error check (the unhurried form of what BoundLaunch inlines)."""
        config = self.configs.get(stream)
        if config is None:
            config = self.config_for(stream)
        err = self.fn(config, self.function, params_address, None)
        if err:
            self.failed(err)

    def failed(self, err) -> None:
        raise CudaDriverError(error_message(err, "cuLaunchKernelEx", self.kernel_name))


def evict_oldest(cache: dict) -> None:
    """Drop a bounded cache's oldest entry (insertion order); harmless if another thread got
    there first."""
    try:
        cache.pop(next(iter(cache)), None)
    except (StopIteration, RuntimeError):   # emptied, or changed by another thread meanwhile
        pass


def _bindings_launch(config, function, params_address, extra) -> int:
    """cuLaunchKernelEx through cuda-bindings, with the raw launch's calling convention."""
    err, = cu.cuLaunchKernelEx(config, function, params_address, 0)
    return int(err)


# ----------------------------------------------------------------------------------------------
# Modules and launches
# ----------------------------------------------------------------------------------------------

def _make_primary_context_current(device_index: int):
    """Make torch's context (the device's primary context) current on this thread."""
    import torch
    torch.cuda.init()
    device = check(cu.cuDeviceGet(device_index), "cuDeviceGet")
    context = check(cu.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(context), "cuCtxSetCurrent")


class LoadedKernel:
    """A compiled kernel loaded on one device, ready to launch."""

    def __init__(self, name: str, cubin: bytes, device_index: int, threads: int,
                 smem_bytes: int, cluster_size: int):
        self.name, self.threads = name, threads
        self.smem_bytes, self.cluster_size = smem_bytes, cluster_size
        _make_primary_context_current(device_index)
        self.module = check(cu.cuModuleLoadData(cubin), "cuModuleLoadData", name)
        self.function = check(cu.cuModuleGetFunction(self.module, name.encode()),
                              "cuModuleGetFunction", name)
        check(cu.cuFuncSetAttribute(
            self.function,
            cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_bytes), "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", name)
        self.device_index = device_index
        self._configs: dict[int, cu.CUlaunchConfig] = {}
        self._launch_parts: dict[int, LaunchParts] = {}

    def launch_parts(self, grid: int) -> LaunchParts:
        """The prebuilt launch of this kernel at a grid size (see LaunchParts), built once."""
        parts = self._launch_parts.get(grid)
        if parts is None:
            fn = raw_launch_function()
            if fn is not None:
                threads, smem, cluster = self.threads, self.smem_bytes, self.cluster_size
                parts = LaunchParts(
                    fn, int(self.function),
                    lambda stream: raw_launch_config(grid, threads, smem, cluster, stream),
                    self.name)
            else:
                parts = LaunchParts(_bindings_launch, self.function,
                                    lambda stream: self._bindings_config(grid, stream), self.name)
            self._launch_parts[grid] = parts
        return parts

    def _bindings_config(self, grid: int, stream: int) -> cu.CUlaunchConfig:
        config = self._new_config(grid)
        config.hStream = stream
        return config

    def _config(self, grid: int) -> cu.CUlaunchConfig:
        """The cuda-bindings launch configuration for a grid size, built once and reused."""
        config = self._configs.get(grid)
        if config is None:
            config = self._configs[grid] = self._new_config(grid)
        return config

    def _new_config(self, grid: int) -> cu.CUlaunchConfig:
        config = cu.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid, 1, 1
        config.blockDimX, config.blockDimY, config.blockDimZ = self.threads, 1, 1
        config.sharedMemBytes = self.smem_bytes
        attr = cu.CUlaunchAttribute()
        attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attr.value.clusterDim.x = self.cluster_size
        attr.value.clusterDim.y = 1
        attr.value.clusterDim.z = 1
        config.attrs = [attr]
        config.numAttrs = 1
        return config

    def launch(self, grid: int, stream: int, values: tuple, ctypes_types: tuple):
        """cuLaunchKernelEx on `stream` (a raw CUstream handle, e.g. torch's cuda_stream).

        `values`/`ctypes_types` follow cuda.bindings: a CUtensorMap goes by value with type None.
        """
        config = self._config(grid)
        config.hStream = stream
        check(cu.cuLaunchKernelEx(config, self.function, (values, ctypes_types), 0),
              "cuLaunchKernelEx", self.name)


c_int32, c_int64 = ctypes.c_int32, ctypes.c_int64


class ParamBlock:
    """Kernel parameters laid out once in host memory, with the `void*[]` the driver reads.

    `values` are CUtensorMap objects (copied by value, 128 bytes) or (ctypes type, value) pairs.
    """

    def __init__(self, values):
        self._storage = []
        pointers = (ctypes.c_void_p * len(values))()
        for i, value in enumerate(values):
            if isinstance(value, cu.CUtensorMap):
                buf = (ctypes.c_uint8 * 128)()
                ctypes.memmove(buf, value.getPtr(), 128)
            else:
                ctype, number = value
                buf = ctype(number)
            self._storage.append(buf)
            pointers[i] = ctypes.addressof(buf)
        self._pointers = pointers
        self.address = ctypes.addressof(pointers)


def _current_raw_stream_function():
    import torch
    get_raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_raw is not None:
        return get_raw

    def current_raw_stream(device_index: int) -> int:
        return torch.cuda.current_stream(device_index).cuda_stream

    return current_raw_stream


#: `current_raw_stream(device_index) -> int`: torch's current CUDA stream on a device, as a raw
#: handle. It is torch's own C function where torch has one (no Python frame, no Stream object;
#: torch.cuda.current_stream(device_index).cuda_stream gives the same value).
current_raw_stream = _current_raw_stream_function()


def make_context_current_if_none(device_index: int) -> bool:
    """If this thread has no current CUDA context (a thread that never used the CUDA runtime),
    make the device's primary context (torch's) current, as the runtime itself would on its
    first call, and return True; otherwise change nothing and return False."""
    context = check(cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if context is not None and int(context) != 0:
        return False
    _make_primary_context_current(device_index)
    return True
