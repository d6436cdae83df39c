#!/usr/bin/env bash
# flashlm serve against the official `openai` npm client under Node.
# Usage: serve_openai_test.sh FLASHLM_BINARY MODELS_DIR NODE_PREFIX
# Installs openai@4 into NODE_PREFIX (under the build tree) when it is not there yet. Exits 77
# (ctest: skipped) with the reason when node/npm are missing, the shared model is absent or the
# npm registry cannot be reached; 0 when every check passes; 1 otherwise.
set -uo pipefail
flashlm=$1; models=$2; prefix=$3
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve_start.sh"
pid=""
skip() { echo "SKIP: $*"; exit 77; }
command -v node >/dev/null || skip "node is not installed (scripts/install-deps.sh installs it)"
command -v npm >/dev/null || skip "npm is not installed (scripts/install-deps.sh installs it)"
bin=$models/stories260K/stories260K.bin; tok=$models/stories260K/tok512.bin
[ -f "$bin" ] && [ -f "$tok" ] || skip "shared model stories260K not found under $models"
if [ ! -f "$prefix/node_modules/openai/package.json" ]; then
  mkdir -p "$prefix"
  if ! timeout 300 npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
      openai@4 >"$prefix/npm-install.log" 2>&1; then
    cat "$prefix/npm-install.log"
    skip "npm install openai@4 failed (registry unreachable?)"
  fi
fi
work=$(mktemp -d "${prefix}/run.XXXXXX")
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
common=(--tokenizer "$tok" --ctx 256 --threads 2)
prompt="Once upon a time"
completion=$("$flashlm" generate "$bin" "${common[@]}" --temp 0 -n 30 -p "$prompt") || exit 1
chat=$("$flashlm" generate "$bin" "${common[@]}" --temp 0 -n 30 --stop $'\nUser:' \
       -p $'User: Tell me a story\nAssistant:') || exit 1
node -e 'const [p,c,u,h,f]=process.argv.slice(1);require("fs").writeFileSync(f,JSON.stringify({prompt:p,completion:c,chat_user:u,chat:h}))' \
  "$prompt" "$completion" "Tell me a story" "$chat" "$work/expected.json"
start_serve "$work/serve.log" "$bin" "${common[@]}" --parallel 2
OPENAI_NODE_PREFIX=$prefix timeout 120 node "$here/serve_openai_client.mjs" \
  "http://127.0.0.1:$port" "$work/expected.json"
rc=$?
kill -TERM $pid; wait $pid; serve_rc=$?
[ $serve_rc -eq 0 ] || { echo "serve exited $serve_rc after SIGTERM"; cat "$work/serve.log"; exit 1; }
exit $rc
