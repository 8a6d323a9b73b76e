# Sourced by bench/run.sh and bench/callgrind.sh: the fixed-response nginx (TESTING.md §3, §7)
# on three ports of 127.0.0.1 (plain http, https/1.1, https/2), with a throwaway certificate
# and the fixed event streams, started in the foreground and stopped by its own pid.
#
#   nginx_start DIR PORT TLS_PORT H2_PORT RESPONSE SSE_EVENTS
#       makes DIR (CA DIR/ca.pem, server certificate DIR/cert.pem, DIR/events-N.sse,
#       DIR/nginx.conf, logs), starts nginx and waits until it answers; sets NGINX_PID.
#   nginx_stop      graceful stop of the master started here (then TERM), by its pid.

NGINX_PID=""

nginx_start() {
    local dir=$1 port=$2 tls_port=$3 h2_port=$4 response=$5 sse_events=$6
    local here nginx p
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    for p in "$port" "$tls_port" "$h2_port"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "bench: port $p is in use; set BENCH_PORT (it and the next two are used)" >&2
            return 1
        fi
    done
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    # A throwaway CA and a server certificate it signed, for this run only: `ek` trusts the CA
    # through SSL_CERT_FILE=DIR/ca.pem; wrk and h2load do not verify. (A lone self-signed
    # certificate is a CA certificate to OpenSSL 3, and webpki refuses a CA certificate as a
    # server's: CaUsedAsEndEntity.)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" \
        -days 2 -subj /CN=executionkit-bench-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/server.csr" \
        -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/cert.pem" 2>/dev/null
    # The fixed event streams: SSE_EVENTS text deltas, and one (bench/sse_file.py).
    python3 "$here/sse_file.py" "$dir" "$sse_events" 1
    sed -e "s|@WORK@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@TLS_PORT@|$tls_port|g" \
        -e "s|@H2_PORT@|$h2_port|g" -e "s|@RESPONSE@|$response|g" \
        "$here/nginx.conf.template" >"$dir/nginx.conf"
    "$nginx" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' &
    NGINX_PID=$!
    for p in "$port" "$tls_port" "$h2_port"; do
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
            sleep 0.05
        done
    done
    local reply
    reply=$(python3 - "$port" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions",
                             data=b"{}", headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
EOF
)
    if [ "$reply" != "$response" ]; then
        echo "bench: nginx answers $reply" >&2
        return 1
    fi
}

nginx_stop() {
    [ -n "$NGINX_PID" ] || return 0
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true # graceful stop of the master we started
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$NGINX_PID" 2>/dev/null || true
    fi
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
}
