#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for SECONDS (default 20)
# from a seed corpus generated at run time (fuzz_seeds, plus the shared stories260K files when
# present). Crashes are written to fuzz-artifacts/. Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
targets=(fuzz_gguf fuzz_safetensors fuzz_llama2c fuzz_tokenizer fuzz_store fuzz_completion_request)

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLASHLM_FUZZ=ON -DFLASHLM_BUILD_TESTS=OFF -DFLASHLM_NATIVE=OFF >/dev/null
cmake --build build-fuzz -j 2 --target "${targets[@]}" fuzz_seeds

corpus=build-fuzz/corpus
rm -rf "$corpus"
build-fuzz/fuzz/fuzz_seeds "$corpus"
shared=${FLASHLM_SHARED_MODELS:-../shared/models}
if [ -d "$shared/stories260K" ]; then
  # Small real files whole; the large ones cut to their first 64 KiB (headers and vocab).
  cp "$shared/stories260K/tok512.bin" "$corpus/llama2c/" 2>/dev/null || true
  head -c 65536 "$shared/stories260K-gguf/stories260K.gguf" > "$corpus/gguf/stories260K-head.gguf" 2>/dev/null || true
  head -c 65536 "$shared/stories260K-hf-derived/model.safetensors" > "$corpus/safetensors/stories-head.safetensors" 2>/dev/null || true
  cp "$shared/stories260K-hf-derived/config.json" "$corpus/tokenizer/stories-config.json" 2>/dev/null || true
fi

# Request bodies for fuzz_completion_request (server/completion_request.h).
mkdir -p "$corpus/requests"
printf '%s' '{"model":"m","prompt":"Once upon a time","max_tokens":16,"temperature":0,"stop":["."],"stream":true}' >"$corpus/requests/completion.json"
printf '%s' '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_completion_tokens":8,"top_p":0.9,"seed":1,"stream_options":{"include_usage":true}}' >"$corpus/requests/chat.json"
printf '%s' '{"prompt":["x"],"n":1,"logprobs":false,"top_k":40,"min_p":0.05,"repeat_penalty":1.1,"ignore_eos":true}' >"$corpus/requests/extensions.json"

mkdir -p fuzz-artifacts
declare -A dirs=([fuzz_gguf]=gguf [fuzz_safetensors]=safetensors [fuzz_llama2c]=llama2c [fuzz_tokenizer]=tokenizer [fuzz_store]=store [fuzz_completion_request]=requests)
for t in "${targets[@]}"; do
  echo "== $t (${seconds}s)"
  work="build-fuzz/work-$t"
  rm -rf "$work" && mkdir -p "$work"
  log="$work.log"
  status=0
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build-fuzz/fuzz/$t" "$work" "$corpus/${dirs[$t]}" -max_total_time="$seconds" \
    -rss_limit_mb=2048 -timeout=20 -max_len=262144 -artifact_prefix=fuzz-artifacts/"$t"- \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^#[0-9]+ *DONE|stat::number_of_executed_units|ERROR|SUMMARY|crash|deadly" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "$t: exited with status $status" >&2
    exit 1
  fi
  if ls fuzz-artifacts/"$t"-* >/dev/null 2>&1; then
    echo "$t: failing input(s) in fuzz-artifacts/" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s without a finding"
