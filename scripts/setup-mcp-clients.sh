#!/usr/bin/env bash
# Installs the two real MCP clients of the `ek mcp` tests (crates/executionkit-cli/tests/cli_mcp.rs,
# `python_mcp_client_*` and `mcp_inspector_*`), each reused when already there:
# - the official Python SDK (PyPI `mcp`) in a venv in $EK_CACHE (default .cache/ek);
# - the MCP Inspector (npm `@modelcontextprotocol/inspector`, its `--cli` mode) in $EK_CACHE/npm.
# Prints EK_MCP_PY=<the venv's python> and EK_MCP_INSPECTOR=<the inspector's cli.js>, which
# scripts/test.sh exports. A client that cannot be installed (no network, no node) is reported on
# stderr and left unset: its tests then skip, unless EK_REQUIRE_SERVERS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
mkdir -p "$cache"
py=${PYTHON:-python3}

venv=$cache/venv-mcp
if ! "$venv/bin/python" -c "import mcp.client.stdio" 2>/dev/null; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q "mcp>=1.10,<3" >&2
fi
echo "EK_MCP_PY=$venv/bin/python"

npm_dir=$cache/npm
inspector=$npm_dir/node_modules/@modelcontextprotocol/inspector/cli/build/cli.js
if [ ! -f "$inspector" ]; then
  if command -v npm >/dev/null; then
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error \
      "@modelcontextprotocol/inspector@^0.15" >&2 || echo "setup-mcp-clients: npm could not install the MCP Inspector" >&2
  else
    echo "setup-mcp-clients: no npm: the MCP Inspector tests will skip" >&2
  fi
fi
if [ -f "$inspector" ]; then
  echo "EK_MCP_INSPECTOR=$inspector"
fi
