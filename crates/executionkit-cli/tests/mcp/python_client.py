"""The official Python MCP SDK (PyPI `mcp`) as a client of `ek mcp`, for tests/cli_mcp.rs.

Usage: python_client.py EK_BINARY MODE
  MODE `tools`:  ClientSession over stdio_client: list the tools and call every one, four calls
                 at once, a call with a progress callback, a tool error; then the 2.x `mcp.Client`
                 (which starts with `server/discover` and falls back to `initialize`).
  MODE `cancel`: a nine-sample consensus against the slow endpoint in the environment, cancelled
                 after 1 s (the SDK sends `notifications/cancelled`); then 3 s later a ping.
Prints one JSON line of what it saw; exits non-zero (with the reason on stderr) on any mismatch.
"""

import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

EK, MODE = sys.argv[1], sys.argv[2]


def params() -> StdioServerParameters:
    return StdioServerParameters(command=EK, args=["mcp"], env=dict(os.environ))


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"python_client: {what}", file=sys.stderr)
        sys.exit(1)


async def tools_mode() -> dict:
    seen: dict = {}
    async with stdio_client(params()) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            listed = await session.list_tools()
            names = sorted(t.name for t in listed.tools)
            seen["tools"] = names
            check(names == ["consensus", "pipe", "react_loop", "refine", "structured"], f"tools {names}")

            calls = {
                "consensus": {"prompt": "What is 2+2?", "n": 3},
                "react_loop": {"prompt": "What is 17 * 83?", "max_rounds": 2},
                "refine": {"prompt": "Explain tides", "max_iterations": 1},
                "structured": {
                    "prompt": "A city",
                    "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                },
                "pipe": {"prompt": "Explain tides", "steps": ["consensus samples=2", "refine max_iterations=1"]},
            }
            results = {}
            for name, args in calls.items():
                r = await session.call_tool(name, args)
                check(not r.is_error, f"{name} failed: {r}")
                out = r.structured_content
                check(out is not None and out["cost"]["llm_calls"] >= 1, f"{name} result {r}")
                results[name] = out["cost"]["llm_calls"]
            seen["calls"] = results

            # Four calls at once on the one session.
            async def one(i: int, into: list) -> None:
                r = await session.call_tool("consensus", {"prompt": f"question {i}", "n": 2})
                check(not r.is_error, f"concurrent call {i}: {r}")
                into.append(r.structured_content["cost"]["llm_calls"])

            done: list = []
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i, done)
            check(done == [2, 2, 2, 2], f"concurrent {done}")
            seen["concurrent"] = len(done)

            # Progress: the SDK sends a progressToken and hands the notifications to the callback.
            progress: list = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append([p, total, message])

            r = await session.call_tool("consensus", {"prompt": "q", "n": 5}, progress_callback=on_progress)
            check(not r.is_error, f"progress call {r}")
            check(len(progress) == 5, f"progress {progress}")
            check([p[0] for p in progress] == [1, 2, 3, 4, 5], f"progress values {progress}")
            check(all(p[1] == 5 for p in progress), f"progress totals {progress}")
            seen["progress"] = progress

            # A tool error: isError with the error's JSON (kind, spend).
            r = await session.call_tool("consensus", {"prompt": "q", "n": 20})
            check(r.is_error, f"n=20 should fail: {r}")
            err = r.structured_content["error"]
            check(err["kind"] == "invalid_argument" and err["cost"]["llm_calls"] == 0, f"error {err}")
            seen["error"] = err["kind"]

    # The 2.x high-level client: `server/discover` first, `initialize` after its error reply.
    try:
        from mcp import Client
    except ImportError:
        Client = None
    if Client is not None:
        async with Client(params()) as client:
            listed = await client.list_tools()
            check(len(listed.tools) == 5, f"Client tools {listed}")
            r = await client.call_tool("consensus", {"prompt": "q", "n": 2})
            check(not r.is_error, f"Client call {r}")
            seen["client"] = "ok"
    return seen


async def cancel_mode() -> dict:
    seen: dict = {}
    async with stdio_client(params()) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            with anyio.move_on_after(1.0) as scope:
                await session.call_tool("consensus", {"prompt": "q", "n": 9})
            check(scope.cancelled_caught, "the slow call was not cancelled")
            seen["cancelled"] = True
            await anyio.sleep(3.0)
            await session.send_ping()
            seen["ping"] = "ok"
    return seen


def main() -> None:
    seen = anyio.run(tools_mode if MODE == "tools" else cancel_mode)
    print(json.dumps(seen))


main()
