"""The quick-start examples of the API docs, for one base URL; each runs as shown."""

from __future__ import annotations

from dataclasses import dataclass

HELLO = "Hello! Who created you?"
STORY = "Tell me a short story!"
WEATHER = "What's the weather in Paris?"
PERSON = "Invent a person: a name and an age."


@dataclass(frozen=True)
class Facts:
    """Everything the docs state about this server."""

    base: str
    model: str
    settings: object

    @property
    def temperature(self) -> str:
        return f"{self.settings.default_temperature:g}"


@dataclass(frozen=True)
class Snippet:
    key: str
    title: str
    language: str  # a gr.Code language
    code: str


def snippets(f: Facts) -> list[Snippet]:
    """The quick-start examples, runnable as shown."""
    base, t = f.base, f.temperature
    return [
        Snippet("curl", "cURL", "shell", f"""curl -X POST {base}/api \\
  -H "Content-Type: application/json" \\
  -d '{{"messages":[{{"role":"user","content":"{HELLO}"}}],"stream":false,"temperature":{t}}}'
"""),
        Snippet("curl_stream", "cURL (streaming)", "shell", f"""curl -N -X POST {base}/api \\
  -H "Content-Type: application/json" \\
  -d '{{"messages":[{{"role":"user","content":"{STORY}"}}],"stream":true}}'
"""),
        Snippet("python", "Python (requests)", "python", f"""import requests

response = requests.post(
    "{base}/api",
    json={{
        "messages": [{{"role": "user", "content": "{HELLO}"}}],
        "stream": False,
        "temperature": {t},
    }},
    timeout=300,
)
response.raise_for_status()
data = response.json()
print(data["choices"][0]["message"]["content"])
"""),
        Snippet("python_stream", "Python (requests, streaming)", "python", f"""import json
import requests

with requests.post(
    "{base}/api",
    json={{"messages": [{{"role": "user", "content": "{STORY}"}}], "stream": True}},
    stream=True,
    timeout=300,
) as response:
    response.raise_for_status()
    for raw in response.iter_lines():
        line = raw.decode("utf-8")
        if not line.startswith("data: "):
            continue  # blank lines and ": keep-alive" comments
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        for choice in chunk["choices"]:
            print(choice["delta"].get("content") or "", end="", flush=True)
print()
"""),
        Snippet("openai", "Python (openai SDK)", "python", f"""from openai import OpenAI

# No key is needed; the SDK just wants a value.
client = OpenAI(base_url="{base}/v1", api_key="not-needed")

completion = client.chat.completions.create(
    model="{f.model}",
    messages=[{{"role": "user", "content": "{HELLO}"}}],
    temperature={t},
)
print(completion.choices[0].message.content)

stream = client.chat.completions.create(
    model="{f.model}",
    messages=[{{"role": "user", "content": "{STORY}"}}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
"""),
        Snippet("openai_responses", "Python (openai SDK, Responses API)", "python", f"""from openai import OpenAI

client = OpenAI(base_url="{base}/v1", api_key="not-needed")

# Stateless: send the whole conversation each time (no store, no previous_response_id).
response = client.responses.create(
    model="{f.model}",
    instructions="Answer in one sentence.",
    input="{HELLO}",
)
print(response.output_text)

with client.responses.stream(model="{f.model}", input="{STORY}") as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)
print()
"""),
        Snippet("openai_tools", "Tool call (openai SDK)", "python", f"""import json
from openai import OpenAI

client = OpenAI(base_url="{base}/v1", api_key="not-needed")

tools = [{{
    "type": "function",
    "function": {{
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {{
            "type": "object",
            "properties": {{"city": {{"type": "string", "maxLength": 40}}}},
            "required": ["city"],
            "additionalProperties": False,
        }},
    }},
}}]
completion = client.chat.completions.create(
    model="{f.model}",
    messages=[{{"role": "user", "content": "{WEATHER}"}}],
    tools=tools,
    # "auto" lets the model choose; naming the function makes it call that one.
    tool_choice={{"type": "function", "function": {{"name": "get_weather"}}}},
    max_tokens=40,
)
call = completion.choices[0].message.tool_calls[0]
print(call.function.name, call.function.arguments)
arguments = json.loads(call.function.arguments)  # a forced call's arguments always follow the schema
# Run the function, then send its result back in a second request: the assistant message with its
# tool_calls, then {{"role": "tool", "tool_call_id": call.id, "content": "<the result>"}}.
"""),
        Snippet("openai_json", "Structured output (openai SDK)", "python", f"""import json
from openai import OpenAI

client = OpenAI(base_url="{base}/v1", api_key="not-needed")

schema = {{
    "type": "object",
    "properties": {{
        "name": {{"type": "string", "maxLength": 20}},
        "age": {{"type": "integer", "minimum": 0, "maximum": 120}},
    }},
    "required": ["name", "age"],
    "additionalProperties": False,
}}
completion = client.chat.completions.create(
    model="{f.model}",
    messages=[{{"role": "user", "content": "{PERSON}"}}],
    response_format={{"type": "json_schema", "json_schema": {{"name": "person", "schema": schema, "strict": True}}}},
    max_tokens=40,
)
person = json.loads(completion.choices[0].message.content)  # follows the schema, token by token
print(person)
"""),
        Snippet("openai_logprobs", "Logprobs (openai SDK)", "python", f"""from openai import OpenAI

client = OpenAI(base_url="{base}/v1", api_key="not-needed")

completion = client.chat.completions.create(
    model="{f.model}",
    messages=[{{"role": "user", "content": "{HELLO}"}}],
    logprobs=True,
    top_logprobs=3,
    max_tokens=16,
)
for entry in completion.choices[0].logprobs.content:
    alternatives = ", ".join(f"{{alt.token!r}} {{alt.logprob:.2f}}" for alt in entry.top_logprobs)
    print(f"{{entry.token!r:>14}} {{entry.logprob:7.3f}}   top 3: {{alternatives}}")
"""),
        Snippet("js", "JavaScript (fetch)", "javascript", f"""const response = await fetch("{base}/api", {{
  method: "POST",
  headers: {{ "Content-Type": "application/json" }},
  body: JSON.stringify({{
    messages: [{{ role: "user", content: "{HELLO}" }}],
    stream: false,
    temperature: {t},
  }}),
}});
const data = await response.json();
console.log(data.choices[0].message.content);
"""),
        Snippet("js_stream", "JavaScript (streaming)", "javascript", f"""const response = await fetch("{base}/api", {{
  method: "POST",
  headers: {{ "Content-Type": "application/json" }},
  body: JSON.stringify({{
    messages: [{{ role: "user", content: "{STORY}" }}],
    stream: true,
  }}),
}});
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
let text = "";
while (true) {{
  const {{ done, value }} = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, {{ stream: true }});
  const events = buffer.split("\\n\\n");
  buffer = events.pop(); // a partial event waits for the next read
  for (const event of events) {{
    if (!event.startsWith("data: ")) continue; // ": keep-alive" comments
    const data = event.slice(6);
    if (data === "[DONE]") continue;
    const parsed = JSON.parse(data);
    if (parsed.error) throw new Error(parsed.error.message ?? parsed.error);
    text += parsed.choices?.[0]?.delta?.content ?? "";
    // update your page with `text` here: it grows as tokens arrive
  }}
}}
console.log(text);
"""),
        Snippet("gradio", "Python (gradio_client)", "python", f"""from gradio_client import Client

client = Client("{base}/")
print(client.predict("{HELLO}", api_name="/chat"))
"""),
    ]


def snippet(f: Facts, key: str) -> Snippet:
    return next(s for s in snippets(f) if s.key == key)
