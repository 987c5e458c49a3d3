"""response_format json_schema against a running `kiln serve`: 200 random
schemas from the supported subset x 3 prompts (max_tokens 32, 64, 128); every
answer must parse and validate (the `jsonschema` package), or be refused
because max_tokens cannot hold the schema's shortest answer.

usage: python3 json_schema_property.py BASE_URL   (e.g. http://127.0.0.1:8000/v1)
"""
import concurrent.futures
import json
import random
import sys
import urllib.error
import urllib.request

import jsonschema

BASE = sys.argv[1]
rng = random.Random(7)
NAMES = ["name", "age", "tags", "city", "ok", "score"]


def schema(depth=0):
    pick = rng.randrange(6 if depth >= 2 else 9)
    if pick == 0:
        return {"type": "string"}
    if pick == 1:
        lo = rng.randrange(3)
        return {"type": "string", "minLength": lo, "maxLength": lo + 2 + rng.randrange(6)}
    if pick == 2:
        return {"type": "integer"}
    if pick == 3:
        return {"type": "number"}
    if pick == 4:
        return {"type": "boolean"}
    if pick == 5:
        return {"enum": ["red", "green", 12, None]}
    if pick == 6:
        return {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]}
    if pick == 7:
        lo = rng.randrange(3)
        return {"type": "array", "items": schema(depth + 1), "minItems": lo, "maxItems": lo + rng.randrange(3)}
    names = rng.sample(NAMES, 1 + rng.randrange(4))
    return {"type": "object", "additionalProperties": False, "properties": {n: schema(depth + 1) for n in names},
            "required": [n for n in names if rng.randrange(3)]}


def ask(case):
    i, s, prompt, max_tokens = case
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0.9,
            "seed": i, "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": s}}}
    req = urllib.request.Request(BASE + "/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json", "authorization": "Bearer sk-kiln-test"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        error = json.load(e)["error"]
        if e.code == 400 and "too small" in error["message"] and max_tokens < 128:
            return "refused"
        sys.exit(f"FAILED schema {json.dumps(s)} with max_tokens {max_tokens}: {e.code} {error}")
    text = answer["choices"][0]["message"]["content"]
    try:
        jsonschema.validate(json.loads(text), s)
    except (ValueError, jsonschema.ValidationError) as e:
        sys.exit(f"FAILED schema {json.dumps(s)} with max_tokens {max_tokens}: {text!r}: {e}")
    if answer["usage"]["completion_tokens"] > max_tokens:
        sys.exit(f"FAILED {max_tokens} tokens asked, {answer['usage']['completion_tokens']} used")
    return "valid"


cases = []
for i in range(200):
    s = {"type": "object", "additionalProperties": False,
         "properties": {"a": schema(1), "b": schema(1)}, "required": ["a"]}
    for prompt, max_tokens in [("Describe a person.", 32), ("List facts about the sea.", 64), ("Give me data.", 128)]:
        cases.append((len(cases), s, prompt, max_tokens))
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(ask, cases))
valid = results.count("valid")
if valid < 500:
    sys.exit(f"FAILED only {valid} of {len(cases)} answers were generated (the rest refused as too small)")
print(f"{valid} answers validated, {results.count('refused')} refused as too small for their schema")
