"""The page mounts after the port opens: importing Gradio takes seconds that the API should not wait for.

It also waits for the backend to finish starting (or BACKEND_WAIT_S, whichever comes first): on a
small CPU machine the Gradio import and the model load would otherwise share one GIL and both
finish late, while the model alone is ready in a few seconds. A long start (a Hub download on a
Space) still gets the page after BACKEND_WAIT_S; the placeholder at / covers the wait.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from starlette.responses import HTMLResponse

log = logging.getLogger(__name__)

# The longest the page waits for the backend's start before it mounts anyway.
BACKEND_WAIT_S = 10.0

STARTING_HTML = """<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>Starting…</title><body style="font-family:system-ui;background:#0f0c29;color:#eee;display:grid;place-items:center;height:90vh">
<p>The chat page is starting… this page reloads by itself. The API at <code>/api</code> is already up.</p></body>"""


class PageMount:
    """Builds and mounts the Gradio page in a worker thread, then runs Gradio's startup in the loop."""

    def __init__(self, app: FastAPI, service, settings):
        self.app, self.service, self.settings = app, service, settings
        self.state = "loading"  # loading | ready | failed
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self, after: asyncio.Future | None = None) -> None:
        """Mounts in the background once `after` (the backend's start) is done, or after BACKEND_WAIT_S."""
        self._task = asyncio.create_task(self._run(after))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def placeholder(self) -> HTMLResponse:
        return HTMLResponse(STARTING_HTML, status_code=503, headers={"Retry-After": "1"})

    def _mount(self):
        from gptoss_space.ui import mount_ui

        mount_ui(self.app, self.service, self.settings)
        gradio_app = self.app.router.routes[-1].app
        return gradio_app, gradio_app.get_blocks()

    async def _wait_for(self, after: asyncio.Future) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({after, stopping}, timeout=BACKEND_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if after not in done and not self._stop.is_set():
            log.info("the backend is still starting after %.0f s: mounting the page meanwhile", BACKEND_WAIT_S)

    async def _run(self, after: asyncio.Future | None = None) -> None:
        try:
            if after is not None:
                await self._wait_for(after)
                if self._stop.is_set():
                    return
            gradio_app, blocks = await asyncio.to_thread(self._mount)
            async with gradio_app.router.lifespan_context(gradio_app):
                blocks.run_startup_events()
                await blocks.run_extra_startup_events()
                self.state = "ready"
                log.info("the page is ready")
                await self._stop.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.state = "failed"
            log.exception("the page failed to mount; the API keeps serving")
