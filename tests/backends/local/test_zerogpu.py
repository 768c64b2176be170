"""ZeroGPU wrapping: identity off Spaces, @spaces.GPU with a per-call duration on ZeroGPU."""

from __future__ import annotations

import sys
import types

import pytest

from gptoss_space.backends.local.zerogpu import duration_for_tokens, gpu_task, spaces_module
from gptoss_space.settings import Settings


def generate(prompt: str, max_tokens: int | None = None) -> str:
    return f"answer to {prompt} ({max_tokens})"


class FakeSpaces(types.ModuleType):
    """Records what @spaces.GPU got and, like ZeroGPU, asks the duration callable on every call."""

    def __init__(self):
        super().__init__("spaces")
        self.decorated = []
        self.durations = []

    def GPU(self, task=None, *, duration=None):  # noqa: N802 (the real name)
        def wrap(fn):
            self.decorated.append((fn, duration))

            def run(*args, **kwargs):
                self.durations.append(duration(*args, **kwargs) if callable(duration) else duration)
                return fn(*args, **kwargs)

            return run

        return wrap(task) if task is not None else wrap


@pytest.fixture
def fake_spaces(monkeypatch):
    module = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", module)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "spaces" else None)
    return module


def test_identity_off_spaces(fake_spaces):
    settings = Settings(zero_gpu=False)
    assert gpu_task(generate, lambda *a, **k: 60, settings=settings) is generate
    assert spaces_module(settings) is None
    assert fake_spaces.decorated == []


def test_identity_when_spaces_is_not_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert gpu_task(generate, lambda *a, **k: 60, settings=Settings(zero_gpu=True)) is generate


def test_zero_gpu_env_var_is_read_through_settings(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings().zero_gpu is True
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert Settings().zero_gpu is False


def test_decorated_with_a_duration_derived_per_call(fake_spaces):
    settings = Settings(zero_gpu=True, zero_gpu_base_s=10, zero_gpu_tokens_per_s=10, zero_gpu_max_duration_s=100, max_tokens_cap=2048)
    seen = []

    def duration_for(prompt, max_tokens=None):
        seen.append((prompt, max_tokens))
        return duration_for_tokens(max_tokens, settings)

    wrapped = gpu_task(generate, duration_for, settings=settings)
    assert wrapped is not generate
    assert [fn for fn, _ in fake_spaces.decorated] == [generate]
    assert wrapped("hi", max_tokens=200) == "answer to hi (200)"
    assert wrapped("long", max_tokens=5000) == "answer to long (5000)"
    assert seen == [("hi", 200), ("long", 5000)]
    assert fake_spaces.durations == [30, 100]  # 10 + 200/10; capped at the maximum


def test_duration_from_a_callable_is_capped(fake_spaces):
    settings = Settings(zero_gpu=True, zero_gpu_max_duration_s=90)
    wrapped = gpu_task(generate, lambda *a, **k: 10_000, settings=settings)
    wrapped("x")
    assert fake_spaces.durations == [90]


@pytest.mark.parametrize(
    ("max_tokens", "expected"),
    [(None, 15 + 103), (-1, 15 + 103), (0, 15), (1, 16), (400, 35), (10_000, 15 + 103)],
)
def test_duration_for_tokens(max_tokens, expected):
    settings = Settings(max_tokens_cap=2048, zero_gpu_base_s=15, zero_gpu_tokens_per_s=20, zero_gpu_max_duration_s=600)
    assert duration_for_tokens(max_tokens, settings) == expected
