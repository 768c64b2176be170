"""The page mounts after the port opens: the API answers at once, / says "starting" until the page is there."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gptoss_space.http.app import create_app
from gptoss_space.ui import mount
from gptoss_space.ui.mount import PageMount
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer


def test_page_is_mounted_in_the_background_and_api_answers_meanwhile():
    app = create_app(make_settings(), backend=ScriptedBackend())
    with LiveServer(app) as server:
        first = httpx.get(server.url + "/api").json()
        assert first["status"] == "ok" and first["page"] in ("loading", "ready")
        server.ready_path = "/api"
        server.wait_ready()
        assert httpx.get(server.url + "/api").json()["page"] == "ready"
        page = httpx.get(server.url + "/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert httpx.get(server.url + "/config").json()["mode"] == "blocks"
        answer = httpx.post(server.url + "/api", json={"messages": [{"role": "user", "content": "hi"}], "stream": False})
        assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_root_says_starting_until_the_page_is_there():
    app = create_app(make_settings(), backend=ScriptedBackend())
    with LiveServer(app, lifespan="off") as server:  # no start-up: the page never mounts
        r = httpx.get(server.url + "/")
        assert r.status_code == 503 and "starting" in r.text and r.headers["retry-after"] == "1"
        assert '<meta http-equiv="refresh"' in r.text
        assert httpx.get(server.url + "/api").json()["page"] == "loading"


class SlowStartBackend(ScriptedBackend):
    """A backend whose start takes `delay` seconds (None: until the server stops), then succeeds or fails."""

    def __init__(self, events: list, delay: float | None, fail: bool = False):
        super().__init__()
        self.events, self.delay, self.fail = events, delay, fail

    async def start(self) -> None:
        if self.delay is None:
            await asyncio.Event().wait()  # a Hub download that never ends; cancelled at shutdown
        await asyncio.sleep(self.delay)
        self.events.append("backend failed" if self.fail else "backend started")
        if self.fail:
            raise RuntimeError("no model today")


def record_mounts(monkeypatch, events: list) -> None:
    original = PageMount._mount

    def mount(self):
        events.append("page mount began")
        return original(self)

    monkeypatch.setattr(PageMount, "_mount", mount)


@pytest.mark.parametrize("fail", [False, True])
def test_the_page_mounts_once_the_backend_has_started_or_failed(monkeypatch, fail):
    """The Gradio import would share the GIL with the model load: it waits for the backend's start to end."""
    events: list[str] = []
    record_mounts(monkeypatch, events)
    app = create_app(make_settings(), backend=SlowStartBackend(events, delay=1.0, fail=fail))
    with LiveServer(app) as server:
        assert httpx.get(server.url + "/").status_code == 503  # the placeholder meanwhile
        server.ready_path = "/api"
        server.wait_ready()
        assert httpx.get(server.url + "/").status_code == 200
    assert events == ["backend failed" if fail else "backend started", "page mount began"]


def test_a_long_backend_start_still_gets_the_page(monkeypatch):
    """A start that takes longer than BACKEND_WAIT_S (a Hub download) does not hold the page back."""
    events: list[str] = []
    record_mounts(monkeypatch, events)
    monkeypatch.setattr(mount, "BACKEND_WAIT_S", 0.3)
    app = create_app(make_settings(), backend=SlowStartBackend(events, delay=None))
    with LiveServer(app) as server:
        server.ready_path = "/api"
        server.wait_ready()
        assert httpx.get(server.url + "/").status_code == 200
        assert events == ["page mount began"]  # the backend is still starting
