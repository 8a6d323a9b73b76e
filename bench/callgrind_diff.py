"""Where the instructions of one call go: the per-function difference of two callgrind
profiles of `ek` (a run of N + 1 calls minus a run of one call), divided by N.

Usage: python3 callgrind_diff.py BIG.callgrind ONE.callgrind CALLS [--top 30] [--inclusive]
                                                                    [--by-crate]

Runs `callgrind_annotate` on both (all functions, no threshold), subtracts function by function
and prints the functions with the most instructions per call, exclusive (self) cost by default;
`--by-crate` sums the self cost by crate instead (the first path segment of the function; libc
and the dynamic loader by name).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(?:\*\s+)?(.+?)(?:\s+\[[^\]]*\])?$")


def costs(path: str, inclusive: bool) -> dict[str, int]:
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
         "--auto=no", path], capture_output=True, text=True, check=True).stdout
    result: dict[str, int] = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line or "=>" in line:
            continue
        name = m.group(2)
        # file:function -> keep the function (files differ only by inlining site)
        func = name.split(":", 1)[1] if ":" in name and not name.startswith("???") else name
        result[func] = result.get(func, 0) + int(m.group(1).replace(",", ""))
    return result


def crate_of(func: str) -> str:
    name = func.strip()
    while name.startswith(("<", "&", "mut ", "dyn ")):
        name = name.lstrip("<&").removeprefix("mut ").removeprefix("dyn ")
    if "::" not in name:
        if name.startswith(("ring_core", "_aesni", "_vpaes", "ecp_nistz", "gcm_")):
            return "ring (assembly)"
        return "libc (malloc, free, memcpy, memset, ...)" if not name.startswith("???") else name
    head = name.split("::", 1)[0]
    if head in ("core", "alloc", "std"):
        return "Rust std (core, alloc, std)"
    return head


def total(path: str) -> int:
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("big")
    ap.add_argument("one")
    ap.add_argument("calls", type=int)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--inclusive", action="store_true")
    ap.add_argument("--by-crate", action="store_true")
    args = ap.parse_args()
    if args.by_crate:
        args.inclusive = False
    big, one = costs(args.big, args.inclusive), costs(args.one, args.inclusive)
    per_call = (total(args.big) - total(args.one)) / args.calls
    diff = {k: (big.get(k, 0) - one.get(k, 0)) / args.calls for k in set(big) | set(one)}
    if args.by_crate:
        grouped: dict[str, float] = {}
        for k, v in diff.items():
            grouped[crate_of(k)] = grouped.get(crate_of(k), 0.0) + v
        diff = grouped
    rows = sorted(diff.items(), key=lambda kv: -kv[1])[: args.top]
    print(f"instructions per call: {per_call:,.0f} "
          f"({'inclusive' if args.inclusive else 'self'} cost by function below)")
    for func, v in rows:
        print(f"{v:10,.0f}  {v / per_call * 100:5.1f}%  {func[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
