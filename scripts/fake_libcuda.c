/* A do-nothing libcuda.so.1 for timing the host path on a machine without a GPU
 * (scripts/host_overhead.py --fake-driver builds and loads it; nothing else uses it).
 *
 * cuda-bindings finds every driver function through cuGetProcAddress; this one hands out a
 * function that returns CUDA_SUCCESS and touches nothing, for every symbol, so the whole
 * Python path (cuda-bindings' wrappers, the ctypes cuLaunchKernelEx) runs for real and only
 * the driver's own work is missing. Handles come back as NULL, tensor maps as zeros.
 * A few calls whose outputs the callers read get plausible values.
 */
#include <string.h>

typedef int CUresult;

static CUresult success(void) { return 0; }

static CUresult driver_get_version(int *version) {
    *version = 13000;
    return 0;
}

static CUresult get_error_string(int error, const char **text) {
    (void)error;
    *text = "fake driver";
    return 0;
}

static CUresult get_proc_address(const char *symbol, void **pfn, int cuda_version,
                                 unsigned long long flags, int *status);

static CUresult get_proc_address_v2(const char *symbol, void **pfn, int cuda_version,
                                    unsigned long long flags, int *status) {
    return get_proc_address(symbol, pfn, cuda_version, flags, status);
}

static CUresult get_proc_address(const char *symbol, void **pfn, int cuda_version,
                                 unsigned long long flags, int *status) {
    (void)cuda_version;
    (void)flags;
    if (!strcmp(symbol, "cuGetProcAddress"))
        *pfn = (void *)get_proc_address_v2;
    else if (!strcmp(symbol, "cuDriverGetVersion"))
        *pfn = (void *)driver_get_version;
    else if (!strcmp(symbol, "cuGetErrorString") || !strcmp(symbol, "cuGetErrorName"))
        *pfn = (void *)get_error_string;
    else
        *pfn = (void *)success;
    if (status)
        *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
    return 0;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cuda_version,
                             unsigned long long flags, int *status) {
    return get_proc_address(symbol, pfn, cuda_version, flags, status);
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cuda_version,
                          unsigned long long flags) {
    return get_proc_address(symbol, pfn, cuda_version, flags, 0);
}

CUresult cuInit(unsigned int flags) {
    (void)flags;
    return 0;
}

CUresult cuDriverGetVersion(int *version) { return driver_get_version(version); }

CUresult cuLaunchKernelEx(const void *config, void *function, void **params, void **extra) {
    (void)config;
    (void)function;
    (void)params;
    (void)extra;
    return 0;
}
