#!/usr/bin/env bash
# Starts llmock (PyPI `llmock==0.2.2`, a fault-injecting OpenAI-compatible server) on 127.0.0.1
# for tests/llmock_faults.rs. Installs it into a venv under $EK_CACHE (default .cache/ek) when
# missing, starts `llmock serve` in the background, waits until it answers, writes its pid to
# $EK_CACHE/llmock.pid and prints `EK_LLMOCK_URL=http://127.0.0.1:PORT`.
#
#   eval "$(scripts/start-llmock.sh)"; export EK_LLMOCK_URL
#   cargo test -p executionkit --test llmock_faults
#   kill "$(cat .cache/ek/llmock.pid)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
port=${EK_LLMOCK_PORT:-8000}
py=${PYTHON:-python3}
venv=$cache/venv-llmock
pidfile=$cache/llmock.pid
log=$cache/llmock.log
url=http://127.0.0.1:$port
mkdir -p "$cache"

if [ ! -x "$venv/bin/llmock" ]; then
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install -q llmock==0.2.2 >&2
fi

up() { "$venv/bin/python" - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request
# An llmock-only route, so another server on the port is not mistaken for it.
urllib.request.urlopen(sys.argv[1] + "/_llmock/scenario", timeout=1).read()
PY
}

# Reuse a server this script started before, if it is still answering.
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && up; then
  echo "EK_LLMOCK_URL=$url"
  exit 0
fi

# Quiet responses (no banner on stdout), bound to loopback only.
nohup "$venv/bin/llmock" serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 </dev/null &
echo $! >"$pidfile"

for _ in $(seq 1 100); do
  if up; then
    echo "EK_LLMOCK_URL=$url"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "llmock exited; log follows:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "llmock did not answer on $url within 20 s; log: $log" >&2
exit 1
