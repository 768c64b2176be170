"""The API docs' content from one source: Settings, the schema builders and the snippets module."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from gptoss_space.errors import (
    GenerationFailed,
    GenerationTimeout,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
)
from gptoss_space.protocol.request import MISSING_MESSAGES, chunk_body, completion_body, usage_body
from gptoss_space.protocol.sse import DONE, to_sse
from gptoss_space.protocol.tools import MAX_TOOLS
from gptoss_space.ui.parameters import field_range
from gptoss_space.ui.snippets import HELLO, STORY, Facts, Snippet, snippet, snippets  # noqa: F401  (the docs' public surface)

PLACEHOLDER_BASE = "http://this-server"
_HOST = re.compile(r"^(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$")


def base_url(headers: Mapping[str, str], fallback: str = "http://localhost:7860") -> str:
    """This server's base URL as its visitor reached it: X-Forwarded-Proto/-Host (a Space's proxy), else Host."""

    def first(name: str) -> str:
        value = headers.get(name) or ""
        return value.split(",")[0].strip()

    fallback_scheme = fallback.split("://", 1)[0]
    proto = first("x-forwarded-proto").lower() or fallback_scheme
    host = first("x-forwarded-host") or first("host")
    if proto not in ("http", "https"):
        proto = fallback_scheme
    m = _HOST.match(host)
    if not m:  # absent or not a host name: shown in code, so never echo garbage
        return fallback.rstrip("/")
    if (proto, m.group(1)) in (("https", "443"), ("http", "80")):
        host = host.rsplit(":", 1)[0]
    return f"{proto}://{host}"


def parameters_md(f: Facts) -> str:
    s = f.settings
    t_lo, t_hi, _ = field_range("default_temperature")
    _, p_hi, _ = field_range("default_top_p")
    rows = [
        ("messages", "array", "✅ Yes", f"Message objects with `role` (`system`, `developer`, `user`, `assistant`, `tool`) and `content` (a string or text parts); at most {s.max_messages} messages and {s.max_total_chars:,} characters. An `assistant` message may carry the `tool_calls` it made; a `tool` message answers one, naming its `tool_call_id`"),
        ("stream", "boolean", "No", "Stream the answer as server-sent events (default: `true` on `/api`, `false` on `/v1/chat/completions`)"),
        ("temperature", "number", "No", f"Sampling temperature {t_lo:g}–{t_hi:g}; 0 is greedy (default: {s.default_temperature:g})"),
        ("max_tokens", "integer", "No", f"Most tokens to generate; `-1` = unlimited, up to this server's cap of {s.max_tokens_cap} (default: -1). `max_completion_tokens` is an alias"),
        ("top_p", "number", "No", f"Nucleus sampling, above 0 up to {p_hi:g} (default: {s.default_top_p:g})"),
        ("stop", "string or array", "No", "Up to 4 sequences that end the answer"),
        ("seed", "integer", "No", "Makes sampling repeatable"),
        ("presence_penalty, frequency_penalty", "number", "No", "-2.0 to 2.0 (default: 0)"),
        ("reasoning_effort", "string", "No", "`low`, `medium` or `high`: how long gpt-oss models think"),
        ("tools", "array", "No", f"Functions the model may call: `{{\"type\": \"function\", \"function\": {{\"name\", \"description\", \"parameters\"}}}}`, `parameters` a JSON Schema object (at most {MAX_TOOLS}). Calls come back in `message.tool_calls` (streamed in `delta.tool_calls`) with `finish_reason: \"tool_calls\"`"),
        ("tool_choice", "string or object", "No", "`auto` (the default with tools), `none`, `required`, or `{\"type\": \"function\", \"function\": {\"name\": …}}`; `required` and a named function are enforced token by token, so the arguments always follow the schema"),
        ("parallel_tool_calls", "boolean", "No", "`false`: at most one call per answer (default: `true`)"),
        ("response_format", "object", "No", "`{\"type\": \"json_object\"}`, or `{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\", \"strict\"}}`: the answer follows it token by token (llguidance), so it parses unless `max_tokens` cuts it; a schema that cannot be compiled gets a 400"),
        ("logprobs, top_logprobs", "boolean, integer", "No", "Each answer token's logprob with `top_logprobs` (0–20, needs `logprobs: true`) alternatives, in `choices[0].logprobs.content`"),
        ("stream_options", "object", "No", '`{"include_usage": true}` adds a usage chunk before `[DONE]`'),
        ("model", "string", "No", f"Accepted for compatibility; this server always answers with `{f.model}`"),
    ]
    lines = ["| Parameter | Type | Required | Description |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {t} | {r} | {d} |" for n, t, r, d in rows]
    return "\n".join(lines) + "\n\nRefused with a 400 rather than silently ignored: `n` above 1 and `functions` (use `tools`)."


def rate_limits_md(f: Facts) -> str:
    s = f.settings
    if not s.rate_limit_enabled:
        return "Rate limiting is **off** on this server."
    return (
        f"⚠️ **Per-IP rate limiting is enforced** (the chat on this page counts too):\n\n"
        f"- At most **{s.rate_limit_per_second:g} requests per second** per IP\n"
        f"- At least **{s.rate_limit_min_interval_ms} ms** between two requests of one IP\n"
        f"- Requests are queued and served one at a time per IP, in order; up to "
        f"{s.rate_limit_queue_per_client} may wait, more get **429** with `Retry-After`\n"
        f"- When {s.rate_limit_queue_total} requests wait server-wide, new ones get **503** with `Retry-After`\n"
        f"- Every answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` and `X-Queue-Time`"
    )


def response_examples(f: Facts) -> tuple[str, str]:
    """A JSON completion and an SSE stream, built by the same functions the server answers with."""
    cid, created = "chatcmpl-xyz", 1234567890
    body = completion_body(
        id=cid, created=created, model=f.model, content="Hello! I'm an AI assistant. How can I help you today?",
        reasoning="", finish_reason="stop", usage=usage_body(20, 14),
    )
    events = [
        chunk_body(id=cid, created=created, model=f.model, delta={"role": "assistant", "content": "Hello"}),
        chunk_body(id=cid, created=created, model=f.model, delta={"content": " there"}),
        chunk_body(id=cid, created=created, model=f.model, finish_reason="stop"),
    ]
    sse = b"".join(to_sse(e) for e in events) + DONE
    return json.dumps(body, indent=2, ensure_ascii=False), sse.decode("utf-8")


ERRORS = [
    (InvalidRequest(MISSING_MESSAGES), "The body is not valid (the message names the field)"),
    (NotFound("No route for POST /api/nope"), "Unknown path or model"),
    (PayloadTooLarge("Request body too large"), "The body is over the size limit"),
    (RateLimited("Rate limit exceeded", retry_after=1), "Too many requests from your IP; wait `Retry-After` seconds"),
    (Overloaded("Server overloaded", retry_after=5), "The server is full (`code: overloaded`), or the model is still loading (`code: model_loading`)"),
    (GenerationFailed("Generation failed"), "The model failed; try again"),
    (GenerationTimeout("Generation took too long"), "The answer took longer than the time limit"),
]


def errors_md(f: Facts) -> str:
    lines = ["| Status | When |", "|---|---|"]
    lines += [f"| **{e.status}** | {when} |" for e, when in ERRORS]
    return "\n".join(lines) + (
        "\n\nOnce a stream has started, an error arrives as one last `data: {\"error\": …}` event instead."
    )


def error_examples() -> tuple[str, str]:
    e = InvalidRequest(MISSING_MESSAGES, param="messages")
    return json.dumps(e.body("seed"), indent=2), json.dumps(e.body("openai"), indent=2)


def health_md(f: Facts) -> str:
    return (
        f"**Health check:** `GET {f.base}/api` returns the status (`ok`, or `loading` with 503 while the "
        "model loads), the model, the backend, the rate limits and usage counters.\n\n"
        f"Also: `GET {f.base}/v1/models`, and the interactive OpenAPI page at [{f.base}/docs]({f.base}/docs)."
    )


def endpoints_md(f: Facts) -> str:
    b = f.base
    return (
        f"### 📡 Base URL\n\n`{b}/api`\n\n"
        "| Method | Path | What |\n|---|---|---|\n"
        "| POST | `/api` | Chat (alias `/api/gpt-oss-2t`); streams by default; errors as `{\"error\": \"…\"}` |\n"
        "| POST | `/v1/chat/completions` | OpenAI-compatible; JSON by default; OpenAI error objects |\n"
        "| POST | `/v1/responses` | OpenAI Responses API (stateless: no `store`, no `previous_response_id`) |\n"
        "| GET | `/api` | Health check |\n"
        "| GET | `/v1/models` | The model list (one model) |\n"
    )


def ai_prompt(f: Facts) -> str:
    s = f.settings
    limits = (
        f"max {s.rate_limit_per_second:g} req/s per IP, {s.rate_limit_min_interval_ms} ms min gap"
        if s.rate_limit_enabled else "none"
    )
    return f"""I need you to integrate this free chat API into my application.

API endpoint: {f.base}/api
Method: POST, JSON body:
{{
  "messages": [{{"role": "user", "content": "your message here"}}],
  "stream": true,
  "temperature": {f.temperature},
  "max_tokens": -1,
  "top_p": {s.default_top_p:g}
}}
OpenAI-compatible alternative: {f.base}/v1/chat/completions (use any OpenAI SDK with base_url {f.base}/v1).

Requirements:
1. A chat interface with a text input and a send button
2. Show the conversation; send the whole history with each request
3. Stream answers: parse "data: {{json}}" events, append choices[0].delta.content, stop at "data: [DONE]"
4. Handle errors: HTTP 429/503 carry Retry-After (seconds); a stream may end with a data: {{"error": ...}} event
5. Show a loading indicator while waiting

Rate limits: {limits}. No API key. CORS is enabled for browser requests.
"""
