#!/usr/bin/env bash
# Starts two tinyproxy instances (Debian's `tinyproxy` package; installed here when missing) on
# 127.0.0.1 for the proxy tests (issue #9: `ek` through a real proxy, for http and https):
#   - an open proxy: EK_PROXY_URL=http://127.0.0.1:PORT
#   - a proxy that takes `BasicAuth user secret`: EK_PROXY_AUTH_URL=http://user:secret@127.0.0.1:PORT
# Both allow CONNECT to every port: the configuration has no `ConnectPort` line (tinyproxy.conf(5):
# "If no ConnectPort line is found, then all ports are allowed"; Debian's stock configuration
# allows only 443 and 563, and the test servers listen on random ports).
# Writes $EK_CACHE/tinyproxy.pid and $EK_CACHE/tinyproxy-auth.pid (EK_CACHE default .cache/ek),
# and prints the two variables.
#
#   eval "$(scripts/start-tinyproxy.sh)"; export EK_PROXY_URL EK_PROXY_AUTH_URL
#   cargo test -p executionkit-cli --test proxy
#   kill "$(cat .cache/ek/tinyproxy.pid)" "$(cat .cache/ek/tinyproxy-auth.pid)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
port=${EK_PROXY_PORT:-8890}
auth_port=${EK_PROXY_AUTH_PORT:-8891}
mkdir -p "$cache"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}
tinyproxy=$(command -v tinyproxy || echo /usr/bin/tinyproxy)
if [ ! -x "$tinyproxy" ]; then
  echo "installing tinyproxy (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q >&2
  as_root apt-get install -y -q --no-install-recommends tinyproxy >&2
  tinyproxy=$(command -v tinyproxy || echo /usr/bin/tinyproxy)
fi

# up PORT: tinyproxy answers on PORT (its own error page names it: another server on the port is
# not mistaken for it).
up() {
  curl -s --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null | grep -qi tinyproxy
}

# start NAME PORT [EXTRA CONFIG LINE…]: one instance in the foreground (-d) under nohup; its pid
# goes to $cache/NAME.pid.
start() {
  local name=$1 p=$2
  shift 2
  local conf=$cache/$name.conf pidfile=$cache/$name.pid log=$cache/$name.log
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && up "$p"; then
    return 0
  fi
  {
    echo "Port $p"
    echo "Listen 127.0.0.1"
    echo "Timeout 600"
    echo "MaxClients 400"
    echo "LogLevel Warning"
    echo "DisableViaHeader Yes"
    # No Allow line: every client (they are all on loopback, as Listen says) may connect.
    # No ConnectPort line: CONNECT may go to any port.
    local line
    for line in "$@"; do echo "$line"; done
  } >"$conf"
  nohup "$tinyproxy" -d -c "$conf" >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if up "$p"; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "tinyproxy ($name) exited; log follows:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tinyproxy ($name) did not answer on 127.0.0.1:$p within 10 s; log: $log" >&2
  return 1
}

start tinyproxy "$port"
start tinyproxy-auth "$auth_port" "BasicAuth user secret"
echo "EK_PROXY_URL=http://127.0.0.1:$port"
echo "EK_PROXY_AUTH_URL=http://user:secret@127.0.0.1:$auth_port"
