# Sourced by the serve shell tests: start_serve LOG ARGS... starts `$flashlm serve ARGS --port 0`
# in the background (pid in $pid, stderr in LOG), reads the port it bound from LOG and waits until
# /health answers 200 (port in $port). On failure it prints LOG and exits 1.
start_serve() {
  local log=$1; shift
  "$flashlm" serve "$@" --port 0 2>"$log" &
  pid=$!
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$log")
    if [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null; then return 0; fi
    sleep 0.1
  done
  cat "$log"
  exit 1
}
