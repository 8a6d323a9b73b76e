"""Runs executionkit (Python) 0.4.0's `consensus` once, the way `ek consensus` runs it.

Usage: python py_consensus.py BASE_URL MODEL SAMPLES MAX_CONCURRENCY PROMPT

The Python API (from the installed 0.4.0 source): `Provider(base_url, model, api_key="",
default_temperature=0.7, default_max_tokens=4096, timeout=120.0)` is a frozen dataclass whose
`complete` POSTs `{"model", "messages", "temperature", "max_tokens"}` to
`<base_url>/chat/completions`, over a pooled `httpx.AsyncClient` when httpx is importable and
otherwise over `urllib` in `asyncio.to_thread`; `consensus(provider, prompt, *, num_samples,
strategy="majority", temperature=0.9, max_tokens=4096, max_concurrency=5, ...)` fans out with a
semaphore and votes. The same defaults as `ek consensus` (temperature 0.9, max_tokens 4096).

Prints one JSON object on stdout: the value, the cost, the backend, and the CPU and wall time
of the `consensus` call alone (the process's own rusage is measured by the caller).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from executionkit import Provider, consensus
from executionkit import provider as provider_module


async def run(base_url: str, model: str, samples: int, concurrency: int, prompt: str) -> dict:
    provider = Provider(base_url=base_url, model=model)
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = await consensus(
            provider, prompt, num_samples=samples, max_concurrency=concurrency
        )
        cpu1, wall1 = time.process_time(), time.perf_counter()
    finally:
        await provider.aclose()
    return {
        "value": result.value,
        "cost": {
            "input_tokens": result.cost.input_tokens,
            "output_tokens": result.cost.output_tokens,
            "llm_calls": result.cost.llm_calls,
        },
        "backend": "httpx" if getattr(provider, "_use_httpx", False) else "urllib",
        "httpx_available": bool(getattr(provider_module, "_HTTPX_AVAILABLE", False)),
        "consensus_cpu_s": cpu1 - cpu0,
        "consensus_wall_s": wall1 - wall0,
    }


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    samples, concurrency = int(sys.argv[3]), int(sys.argv[4])
    prompt = sys.argv[5]
    out = asyncio.run(run(base_url, model, samples, concurrency, prompt))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
