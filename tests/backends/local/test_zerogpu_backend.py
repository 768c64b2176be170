"""The local backend on (a stand-in for) ZeroGPU: each request is one @spaces.GPU call streaming tokens back."""

from __future__ import annotations

import asyncio

import pytest

from gptoss_space.backends.base import GenerationRequest
from gptoss_space.backends.local.backend import LocalBackend
from gptoss_space.backends.local.zerogpu_runner import ZeroGPURunner
from tests.backends.local.test_zerogpu import FakeSpaces
from tests.conftest import make_settings


@pytest.fixture
def fake_spaces(monkeypatch):
    """`spaces` as ZeroGPU has it, found by the two places that look for it (nothing else patched)."""
    module = FakeSpaces()
    found = lambda settings: module if settings.zero_gpu else None  # noqa: E731
    monkeypatch.setattr("gptoss_space.backends.local.zerogpu.spaces_module", found)
    monkeypatch.setattr("gptoss_space.backends.local.backend.spaces_module", found)
    return module

Q = [{"role": "user", "content": "What is the capital of France?"}]


async def collect(backend, **kw):
    text, last = "", None
    async for d in backend.stream(GenerationRequest(messages=Q, **kw)):
        text += d.content
        last = d
    return text, last


def test_generation_runs_inside_gpu_calls_sized_by_max_tokens(fake_spaces: FakeSpaces):
    settings = make_settings(zero_gpu=True, zero_gpu_base_s=10, zero_gpu_tokens_per_s=4)
    backend = LocalBackend(settings)

    async def main():
        await backend.start()
        try:
            assert isinstance(backend.engine, ZeroGPURunner)
            direct = await collect(backend, max_tokens=8, temperature=0)
            cut = await collect(backend, max_tokens=30, temperature=0, stop=["Paris"])
            return direct, cut
        finally:
            await backend.close()

    (text, last), (cut_text, cut_last) = asyncio.run(main())
    assert "Paris" in text and last.finish_reason in ("stop", "length") and last.completion_tokens <= 8
    assert "Paris" not in cut_text and cut_last.finish_reason == "stop"
    assert fake_spaces.durations == [10 + 2, 10 + 8]  # base + max_tokens / tokens_per_s, per call


def test_off_zerogpu_the_engine_thread_serves():
    backend = LocalBackend(make_settings())

    async def main():
        await backend.start()
        try:
            return type(backend.engine).__name__, await collect(backend, max_tokens=3, temperature=0)
        finally:
            await backend.close()

    kind, (text, last) = asyncio.run(main())
    assert kind == "Engine" and last.completion_tokens == 3
