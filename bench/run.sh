#!/usr/bin/env bash
# Benchmarks side by side (issues 4 and 9): `ek consensus` against the physical-limit clients
# (wrk over plain http and over TLS, h2load over HTTP/2), a streamed completion against curl,
# and executionkit (Python) 0.4.0, all against one nginx fixed-response endpoint on 127.0.0.1.
#
#   bench/run.sh [--runs N] [--wrk-duration S] [--no-micro] [--no-python] [--no-tls]
#                [--no-stream] [--before PATH_TO_OLD_EK [--before-stream PATH] [--before-label L]]
#                [--ek-label LABEL]   (the name of this tree's ek in the tables)
#                [--ek-variant LABEL=PATH]...   (another ek build measured alongside)
#
# Installs what it needs (Debian nginx-light, wrk, nghttp2-client (h2load), openssl, curl and a
# C compiler; executionkit 0.4.0 in two venvs on CPython 3.13 from pyenv, the second with httpx
# and sniffio), builds bench/rusage.c (which measures each client), `ek` and the `stream`
# example in release mode, runs the divan micro-benchmarks, makes a throwaway certificate,
# starts nginx (one worker, keep-alive, keepalive_requests high; plain http on BENCH_PORT
# (default 18480), https/1.1 on BENCH_PORT+1, https/2 on BENCH_PORT+2), captures the exact body
# `ek` sends, measures everything (bench/bench.py), writes the medians to bench/RESULTS.md and
# stops nginx by its own pid. Scratch files go to $CARGO_TARGET_DIR/bench (or target/bench;
# BENCH_WORK overrides). --before runs an older `ek` (and its stream example) on the same
# workloads for before/after rows. Needs root (or sudo) for apt-get only when a tool is
# missing. Instruction counts (the figure a noisy machine cannot move): bench/callgrind.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${BENCH_WORK:-$TARGET/bench}
PORT=${BENCH_PORT:-18480}
TLS_PORT=$((PORT + 1))
H2_PORT=$((PORT + 2))
SSE_EVENTS=1000
RUNS=3
WRK_DURATION=5
MICRO=1
PYTHON=1
TLS=1
STREAM=1
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --wrk-duration) WRK_DURATION=$2; shift 2 ;;
        --no-micro) MICRO=0; shift ;;
        --no-python) PYTHON=0; shift ;;
        --no-tls) TLS=0; shift ;;
        --no-stream) STREAM=0; shift ;;
        --before) EXTRA+=(--before "$2"); shift 2 ;;
        --before-stream) EXTRA+=(--before-stream "$2"); shift 2 ;;
        --before-label) EXTRA+=(--before-label "$2"); shift 2 ;;
        --ek-label) EXTRA+=(--ek-label "$2"); shift 2 ;;
        --ek-variant) EXTRA+=(--ek-variant "$2"); shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

PROMPT="What is the capital of France? Answer with one word."
MODEL=m
RESPONSE='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'

log() { printf '\n== %s\n' "$*" >&2; }
mkdir -p "$WORK"

# --- 1. System packages ------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# --- 2. executionkit (Python) 0.4.0 on CPython 3.13 ------------------------------------------
PY_ARGS=()
PY_VERSION="not measured (no CPython 3.13 on this machine)"
if [ "$PYTHON" = 1 ]; then
    PY313=""
    if command -v pyenv >/dev/null 2>&1 && [ -x "$(pyenv root)/versions/3.13.0/bin/python" ]; then
        PY313="$(pyenv root)/versions/3.13.0/bin/python"
    elif [ -x "$HOME/.pyenv/versions/3.13.0/bin/python" ]; then
        PY313="$HOME/.pyenv/versions/3.13.0/bin/python"
    elif command -v python3.13 >/dev/null 2>&1; then
        PY313=$(command -v python3.13)
    fi
    if [ -n "$PY313" ]; then
        log "venvs with executionkit 0.4.0 on $("$PY313" --version)"
        make_venv() { # DIR PACKAGES...
            local dir=$1; shift
            if ! "$dir/bin/python" -c 'import executionkit' >/dev/null 2>&1; then
                rm -rf "$dir"
                "$PY313" -m venv "$dir"
                "$dir/bin/pip" install -q --disable-pip-version-check "$@"
            fi
        }
        make_venv "$WORK/venv-py-urllib" executionkit==0.4.0
        make_venv "$WORK/venv-py-httpx" executionkit==0.4.0 httpx sniffio
        "$WORK/venv-py-httpx/bin/python" -c 'import httpx, sniffio' # the second venv must have them
        PY_VERSION="CPython $("$PY313" -c 'import platform; print(platform.python_version())'); executionkit 0.4.0; py-urllib = no httpx (stdlib urllib in threads), py-httpx = $("$WORK/venv-py-httpx/bin/python" -c 'import httpx, sniffio; print(f"httpx {httpx.__version__}, sniffio {sniffio.__version__}")')"
        PY_ARGS=(--py "py-urllib=$WORK/venv-py-urllib/bin/python" --py "py-httpx=$WORK/venv-py-httpx/bin/python")
    fi
fi

# --- 3. The rusage helper and ek in release mode -----------------------------------------------
# bench.py runs every client under bench/rusage.c, which reports that client's own CPU time and
# peak RSS (see run_measured in bench.py for why not straight from Python).
cc -O2 -Wall -o "$WORK/rusage" "$ROOT/bench/rusage.c"

log "building ek and the stream example (release)"
(cd "$ROOT" && cargo build --release -q -p executionkit-cli --bin ek)
(cd "$ROOT" && cargo build --release -q -p executionkit --example stream)
EK="$TARGET/release/ek"
STREAM_EXAMPLE="$TARGET/release/examples/stream"

# --- 4. Micro-benchmarks (before nginx starts, so nothing else runs) --------------------------
MICRO_OUT=""
if [ "$MICRO" = 1 ]; then
    log "micro-benchmarks (divan)"
    MICRO_OUT="$WORK/micro.txt"
    (cd "$ROOT" && cargo bench -q -p executionkit --bench voting --bench ledger \
        --bench consensus_overhead --bench pipe_overhead --bench extract_json --bench sse 2>&1) |
        tee "$MICRO_OUT"
fi

# --- 5. nginx --------------------------------------------------------------------------------
. "$ROOT/bench/nginx.sh"
NG="$WORK/nginx"
CAPTURE_PID=""
cleanup() {
    [ -n "$CAPTURE_PID" ] && kill "$CAPTURE_PID" 2>/dev/null || true
    nginx_stop
}
trap cleanup EXIT
log "starting nginx on 127.0.0.1:$PORT (http), $TLS_PORT (https/1.1), $H2_PORT (https/2)"
nginx_start "$NG" "$PORT" "$TLS_PORT" "$H2_PORT" "$RESPONSE" "$SSE_EVENTS"

# --- 6. The exact body ek sends ----------------------------------------------------------------
BODY="$WORK/ek-body.json"
rm -f "$BODY" "$WORK/capture.port"
python3 "$ROOT/bench/capture_body.py" "$BODY" "$RESPONSE" >"$WORK/capture.port" &
CAPTURE_PID=$!
for _ in $(seq 100); do [ -s "$WORK/capture.port" ] && break; sleep 0.05; done
CPORT=$(head -1 "$WORK/capture.port")
"$EK" consensus --json --base-url "http://127.0.0.1:$CPORT/v1" --model "$MODEL" \
    --samples 1 --max-concurrency 1 "$PROMPT" >/dev/null
wait "$CAPTURE_PID"
CAPTURE_PID=""
log "ek sends: $(cat "$BODY")"

# --- 7. Measure --------------------------------------------------------------------------------
TRANSPORT_ARGS=()
if [ "$TLS" = 1 ]; then
    TRANSPORT_ARGS+=(--tls-port "$TLS_PORT" --h2-port "$H2_PORT" --ca "$NG/ca.pem"
        --handshake-log "$NG/handshakes.log")
fi
if [ "$STREAM" = 1 ]; then
    TRANSPORT_ARGS+=(--stream-example "$STREAM_EXAMPLE" --sse-events "$SSE_EVENTS"
        --sse-bytes "$(stat -c %s "$NG/events-$SSE_EVENTS.sse")"
        --sse-one-bytes "$(stat -c %s "$NG/events-1.sse")")
fi
mkdir -p "$ROOT/bench/out"
python3 "$ROOT/bench/bench.py" --port "$PORT" --ek "$EK" --rusage-helper "$WORK/rusage" \
    --body "$BODY" --prompt "$PROMPT" ${TRANSPORT_ARGS[@]+"${TRANSPORT_ARGS[@]}"} \
    --model "$MODEL" --runs "$RUNS" --wrk-duration "$WRK_DURATION" \
    --py-version "$PY_VERSION" ${PY_ARGS[@]+"${PY_ARGS[@]}"} ${MICRO_OUT:+--micro "$MICRO_OUT"} \
    ${EXTRA[@]+"${EXTRA[@]}"} \
    --raw "$ROOT/bench/out/raw-$(date -u +%Y%m%dT%H%M%SZ).json" --out "$ROOT/bench/RESULTS.md"
