"""The page mounts after the port opens: the API answers at once, / says "starting" until the page is there."""

from __future__ import annotations

import httpx

from gptoss_space.server import create_app
from tests.conftest import make_settings
from tests.fakes import ScriptedBackend
from tests.servers import LiveServer


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
