#!/usr/bin/env bash
# Installs the official OpenAI Python SDK (PyPI `openai`) in a venv in $EK_CACHE (default
# .cache/ek), reused when already there, for the `ek serve` client test
# (crates/executionkit-cli/tests/cli_serve.rs, `openai_python_sdk_*`). Prints
# EK_OPENAI_PY=<the venv's python>, which scripts/test.sh exports.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
mkdir -p "$cache"
py=${PYTHON:-python3}
venv=$cache/venv-openai
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q "openai>=1.40,<3" >&2
fi
echo "EK_OPENAI_PY=$venv/bin/python"
