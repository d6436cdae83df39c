#!/usr/bin/env bash
# The web page at / in headless Chromium: it loads, a prompt (?q=) streams a reply from
# /v1/chat/completions, and every live panel and the table of reads by source show numbers from
# /stats; without and with an API key (?key=). Then, served from a store at its minimum budget
# after a completion, the table's FFN row is the FFN bytes per token that /stats reports.
# Usage: serve_web_page_test.sh FLASHLM_BINARY MODELS_DIR WORK_DIR
# Exits 77 (ctest: skipped) with the reason when chromium or the shared model is missing.
set -uo pipefail
flashlm=$1; models=$2; workroot=$3
. "$(cd "$(dirname "$0")" && pwd)/serve_start.sh"
pid=""
skip() { echo "SKIP: $*"; exit 77; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || skip "chromium is not installed (scripts/install-deps.sh installs it)"
bin=$models/stories260K/stories260K.bin; tok=$models/stories260K/tok512.bin
gguf=$models/stories260K-gguf/stories260K.gguf
[ -f "$bin" ] && [ -f "$tok" ] && [ -f "$gguf" ] || skip "shared model stories260K not found under $models"
mkdir -p "$workroot"
work=$(mktemp -d "$workroot/web.XXXXXX")
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
fail=0
check() { if grep -Eq -- "$2" "$work/dom.html"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
# Once without an API key, once with one (the page passes ?key= on to its calls).
for auth in none key; do
  echo "== $auth"
  if [ $auth = key ]; then
    start_serve "$work/serve.log" "$bin" --tokenizer "$tok" --ctx 256 --threads 2 --api-key s3cret
    query="key=s3cret&q=Hello"
  else
    start_serve "$work/serve.log" "$bin" --tokenizer "$tok" --ctx 256 --threads 2
    query="q=Hello"
  fi
  # Virtual time runs the page's timers (two /stats polls at least) without waiting for them.
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --user-data-dir="$work/profile" \
    --virtual-time-budget=5000 --dump-dom "http://127.0.0.1:$port/?$query" \
    >"$work/dom.html" 2>"$work/chromium.log"
  check "the page loaded" '<div id="panels">'
  check "the prompt was sent" '<div class="user">&gt; Hello</div>'
  check "a reply streamed in" 'id="reply1">[^<]'
  check "the reply finished" '<div id="status">done</div>'
  for panel in tok_s bytes_tok mib_s hit io_tok cpu_tok active; do
    check "panel $panel shows a number" "id=\"v_$panel\">-?[0-9][0-9.e+-]*<"
  done
  for source in attention ffn classifier embedding other; do
    check "source $source shows numbers" \
      "id=\"s_$source\"><td>$source</td><td>[0-9.]+</td><td>[0-9.]+</td><td>[0-9.]+</td>"
  done
  if [ $fail -ne 0 ]; then
    grep -E 'reply|status|v_|s_' "$work/dom.html"; tail -5 "$work/chromium.log"
  fi
  kill -TERM $pid; wait $pid; rc=$?
  [ $rc -eq 0 ] || { echo "serve exited $rc after SIGTERM"; fail=1; }
done

# From a store at the smallest budget serve accepts, every FFN bundle is read on every pass: after
# a completion (curl, finished before the page loads), the page's first poll shows the final
# counters, and its FFN row is /stats' FFN bytes over pass_sequences in KiB (to 0.05: one decimal).
echo "== store"
"$flashlm" repack "$gguf" "$work/store" --dtype q8_0 --no-progress >/dev/null 2>"$work/repack.log" ||
  { cat "$work/repack.log"; exit 1; }
min=$("$flashlm" serve "$work/store" --ctx 256 --threads 2 --port 0 --mem-budget 1 2>&1 |
  sed -n 's/.*minimum of \([0-9]*\) bytes.*/\1/p')
[ -n "$min" ] || { echo "FAIL serve did not name its minimum budget"; exit 1; }
start_serve "$work/serve.log" "$work/store" --ctx 256 --threads 2 --mem-budget "$min"
curl -sf "http://127.0.0.1:$port/v1/completions" -H "Content-Type: application/json" \
  -d '{"prompt":"Once upon a time","max_tokens":16}' >"$work/completion.json" ||
  { echo "FAIL the completion request failed"; fail=1; }
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --user-data-dir="$work/profile" \
  --virtual-time-budget=3000 --dump-dom "http://127.0.0.1:$port/" \
  >"$work/dom.html" 2>"$work/chromium.log"
for source in attention ffn classifier embedding other; do
  check "source $source shows numbers" \
    "id=\"s_$source\"><td>$source</td><td>[0-9.]+</td><td>[0-9.]+</td><td>[0-9.]+</td>"
done
stats=$(curl -sf "http://127.0.0.1:$port/stats")
ffn_bytes=$(echo "$stats" | sed -n 's/.*"ffn":{"bytes_read":\([0-9]*\).*/\1/p')
passes=$(echo "$stats" | sed -n 's/.*"pass_sequences":\([0-9]*\).*/\1/p')
shown=$(sed -n 's/.*id="s_ffn"><td>ffn<\/td><td>\([0-9.]*\)<.*/\1/p' "$work/dom.html")
if awk -v b="$ffn_bytes" -v p="$passes" -v s="$shown" 'BEGIN { w = b / 1024 / p;
    exit !(p > 0 && b > 0 && s != "" && s - w < 0.051 && w - s < 0.051) }'; then
  echo "ok   the FFN row shows /stats' bytes per token ($shown KiB: $ffn_bytes bytes over $passes)"
else
  echo "FAIL the FFN row shows '$shown' KiB per token; /stats: $ffn_bytes bytes over $passes"
  grep -E 's_' "$work/dom.html"; fail=1
fi
kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 0 ] || { echo "serve exited $rc after SIGTERM"; fail=1; }
exit $fail
