"""The Gradio page, mounted at / on the FastAPI app: Chat, Parameters and API docs tabs."""

from __future__ import annotations

from fastapi import FastAPI


def build_ui(service, settings):
    from .page import build_ui as build

    return build(service, settings)


def mount_ui(app: FastAPI, service, settings) -> FastAPI:
    import gradio as gr

    from .theme import CSS, HEAD, make_theme

    blocks = build_ui(service, settings)
    # No frame-blocking headers are added here (nor by Gradio): the page is meant to be embedded.
    return gr.mount_gradio_app(
        app, blocks, path="/", ssr_mode=False, theme=make_theme(), css=CSS, head=HEAD,
        footer_links=["api", "gradio"],  # not "settings": it reads localStorage, which a blocked iframe denies
    )
