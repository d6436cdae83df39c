#!/usr/bin/env bash
# The main job on a default: installs dependencies, builds, repacks a model into a flash store and
# generates from it, printing where the time went. The model is the real stories260K from
# ../shared/models when that folder is there (or $FLASHLM_SHARED_MODELS), else a random-weight
# stories15M-shaped model made by `flashlm synth` (its text is gibberish; its speed is real).
# Then the I/O bench's quick sweep shows how read size and queue depth set flash bandwidth.
# Extra arguments go to `flashlm generate` (e.g. -p "Once upon a time" -n 200).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release

models=${FLASHLM_SHARED_MODELS:-../shared/models}
demo=build/demo
mkdir -p "$demo"
if [ -f "$models/stories260K-gguf/stories260K.gguf" ]; then
  src=$models/stories260K-gguf/stories260K.gguf
  prompt="Once upon a time"
else
  echo "run.sh: $models not found; using a random-weight 15m model (flashlm synth)" >&2
  src=$demo/synth-15m-q8_0.gguf
  [ -f "$src" ] || build/flashlm synth --shape 15m --dtype q8_0 --seed 1 --out "$src"
  prompt="Hello"
fi

rm -rf "$demo/store"
build/flashlm repack "$src" "$demo/store" --no-progress
build/flashlm generate "$demo/store" -p "$prompt" -n 128 --temp 0 "$@"
echo
# The memory and speed arithmetic for the same store on this machine (docs/plan.md).
build/flashlm plan "$demo/store" --flash measure
echo
build/flashlm iobench --quick
