"""Writes the fixed server-sent event streams bench/run.sh serves from nginx.

Usage: python3 sse_file.py DIR N [N...]   (writes DIR/events-N.sse for each N)

Each file is N `chat.completion.chunk` text deltas in the shape OpenAI streams them, then a
finish chunk, a usage chunk (completion_tokens = N) and `data: [DONE]`: the same bytes as
`sse_body` in crates/executionkit/benches/sse.rs.
"""

from __future__ import annotations

import sys

HEAD = '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m"'


def stream(events: int) -> str:
    out = []
    for i in range(events):
        out.append(f'data: {HEAD},"system_fingerprint":null,"choices":[{{"index":0,"delta":'
                   f'{{"content":" w{i % 10}"}},"logprobs":null,"finish_reason":null}}]}}\n\n')
    out.append(f'data: {HEAD},"system_fingerprint":null,"choices":[{{"index":0,"delta":{{}},'
               f'"logprobs":null,"finish_reason":"stop"}}]}}\n\n')
    out.append(f'data: {HEAD},"choices":[],"usage":{{"prompt_tokens":12,'
               f'"completion_tokens":{events},"total_tokens":{events + 12}}}}}\n\n')
    out.append("data: [DONE]\n\n")
    return "".join(out)


def main() -> int:
    work = sys.argv[1]
    for n in map(int, sys.argv[2:]):
        with open(f"{work}/events-{n}.sse", "w") as f:
            f.write(stream(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
