#!/usr/bin/env bash
# The benchmark regression gate that a noisy machine cannot move: user-space instructions per
# call of `ek consensus` (valgrind's callgrind), for one or more `ek` builds, against the same
# nginx as bench/run.sh (plain http, https/1.1, https/2 on 127.0.0.1).
#
#   bench/callgrind.sh [--protocols http,https1,h2] [--annotate] [LABEL=PATH_TO_EK]...
#
# Without LABEL=PATH it builds and measures this tree's release `ek` (label "this tree"). For
# each build and protocol it runs `ek consensus --json` under callgrind three times:
#
#   one call               --samples 1                          start-up, connect, exit
#   201 calls at 1         --samples 201 --max-concurrency 1    → (I − I₁) / 200: one call on a
#                                                                 kept-alive connection
#   5,001 calls at 200     --samples 5001 --max-concurrency 200 → (I − I₁) / 5,000: the
#                                                                 10,000/200 workload's mix
#                                                                 (200 connections opened)
#
# and prints a markdown table. Callgrind counts instructions executed in user space (the
# kernel's share, `send`/`recv`/`epoll`, is not in it), serialises threads and runs ~50× slower,
# so the figures do not depend on the load of the machine: compare builds, not wall time.
# `--annotate` also writes `callgrind_annotate` of each 201-call run (the functions where the
# instructions go) next to the profiles. Scratch files go to $CARGO_TARGET_DIR/callgrind (or
# target/callgrind; BENCH_WORK overrides); ports BENCH_PORT (default 18490) and the next two.
#
# An older build for a before/after table (what RESULTS.md did for issue 9):
#   git worktree add --detach ../before 2561af5
#   (cd ../before && CARGO_TARGET_DIR=/tmp/tgt-before cargo build --release -p executionkit-cli --bin ek)
#   bench/callgrind.sh before=/tmp/tgt-before/release/ek after=$CARGO_TARGET_DIR/release/ek
# A build that cannot trust a private CA (before issue 9, https went through reqwest with
# webpki's roots only) shows "failed" on the https rows.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${BENCH_WORK:-$TARGET/callgrind}
PORT=${BENCH_PORT:-18490}
TLS_PORT=$((PORT + 1))
H2_PORT=$((PORT + 2))
PROTOCOLS=http,https1,h2
ANNOTATE=0
BUILDS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --protocols) PROTOCOLS=$2; shift 2 ;;
        --annotate) ANNOTATE=1; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *=*) BUILDS+=("$1"); shift ;;
        *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

PROMPT="What is the capital of France? Answer with one word."
RESPONSE='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'

need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ${#BUILDS[@]} -eq 0 ]; then
    echo "== building ek (release)" >&2
    (cd "$ROOT" && cargo build --release -q -p executionkit-cli --bin ek)
    BUILDS=("this tree=$TARGET/release/ek")
fi

mkdir -p "$WORK"
. "$ROOT/bench/nginx.sh"
trap nginx_stop EXIT
nginx_start "$WORK/nginx" "$PORT" "$TLS_PORT" "$H2_PORT" "$RESPONSE" 1

# Instructions (Ir) of one `ek consensus` run under callgrind, or "failed".
instructions() { # LABEL PROTO SAMPLES CONCURRENCY
    local label=$1 proto=$2 samples=$3 conc=$4 base out
    case "$proto" in
        http) base="http://127.0.0.1:$PORT/v1" ;;
        https1) base="https://127.0.0.1:$TLS_PORT/v1" ;;
        h2) base="https://127.0.0.1:$H2_PORT/v1" ;;
    esac
    out="$WORK/$(printf '%s' "$label" | tr -c 'A-Za-z0-9_-' _)-$proto-$samples-$conc.callgrind"
    # Only the run's CA as the system's roots (SSL_CERT_DIR would add a directory's worth).
    if ! env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY \
        -u SSL_CERT_DIR SSL_CERT_FILE="$WORK/nginx/ca.pem" \
        valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
        "$EK" consensus --json --base-url "$base" --model m --samples "$samples" \
        --max-concurrency "$conc" "$PROMPT" >"$out.stdout" 2>"$out.stderr" ||
        ! grep -q '"value":"Paris"' "$out.stdout"; then
        echo failed
        return
    fi
    if [ "$ANNOTATE" = 1 ] && [ "$samples" = 201 ]; then
        callgrind_annotate --inclusive=no "$out" 2>/dev/null | head -60 >"$out.annotate.txt"
        callgrind_annotate --inclusive=yes "$out" 2>/dev/null | head -80 >"$out.inclusive.txt"
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

per_call() { # TOTAL ONE CALLS
    if [ "$1" = failed ] || [ "$2" = failed ]; then echo failed; return; fi
    echo $(( ($1 - $2) / $3 ))
}

thousands() {
    if [ "$1" = failed ]; then echo failed; return; fi
    echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'
}

rows=()
for build in "${BUILDS[@]}"; do
    label=${build%%=*}
    EK=${build#*=}
    [ -x "$EK" ] || { echo "callgrind.sh: $EK is not an executable" >&2; exit 1; }
    for proto in ${PROTOCOLS//,/ }; do
        echo "== $label over $proto" >&2
        one=$(instructions "$label" "$proto" 1 1)
        seq=$(instructions "$label" "$proto" 201 1)
        par=$(instructions "$label" "$proto" 5001 200)
        rows+=("| $label | $proto | $(thousands "$one") | $(thousands "$(per_call "$seq" "$one" 200)") | $(thousands "$(per_call "$par" "$one" 5000)") |")
    done
done

echo
echo "| build | protocol | one call (whole process) | per call, 201 calls at 1 | per call, 5,001 calls at 200 |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Instructions executed in user space (callgrind Ir); per call = (run − one-call run) / extra calls."
echo "Profiles: $WORK"
