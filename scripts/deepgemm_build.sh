#!/usr/bin/env bash
# On the GPU machine: unpack .devcarry/deepgemm-src.tar.xz (scripts/deepgemm_source.sh) into .dg/
# and build DeepGEMM's extension (deep_gemm/_C*.so) against the machine's torch and CUDA, for
# comparison runs only (or unpack .devcarry/deepgemm-C.tar.xz, saved by an earlier call).
# Afterwards `PYTHONPATH=$PWD/.dg python3 -c "import deep_gemm"` works; its kernels are compiled
# on first use (DG_JIT_CACHE_DIR, scripts/deepgemm_warm.py compiles the benchmarks' in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .dg ] || tar -xJf .devcarry/deepgemm-src.tar.xz
[ -f .devcarry/deepgemm-C.tar.xz ] && tar -xJf .devcarry/deepgemm-C.tar.xz
cd .dg
ls deep_gemm/_C*.so >/dev/null 2>&1 && { echo "deep_gemm/_C already built"; exit 0; }
# The system g++: a _C built by another GCC (the image's /opt/gcc) carried its own libstdc++
# locale code, and std::regex in DeepGEMM's JIT segfaulted on the first call (session 10).
[ -x /usr/bin/g++ ] && export CXX=${CXX:-/usr/bin/g++}
echo "CXX=${CXX:-g++}: $(${CXX:-g++} --version | head -1); torch's: $(python3 -c 'import torch; print(torch.__config__.show())' | grep -m1 -i 'gcc\|compiler')"
python3 - <<'PY'
import os, torch, setuptools
from torch.utils.cpp_extension import BuildExtension, CUDAExtension, CUDA_HOME

flags = ["-std=c++17", "-O3", "-fPIC", "-Wno-psabi", "-Wno-deprecated-declarations",
         f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"]
setuptools.setup(
    name="deep_gemm", script_args=["-q", "build_ext", "--inplace"],
    ext_modules=[CUDAExtension(
        "deep_gemm._C", ["csrc/python_api.cpp"],
        include_dirs=[f"{CUDA_HOME}/include", f"{CUDA_HOME}/include/cccl",
                      os.path.abspath("deep_gemm/include"),        # ninja builds elsewhere
                      os.path.abspath("third-party/fmt/include")],
        libraries=["cudart", "nvrtc"], library_dirs=[f"{CUDA_HOME}/lib64"],
        extra_compile_args=flags)],
    cmdclass={"build_ext": BuildExtension})
PY
ls -la deep_gemm/_C*.so
