-- wrk script of bench/run.sh: POSTs exactly the body `ek consensus` sends (captured by
-- bench/capture_body.py into the file named by the environment variable EK_BENCH_BODY), with
-- the same content type, and prints one machine-readable summary line at the end.

local f = assert(io.open(os.getenv("EK_BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "*/*"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "EK_WRK requests=%d duration_us=%d connect_errors=%d read_errors=%d write_errors=%d status_errors=%d timeouts=%d bytes=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    summary.bytes))
end
