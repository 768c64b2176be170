"""The chat tab: streams through ChatService, so the page is rate-limited and date-injected like /api."""

from __future__ import annotations

import logging

import gradio as gr

from ..clientip import TrustedProxies, client_ip
from ..errors import APIError
from ..schemas import ChatMessage, ChatRequest

log = logging.getLogger(__name__)


def _history_messages(history: list, message: str) -> list[ChatMessage]:
    msgs = []
    for item in history or []:
        role, content = item.get("role"), item.get("content")
        if role in ("user", "assistant") and isinstance(content, str):
            msgs.append(ChatMessage(role=role, content=content))
    msgs.append(ChatMessage(role="user", content=message))
    return msgs


def build_ui(service, settings) -> gr.Blocks:
    trusted = TrustedProxies.from_settings(settings)

    def client_of(request: gr.Request | None) -> str:
        if request is None:
            return "gradio"
        peer = request.client.host if request.client else None
        return client_ip(peer, request.headers.get("x-forwarded-for"), trusted)

    async def respond(message: str, history: list, request: gr.Request):
        chat = ChatRequest(messages=_history_messages(history, message), stream=True)
        text = ""
        try:
            async with service.session(chat, client_of(request)) as (_, deltas):
                async for d in deltas:
                    if d.content:
                        text += d.content
                        yield text
        except APIError as e:
            raise gr.Error(e.message) from None

    with gr.Blocks(title="gptoss-space") as demo:
        gr.Markdown(f"# gptoss-space\nModel: `{service.model_name}` · backend: {service.backend.kind}")
        gr.ChatInterface(respond, api_name="chat")
    return demo
