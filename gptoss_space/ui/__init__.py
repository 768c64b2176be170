"""The Gradio page, mounted at / on the FastAPI app: Chat, Parameters and API docs tabs."""

from __future__ import annotations

from fastapi import FastAPI

QUEUE_IDLE_POLL_S = 0.01  # Gradio's default 0.001
PROGRESS_IDLE_POLL_S = 0.05  # Gradio's default 0.01


def build_ui(service, settings):
    from gptoss_space.ui.page import build_ui as build

    return build(service, settings)


def mount_ui(app: FastAPI, service, settings) -> FastAPI:
    import gradio as gr

    from gptoss_space.ui import errors
    from gptoss_space.ui.theme import CSS, HEAD, make_theme

    blocks = build_ui(service, settings)
    # A flood of calls nobody reads is refused (503 "queue full") instead of stored: 3,000 grew the server to 1 GB.
    blocks.queue(max_size=settings.page_queue_size, default_concurrency_limit=settings.page_concurrency)
    # Gradio keeps each session's component state (10,000 sessions by default, ~140 KB each for this page):
    # 3,000 calls posted and never read still grew the server by 430 MB with the queue bounded.
    blocks.state_session_capacity = settings.page_sessions
    # No frame-blocking headers are added here (nor by Gradio): the page is meant to be embedded.
    # show_error=False: only our gr.Error messages reach the visitor, never an exception's text.
    mounted = gr.mount_gradio_app(
        app, blocks, path="/", ssr_mode=False, theme=make_theme(), css=CSS, head=HEAD,
        footer_links=["api", "gradio"],  # not "settings": it reads localStorage, which a blocked iframe denies
        show_error=False, max_file_size="1b",  # no file input: entry.py refuses the upload route, this too
    )
    errors.install(app.router.routes[-1].app)
    _calm_queue_polling(blocks)
    return mounted


def _calm_queue_polling(blocks) -> None:
    """Gradio's queue, idle, looks for new events every 1 ms and for progress every 10 ms: over a
    thousand event-loop wake-ups a second, each taking the GIL and a core from generation and from
    every API request. 10 ms and 50 ms cost a page event at most 10 ms to start, which nobody sees."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return
    if hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_IDLE_POLL_S)
    if hasattr(queue, "progress_update_sleep_when_free"):
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_IDLE_POLL_S)
