"""The official OpenAI Python SDK as a client of `ek serve` (run by tests/cli_serve.rs).

Usage: openai_client.py BASE_URL API_KEY UPSTREAM_MODEL [real]

Lists the models, asks an upstream model plainly and streamed, asks a consensus virtual model
plainly and streamed, then (unless `real`: a real model upstream, short answers) checks that a
wrong key is refused (401) and spends the key's budget until the gateway answers 429. Prints one
JSON object with what it saw; exits non-zero on any unexpected reply.
"""

import json
import sys

import openai

base_url, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
real = sys.argv[4:] == ["real"]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
ask = [{"role": "user", "content": "What is 6 x 7?"}]
# A real model answers in a few tokens (and the same way each time: temperature 0).
short = {"max_tokens": 16, "temperature": 0} if real else {}
out = {}

out["models"] = [m.id for m in client.models.list().data]

r = client.chat.completions.create(model=model, messages=ask, **short)
out["plain"] = {"content": r.choices[0].message.content, "total_tokens": r.usage.total_tokens}

text, usage = "", None
for chunk in client.chat.completions.create(
    model=model, messages=ask, stream=True, stream_options={"include_usage": True}, **short
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
out["stream"] = {"content": text, "total_tokens": usage}

virtual = f"ek:consensus:3:{model}"
r = client.chat.completions.create(model=virtual, messages=ask, **short)
extra = r.model_extra or {}
out["consensus"] = {
    "content": r.choices[0].message.content,
    "total_tokens": r.usage.total_tokens,
    "llm_calls": extra["executionkit"]["cost"]["llm_calls"],
}

text, usage = "", None
for chunk in client.chat.completions.create(model=virtual, messages=ask, stream=True, **short):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
out["consensus_stream"] = {"content": text, "total_tokens": usage}

if real:
    print(json.dumps(out))
    sys.exit(0)

try:
    openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except openai.AuthenticationError as e:
    out["wrong_key"] = e.status_code

out["exhausted"] = None
for _ in range(50):
    try:
        client.chat.completions.create(model=model, messages=ask)
    except openai.RateLimitError as e:
        out["exhausted"] = {"status": e.status_code, "code": e.code, "message": e.message}
        break

print(json.dumps(out))
