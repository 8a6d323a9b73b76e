#!/usr/bin/env bash
# Runs every test of the workspace, the way CI does:
#   0. installs the system packages the tests use when missing (tinyproxy, nginx-light, openssl;
#      apt-get, as root or through sudo),
#   1. starts llmock (fault injection, TESTING.md §2) via scripts/start-llmock.sh, and two
#      tinyproxy instances (an open one and one with BasicAuth, for the proxy tests) via
#      scripts/start-tinyproxy.sh,
#   2. starts llama-server + SmolLM2-135M (a real model, TESTING.md §1) via scripts/start-llama.sh
#      (the first run builds llama.cpp: ~7 minutes on 2 cores; later runs reuse .cache/ek), and
#      llama-cpp-python's server for real tool calls via scripts/start-llama-tools.sh (first run
#      ~10 minutes), and the OpenAI Python SDK in a venv (scripts/setup-openai-sdk.sh, the client
#      of the `ek serve` tests), and the MCP clients (scripts/setup-mcp-clients.sh: the Python
#      `mcp` SDK in a venv and the MCP Inspector from npm, the clients of the `ek mcp` tests) —
#      in the background while cargo compiles the tests,
#   3. `cargo test --workspace --all-targets` and `cargo test --workspace --doc` with
#      EK_LLMOCK_URL, EK_LLAMA_URL, EK_LLAMA_KEY, EK_LLAMA_TOOLS_URL, EK_PROXY_URL,
#      EK_PROXY_AUTH_URL, EK_OPENAI_PY, EK_MCP_PY, EK_MCP_INSPECTOR and EK_REQUIRE_SERVERS=1
#      exported (so tests that need a server fail instead of skipping),
#   4. runs every example and the README's first command on the embedded offline model,
# and stops the servers it started, whatever happens.
#
# Environment: EK_CACHE (default .cache/ek); EK_NO_SERVERS=1 runs without the servers (tests that
# need one skip themselves); extra arguments go to the `cargo test` runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export EK_CACHE=${EK_CACHE:-$root/.cache/ek}
mkdir -p "$EK_CACHE"

stage_start=$SECONDS
stage() {
  local now=$SECONDS
  [ -n "${stage_name:-}" ] && printf '== %s: %ds\n' "$stage_name" $((now - stage_start)) >&2
  stage_name=$1
  stage_start=$now
  printf '== %s\n' "$1" >&2
}

# Pid files of servers this run started (a server that was already up is left alone).
started_pidfiles=()
cleanup() {
  local f
  if [ -n "${bg_pid:-}" ]; then kill "$bg_pid" 2>/dev/null || true; fi
  for f in "${started_pidfiles[@]}"; do
    if [ -f "$f" ]; then
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    fi
  done
}
trap cleanup EXIT INT TERM

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

# System packages the tests use: tinyproxy (the proxy tests), nginx-light and openssl (TLS and
# HTTP/2 servers of the transport tests and benches). Installed only when missing.
install_test_packages() {
  local pkgs=()
  command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || pkgs+=(tinyproxy)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || pkgs+=(nginx-light)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "   installing ${pkgs[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q >&2
    as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
  fi
}

# The servers: "start script" "pid files it writes…". start-llama.sh runs before
# start-llama-tools.sh, which reuses the model that setup-llama.sh unpacks.
servers=(
  "scripts/start-llmock.sh $EK_CACHE/llmock.pid"
  "scripts/start-tinyproxy.sh $EK_CACHE/tinyproxy.pid $EK_CACHE/tinyproxy-auth.pid"
  "scripts/start-llama.sh $EK_CACHE/llama-server.pid"
)
[ -x scripts/start-llama-tools.sh ] && servers+=("scripts/start-llama-tools.sh $EK_CACHE/llama-tools.pid")
# Not a server: the OpenAI Python SDK in a venv, the client of the `ek serve` tests (EK_OPENAI_PY).
servers+=("scripts/setup-openai-sdk.sh")
# Nor these: the official Python MCP SDK and the MCP Inspector, the clients of the `ek mcp` tests
# (EK_MCP_PY, EK_MCP_INSPECTOR).
servers+=("scripts/setup-mcp-clients.sh")

if [ "${EK_NO_SERVERS:-0}" != 1 ]; then
  # Start (and on the first run build) the servers in the background, one after another, while
  # cargo compiles the tests: the builds' serial phases overlap.
  server_out=$EK_CACHE/test-servers.out
  stage "install test packages (when missing)"
  install_test_packages
  stage "start servers in the background (first run: builds llama.cpp) + compile the tests"
  for entry in "${servers[@]}"; do
    read -r script pidfiles <<<"$entry"
    for pidfile in $pidfiles; do
      alive "$pidfile" || started_pidfiles+=("$pidfile")
    done
  done
  (
    set -e
    for entry in "${servers[@]}"; do
      read -r script _ <<<"$entry"
      echo "   starting $script" >&2
      "$script"
    done
  ) >"$server_out" &
  bg_pid=$!
  cargo test --workspace --all-targets --no-run "$@"
  stage "wait for the servers"
  if ! wait "$bg_pid"; then
    bg_pid=
    echo "test.sh: a server failed to start (see the messages above and $EK_CACHE/*.log)" >&2
    exit 1
  fi
  bg_pid=
  while IFS= read -r line; do
    if [[ $line =~ ^EK_[A-Z0-9_]+= ]]; then
      export "${line?}"
      echo "   ${line%%=*} set" >&2
    fi
  done <"$server_out"
  export EK_REQUIRE_SERVERS=1
else
  echo "test.sh: EK_NO_SERVERS=1: tests that need llmock or llama-server skip" >&2
fi

stage "cargo test --workspace --all-targets"
cargo test --workspace --all-targets "$@"

stage "cargo test --workspace --doc"
cargo test --workspace --doc "$@"

# The examples and the README's first command run on the offline model: no endpoint in the env.
offline_env=(env -u EXECUTIONKIT_BASE_URL -u EXECUTIONKIT_MODEL -u EXECUTIONKIT_API_KEY -u OPENAI_API_KEY)

stage "examples on the offline model"
for f in crates/executionkit/examples/*.rs; do
  name=$(basename "$f" .rs)
  echo "-- example $name" >&2
  "${offline_env[@]}" cargo run -q -p executionkit --example "$name" >/dev/null
done

stage "README's first command (ek pipe on the offline model)"
"${offline_env[@]}" cargo run -q -p executionkit-cli --bin ek -- pipe \
  "Write a one-paragraph executive summary of the Turing test for an audience of non-technical board members." \
  --step "consensus samples=5 temperature=0.9" --step "refine target_score=0.9 max_iterations=3" \
  --max-input-tokens 20000 --max-output-tokens 10000 --max-calls 20 >/dev/null

stage "done"
echo "test.sh: all tests passed" >&2
