#!/usr/bin/env bash
# Benchmarks side by side (issue 4): `ek consensus` against wrk (the physical limit) and against
# executionkit (Python) 0.4.0, all against one nginx fixed-response endpoint on 127.0.0.1.
#
#   bench/run.sh [--runs N] [--wrk-duration S] [--no-micro] [--no-python]
#                [--ek-variant LABEL=PATH]...   (another ek build measured alongside)
#
# Installs what it needs (Debian nginx-light, wrk and a C compiler; executionkit 0.4.0 in two
# venvs on CPython 3.13 from pyenv, the second with httpx and sniffio), builds bench/rusage.c
# (which measures each client) and `ek` in release mode, runs
# the divan micro-benchmarks, starts nginx (one worker, keep-alive, keepalive_requests high),
# captures the exact body `ek` sends, measures everything (bench/bench.py), writes the medians to
# bench/RESULTS.md and stops nginx by its own pid. Scratch files go to target/bench
# (BENCH_WORK); the port is BENCH_PORT (default 18480). Needs root (or sudo) for apt-get only
# when nginx, wrk or cc is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$ROOT/target/bench}
PORT=${BENCH_PORT:-18480}
RUNS=3
WRK_DURATION=5
MICRO=1
PYTHON=1
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --wrk-duration) WRK_DURATION=$2; shift 2 ;;
        --no-micro) MICRO=0; shift ;;
        --no-python) PYTHON=0; shift ;;
        --ek-variant) EXTRA+=(--ek-variant "$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
        { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

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

log "building ek (release)"
(cd "$ROOT" && cargo build --release -q -p executionkit-cli --bin ek)
EK="$ROOT/target/release/ek"

# --- 4. Micro-benchmarks (before nginx starts, so nothing else runs) --------------------------
MICRO_OUT=""
if [ "$MICRO" = 1 ]; then
    log "micro-benchmarks (divan)"
    MICRO_OUT="$WORK/micro.txt"
    (cd "$ROOT" && cargo bench -q -p executionkit --bench voting --bench ledger \
        --bench consensus_overhead --bench pipe_overhead --bench extract_json 2>&1) | tee "$MICRO_OUT"
fi

# --- 5. nginx --------------------------------------------------------------------------------
NG="$WORK/nginx"
mkdir -p "$NG/tmp"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "run.sh: port $PORT is in use; set BENCH_PORT" >&2
    exit 1
fi
sed -e "s|@WORK@|$NG|g" -e "s|@PORT@|$PORT|g" -e "s|@RESPONSE@|$RESPONSE|g" \
    "$ROOT/bench/nginx.conf.template" >"$NG/nginx.conf"
"$NGINX" -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log"
log "starting nginx on 127.0.0.1:$PORT"
"$NGINX" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" -g 'daemon off;' &
NGINX_PID=$!
CAPTURE_PID=""
cleanup() {
    [ -n "$CAPTURE_PID" ] && kill "$CAPTURE_PID" 2>/dev/null || true
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true # graceful stop of the master we started
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$NGINX_PID" 2>/dev/null || true
    fi
    wait "$NGINX_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done
reply=$(python3 - "$PORT" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions",
                             data=b"{}", headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
EOF
)
[ "$reply" = "$RESPONSE" ] || { echo "run.sh: nginx answers $reply" >&2; exit 1; }

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
mkdir -p "$ROOT/bench/out"
python3 "$ROOT/bench/bench.py" --port "$PORT" --ek "$EK" --rusage-helper "$WORK/rusage" \
    --body "$BODY" --prompt "$PROMPT" \
    --model "$MODEL" --runs "$RUNS" --wrk-duration "$WRK_DURATION" \
    --py-version "$PY_VERSION" ${PY_ARGS[@]+"${PY_ARGS[@]}"} ${MICRO_OUT:+--micro "$MICRO_OUT"} \
    ${EXTRA[@]+"${EXTRA[@]}"} \
    --raw "$ROOT/bench/out/raw-$(date -u +%Y%m%dT%H%M%SZ).json" --out "$ROOT/bench/RESULTS.md"
