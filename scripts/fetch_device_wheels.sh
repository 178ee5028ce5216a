#!/usr/bin/env bash
# Download what the GPU machine lacks into .whl/ (git-ignored; pass it in the device call's
# `carry`): numba-cuda 0.30 breaks on that image's numpy 2.5, so bring numpy 2.4 for Python 3.12.
# scripts/device_final.sh installs .whl/*.whl into /tmp/site there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "numpy==2.4.6"
ls -la .whl
