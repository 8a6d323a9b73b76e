#!/usr/bin/env bash
# Quality per cost of consensus stop rules (issue 12): prints a Markdown table per benchmark.
#   (a) synthetic questions from a loopback server with known answer distributions
#       (crates/executionkit/benches/quality.rs; paired against fixed N = 40);
# Usage: bench/quality/run.sh [--seeds 5] [--questions 400]
# Not run in CI (CI only builds the bench). The figures go to bench/RESULTS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo bench -q -p executionkit --bench quality -- "$@"
