"""The measuring half of bench/run.sh: `ek consensus` next to the physical-limit clients (wrk for
plain http and https/1.1, h2load for https/2), a streamed completion next to curl, and
executionkit (Python), all against one nginx fixed-response endpoint; writes the medians to
bench/RESULTS.md.

run.sh installs everything, builds `ek`, starts nginx and then calls this script (stdlib only):

    python3 bench/bench.py --port PORT --ek target/release/ek --body BODY_FILE \
        [--tls-port P --h2-port P --ca ca.pem --handshake-log handshakes.log] \
        [--stream-example target/release/examples/stream --sse-events 1000] \
        [--before OLD_EK [--before-stream OLD_STREAM_EXAMPLE]] \
        [--py "py-urllib=VENV1/bin/python" --py "py-httpx=VENV2/bin/python"] \
        [--micro DIVAN_OUTPUT_FILE] [--runs 3] [--wrk-duration 5] [--out bench/RESULTS.md]

Every figure of a process is its own rusage (wait4, taken by bench/rusage.c around it): user + sys
CPU and peak RSS of the whole process, start-up included. Connections opened are nginx's
stub_status `accepts` after the run minus before it, minus the one connection that reads the
"after" figure. TLS handshakes are the lines nginx logged for the first request of each TLS
connection during the run (`$ssl_session_reused` tells full from resumed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import selectors
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

PROMPT = "What is the capital of France? Answer with one word."
MODEL = "m"
WORKLOADS = [(1000, 50), (10000, 200)]
# The TLS workloads (https/1.1 and https/2): samples, max concurrency.
TLS_WORKLOAD = (10000, 200)
# nginx's http2_max_concurrent_streams (bench/nginx.conf.template).
H2_MAX_STREAMS = 128
BEGIN = "<!-- BEGIN bench/run.sh output: regenerated on every run, edit outside these markers -->"
END = "<!-- END bench/run.sh output -->"


@dataclass
class Run:
    """One measured process."""

    client: str
    samples: int  # 0 for wrk (runs for a duration)
    concurrency: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    calls: int
    connections: int
    ok: bool
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cpu_per_call_us(self) -> float:
        return (self.user_s + self.sys_s) / max(self.calls, 1) * 1e6

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0


def accepts(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx_status", timeout=10) as r:
        text = r.read().decode()
    # "Active connections: 1 \nserver accepts handled requests\n 10 10 20 \n..."
    return int(text.splitlines()[2].split()[0])


RUSAGE_HELPER = ""  # bench/rusage.c, built by run.sh (--rusage-helper)


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 900.0):
    """Runs `cmd` under bench/rusage.c and returns (stdout, stderr, exit code, wall seconds,
    rusage) with the rusage of `cmd` alone.

    The helper forks `cmd` from its own small process and reports the child's wait4 rusage
    on fd 3. Spawned straight from Python, a child's figures were the harness's too: after
    fork, the Python child's copy-on-write faults before exec were charged to it (`/bin/true`
    measured 2.5 ms of CPU that way, against 0.5 ms), and its peak RSS started at Python's
    (every client showed 17-25 MiB, the harness's own size)."""
    r_out, w_out = os.pipe()  # close-on-exec: only the dup2'd copies reach the child
    r_err, w_err = os.pipe()
    r_rep, w_rep = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, w_out, 1),
        (os.POSIX_SPAWN_DUP2, w_err, 2),
        (os.POSIX_SPAWN_DUP2, w_rep, 3),
    ]
    t0 = time.perf_counter()
    pid = os.posix_spawnp(RUSAGE_HELPER, [RUSAGE_HELPER, *cmd],
                          os.environ if env is None else env, file_actions=actions)
    for fd in (w_out, w_err, w_rep):
        os.close(fd)
    sel = selectors.DefaultSelector()
    sel.register(r_out, selectors.EVENT_READ, "out")
    sel.register(r_err, selectors.EVENT_READ, "err")
    sel.register(r_rep, selectors.EVENT_READ, "rep")
    bufs = {"out": bytearray(), "err": bytearray(), "rep": bytearray()}
    deadline = time.monotonic() + timeout
    open_fds = 3
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)
            break
        for key, _ in sel.select(timeout=left):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_fds -= 1
            else:
                bufs[key.data] += chunk
    _, status, _ = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    sel.close()
    code = os.waitstatus_to_exitcode(status)
    fields = bufs["rep"].decode().split()
    if len(fields) != 4:
        raise RuntimeError(f"rusage helper gave {bufs['rep']!r} for {cmd[0]} (exit {code}): "
                           f"{bufs['err'].decode(errors='replace')[:300]}")
    user_us, sys_us, maxrss_kib, child_status = map(int, fields)
    ru = SimpleNamespace(ru_utime=user_us / 1e6, ru_stime=sys_us / 1e6, ru_maxrss=maxrss_kib)
    code = os.waitstatus_to_exitcode(child_status)
    return bufs["out"].decode(errors="replace"), bufs["err"].decode(errors="replace"), code, wall, ru


def run_wrk(args, concurrency: int, url: str | None = None, label: str = "wrk") -> Run:
    url = url or f"http://127.0.0.1:{args.port}/v1/chat/completions"
    env = dict(os.environ, EK_BENCH_BODY=args.body)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{args.wrk_duration}s", "-s", args.wrk_script, url]
    before, hs0 = accepts(args.port), handshake_mark(args)
    out, err, code, wall, ru = run_measured(cmd, env)
    conns = accepts(args.port) - before - 1
    hs = handshakes_since(args, hs0)
    m = re.search(r"EK_WRK requests=(\d+) duration_us=(\d+) (.*)", out)
    if not m:
        return Run(label, 0, concurrency, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, 0, conns,
                   False, f"no summary line (exit {code}): {err.strip()[:200]}", {"handshakes": hs})
    requests, dur_us = int(m.group(1)), int(m.group(2))
    errors = dict(kv.split("=") for kv in m.group(3).split())
    bad = {k: v for k, v in errors.items() if k != "bytes" and v != "0"}
    return Run(label, 0, concurrency, dur_us / 1e6, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
               requests, conns, code == 0 and not bad, f"errors: {bad}" if bad else "",
               {"process_wall_s": wall, "handshakes": hs})


def run_h2load(args, requests: int) -> Run:
    """h2load (nghttp2), the HTTP/2 physical-limit client: `requests` POSTs of the body `ek`
    sends over 4 connections with 50 streams each (TESTING.md §7)."""
    url = f"https://127.0.0.1:{args.h2_port}/v1/chat/completions"
    cmd = ["h2load", "-n", str(requests), "-c", "4", "-m", "50", "-d", args.body,
           "-H", "content-type: application/json", url]
    before, hs0 = accepts(args.port), handshake_mark(args)
    out, err, code, wall, ru = run_measured(cmd)
    conns = accepts(args.port) - before - 1
    hs = handshakes_since(args, hs0)
    fin = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    st = re.search(r"status codes: (\d+) 2xx", out)
    if not (fin and req and st):
        return Run("h2load", 0, 50 * 4, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, 0, conns,
                   False, f"unreadable output (exit {code}): {(out + err).strip()[-300:]}",
                   {"handshakes": hs})
    secs = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    done, ok2xx = int(req.group(4)), int(st.group(1))
    ok = code == 0 and done == requests and ok2xx == requests
    return Run("h2load", 0, 50 * 4, secs, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, done, conns,
               ok, "" if ok else f"succeeded {done}, 2xx {ok2xx} of {requests}",
               {"process_wall_s": wall, "handshakes": hs})


def run_stream(args, client: str, cmd: list[str], events: int, env: dict | None = None,
               expect_bytes: int = 0) -> Run:
    """One streamed completion: the stream example of `ek`'s library (prints
    `deltas=N bytes=N ...`) or curl (prints the bytes it received)."""
    before = accepts(args.port)
    out, err, code, wall, ru = run_measured(cmd, env)
    conns = accepts(args.port) - before - 1
    ok, note = False, ""
    if client.startswith("curl"):
        got = int(out.strip() or 0) if out.strip().isdigit() else -1
        ok = code == 0 and got == expect_bytes
        note = "" if ok else f"exit {code}, {got} bytes of {expect_bytes}"
    else:
        m = re.search(r"deltas=(\d+) bytes=(\d+) input_tokens=(\d+) output_tokens=(\d+)", out)
        ok = bool(m) and code == 0 and int(m.group(1)) == events and int(m.group(4)) == events
        if not ok:
            note = f"exit {code}: {(out + err).strip()[-200:]}"
    return Run(client, events, 1, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, events, conns,
               ok, note, {"stderr_bytes": len(err)})


def handshake_mark(args) -> int:
    """Where the handshake log ends now (bytes)."""
    try:
        return os.path.getsize(args.handshake_log) if args.handshake_log else 0
    except OSError:
        return 0


def handshakes_since(args, mark: int) -> dict:
    """TLS handshakes nginx logged since `mark`: {"full": n, "resumed": n} (nginx writes its
    access log unbuffered, so the lines are there when the client has exited)."""
    out = {"full": 0, "resumed": 0}
    if not args.handshake_log:
        return out
    try:
        with open(args.handshake_log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out["resumed" if parts[3] == "r" else "full"] += 1
    return out


def run_client(args, client: str, cmd: list[str], samples: int, concurrency: int,
               env: dict | None = None) -> Run:
    before, hs0 = accepts(args.port), handshake_mark(args)
    out, err, code, wall, ru = run_measured(cmd, env)
    conns = accepts(args.port) - before - 1
    ok, note, extra = False, "", {"handshakes": handshakes_since(args, hs0)}
    try:
        doc = json.loads(out.strip().splitlines()[-1])
        calls = int(doc["cost"]["llm_calls"])
        ok = code == 0 and doc.get("value") == "Paris" and calls == samples
        if not ok:
            note = f"exit {code}, value {doc.get('value')!r}, calls {calls}"
        for k in ("backend", "consensus_cpu_s", "consensus_wall_s"):
            if k in doc:
                extra[k] = doc[k]
    except (ValueError, KeyError, IndexError) as e:
        calls = 0
        note = f"exit {code}, unreadable output ({e}): {out.strip()[:200]} {err.strip()[-300:]}"
    extra["stderr_bytes"] = len(err)
    if err.strip() and client.startswith("ek"):
        note = (note + "; " if note else "") + f"stderr: {err.strip()[:200]}"
    return Run(client, samples, concurrency, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
               calls, conns, ok, note, extra)


def median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def version(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "memory": mem,
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "h2load": version(["h2load", "--version"]),
        "curl": version(["curl", "--version"]),
        "openssl": version(["openssl", "version"]),
        "rustc": version(["rustc", "-V"]),
        "commit": version(["git", "log", "-1", "--format=%h %cd", "--date=iso"]),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def fmt(x: float, digits: int = 1) -> str:
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def parse_divan(text: str) -> dict[str, float]:
    """Median time (ns) of each divan benchmark line, keyed by `group/name[/arg]`."""
    units = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
    out: dict[str, float] = {}
    stack: list[str] = []
    group = ""
    for line in text.splitlines():
        if re.match(r"^\S+\s+fastest", line):
            group = line.split()[0]
            stack = []
            continue
        m = re.match(r"^([│ ]*)[├╰]─ (\S+)\s+(.*)$", line)
        if not m or not group:
            continue
        depth = len(m.group(1)) // 3
        stack = stack[:depth] + [m.group(2)]
        times = re.findall(r"([\d.]+) (ps|ns|µs|us|ms|s)\b", m.group(3))
        if len(times) >= 3:
            v, u = times[2]  # fastest │ slowest │ median │ mean
            out["/".join([group, *stack])] = float(v) * units[u]
    return out


def args_variants(runs: dict) -> list[str]:
    """Labels of the extra ek builds measured (neither ek, ek-reqwest nor Python)."""
    seen: list[str] = []
    for label, _, _ in runs:
        if (label.startswith("ek") and label not in ("ek", "ek-reqwest")
                and not label.startswith(("ek-tls", "ek-h2", "ek-stream", "curl"))
                and label not in seen):
            seen.append(label)
    return seen


def render(args, mach: dict, wrk: dict, runs: dict, py_status: dict, micro: str) -> tuple[str, list]:
    lines: list[str] = []
    now = mach.get("run_at") or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = {"ek": args.ek_label,
             "ek-before": f"ek before ({args.before_label})",
             "ek-reqwest": "ek before, over its reqwest path (what it used for https, streams"
                           " and proxies; here over http)"}
    body = Path(args.body).read_text().strip()
    lines += [
        f"Run {now} on {mach['nproc']} CPUs ({mach['cpu']}), {mach['kernel']}, {mach['memory']} RAM;"
        f" load average before the run {' '.join(mach['loadavg'])}.",
        f"{mach['nginx']}; {mach['wrk']}; {mach['h2load']}; {mach['openssl']};"
        f" {mach['rustc']}; commit {mach['commit']}.",
        f"Python: {py_status['version']}.",
        "",
        f"nginx: one worker, keep-alive, `keepalive_requests` 10,000,000,"
        f" `http2_max_concurrent_streams` {H2_MAX_STREAMS}, on 127.0.0.1 (plain http, https/1.1"
        f" and https/2 on three ports of one server; a throwaway CA and RSA-2048 server"
        f" certificate, TLS 1.2 and 1.3); the same machine runs the client. Prompt `{args.prompt}`, model `{args.model}`;"
        f" every sample is one `POST /v1/chat/completions` answered with content `Paris`, usage"
        f" 12/1. wrk: one thread, {args.wrk_duration} s per run; h2load: {args.h2load_requests:,}"
        f" requests, 4 connections × 50 streams; both POST the exact body `ek` sends (`{body}`)."
        f" Medians of {args.runs} runs. CPU is user + sys of the whole process (start-up"
        f" included) divided by its calls; RSS is the process's peak; connections are"
        f" stub_status `accepts` opened during the run.",
        "",
    ]

    def row(label: str, rs: list[Run], ref_cpu: float, ref_rps: float, extra_cols: str = "",
            bold: bool = False) -> str:
        cpu, rps = median(rs, "cpu_per_call_us"), median(rs, "calls_per_s")
        b = "**" if bold else ""
        return (f"| {label} | {fmt(median(rs, 'wall_s'), 3)} | {fmt(rps)} | {fmt(cpu, 2)} |"
                f" {fmt(median(rs, 'maxrss_kib') / 1024, 1)} | {max(r.connections for r in rs)} |"
                f"{extra_cols} {all(r.ok for r in rs)} | {b}{fmt(cpu / ref_cpu, 2)}{b} |"
                f" {b}{fmt(rps / ref_rps, 2)}{b} |")

    def marginal(label: str, samples: int, conc: int, one: tuple) -> float:
        """CPU per call without start-up: (run − one-call run) / (samples − 1)."""
        big, small = runs.get((label, samples, conc), []), runs.get(one, [])
        if not big or not small:
            return float("nan")
        cpu_big = statistics.median(r.user_s + r.sys_s for r in big)
        cpu_one = statistics.median(r.user_s + r.sys_s for r in small)
        return (cpu_big - cpu_one) / (samples - 1) * 1e6

    # --- plain http ------------------------------------------------------------------------
    targets: dict[str, float] = {}
    for samples, conc in WORKLOADS:
        w = wrk.get(("http", conc), [])
        lines.append(f"### plain http: {samples:,} samples, max concurrency {conc}")
        lines.append("")
        lines.append("| client | wall s | calls/s | CPU µs/call | peak RSS MiB | TCP connections"
                     " (max of runs) | ok | CPU ÷ wrk | calls/s ÷ wrk | CPU python/ek |"
                     " wall python/ek |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        wrk_cpu = median(w, "cpu_per_call_us") if w else float("nan")
        wrk_rps = median(w, "calls_per_s") if w else float("nan")
        if w:
            lines.append(row(f"wrk -t1 -c{conc} ({args.wrk_duration} s)", w, wrk_cpu, wrk_rps)
                         + " | |")
        ek = runs.get(("ek", samples, conc), [])
        ek_cpu = median(ek, "cpu_per_call_us") if ek else float("nan")
        ek_wall = median(ek, "wall_s") if ek else float("nan")
        if ek:
            lines.append(row(names["ek"], ek, wrk_cpu, wrk_rps, bold=True) + " | |")
            targets[f"cpu/{samples}"] = ek_cpu / wrk_cpu
            targets[f"rps/{samples}"] = median(ek, "calls_per_s") / wrk_rps
            targets[f"conns/{samples}"] = max(r.connections for r in ek)
            targets[f"rss/{samples}"] = median(ek, "maxrss_kib") / 1024
        for label in ["ek-before", *[v for v in args_variants(runs) if v != "ek-before"],
                      "ek-reqwest"]:
            rv = runs.get((label, samples, conc), [])
            if rv:
                lines.append(row(names.get(label, label), rv, wrk_cpu, wrk_rps) + " | |")
        best_py = float("nan")
        for label in py_status["labels"]:
            pr = runs.get((label, samples, conc), [])
            if not pr:
                lines.append(f"| executionkit 0.4.0 {label} | not measured | | | | | | | | | |")
                continue
            cpu = median(pr, "cpu_per_call_us")
            if all(r.ok for r in pr):
                best_py = cpu if best_py != best_py else min(best_py, cpu)
            lines.append(
                f"| executionkit 0.4.0 {label} | {fmt(median(pr, 'wall_s'), 3)} |"
                f" {fmt(median(pr, 'calls_per_s'))} | {fmt(cpu, 1)} |"
                f" {fmt(median(pr, 'maxrss_kib') / 1024, 1)} | {max(r.connections for r in pr)} |"
                f" {all(r.ok for r in pr)} | | | **{fmt(cpu / ek_cpu, 1)}** |"
                f" {fmt(median(pr, 'wall_s') / ek_wall, 1)} |")
        targets[f"py/{samples}"] = best_py / ek_cpu
        lines.append("")
    start = runs.get(("ek", 1, 1), [])
    if start:
        st_cpu = median(start, "cpu_per_call_us")  # one call: the whole process's CPU
        marg = [f"{fmt(marginal('ek', s, c, ('ek', 1, 1)), 2)} µs at {s:,}/{c}"
                for s, c in WORKLOADS]
        lines.append(
            f"`ek` start-up and exit with one call: {fmt(st_cpu / 1000, 2)} ms CPU,"
            f" {fmt(median(start, 'maxrss_kib') / 1024, 1)} MiB (median of {len(start)}; starting"
            f" `/bin/true` costs {fmt(mach.get('true_ms', float('nan')), 2)} ms here). CPU per"
            f" call without it (whole run minus the one-call run, divided by the other calls): "
            + "; ".join(marg) + ".")
        bstart = runs.get(("ek-before", 1, 1), [])
        if bstart:
            bmarg = [f"{fmt(marginal('ek-before', s, c, ('ek-before', 1, 1)), 2)} µs at {s:,}/{c}"
                     for s, c in WORKLOADS]
            lines.append(
                f"The same for `ek` before: {fmt(median(bstart, 'cpu_per_call_us') / 1000, 2)} ms,"
                f" {fmt(median(bstart, 'maxrss_kib') / 1024, 1)} MiB; " + "; ".join(bmarg) + ".")
        lines.append("")

    # --- https/1.1 and https/2 -----------------------------------------------------------------
    samples, conc = TLS_WORKLOAD
    h2_bound = -(-conc // H2_MAX_STREAMS) + 1
    for proto in ("tls", "h2"):
        ref = wrk.get(("tls", conc), []) if proto == "tls" else wrk.get(("h2", 0), [])
        ek = runs.get((f"ek-{proto}", samples, conc), [])
        if not ref and not ek:
            continue
        if proto == "tls":
            lines.append(f"### https/1.1 (TLS, ALPN http/1.1): {samples:,} samples, max"
                         f" concurrency {conc}")
            ref_name = f"wrk -t1 -c{conc} over TLS ({args.wrk_duration} s)"
        else:
            lines.append(f"### https/2 (TLS, ALPN h2): {samples:,} samples, max concurrency {conc}")
            ref_name = f"h2load -n {args.h2load_requests:,} -c 4 -m 50"
        lines.append("")
        lines.append("| client | wall s | calls/s | CPU µs/call | peak RSS MiB | TCP connections"
                     " (max of runs) | TLS handshakes full + resumed (max of runs) | ok |"
                     f" CPU ÷ {'wrk' if proto == 'tls' else 'h2load'} |"
                     f" calls/s ÷ {'wrk' if proto == 'tls' else 'h2load'} |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")

        def hs(rs: list[Run]) -> str:
            full = max(r.extra.get("handshakes", {}).get("full", 0) for r in rs)
            res = max(r.extra.get("handshakes", {}).get("resumed", 0) for r in rs)
            return f" {full} + {res} |"

        ref_cpu = median(ref, "cpu_per_call_us") if ref else float("nan")
        ref_rps = median(ref, "calls_per_s") if ref else float("nan")
        if ref:
            lines.append(row(ref_name, ref, ref_cpu, ref_rps, hs(ref)))
        if ek:
            lines.append(row(names["ek"], ek, ref_cpu, ref_rps, hs(ek), bold=True))
            targets[f"{proto}/cpu"] = median(ek, "cpu_per_call_us") / ref_cpu
            targets[f"{proto}/conns"] = max(r.connections for r in ek)
        if args.before:
            lines.append(f"| ek before ({args.before_label}) | not measured: its https path"
                         " (reqwest, webpki roots only) cannot trust a private CA | | | | | | | |"
                         " |")
        lines.append("")
        one = runs.get((f"ek-{proto}", 1, 1), [])
        if one and ek:
            m = marginal(f"ek-{proto}", samples, conc, (f"ek-{proto}", 1, 1))
            lines.append(
                f"`ek` with one call over {'https/1.1' if proto == 'tls' else 'https/2'}:"
                f" {fmt(median(one, 'cpu_per_call_us') / 1000, 2)} ms CPU (start-up, loading the"
                f" roots, one handshake), {fmt(median(one, 'maxrss_kib') / 1024, 1)} MiB. CPU per"
                f" call without it: {fmt(m, 2)} µs ({fmt(m / ref_cpu, 2)}× the reference's).")
            targets[f"{proto}/marginal"] = m / ref_cpu
            lines.append("")
    if ("h2/conns") in targets:
        targets["h2/bound"] = h2_bound

    # --- streaming -----------------------------------------------------------------------------
    ev = args.sse_events
    st = {k: runs.get((k, ev, 1), []) for k in ("ek-stream", "ek-stream-before", "curl-stream")}
    st1 = {k: runs.get((k, 1, 1), []) for k in st}
    if any(st.values()):
        lines.append(f"### A streamed completion: {ev:,} events end to end (plain http)")
        lines.append("")
        lines.append(
            f"nginx serves a fixed `text/event-stream` file to the POST: {ev:,}"
            f" `chat.completion.chunk` text deltas (~190 bytes each), a finish chunk, a usage chunk"
            f" and `[DONE]` ({args.sse_bytes:,} bytes); the one-event file has the same shape."
            f" `ek`'s side is `examples/stream.rs` (`stream_completion` through the budget, on a"
            f" current-thread runtime as `ek`); curl POSTs the same body and writes the bytes to"
            f" /dev/null.")
        lines.append("")
        lines.append(f"| client | CPU ms, {ev:,} events | CPU ms, 1 event | CPU µs per event"
                     " (difference ÷ events) | CPU per event ÷ curl's | peak RSS MiB | ok |")
        lines.append("|---|---|---|---|---|---|---|")
        curl_per = float("nan")
        per: dict[str, float] = {}
        for k in ("curl-stream", "ek-stream", "ek-stream-before"):
            rs, r1 = st[k], st1[k]
            if not rs:
                continue
            cpu = statistics.median(r.user_s + r.sys_s for r in rs) * 1e3
            cpu1 = statistics.median(r.user_s + r.sys_s for r in r1) * 1e3 if r1 else float("nan")
            per[k] = (cpu - cpu1) / (ev - 1) * 1e3
            if k == "curl-stream":
                curl_per = per[k]
        label = {"curl-stream": "curl", "ek-stream": "`examples/stream`, this tree",
                 "ek-stream-before": f"`examples/stream` at {args.before_label}"}
        for k in ("curl-stream", "ek-stream", "ek-stream-before"):
            rs, r1 = st[k], st1[k]
            if not rs:
                continue
            cpu = statistics.median(r.user_s + r.sys_s for r in rs) * 1e3
            cpu1 = statistics.median(r.user_s + r.sys_s for r in r1) * 1e3 if r1 else float("nan")
            lines.append(f"| {label[k]} | {fmt(cpu, 2)} | {fmt(cpu1, 2)} | {fmt(per[k], 2)} |"
                         f" {fmt(per[k] / curl_per, 1)} |"
                         f" {fmt(median(rs, 'maxrss_kib') / 1024, 1)} |"
                         f" {all(r.ok for r in rs + r1)} |")
        targets["stream/e2e"] = per.get("ek-stream", float("nan"))
        lines.append("")

    ek_runs = [r for (label, _, _), rs in runs.items() if label == "ek" for r in rs]
    if ek_runs:
        err_bytes = sum(r.extra.get("stderr_bytes", 0) for r in ek_runs)
        lines.append(f"`ek` wrote {err_bytes} bytes to stderr (not a terminal) over its"
                     f" {len(ek_runs)} plain-http runs here: no progress bar, no per-call log line.")
        lines.append("")
    notes = [r for rs in runs.values() for r in rs if r.note] + [
        r for rs in wrk.values() for r in rs if r.note]
    if notes:
        lines.append("Notes from the runs:")
        for r in notes:
            lines.append(f"- {r.client} {r.samples}/{r.concurrency}: {r.note}")
        lines.append("")
    py_inner = []
    for (label, samples_, conc_), rs in sorted(runs.items()):
        if label.startswith("py") and rs and "consensus_cpu_s" in rs[0].extra:
            cpu = statistics.median(r.extra["consensus_cpu_s"] for r in rs) / samples_ * 1e6
            py_inner.append(f"{label} {samples_}/{conc_}: {fmt(cpu, 1)} µs")
    if py_inner:
        lines.append("CPU per call inside the Python `consensus` call alone (interpreter start-up"
                     " and imports excluded, `time.process_time`): " + "; ".join(py_inner) + ".")
        lines.append("")

    # --- targets (issue 9) -----------------------------------------------------------------
    micro_ns = parse_divan(micro) if micro else {}
    overhead = micro_ns.get("consensus_overhead/samples_10000/200", float("nan")) / 10000 / 1000
    sse_decode = micro_ns.get("sse/decode", float("nan")) / 1000 / 1000
    sse_loop = micro_ns.get("sse/provider_loopback", float("nan")) / 1000 / 1000
    nan = float("nan")
    t = lambda k: targets.get(k, nan)  # noqa: E731

    def mark(x: float, ok: bool) -> str:
        return "not measured" if x != x else ("met" if ok else "**missed**")

    lines += [
        "### Targets (issue 9; ratios from this run)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| plain http 10,000 at 200: CPU per call ≤ 1.5× wrk's | {fmt(t('cpu/10000'), 2)}× |"
        f" {mark(t('cpu/10000'), t('cpu/10000') <= 1.5)} |",
        f"| plain http 10,000 at 200: calls/s ≥ 60% of wrk's | {fmt(t('rps/10000') * 100, 0)}% |"
        f" {mark(t('rps/10000'), t('rps/10000') >= 0.6)} |",
        f"| plain http 10,000 at 200: ≤ 200 connections | {fmt(t('conns/10000'), 0)} (max of"
        f" runs) | {mark(t('conns/10000'), t('conns/10000') <= 200)} |",
        f"| plain http 10,000 at 200: peak RSS ≤ 25 MiB | {fmt(t('rss/10000'), 1)} MiB |"
        f" {mark(t('rss/10000'), t('rss/10000') <= 25)} |",
        f"| plain http 1,000 at 50: CPU per call ≤ 2.5× wrk's | {fmt(t('cpu/1000'), 2)}× |"
        f" {mark(t('cpu/1000'), t('cpu/1000') <= 2.5)} |",
        f"| https/1.1: CPU per call ≤ 2× wrk's over TLS | {fmt(t('tls/cpu'), 2)}× (whole"
        f" process; {fmt(t('tls/marginal'), 2)}× without start-up) |"
        f" {mark(t('tls/cpu'), t('tls/cpu') <= 2)} |",
        f"| https/2: CPU per call ≤ 3× h2load's | {fmt(t('h2/cpu'), 2)}× (whole process;"
        f" {fmt(t('h2/marginal'), 2)}× without start-up) | {mark(t('h2/cpu'), t('h2/cpu') <= 3)} |",
        f"| https/2: connections ≤ ⌈{TLS_WORKLOAD[1]} / {H2_MAX_STREAMS}⌉ + 1 = {h2_bound} |"
        f" {fmt(t('h2/conns'), 0)} (max of runs) |"
        f" {mark(t('h2/conns'), t('h2/conns') <= h2_bound)} |",
        f"| streaming: CPU per SSE event ≤ 1 µs (divan) | {fmt(sse_decode, 3)} µs decoding;"
        f" {fmt(sse_loop, 3)} µs through the provider over loopback (wall time, divan median) |"
        f" {mark(sse_decode, sse_decode <= 1)} (decoding),"
        f" {mark(sse_loop, sse_loop <= 1)} (whole path) |",
        f"| streaming end to end next to curl (no bar) | {fmt(t('stream/e2e'), 2)} µs CPU per"
        f" event | |",
        f"| library-only overhead ≤ 2 µs per sample over the mock (issue 4) | {fmt(overhead, 3)} µs"
        f" (divan median, consensus of 10,000 samples) | {mark(overhead, overhead <= 2)} |",
        f"| ≥ 40× less CPU per LLM call than executionkit-Py's best backend (issue 4) |"
        f" {fmt(t('py/1000'), 1)}× (1,000/50), {fmt(t('py/10000'), 1)}× (10,000/200) |"
        f" {mark(t('py/1000'), min(t('py/1000'), t('py/10000')) >= 40)} |",
        "",
    ]
    if micro:
        lines += ["### Micro-benchmarks (divan, this run)", "", "```", micro.strip(), "```", ""]
    return "\n".join(lines), targets


def write_results(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    new_block = f"{BEGIN}\n\n{block}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + new_block + tail
    else:
        text = ("# Benchmarks\n\nProduced by `bench/run.sh` (issue 4).\n\n" + new_block + "\n"
                + text)
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True, help="nginx's plain http port")
    ap.add_argument("--tls-port", type=int, default=0, help="nginx's https/1.1 port (0: skip)")
    ap.add_argument("--h2-port", type=int, default=0, help="nginx's https/2 port (0: skip)")
    ap.add_argument("--ca", default="", help="the CA of nginx's certificate (ek: SSL_CERT_FILE)")
    ap.add_argument("--handshake-log", default="", help="nginx's log of TLS connections")
    ap.add_argument("--h2load-requests", type=int, default=100000)
    ap.add_argument("--ek", required=True)
    ap.add_argument("--ek-label", default="ek (Rust)", help="the name of --ek in the tables")
    ap.add_argument("--before", default="", help="an ek build from before the transport change")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--stream-example", default="", help="the stream example (examples/stream.rs)")
    ap.add_argument("--before-stream", default="", help="the stream example of the before build")
    ap.add_argument("--sse-events", type=int, default=1000)
    ap.add_argument("--sse-bytes", type=int, default=0, help="size of the SSE file of N events")
    ap.add_argument("--sse-one-bytes", type=int, default=0, help="size of the one-event file")
    ap.add_argument("--rusage-helper", required=True,
                    help="bench/rusage.c, built: runs each client and reports its own rusage")
    ap.add_argument("--body", required=True)
    ap.add_argument("--wrk-script", default=str(Path(__file__).with_name("wrk.lua")))
    ap.add_argument("--py", action="append", default=[], help="LABEL=PYTHON (a venv's python)")
    ap.add_argument("--py-version", default="not measured (no CPython 3.13)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--micro", default="")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wrk-duration", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--raw", default="")
    ap.add_argument("--from-raw", default="",
                    help="render a raw file of an earlier run (--raw) instead of measuring; give "
                    "the same other arguments")
    ap.add_argument("--only", default="", help="comma list of clients to run (debugging): "
                    "wrk, ek, ek-before, ek-reqwest, tls, h2, stream, py labels")
    ap.add_argument("--ek-variant", action="append", default=[],
                    help="LABEL=PATH: another ek build measured on the plain-http workloads")
    ap.add_argument("--no-reqwest", dest="reqwest", action="store_false",
                    help="skip the before build's reqwest row")
    args = ap.parse_args()
    global RUSAGE_HELPER
    RUSAGE_HELPER = args.rusage_helper

    if args.from_raw:
        raw = json.loads(Path(args.from_raw).read_text())

        def key(k: str, parts: int) -> tuple:
            fields = k.rsplit("/", parts - 1)
            return (fields[0], *map(int, fields[1:]))

        wrk = {key(k, 2): [Run(**r) for r in rs] for k, rs in raw["wrk"].items()}
        runs = {key(k, 3): [Run(**r) for r in rs] for k, rs in raw["runs"].items()}
        micro = Path(args.micro).read_text() if args.micro else ""
        pys = [p.split("=", 1)[0] for p in args.py]
        block, _ = render(args, raw["machine"], wrk, runs,
                          {"version": args.py_version, "labels": pys or ["py-urllib", "py-httpx"]},
                          micro)
        print(block)
        write_results(Path(args.out), block)
        return 0

    mach = machine()
    mach["run_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = f"http://127.0.0.1:{args.port}/v1"
    pys = [tuple(p.split("=", 1)) for p in args.py]
    variants = [tuple(v.split("=", 1)) for v in args.ek_variant]
    if args.before:
        variants.insert(0, ("ek-before", args.before))
    only = set(filter(None, args.only.split(",")))
    want = lambda c: not only or c in only  # noqa: E731
    wrk: dict[tuple, list[Run]] = {}
    runs: dict[tuple, list[Run]] = {}

    def show(r: Run) -> None:
        hs = r.extra.get("handshakes", {})
        hs_text = f"  tls {hs['full']}+{hs['resumed']}" if hs and sum(hs.values()) else ""
        print(f"  {r.client:16} {r.samples:6}/{r.concurrency:<4} wall {r.wall_s:8.3f} s"
              f"  {r.calls_per_s:10.0f} calls/s  {r.cpu_per_call_us:8.2f} µs CPU/call"
              f"  rss {r.maxrss_kib / 1024:6.1f} MiB  conns {r.connections:5}{hs_text}  ok {r.ok}"
              f"{'  ' + r.note if r.note else ''}", flush=True)

    def add(key: tuple, r: Run, into: dict | None = None) -> None:
        (runs if into is None else into).setdefault(key, []).append(r)
        show(r)

    def ek_cmd(samples: int, conc: int, base_url: str = base, exe: str = args.ek) -> list[str]:
        return [exe, "consensus", "--json", "--base-url", base_url, "--model", args.model,
                "--samples", str(samples), "--max-concurrency", str(conc), args.prompt]

    # The before build over reqwest (its transport for https, streams and proxies): a proxy
    # variable switched its hand-written client off, and no_proxy keeps reqwest off the proxy.
    reqwest_env = dict(os.environ, http_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1")
    # No proxy variable reaches the current build (nothing in the environment of the run
    # should route loopback traffic elsewhere).
    # SSL_CERT_FILE makes the run's CA the "system" roots; SSL_CERT_DIR would add a whole
    # directory to parse at start-up, which is not what this measures.
    tls_env = dict(os.environ, SSL_CERT_FILE=args.ca)
    for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "SSL_CERT_DIR"):
        tls_env.pop(k, None)

    floor = []
    for _ in range(args.runs):
        _, _, _, _, ru = run_measured(["/bin/true"])
        floor.append((ru.ru_utime + ru.ru_stime) * 1000)
    mach["true_ms"] = statistics.median(floor)
    print("== start-up: 1 sample", flush=True)
    for _ in range(args.runs):
        if want("ek"):
            add(("ek", 1, 1), run_client(args, "ek", ek_cmd(1, 1), 1, 1))
        if args.before and want("ek-before"):
            add(("ek-before", 1, 1),
                run_client(args, "ek-before", ek_cmd(1, 1, exe=args.before), 1, 1))

    for samples, conc in WORKLOADS:
        print(f"== plain http: {samples} samples, concurrency {conc}", flush=True)
        # wrk and the Rust clients interleaved, round by round (the machine's speed drifts
        # from minute to minute, and a ratio should compare neighbours), then Python: a Python
        # run leaves thousands of closed connections behind it that nginx and the kernel are
        # still tidying up.
        for _ in range(args.runs):
            if want("wrk"):
                add(("http", conc), run_wrk(args, conc), wrk)
            if want("ek"):
                add(("ek", samples, conc), run_client(args, "ek", ek_cmd(samples, conc),
                                                      samples, conc))
            for label, path in variants:
                if want(label):
                    add((label, samples, conc),
                        run_client(args, label, ek_cmd(samples, conc, exe=path), samples, conc))
            if args.before and want("ek-reqwest") and args.reqwest:
                add(("ek-reqwest", samples, conc),
                    run_client(args, "ek-reqwest", ek_cmd(samples, conc, exe=args.before),
                               samples, conc, reqwest_env))
        for _ in range(args.runs):
            for label, py in pys:
                if not want(label):
                    continue
                cmd = [py, str(Path(__file__).with_name("py_consensus.py")), base, args.model,
                       str(samples), str(conc), args.prompt]
                add((label, samples, conc), run_client(args, label, cmd, samples, conc))
        time.sleep(3 if pys else 0)  # let the Python runs' closed connections settle

    samples, conc = TLS_WORKLOAD
    if args.tls_port and want("tls"):
        print(f"== https/1.1: {samples} samples, concurrency {conc}", flush=True)
        tls_base = f"https://127.0.0.1:{args.tls_port}/v1"
        for _ in range(args.runs):
            add(("tls", conc), run_wrk(args, conc, f"{tls_base}/chat/completions", "wrk-tls"), wrk)
            add(("ek-tls", samples, conc),
                run_client(args, "ek-tls", ek_cmd(samples, conc, tls_base), samples, conc,
                           tls_env))
            add(("ek-tls", 1, 1), run_client(args, "ek-tls", ek_cmd(1, 1, tls_base), 1, 1,
                                             tls_env))
    if args.h2_port and want("h2"):
        print(f"== https/2: {samples} samples, concurrency {conc}", flush=True)
        h2_base = f"https://127.0.0.1:{args.h2_port}/v1"
        for _ in range(args.runs):
            add(("h2", 0), run_h2load(args, args.h2load_requests), wrk)
            add(("ek-h2", samples, conc),
                run_client(args, "ek-h2", ek_cmd(samples, conc, h2_base), samples, conc, tls_env))
            add(("ek-h2", 1, 1), run_client(args, "ek-h2", ek_cmd(1, 1, h2_base), 1, 1, tls_env))

    if args.stream_example and want("stream"):
        ev = args.sse_events
        print(f"== a streamed completion of {ev} events (and of 1 event)", flush=True)
        stream_env = dict(os.environ, EXECUTIONKIT_MODEL=args.model)
        for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                  "ALL_PROXY", "EXECUTIONKIT_API_KEY", "OPENAI_API_KEY"):
            stream_env.pop(k, None)
        examples = [("ek-stream", args.stream_example)]
        if args.before_stream:
            examples.append(("ek-stream-before", args.before_stream))
        for _ in range(args.runs):
            for n, size in ((ev, args.sse_bytes), (1, args.sse_one_bytes)):
                url = f"http://127.0.0.1:{args.port}/sse{n}/v1"
                add(("curl-stream", n, 1), run_stream(
                    args, "curl-stream",
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", "-X", "POST",
                     "-H", "content-type: application/json", "--data-binary", f"@{args.body}",
                     f"{url}/chat/completions"], n, expect_bytes=size))
                for label, exe in examples:
                    env = dict(stream_env, EXECUTIONKIT_BASE_URL=url)
                    add((label, n, 1), run_stream(args, label, [exe, "--quiet", args.prompt], n,
                                                  env))

    micro = Path(args.micro).read_text() if args.micro and Path(args.micro).exists() else ""
    py_status = {"version": args.py_version,
                 "labels": [p[0] for p in pys] or ["py-urllib", "py-httpx"]}
    block, _ = render(args, mach, wrk, runs, py_status, micro)
    print()
    print(block)
    if args.raw:
        raw = {"machine": mach,
               "wrk": {"/".join(map(str, k)): [asdict(r) for r in rs] for k, rs in wrk.items()},
               "runs": {"/".join(map(str, k)): [asdict(r) for r in rs] for k, rs in runs.items()}}
        Path(args.raw).write_text(json.dumps(raw, indent=1))
    if not only:
        write_results(Path(args.out), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
