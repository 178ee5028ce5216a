#!/usr/bin/env bash
# On the GPU machine: unpack .devcarry/deepgemm-src.tar.xz (scripts/deepgemm_source.sh) into .dg/
# and build DeepGEMM's extension (deep_gemm/_C*.so) against the machine's torch and CUDA, for
# comparison runs only (or unpack .devcarry/deepgemm-C.tar.xz, saved by an earlier call).
# Afterwards `PYTHONPATH=$PWD/.dg python3 -c "import deep_gemm"` works; its kernels are compiled
# on first use (DG_JIT_CACHE_DIR, scripts/deepgemm_warm.py compiles the benchmarks' in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .dg/deep_gemm/__init__.py ] || tar -xJf .devcarry/deepgemm-src.tar.xz
[ -f .devcarry/deepgemm-C.tar.xz ] && tar -xJf .devcarry/deepgemm-C.tar.xz
cd .dg
ls deep_gemm/_C*.so >/dev/null 2>&1 && { echo "deep_gemm/_C already built"; exit 0; }
# The system g++, not the image's $CXX (/opt/gcc/bin/g++, a wrapper of the same GCC 13.3): a _C
# built through the wrapper carried its own libstdc++ locale code, and std::regex in DeepGEMM's
# JIT segfaulted on the first call (sessions 10, 11). Linked by the same compiler.
for cxx in /usr/bin/g++ /usr/bin/g++-13 $(dirname ${CXX:-/x})/g++-real; do
  [ -x $cxx ] && { export CXX=$cxx LDSHARED="$cxx -shared"; break; }
done
[ -f /opt/gcc/bin/g++ ] && { file /opt/gcc/bin/g++; head -c 400 /opt/gcc/bin/g++ | strings | head -8; }
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
readelf -d deep_gemm/_C*.so | grep NEEDED
readelf -d deep_gemm/_C*.so | grep -q "NEEDED.*libstdc++" || \
  { echo "deep_gemm/_C links libstdc++ statically: two copies in one process crash"; exit 1; }
