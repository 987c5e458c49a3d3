"""The official `openai` package against a running `kiln serve`.

usage: python3 openai_client.py BASE_URL   (e.g. http://127.0.0.1:8000/v1)
Exits non-zero, with the failing check, if kiln is not what the client expects.
"""
import json
import sys

from typing import Literal, Optional

import openai
import pydantic

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-kiln-test", max_retries=0, timeout=120)
checks = 0


def check(name, ok, detail=""):
    global checks
    if not ok:
        sys.exit(f"FAILED {name}: {detail}")
    checks += 1


models = client.models.list()
model = models.data[0].id
check("models list", len(models.data) == 1 and models.data[0].object == "model", models)

messages = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
answer = chat.choices[0].message.content
check("chat completion", chat.object == "chat.completion" and answer and chat.choices[0].message.role == "assistant", chat)
check("chat usage", chat.usage.completion_tokens >= 1 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage)

stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
check("streamed chat text", "".join(pieces) == answer, ("".join(pieces), answer))
check("streamed chat usage", usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage)
check("streamed chat finish", finish == chat.choices[0].finish_reason, finish)

fixed = client.chat.completions.create(model=model, messages=messages, max_tokens=40, temperature=0,
                                       extra_body={"ignore_eos": True})
check("ignore_eos", fixed.usage.completion_tokens == 40 and fixed.choices[0].finish_reason == "length", fixed.usage)

several = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=1.0, seed=5, n=3)
check("n=3 chat answers", [c.index for c in several.choices] == [0, 1, 2]
      and all(c.message.content for c in several.choices), several)
check("n=3 usage counts the prompt once", several.usage.prompt_tokens == chat.usage.prompt_tokens
      and several.usage.total_tokens == several.usage.prompt_tokens + several.usage.completion_tokens, several.usage)
stream = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=1.0, seed=5, n=3,
                                        stream=True)
texts = {}
for chunk in stream:
    for c in chunk.choices:
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
check("n=3 streamed answers match", [texts.get(i) for i in range(3)] == [c.message.content for c in several.choices],
      (texts, several.choices))

class Pet(pydantic.BaseModel):
    name: str
    kind: Literal["cat", "dog"]
    age: int
    nickname: Optional[str]


parsed = client.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Describe a pet."}],
                                       response_format=Pet, max_tokens=64, temperature=0.7, seed=1)
pet = parsed.choices[0].message.parsed
check("parse with a Pydantic model (json_schema)", isinstance(pet, Pet) and pet.kind in ("cat", "dog"), parsed)

class GetWeather(pydantic.BaseModel):
    city: str


weather = openai.pydantic_function_tool(GetWeather, name="get_weather", description="The weather in a city")
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
called = client.chat.completions.create(model=model, messages=ask, tools=[weather], tool_choice="required",
                                        max_tokens=64, temperature=0)
call = called.choices[0].message.tool_calls[0]
check("a required tool call", called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
      and isinstance(json.loads(call.function.arguments).get("city"), str), called)
# The round trip: the call as the client got it, the tool's result, then the answer.
followup = ask + [called.choices[0].message,
                  {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}]
final = client.chat.completions.create(model=model, messages=followup, tools=[weather], tool_choice="none",
                                       max_tokens=32, temperature=0)
check("tool round trip ends in text", final.choices[0].message.content and not final.choices[0].message.tool_calls
      and final.choices[0].finish_reason in ("stop", "length"), final)

named = {"type": "function", "function": {"name": "get_weather"}}
with client.chat.completions.stream(model=model, messages=ask, tools=[weather], tool_choice=named,
                                    max_tokens=64, temperature=0) as stream:
    done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
    streamed = stream.get_final_completion()
parsed_call = streamed.choices[0].message.tool_calls[0].function.parsed_arguments
check("streamed tool call assembled by the client's helpers", isinstance(parsed_call, GetWeather)
      and len(done) == 1 and done[0].name == "get_weather" and streamed.choices[0].finish_reason == "tool_calls",
      streamed)

completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check("completion", completion.object == "text_completion" and completion.choices[0].text, completion)

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check("unknown model refused", False, "no exception")
except openai.BadRequestError as e:
    check("unknown model refused", e.status_code == 400 and "no-such-model" in e.message, e)

try:
    client.chat.completions.create(model=model, messages=messages, temperature=-1)
    check("bad temperature refused", False, "no exception")
except openai.BadRequestError as e:
    check("bad temperature refused", e.body.get("param") == "temperature", e.body)

print(f"openai {openai.__version__}: {checks} checks passed")
