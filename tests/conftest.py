"""Shared fixtures: settings with a per-run model cache, the scripted backend, live servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gptoss_space.http.app import create_app
from gptoss_space.settings import Settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer
from tests.support.tiny_models import offline_vocabulary

# One converted-model cache for the whole run (and across runs on this machine): the first
# conversion of the embedded GGUF takes ~20 s, later loads a few seconds.
MODEL_CACHE = Path(os.environ.get("GPTOSS_TEST_CACHE", Path.home() / ".cache" / "gptoss-space"))
offline_vocabulary(MODEL_CACHE / "tiktoken")  # at session start, before anything loads harmony (servers run in this process)


def make_settings(**overrides) -> Settings:
    base = dict(cache_dir=MODEL_CACHE, rate_limit_enabled=False, max_tokens_cap=256)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def scripted_server(scripted):
    """The app (API only) over the scripted backend, on a real uvicorn server."""
    app = create_app(make_settings(), backend=scripted, with_ui=False)
    with LiveServer(app) as server:
        server.backend = scripted
        yield server


@pytest.fixture(scope="session")
def model_server():
    """The whole app with the real embedded model, shared by the real-model tests."""
    app = create_app(make_settings(), with_ui=False)
    with LiveServer(app, ready_path="/api") as server:
        server.service = app.state.service
        yield server


# Markers by what a test uses, so `make test-fast` can leave out the slow kinds (pytest -m "not slow and not browser").
# slow: the real embedded model (loaded, or served); browser: chromium driving the page.
SLOW_FIXTURES = {"model_server", "ui_server", "fp32", "bf16", "embedded", "gptoss_server", "gpt_oss", "tiny_dirs"}
BROWSER_FIXTURES = {"browser", "open_page", "docs_page"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
