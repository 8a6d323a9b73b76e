"""The measuring half of bench/run.sh: wrk, `ek consensus` and executionkit (Python) against one
nginx fixed-response endpoint, side by side; writes the medians to bench/RESULTS.md.

run.sh installs everything, builds `ek`, starts nginx and then calls this script (stdlib only):

    python3 bench/bench.py --port PORT --ek target/release/ek --body BODY_FILE \
        --py "py-urllib=VENV1/bin/python" --py "py-httpx=VENV2/bin/python" \
        [--micro DIVAN_OUTPUT_FILE] [--runs 3] [--wrk-duration 5] [--out bench/RESULTS.md]

Every figure of a process is its own rusage (wait4, taken by bench/rusage.c around it): user + sys
CPU and peak RSS of the whole process, start-up included. Connections opened are nginx's stub_status `accepts` after the run
minus before it, minus the one connection that reads the "after" figure.
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


def run_wrk(args, concurrency: int) -> Run:
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    env = dict(os.environ, EK_BENCH_BODY=args.body)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{args.wrk_duration}s", "-s", args.wrk_script, url]
    before = accepts(args.port)
    out, err, code, wall, ru = run_measured(cmd, env)
    conns = accepts(args.port) - before - 1
    m = re.search(r"EK_WRK requests=(\d+) duration_us=(\d+) (.*)", out)
    if not m:
        return Run("wrk", 0, concurrency, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, 0, conns,
                   False, f"no summary line (exit {code}): {err.strip()[:200]}")
    requests, dur_us = int(m.group(1)), int(m.group(2))
    errors = dict(kv.split("=") for kv in m.group(3).split())
    bad = {k: v for k, v in errors.items() if k != "bytes" and v != "0"}
    return Run("wrk", 0, concurrency, dur_us / 1e6, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
               requests, conns, code == 0 and not bad, f"errors: {bad}" if bad else "",
               {"process_wall_s": wall})


def run_client(args, client: str, cmd: list[str], samples: int, concurrency: int,
               env: dict | None = None) -> Run:
    before = accepts(args.port)
    out, err, code, wall, ru = run_measured(cmd, env)
    conns = accepts(args.port) - before - 1
    ok, note, extra = False, "", {}
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
        if label.startswith("ek") and label not in ("ek", "ek-reqwest") and label not in seen:
            seen.append(label)
    return seen


def render(args, mach: dict, wrk: dict, runs: dict, py_status: dict, micro: str) -> tuple[str, list]:
    lines: list[str] = []
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [
        f"Run {now} on {mach['nproc']} CPUs ({mach['cpu']}), {mach['kernel']}, {mach['memory']} RAM;"
        f" load average before the run {' '.join(mach['loadavg'])}.",
        f"{mach['nginx']}; {mach['wrk']}; {mach['rustc']}; commit {mach['commit']}.",
        f"Python: {py_status['version']}.",
        "",
        f"nginx: one worker, keep-alive, `keepalive_requests` 10,000,000, on 127.0.0.1; the same"
        f" machine runs the client. Prompt `{args.prompt}`, model `{args.model}`; every sample is one"
        f" `POST /v1/chat/completions` answered with content `Paris`, usage 12/1. wrk: one"
        f" thread, {args.wrk_duration} s per run, POSTing the exact body `ek` sends"
        f" (`{Path(args.body).read_text().strip()}`). Medians of {args.runs} runs. CPU is user +"
        f" sys of the whole process (start-up included) divided by its calls; RSS is the"
        f" process's peak; connections are stub_status `accepts` opened during the run.",
        "",
    ]
    targets = []
    for samples, conc in WORKLOADS:
        w = wrk.get(conc, [])
        lines.append(f"### {samples:,} samples, max concurrency {conc}")
        lines.append("")
        lines.append("| client | wall s | calls/s | CPU µs/call | peak RSS MiB | TCP connections | ok | "
                     "CPU ek/wrk | calls/s ek/wrk | CPU python/ek | wall python/ek |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        wrk_cpu = median(w, "cpu_per_call_us") if w else float("nan")
        wrk_rps = median(w, "calls_per_s") if w else float("nan")
        if w:
            lines.append(
                f"| wrk -t1 -c{conc} ({args.wrk_duration} s) | {fmt(median(w, 'wall_s'), 2)} |"
                f" {fmt(wrk_rps)} | {fmt(wrk_cpu, 2)} | {fmt(median(w, 'maxrss_kib') / 1024, 1)} |"
                f" {int(median(w, 'connections'))} | {all(r.ok for r in w)} | 1 | 1 | | |")
        ek = runs.get(("ek", samples, conc), [])
        ek_cpu = median(ek, "cpu_per_call_us") if ek else float("nan")
        ek_wall = median(ek, "wall_s") if ek else float("nan")
        ek_rps = median(ek, "calls_per_s") if ek else float("nan")
        ek_rss = median(ek, "maxrss_kib") / 1024 if ek else float("nan")
        ek_conns = max((r.connections for r in ek), default=-1)
        if ek:
            lines.append(
                f"| ek (Rust) | {fmt(ek_wall, 3)} | {fmt(ek_rps)} | {fmt(ek_cpu, 2)} |"
                f" {fmt(ek_rss, 1)} | {ek_conns} (max of runs) | {all(r.ok for r in ek)} |"
                f" **{fmt(ek_cpu / wrk_cpu, 2)}** | **{fmt(ek_rps / wrk_rps, 2)}** | | |")
        for label in args_variants(runs):
            rv = runs.get((label, samples, conc), [])
            if rv:
                cpu = median(rv, "cpu_per_call_us")
                lines.append(
                    f"| {label} |"
                    f" {fmt(median(rv, 'wall_s'), 3)} | {fmt(median(rv, 'calls_per_s'))} |"
                    f" {fmt(cpu, 2)} | {fmt(median(rv, 'maxrss_kib') / 1024, 1)} |"
                    f" {max(r.connections for r in rv)} | {all(r.ok for r in rv)} |"
                    f" {fmt(cpu / wrk_cpu, 2)} | {fmt(median(rv, 'calls_per_s') / wrk_rps, 2)} | | |")
        rq = runs.get(("ek-reqwest", samples, conc), [])
        if rq:
            cpu = median(rq, "cpu_per_call_us")
            lines.append(
                f"| ek over reqwest (the transport before the lean client) |"
                f" {fmt(median(rq, 'wall_s'), 3)} | {fmt(median(rq, 'calls_per_s'))} |"
                f" {fmt(cpu, 2)} | {fmt(median(rq, 'maxrss_kib') / 1024, 1)} |"
                f" {max(r.connections for r in rq)} | {all(r.ok for r in rq)} |"
                f" {fmt(cpu / wrk_cpu, 2)} | {fmt(median(rq, 'calls_per_s') / wrk_rps, 2)} | | |")
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
        lines.append("")
        targets.append((samples, conc, ek_cpu / wrk_cpu, best_py / ek_cpu, ek_rps / wrk_rps,
                        ek_conns, ek_rss))
    start = runs.get(("ek", 1, 1), [])
    if start:
        st_cpu = median(start, "cpu_per_call_us")  # one call: the whole process's CPU
        marg = []
        for samples, conc in WORKLOADS:
            ek = runs.get(("ek", samples, conc), [])
            if ek:
                cpu = statistics.median(r.user_s + r.sys_s for r in ek) * 1e6
                marg.append(f"{fmt((cpu - st_cpu) / (samples - 1), 2)} µs at {samples:,}/{conc}")
        lines.append(
            f"`ek` start-up and exit with one call: {fmt(st_cpu / 1000, 2)} ms CPU,"
            f" {fmt(median(start, 'maxrss_kib') / 1024, 1)} MiB (median of {len(start)}; starting"
            f" `/bin/true` costs {fmt(mach.get('true_ms', float('nan')), 2)} ms here). CPU per"
            f" call without it (whole run minus the one-call run, divided by the other calls): "
            + "; ".join(marg) + ".")
        lines.append("")
    ek_runs = [r for (label, _, _), rs in runs.items() if label == "ek" for r in rs]
    if ek_runs:
        err_bytes = sum(r.extra.get("stderr_bytes", 0) for r in ek_runs)
        lines.append(f"`ek` wrote {err_bytes} bytes to stderr (not a terminal) over its"
                     f" {len(ek_runs)} runs here: no progress bar, no per-call log line.")
        lines.append("")
    notes = [r for rs in runs.values() for r in rs if r.note] + [
        r for rs in wrk.values() for r in rs if r.note]
    if notes:
        lines.append("Notes from the runs:")
        for r in notes:
            lines.append(f"- {r.client} {r.samples}/{r.concurrency}: {r.note}")
        lines.append("")
    py_inner = []
    for (label, samples, conc), rs in sorted(runs.items()):
        if label != "ek" and rs and "consensus_cpu_s" in rs[0].extra:
            cpu = statistics.median(r.extra["consensus_cpu_s"] for r in rs) / samples * 1e6
            py_inner.append(f"{label} {samples}/{conc}: {fmt(cpu, 1)} µs")
    if py_inner:
        lines.append("CPU per call inside the Python `consensus` call alone (interpreter start-up"
                     " and imports excluded, `time.process_time`): " + "; ".join(py_inner) + ".")
        lines.append("")

    # Targets.
    micro_ns = parse_divan(micro) if micro else {}
    overhead = micro_ns.get("consensus_overhead/samples_10000/200", float("nan")) / 10000 / 1000
    small, big = targets[0], targets[-1]
    worst_cpu = max(t[2] for t in targets)
    worst_py = min(t[3] for t in targets)
    worst_conn_ok = all(t[5] <= t[1] for t in targets)

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines += [
        "### Targets (ratios from this run)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| consensus CPU per LLM call ≤ 2× wrk's CPU per request | "
        f"{fmt(small[2], 2)}× (1,000/50), {fmt(big[2], 2)}× (10,000/200) | {mark(worst_cpu <= 2)} |",
        f"| ≥ 40× less CPU per LLM call than executionkit-Py's best backend | "
        f"{fmt(small[3], 1)}× (1,000/50), {fmt(big[3], 1)}× (10,000/200) | "
        f"{'not measured' if worst_py != worst_py else mark(worst_py >= 40)} |",
        f"| ≥ 50% of wrk's requests/s at concurrency 200 | {fmt(big[4] * 100, 0)}% |"
        f" {mark(big[4] >= 0.5)} |",
        f"| no more TCP connections opened than the concurrency | "
        f"{small[5]} for 50, {big[5]} for 200 (max of runs) | {mark(worst_conn_ok)} |",
        f"| peak RSS ≤ 25 MiB for 10,000 samples | {fmt(big[6], 1)} MiB |"
        f" {mark(big[6] <= 25)} |",
        f"| library-only overhead ≤ 2 µs per sample over the mock | "
        f"{fmt(overhead, 3)} µs (divan median, consensus of 10,000 samples) |"
        f" {'not measured' if overhead != overhead else mark(overhead <= 2)} |",
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
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ek", required=True)
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
    ap.add_argument("--only", default="", help="comma list of clients to run (debugging)")
    ap.add_argument("--ek-variant", action="append", default=[],
                    help="LABEL=PATH: another ek build measured on the same workloads")
    ap.add_argument("--no-reqwest", dest="reqwest", action="store_false",
                    help="skip the ek-over-reqwest comparison row")
    args = ap.parse_args()
    global RUSAGE_HELPER
    RUSAGE_HELPER = args.rusage_helper

    mach = machine()
    base = f"http://127.0.0.1:{args.port}/v1"
    pys = [tuple(p.split("=", 1)) for p in args.py]
    variants = [tuple(v.split("=", 1)) for v in args.ek_variant]
    only = set(filter(None, args.only.split(",")))
    want = lambda c: not only or c in only  # noqa: E731
    wrk: dict[int, list[Run]] = {}
    runs: dict[tuple, list[Run]] = {}

    def show(r: Run) -> None:
        print(f"  {r.client:10} {r.samples:6}/{r.concurrency:<4} wall {r.wall_s:8.3f} s"
              f"  {r.calls_per_s:10.0f} calls/s  {r.cpu_per_call_us:8.2f} µs CPU/call"
              f"  rss {r.maxrss_kib / 1024:6.1f} MiB  conns {r.connections:5}  ok {r.ok}"
              f"{'  ' + r.note if r.note else ''}", flush=True)

    def ek_cmd(samples: int, conc: int) -> list[str]:
        return [args.ek, "consensus", "--json", "--base-url", base, "--model", args.model,
                "--samples", str(samples), "--max-concurrency", str(conc), args.prompt]

    # The same binary over reqwest (the transport before the lean HTTP/1.1 client): a proxy
    # variable turns the lean client off, and no_proxy keeps reqwest off the proxy.
    reqwest_env = dict(os.environ, http_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1")

    floor = []
    for _ in range(args.runs):
        _, _, _, _, ru = run_measured(["/bin/true"])
        floor.append((ru.ru_utime + ru.ru_stime) * 1000)
    mach["true_ms"] = statistics.median(floor)
    if want("ek"):
        print("== ek start-up: 1 sample", flush=True)
        for _ in range(args.runs):
            r = run_client(args, "ek", ek_cmd(1, 1), 1, 1)
            runs.setdefault(("ek", 1, 1), []).append(r)
            show(r)

    for samples, conc in WORKLOADS:
        print(f"== {samples} samples, concurrency {conc}", flush=True)
        # wrk and the Rust clients interleaved, round by round (the machine's speed drifts
        # from minute to minute, and a ratio should compare neighbours), then Python: a Python
        # run leaves thousands of closed connections behind it that nginx and the kernel are
        # still tidying up.
        for _ in range(args.runs):
            if want("wrk"):
                r = run_wrk(args, conc)
                wrk.setdefault(conc, []).append(r)
                show(r)
            if want("ek"):
                r = run_client(args, "ek", ek_cmd(samples, conc), samples, conc)
                runs.setdefault(("ek", samples, conc), []).append(r)
                show(r)
            for label, path in variants:
                if not want(label):
                    continue
                cmd = ek_cmd(samples, conc)
                cmd[0] = path
                r = run_client(args, label, cmd, samples, conc)
                runs.setdefault((label, samples, conc), []).append(r)
                show(r)
            if want("ek-reqwest") and args.reqwest:
                r = run_client(args, "ek-reqwest", ek_cmd(samples, conc), samples, conc,
                               reqwest_env)
                runs.setdefault(("ek-reqwest", samples, conc), []).append(r)
                show(r)
        for _ in range(args.runs):
            for label, py in pys:
                if not want(label):
                    continue
                cmd = [py, str(Path(__file__).with_name("py_consensus.py")), base, args.model,
                       str(samples), str(conc), args.prompt]
                r = run_client(args, label, cmd, samples, conc)
                runs.setdefault((label, samples, conc), []).append(r)
                show(r)
        time.sleep(3 if pys else 0)  # let the Python runs' closed connections settle

    micro = Path(args.micro).read_text() if args.micro and Path(args.micro).exists() else ""
    py_status = {"version": args.py_version,
                 "labels": [p[0] for p in pys] or ["py-urllib", "py-httpx"]}
    block, _ = render(args, mach, wrk, runs, py_status, micro)
    print()
    print(block)
    if args.raw:
        raw = {"machine": mach,
               "wrk": {c: [asdict(r) for r in rs] for c, rs in wrk.items()},
               "runs": {"/".join(map(str, k)): [asdict(r) for r in rs] for k, rs in runs.items()}}
        Path(args.raw).write_text(json.dumps(raw, indent=1))
    if not only:
        write_results(Path(args.out), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
