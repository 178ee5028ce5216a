# Sourced by the device_*.sh scripts on the GPU machine: numpy 2.4 from .whl/ (the image's numpy
# breaks numba-cuda), the repository (and DeepGEMM's .dg/, once built) on PYTHONPATH, the CUDA
# tools on PATH, $OUT ready.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/.dg PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export DG_JIT_CACHE_DIR=/tmp/dgcache  # DeepGEMM (comparison only): scripts/deepgemm_build.sh
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
