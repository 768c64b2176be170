"""The whole page: a header and three tabs (Chat, Parameters, API docs), filled in on load."""

from __future__ import annotations

import logging

import gradio as gr

from gptoss_space.ui import docs
from gptoss_space.ui.chat import build_chat
from gptoss_space.ui.docs_tab import build_docs
from gptoss_space.ui.parameters import build_parameters, effort_note
from gptoss_space.ui.theme import header_html

log = logging.getLogger(__name__)


def _fallback_base(request: gr.Request | None, settings) -> str:
    """The URL the request itself was made to, for when it carries no usable Host header."""
    try:
        url = request.url if request is not None else None
        if url is not None:
            return f"{url.scheme}://{url.netloc}"
    except Exception:  # a gr.Request without a live HTTP request behind it
        pass
    return f"http://{settings.host}:{settings.port}"


def build_ui(service, settings) -> gr.Blocks:
    def facts_for(base: str) -> docs.Facts:
        return docs.Facts(base=base, model=service.model_name, settings=settings)

    def header() -> str:
        return header_html(service.model_name, service.backend.kind, settings)

    # Replaced on load by the URL the visitor used; until then a name that is plainly a placeholder.
    initial_base = docs.PLACEHOLDER_BASE
    with gr.Blocks(title="GPT-OSS Space: free chat API", fill_width=False, analytics_enabled=False) as demo:
        top = gr.HTML(header(), elem_id="gs-top")
        with gr.Tabs(elem_id="gs-tabs") as tabs:
            with gr.Tab("💬 Chat", id="chat", elem_id="tab-chat") as chat_tab:
                chat_slot = gr.Column()
            with gr.Tab("⚙️ Parameters", id="parameters", elem_id="tab-parameters"):
                controls = build_parameters(settings)
            with gr.Tab("📖 API docs", id="docs", elem_id="tab-docs"):
                doc_outputs, fill = build_docs(settings, facts_for, initial_base)
        # The chat needs the parameter controls as inputs, yet its tab comes first: render it now, in its slot.
        with tabs, chat_tab, chat_slot:
            build_chat(service, settings, controls)

        def on_load(request: gr.Request):
            base = docs.base_url(request.headers if request is not None else {}, _fallback_base(request, settings))
            return [header(), gr.update(info=effort_note(service.backend if service.backend.ready else None)),
                    *fill(facts_for(base))]

        demo.load(on_load, None, [top, controls.reasoning_effort, *doc_outputs], queue=False, api_visibility="private")
    return demo
