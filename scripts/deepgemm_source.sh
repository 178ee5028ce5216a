#!/usr/bin/env bash
# Pack DeepGEMM's source tree into .devcarry/deepgemm-src.tar.xz (git-ignored; name .devcarry in
# the device call's `carry`), for the comparison runs on the GPU machine, which cannot download:
# the SGLang fork that vLLM and SGLang install, with the exact CUTLASS and fmt commits of its
# submodules. scripts/deepgemm_build.sh unpacks and builds it there; DeepGEMM never becomes part
# of this repository.
#   bash scripts/deepgemm_source.sh [DEEPGEMM_GIT CUTLASS_GIT FMT_GIT]
# Each argument is a local clone (or URL) of sgl-project/DeepGEMM, NVIDIA/cutlass, fmtlib/fmt.
set -euo pipefail
cd "$(dirname "$0")/.."
dg=${1:-https://github.com/sgl-project/DeepGEMM}
cutlass=${2:-https://github.com/NVIDIA/cutlass}
fmt=${3:-https://github.com/fmtlib/fmt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
clone() { if [ -d "$1" ]; then echo "$1"; else git clone -q --filter=blob:none "$1" "$work/$2" && echo "$work/$2"; fi; }
dg=$(clone "$dg" dg); cutlass=$(clone "$cutlass" cutlass); fmt=$(clone "$fmt" fmt)
revision=$(git -C "$dg" rev-parse HEAD)
# The submodule commits recorded in DeepGEMM's tree.
cutlass_rev=$(git -C "$dg" ls-tree HEAD third-party/cutlass | awk '{print $3}')
fmt_rev=$(git -C "$dg" ls-tree HEAD third-party/fmt | awk '{print $3}')
for path in /.dg/ /.devcarry/; do
  grep -qx "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
tree=$work/tree/.dg
mkdir -p "$tree/third-party/fmt" .devcarry
git -C "$dg" archive HEAD csrc deep_gemm | tar x -C "$tree"
# setup.py copies cute/ and cutlass/ into deep_gemm/include, where its JIT looks for them.
git -C "$cutlass" archive "$cutlass_rev" include | tar x -C "$tree/deep_gemm"
git -C "$fmt" archive "$fmt_rev" include | tar x -C "$tree/third-party/fmt"
echo "$revision cutlass $cutlass_rev fmt $fmt_rev" > "$tree/REVISION"
tar -C "$work/tree" -cJf .devcarry/deepgemm-src.tar.xz .dg
ls -la .devcarry/deepgemm-src.tar.xz && cat "$tree/REVISION"
