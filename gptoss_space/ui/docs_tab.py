"""The API docs tab: the docs module's content with copy buttons, filled with this server's URL on load."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import gradio as gr

from gptoss_space.ui import docs

log = logging.getLogger(__name__)

# Client-side, so the visitor sees the real stream, sent from their own address (their rate limit).
TRY_JS = """
async (endpoint, body) => {
  const out = document.getElementById("tryit-out");
  if (window.__gsTry) window.__gsTry.abort();
  const ctl = new AbortController();
  window.__gsTry = ctl;
  const url = new URL(endpoint.replace(/^\\//, ""), new URL("./", window.location.href)).href;
  out.textContent = `POST ${url}\\n…`;
  const t0 = performance.now();
  try {
    const res = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body, signal: ctl.signal});
    let head = `HTTP ${res.status} ${res.statusText}\\n`;
    for (const k of ["content-type", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-queue-time"]) {
      const v = res.headers.get(k);
      if (v !== null) head += `${k}: ${v}\\n`;
    }
    out.textContent = head + "\\n";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    while (true) {
      const {done, value} = await reader.read();
      if (done) break;
      out.textContent += decoder.decode(value, {stream: true});
      out.scrollTop = out.scrollHeight;
    }
    out.textContent += `\\n\\n(done in ${Math.round(performance.now() - t0)} ms)`;
  } catch (e) {
    out.textContent += e.name === "AbortError" ? "\\n\\n(stopped)" : `\\n\\nRequest failed: ${e}`;
  } finally {
    if (window.__gsTry === ctl) window.__gsTry = null;
  }
  return [];
}
"""
STOP_JS = "() => { if (window.__gsTry) window.__gsTry.abort(); return []; }"


# The quick-start tabs: (tab name, element id suffix, snippet keys).
SNIPPET_TABS = [
    ("cURL", "curl", ["curl", "curl_stream"]),
    ("Python", "python", ["python", "python_stream", "openai", "openai_responses"]),
    ("Tools, JSON, logprobs", "features", ["openai_tools", "openai_json", "openai_logprobs"]),
    ("JavaScript", "javascript", ["js", "js_stream"]),
    ("gradio_client", "gradio-client", ["gradio"]),
]


def try_body(settings) -> str:
    body = {
        "messages": [{"role": "user", "content": docs.HELLO}],
        "stream": True,
        "max_tokens": min(64, settings.max_tokens_cap),
    }
    return json.dumps(body, indent=2)


def build_docs(settings, facts_for: Callable[[str], docs.Facts], initial_base: str) -> tuple[list, Callable]:
    """Render the tab; returns (outputs, fill): fill(base) gives the outputs' values for that base URL."""
    f0 = facts_for(initial_base)
    outputs: list = []
    fillers: list[Callable[[docs.Facts], str]] = []

    def md(render: Callable[[docs.Facts], str], **kw) -> gr.Markdown:
        comp = gr.Markdown(render(f0), **kw)
        outputs.append(comp)
        fillers.append(render)
        return comp

    def code(render: Callable[[docs.Facts], str], language: str | None, label: str, **kw) -> gr.Code:
        comp = gr.Code(render(f0), language=language, label=label, interactive=False, buttons=["copy"],
                       show_line_numbers=False, **kw)
        outputs.append(comp)
        fillers.append(render)
        return comp

    with gr.Column(elem_classes=["gs-docs"]):
        gr.Markdown("🎉 **API is live!** Start making requests right away — no API key required.", elem_classes=["gs-live"])
        md(docs.endpoints_md, elem_id="docs-base", elem_classes=["gs-table"])
        gr.Markdown("### ⚡ Quick start")
        with gr.Tabs(elem_id="docs-quickstart"):
            for name, slug, keys in SNIPPET_TABS:
                with gr.Tab(name, elem_id=f"docs-tab-{slug}"):
                    for key in keys:
                        s = docs.snippet(f0, key)
                        code(lambda f, key=key: docs.snippet(f, key).code, s.language, s.title, elem_id=f"snippet-{key}")
        gr.Markdown("### 📝 Request parameters")
        md(docs.parameters_md, elem_classes=["gs-table"])
        gr.Markdown("### 🔒 Rate limits")
        md(docs.rate_limits_md)
        gr.Markdown("### 📊 Response format")
        code(lambda f: docs.response_examples(f)[0], "json", "Non-streaming response (JSON)")
        code(lambda f: docs.response_examples(f)[1], None, "Streaming response (SSE)")
        gr.Markdown("### 🚨 Error responses")
        md(docs.errors_md, elem_classes=["gs-table"])
        seed_err, openai_err = docs.error_examples()
        with gr.Row():
            gr.Code(seed_err, language="json", label="/api", interactive=False, buttons=["copy"], lines=3, min_width=280,
                    show_line_numbers=False)
            gr.Code(openai_err, language="json", label="/v1/chat/completions", interactive=False, buttons=["copy"], lines=3,
                    min_width=280, show_line_numbers=False)
        gr.Markdown("### 🧪 Test the API")
        md(docs.health_md, elem_id="docs-health")
        with gr.Group(elem_id="tryit"):
            endpoint = gr.Radio(["/api", "/v1/chat/completions"], value="/api", label="Try it: POST to", elem_id="tryit-endpoint")
            body = gr.Code(try_body(settings), language="json", interactive=True, label="Request body (edit me)", elem_id="tryit-body",
                           show_line_numbers=False)
            with gr.Row():
                send = gr.Button("Send ▶", variant="primary", elem_id="tryit-send")
                stop = gr.Button("Stop", variant="secondary", elem_id="tryit-stop")
        gr.HTML('<pre id="tryit-out">The raw response (status, rate-limit headers and body or stream) appears here.</pre>')
        send.click(None, [endpoint, body], None, js=TRY_JS, api_visibility="private")
        stop.click(None, None, None, js=STOP_JS, api_visibility="private")
        with gr.Accordion("🤖 AI implementation prompt: paste it into any assistant", open=False):
            prompt = gr.Textbox(docs.ai_prompt(f0), label="Prompt", lines=14, max_lines=30, interactive=False, buttons=["copy"])
            outputs.append(prompt)
            fillers.append(docs.ai_prompt)

    def fill(facts: docs.Facts) -> list[str]:
        return [render(facts) for render in fillers]

    return outputs, fill
