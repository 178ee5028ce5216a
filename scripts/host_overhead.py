"""Python cost of one GEMM call on a cache hit (host side only; kernels run async).

    python scripts/host_overhead.py                 # on the GPU machine (a Hopper GPU)
    python scripts/host_overhead.py --fake-driver   # on any CPU, no GPU needed

Times, on a small shape (128 x 2112 x 7168) so the GPU never backs up the host, and prints one
line of medians in microseconds:

  fp8_gemm_nt(FP8Tensor) / fp8_gemm_nt(tuples) / matmul(FP8Tensor, w.t(), out=):
      the public calls, repeated with the same tensors (their fast path);
  fp8_gemm_nt_launch: the launch entry (validated tensors in, no checks);
  prebuilt launch: a BoundLaunch called (torch's stream read + the raw launch);
  raw cuLaunchKernelEx (ctypes): the foreign call alone, prebuilt config and parameters;
  raw cuLaunchKernelEx (cuda-bindings): the same launch through the cuda-bindings wrapper;
  torch.empty(1): for scale (how fast this host runs a small torch call).

--fake-driver: the driver is a do-nothing libcuda.so.1 (scripts/fake_libcuda.c, built here
with the system C compiler and loaded before cuda-bindings looks for the driver), tensors are
on the CPU and pass the Hopper check, the current stream is 0. Everything in Python (checks,
keys, cuda-bindings' wrappers, the ctypes call) runs for real; only the driver's own work is
missing, so the raw-launch figures are the Python/FFI floor, not what a real driver costs.
The kernel is still compiled (numba-cuda + ptxas, cached on disk) to get its configuration.
"""
import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

M, N, K = 128, 2112, 7168


def build_fake_libcuda() -> str:
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_libcuda.c")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("--fake-driver builds scripts/fake_libcuda.c and needs a C compiler (cc)")
    library = os.path.join(tempfile.mkdtemp(prefix="pyfp8gemm-fake-driver-"), "libcuda.so.1")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", library,
                    source], check=True)
    return library


def install_fake_driver() -> None:
    """Load the do-nothing driver (dlopen of "libcuda.so.1" then finds it by its soname) and
    fake what needs a GPU on torch's side."""
    ctypes.CDLL(build_fake_libcuda(), mode=ctypes.RTLD_GLOBAL)
    from pyfp8gemm.host import device_info, driver

    device_info.require_hopper = lambda device, argname: None   # CPU tensors pass
    from pyfp8gemm.host import gemm

    gemm._cpu_binder = gemm._kernel_binder   # ... to the kernel binder, not the CPU backend
    driver._make_primary_context_current = lambda index: None   # no torch.cuda on a CPU build
    driver.current_raw_stream = lambda index: 0
    device_info.set_num_sms(132)


def median_us(fn, n, synchronize):
    for _ in range(200):
        fn()
    samples = []
    clock = time.perf_counter
    for i in range(n):
        t = clock()
        fn()
        samples.append(clock() - t)
        if i % 500 == 0:
            synchronize()
    synchronize()
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fake-driver", action="store_true",
                        help="CPU only: a do-nothing libcuda, CPU tensors (see the docstring)")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per figure")
    args = parser.parse_args()

    if args.fake_driver:
        install_fake_driver()
        device, synchronize = "cpu", (lambda: None)
    else:
        device, synchronize = "cuda", torch.cuda.synchronize

    import pyfp8gemm
    from cuda.bindings import driver as cu
    from pyfp8gemm.host import driver, launch

    a = pyfp8gemm.quantize(torch.randn(M, K, device=device, dtype=torch.bfloat16), "1x128")
    b = pyfp8gemm.quantize(torch.randn(N, K, device=device, dtype=torch.bfloat16), "128x128")
    out = torch.empty(M, N, device=device, dtype=torch.bfloat16)
    pyfp8gemm.fp8_gemm_nt(a, b, out)
    synchronize()

    def time_us(fn):
        return median_us(fn, args.calls, synchronize)

    figures = {}
    figures["fp8_gemm_nt(FP8Tensor)"] = time_us(lambda: pyfp8gemm.fp8_gemm_nt(a, b, out))
    figures["fp8_gemm_nt(tuples)"] = time_us(
        lambda: pyfp8gemm.fp8_gemm_nt((a.data, a.scale), (b.data, b.scale), out))
    bt = b.t()
    figures["matmul(FP8Tensor, w.t(), out=)"] = time_us(
        lambda: pyfp8gemm.matmul(a, bt, out=out))
    figures["fp8_gemm_nt_launch"] = time_us(
        lambda: launch.fp8_gemm_nt_launch(a.data, a.scale, b.data, b.scale, out))

    stream = 0 if args.fake_driver else torch.cuda.current_stream().cuda_stream
    bound = launch.bind(a.data, a.scale, b.data, b.scale, out)
    plan, params_address = bound.plan, bound.params.address
    figures["prebuilt launch"] = time_us(bound)
    if driver.raw_launch_function() is not None:
        parts = plan.kernel.launch_parts(plan.grid)
        fn, function, config = parts.fn, parts.function, parts.config_for(stream)
        figures["raw cuLaunchKernelEx (ctypes)"] = time_us(
            lambda: fn(config, function, params_address, None))
    kernel = plan.kernel
    bindings_config = kernel._config(plan.grid)

    def bindings_launch():
        bindings_config.hStream = stream
        cu.cuLaunchKernelEx(bindings_config, kernel.function, params_address, 0)

    figures["raw cuLaunchKernelEx (cuda-bindings)"] = time_us(bindings_launch)
    figures["(torch.empty(1) for scale)"] = time_us(lambda: torch.empty(1, device=device))

    where = "dev CPU, fake driver, CPU tensors" if args.fake_driver else "GPU host"
    print(f"host cost per call ({where}; median of {args.calls}, us): "
          + " | ".join(f"{name} {value:.2f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
