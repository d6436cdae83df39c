#!/usr/bin/env bash
# The test command (README, .ci/run): installs dependencies, builds, and runs every test twice:
# once optimised, once under AddressSanitizer + UndefinedBehaviorSanitizer. Then the engine tests
# built for AVX2 without AVX-512, and a short run of each fuzz target where one is built. Exits
# non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== release build and tests"
scripts/build.sh release
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== ASan+UBSan build and tests"
scripts/build.sh asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)"

echo "== AVX2-only build (x86-64-v3), engine tests"
# The kernels' AVX2 paths (CPUs without AVX-512) are what the release build skips here.
scripts/build.sh avx2 flashlm_engine_tests
(cd build-avx2/tests/engine && ./flashlm_engine_tests --gtest_brief=1)

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzz targets (short runs)"
  scripts/fuzz.sh 20
fi
