#!/usr/bin/env bash
# The reliability run (issue 15, items 2-5), not in CI (CI runs the same tests at their small
# default sizes, inside scripts/test.sh):
#   2. the fault matrix against llmock (tests/fault_matrix.rs),
#   3. chaos between us and the server (tests/chaos.rs, a fault-injecting TCP proxy),
#   4. the soak against nginx, optimised (profile `reliability`: release without LTO): 1,000,000
#      calls and 10,000 cancelled fan-outs
#      (tests/soak.rs with EK_SOAK_CALLS / EK_SOAK_FANOUTS),
#   5. the properties, with 8x their usual cases (PROPTEST_CASES),
# then writes a dated report between the markers of docs/reliability.md, with the last fuzz
# run's table (fuzz/last-run.md, written by scripts/fuzz.sh). Target: under 30 minutes on 2
# cores with a warm build.
#
# Environment: EK_CACHE (default .cache/ek), EK_SOAK_CALLS (1000000), EK_SOAK_FANOUTS (10000),
# PROPTEST_CASES (2048).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export EK_CACHE=${EK_CACHE:-$root/.cache/ek}
mkdir -p "$EK_CACHE"
export EK_REQUIRE_SERVERS=1

started=()
cleanup() {
  local f
  for f in "${started[@]}"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || {
  echo "reliability.sh: nginx is missing (apt-get install nginx-light)" >&2
  exit 1
}
[ -f "$EK_CACHE/llmock.pid" ] && kill -0 "$(cat "$EK_CACHE/llmock.pid")" 2>/dev/null ||
  started+=("$EK_CACHE/llmock.pid")
eval "$(scripts/start-llmock.sh)"
export EK_LLMOCK_URL

out=$(mktemp -d)
trap 'cleanup; rm -rf "$out"' EXIT
t0=$SECONDS
step() {
  local name=$1
  shift
  local s=$SECONDS
  echo "== $name" >&2
  "$@" >"$out/$name.log" 2>&1 || {
    tail -40 "$out/$name.log" >&2
    echo "reliability.sh: $name failed" >&2
    exit 1
  }
  echo "   $((SECONDS - s)) s" >&2
  printf '%s\t%s\n' "$name" "$((SECONDS - s))" >>"$out/times"
}

step fault-matrix cargo test -p executionkit --test fault_matrix -- --nocapture
if [ -f crates/executionkit/tests/chaos.rs ]; then
  step chaos cargo test -p executionkit --test chaos -- --nocapture
fi
EK_SOAK_CALLS=${EK_SOAK_CALLS:-1000000} EK_SOAK_FANOUTS=${EK_SOAK_FANOUTS:-10000} \
  step soak cargo test --profile reliability -p executionkit --test soak -- --nocapture --test-threads 1
PROPTEST_CASES=${PROPTEST_CASES:-2048} step properties cargo test -p executionkit \
  --test cancellation_props --test ledger_props --test nested_budgets --test failover_props \
  --test fuzz_corpus

# The report.
report=$out/report.md
{
  echo "<!-- reliability:begin (written by scripts/reliability.sh) -->"
  echo
  echo "### Run of $(date -u '+%Y-%m-%d %H:%M') UTC ($(nproc) cores, $((SECONDS - t0)) s in all)"
  echo
  echo "| part | seconds | result |"
  echo "|---|---:|---|"
  while IFS=$'\t' read -r name secs; do
    summary=$(grep -h -E '^test result' "$out/$name.log" | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed", p, f}')
    echo "| $name | $secs | $summary |"
  done <"$out/times"
  echo
  echo "**Fault matrix** (every cell: value or typed error, requests at llmock = calls reported"
  echo "cancelled calls included, llmock's verdict passed):"
  echo
  grep -h -E '^[0-9]+ cells' "$out/fault-matrix.log" || true
  echo
  grep -h -E '^\|' "$out/fault-matrix.log" || true
  echo
  echo "**Soak** (profile \`reliability\`: release without LTO; one process):"
  echo
  grep -h -o -E 'soak: .*' "$out/soak.log" | sed 's/^soak: /- /' || true
  if [ -f "$out/chaos.log" ]; then
    echo
    echo "**Chaos**: what each fault gives is the table of section 3; this run's result is above."
  fi
  echo
  echo "**Fuzzing** (the last \`scripts/fuzz.sh\` run, fuzz/last-run.md):"
  echo
  if [ -f fuzz/last-run.md ]; then cat fuzz/last-run.md; else echo "(no fuzz run recorded)"; fi
  echo
  echo "<!-- reliability:end -->"
} >"$report"

python3 - "$report" docs/reliability.md <<'PY'
import re, sys
report = open(sys.argv[1]).read().rstrip("\n")
path = sys.argv[2]
doc = open(path).read()
pattern = re.compile(r"<!-- reliability:begin.*?<!-- reliability:end -->", re.S)
if not pattern.search(doc):
    sys.exit(f"{path} has no reliability markers")
open(path, "w").write(pattern.sub(lambda _: report, doc, count=1))
PY
cat "$report"
echo "reliability.sh: docs/reliability.md updated ($((SECONDS - t0)) s)" >&2
