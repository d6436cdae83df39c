#!/usr/bin/env bash
# The web page at / in headless Chromium: it loads, a prompt (?q=) streams a reply from
# /v1/chat/completions, and every live panel shows a number from /stats; without and with an API
# key (?key=).
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
[ -f "$bin" ] && [ -f "$tok" ] || skip "shared model stories260K not found under $models"
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
  if [ $fail -ne 0 ]; then
    grep -E 'reply|status|v_' "$work/dom.html"; tail -5 "$work/chromium.log"
  fi
  kill -TERM $pid; wait $pid; rc=$?
  [ $rc -eq 0 ] || { echo "serve exited $rc after SIGTERM"; fail=1; }
done
exit $fail
