#!/usr/bin/env bash
# Installs flashlm's build and test dependencies from Debian's packages.
# Idempotent: when every package is already present it changes nothing and touches no network.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  liburing-dev liblmdb-dev libzstd-dev libxxhash-dev
  libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev libbenchmark-dev
  clang libclang-rt-14-dev
  fio gnuplot-nox time
  # serve (issue 13): HTTP library; its tests drive it with curl, the openai npm client under
  # Node, and headless Chromium for the web page
  libcpp-httplib-dev curl chromium
)
# Node and npm from Debian when no node is on PATH (a nodesource install is left alone).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
