"""The CUDA driver calls pyfp8gemm makes (through cuda.bindings), each turned into a Python
exception that names the call and the kernel when it fails.

- `tensormap_2d(...)`: cuTensorMapEncodeTiled for a 2-D row-major tensor, memoized: encoding
  costs a few microseconds of Python, and the same (pointer, shape, box) repeats call to call.
- `LoadedKernel`: a cubin loaded into the device's primary context (the one torch uses), its
  dynamic shared-memory limit raised, and `launch(grid, stream, params)` via cuLaunchKernelEx
  with a cluster dimension.
"""

from __future__ import annotations

import ctypes
import functools

from cuda.bindings import driver as cu


class CudaDriverError(RuntimeError):
    """A CUDA driver call failed."""


def check(result, call: str, kernel: str | None = None):
    """Unpack a cuda.bindings result tuple, raising CudaDriverError on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        _, text = cu.cuGetErrorString(err)
        where = f" for kernel {kernel}" if kernel else ""
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise CudaDriverError(f"{call}{where} failed: {err.name} ({detail})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


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
        self._configs: dict[int, cu.CUlaunchConfig] = {}

    def _config(self, grid: int) -> cu.CUlaunchConfig:
        """The launch configuration for a grid size, built once and reused."""
        config = self._configs.get(grid)
        if config is None:
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
            self._configs[grid] = config
        return config

    def max_active_clusters(self) -> int:
        """How many clusters of this kernel fit on the device at once (cluster co-scheduling
        needs all CTAs of a cluster in one GPC, so this can be below SMs / cluster size)."""
        config = self._config(self.cluster_size)
        return check(cu.cuOccupancyMaxActiveClusters(self.function, config),
                     "cuOccupancyMaxActiveClusters", self.name)

    def launch_packed(self, grid: int, stream: int, params_address: int):
        """cuLaunchKernelEx with a prebuilt `void*[]` of parameter pointers (see ParamBlock):
        no per-call marshalling, the fast path."""
        config = self._config(grid)
        config.hStream = stream
        err, = cu.cuLaunchKernelEx(config, self.function, params_address, 0)
        if err != cu.CUresult.CUDA_SUCCESS:
            check((err,), "cuLaunchKernelEx", self.name)

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


def current_raw_stream(device_index: int) -> int:
    """torch's current CUDA stream on a device, as a raw handle (the cheap way: no Stream
    object is built; torch.cuda.current_stream(...).cuda_stream gives the same value)."""
    import torch
    get_raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_raw is not None:
        return get_raw(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream
