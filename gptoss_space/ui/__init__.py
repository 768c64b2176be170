"""The Gradio page, mounted at / on the FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI


def mount_ui(app: FastAPI, service, settings) -> FastAPI:
    import gradio as gr

    from .chat import build_ui

    blocks = build_ui(service, settings)
    return gr.mount_gradio_app(app, blocks, path="/", ssr_mode=False)
