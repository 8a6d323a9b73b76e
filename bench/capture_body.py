"""Captures the exact request body a client sends to POST /v1/chat/completions.

Usage: python3 capture_body.py OUT_BODY_FILE RESPONSE_JSON

Listens on 127.0.0.1 (a free port, printed as the first line on stdout), answers every POST to
/v1/chat/completions with RESPONSE_JSON, writes the first request body it receives to
OUT_BODY_FILE, and exits after that first request (or after 60 s). bench/run.sh runs
`ek consensus --samples 1` against it so the wrk script can POST exactly the bytes ek sends.
"""

from __future__ import annotations

import http.server
import sys
import threading


def main() -> int:
    out_path, response = sys.argv[1], sys.argv[2].encode()
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path == "/v1/chat/completions" and not done.is_set():
                with open(out_path, "wb") as f:
                    f.write(body)
                done.set()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ok = done.wait(60)
    server.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
