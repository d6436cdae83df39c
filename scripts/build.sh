#!/usr/bin/env bash
# Configures and builds flashlm. Usage: scripts/build.sh [release|asan|avx2] [target...]
# (default release, every target). release -> build/, asan -> build-asan/ (AddressSanitizer +
# UndefinedBehaviorSanitizer), avx2 -> build-avx2/ (x86-64-v3: AVX2, FMA, F16C and no AVX-512,
# even on a machine with AVX-512, so that the kernels' AVX2 paths are built and tested too).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case "$kind" in
  release) dir=build; flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  asan) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHLM_SANITIZE=ON) ;;
  avx2)
    dir=build-avx2
    flags=(-DCMAKE_BUILD_TYPE=Release -DFLASHLM_NATIVE=OFF -DFLASHLM_BUILD_BENCH=OFF
      -DCMAKE_CXX_FLAGS=-march=x86-64-v3)
    ;;
  *) echo "usage: scripts/build.sh [release|asan|avx2] [target...]" >&2; exit 2 ;;
esac
shift $(($# > 0 ? 1 : 0))
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$(nproc)" "${targets[@]}"
