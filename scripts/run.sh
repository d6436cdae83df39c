#!/usr/bin/env bash
# The main job on a default: installs dependencies, builds, and runs the I/O bench's quick sweep
# (read size x queue depth on a scratch file), printing the bandwidth table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/flashlm iobench --quick "$@"
