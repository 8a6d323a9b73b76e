#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (cargo-fuzz + libFuzzer), not run in CI:
#   scripts/fuzz.sh SECONDS [TARGET…]
# runs each target (default: all of fuzz/Cargo.toml's) for SECONDS, then minimises its corpus
# (fuzz/corpus/<target>/, committed and replayed by `cargo test`: tests/fuzz_corpus.rs and ek's
# fuzz_replay.rs) and prints a Markdown table: target, seconds, executions, corpus files, crashes;
# the table, dated, is also written to fuzz/last-run.md (scripts/reliability.sh puts it in
# docs/reliability.md).
# A crash leaves its input in fuzz/artifacts/<target>/: copy it into fuzz/corpus/<target>/, fix
# the bug, and add a named test.
#
# Installs cargo-fuzz when missing. The fuzz build needs nightly flags
# (-Zsanitizer=address); no nightly toolchain can be fetched here, so the stable one is run with
# RUSTC_BOOTSTRAP=1 for this build alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O >&2
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
report=$log_dir/report.md
printf '| target | seconds | executions | exec/s | corpus files | crashes |\n|---|---:|---:|---:|---:|---:|\n' | tee "$report"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s" >&2
  rc=0
  touch "$log_dir/$t.start"
  cargo fuzz run -O "$t" -- -max_total_time="$secs" -max_len=8192 -timeout=10 \
    -print_final_stats=1 >"$log_dir/$t.log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log_dir/$t.log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(find "artifacts/$t" -type f -newer "$log_dir/$t.start" 2>/dev/null | wc -l)
  if [ "$rc" != 0 ]; then
    tail -30 "$log_dir/$t.log" >&2
  else
    cargo fuzz cmin -O "$t" >/dev/null 2>&1 || true
  fi
  files=$(find "corpus/$t" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$secs" "$runs" "$((runs / secs))" "$files" "$crashes" | tee -a "$report"
done
{
  printf 'Fuzz run of %s UTC: `scripts/fuzz.sh %s`, %s second(s) per target, on %s core(s).\n\n' \
    "$(date -u '+%Y-%m-%d %H:%M')" "$secs" "$secs" "$(nproc)"
  cat "$report"
} > last-run.md
