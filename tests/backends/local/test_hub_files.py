"""A Hub model downloads only what the load reads: the root checkpoint in one format, config, tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import constants
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptoss_space.backends.local.hub_files import files_to_load
from gptoss_space.backends.local.loading import LoadProgress, load_model
from tests.conftest import make_settings
from tests.support.servers import LiveServer
from tests.support.tiny_models import build_tiny_gpt_oss

# openai/gpt-oss-20b's files as the Hub lists them.
GPT_OSS_20B = [
    "config.json", "generation_config.json", "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "original/config.json",
    "original/dtypes.json", "original/model.safetensors", "metal/model.bin", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md", "LICENSE", "USAGE_POLICY",
    ".gitattributes",
]


def test_gpt_oss_20b_fetches_the_root_checkpoint_config_and_tokenizer_only():
    assert files_to_load(GPT_OSS_20B) == [
        "chat_template.jinja", "config.json", "generation_config.json",
        "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]


def test_one_weight_format_and_slow_tokenizer_files_only_without_tokenizer_json():
    every_format = ["config.json", "model.safetensors", "pytorch_model.bin", "model.gguf", "model.onnx",
                    "flax_model.msgpack", "tf_model.h5", "onnx/model.onnx", "tokenizer.model", "tokenizer.json"]
    assert files_to_load(every_format) == ["config.json", "model.safetensors", "tokenizer.json"]
    bin_only = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                "pytorch_model.bin.index.json", "tokenizer.model", "tokenizer_config.json", "rust_model.ot"]
    assert files_to_load(bin_only) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                       "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
                                       "tokenizer.model", "tokenizer_config.json"]
    # A Mistral-style repo: the transformers shards beside a consolidated copy for another runtime.
    mistral = ["config.json", "consolidated.safetensors", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"]
    assert files_to_load(mistral) == ["config.json", "merges.txt", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                      "vocab.json"]


REPO = "tiny-org/tiny-gpt-oss"
SHA = "0123456789abcdef0123456789abcdef01234567"


class ScriptedHub:
    """The Hub endpoints huggingface_hub calls for a snapshot download, over one repo's files; records requests.

    GET /api/models/{repo}[/revision/{rev}] (repo_info), GET /api/models/{repo}/tree/{rev} (the
    listing), HEAD + GET /{repo}/resolve/{rev}/{path} (each file: X-Repo-Commit, ETag, size).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.app = Starlette(routes=[
            Route("/api/models/{org}/{name}", self.info),
            Route("/api/models/{org}/{name}/revision/{rev}", self.info),
            Route("/api/models/{org}/{name}/tree/{rev}", self.tree),
            Route("/{org}/{name}/resolve/{rev}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
        ])

    def _record(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path))

    def _entry(self, path: str) -> dict:
        data = self.files[path]
        return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    async def info(self, request: Request):
        self._record(request)
        return JSONResponse({"id": REPO, "sha": SHA, "siblings": [{"rfilename": p} for p in self.files]})

    async def tree(self, request: Request):
        self._record(request)
        assert request.query_params.get("recursive") in ("true", "True")
        return JSONResponse([self._entry(p) for p in sorted(self.files)])

    async def resolve(self, request: Request):
        self._record(request)
        path = request.path_params["path"]
        if path not in self.files:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": SHA})
        data = self.files[path]
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{self._entry(path)["oid"]}"', "Content-Length": str(len(data))}
        body = b"" if request.method == "HEAD" else data
        return Response(body, headers=headers, media_type="application/octet-stream")

    def fetched(self) -> set[str]:
        prefix = f"/{REPO}/resolve/"
        return {p[len(prefix):].split("/", 1)[1] for m, p in self.requests if m == "GET" and p.startswith(prefix)}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A tiny gpt-oss repo laid out like openai/gpt-oss-20b (root checkpoint + original/ + metal/), served on loopback."""
    folder = build_tiny_gpt_oss(tmp_path / "tiny")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    weights = files["model.safetensors"]
    files.update({
        "original/config.json": b"{}", "original/dtypes.json": b"{}", "original/model.safetensors": weights,
        "metal/model.bin": weights, "README.md": b"# tiny", "LICENSE": b"Apache-2.0", "USAGE_POLICY": b"-",
        ".gitattributes": b"*.safetensors filter=lfs", "model.gguf": b"GGUF",
    })
    scripted = ScriptedHub(files)
    with LiveServer(scripted.app, lifespan="off") as server:
        # Where HF_ENDPOINT / HF_HUB_CACHE land once huggingface_hub has read them at import.
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield scripted


def test_a_hub_load_fetches_only_the_files_it_reads(hub, caplog):
    caplog.set_level("INFO", logger="gptoss_space")
    progress = LoadProgress()
    loaded = load_model(make_settings(model=REPO, dtype="float32"), progress)
    assert loaded.source == "hub" and loaded.model_id == REPO
    assert type(loaded.model).__name__ == "GptOssForCausalLM" and loaded.tokenizer("hello")["input_ids"]

    wanted = files_to_load(list(hub.files))
    assert hub.fetched() == set(wanted)
    assert "model.safetensors" in wanted and "tokenizer.json" in wanted and "config.json" in wanted
    assert not any(p.startswith(("original/", "metal/")) or p.endswith(".gguf") for p in hub.fetched())
    # Nothing outside the selection was even asked about (no HEAD for the original/ or metal/ copies).
    asked = {p.split(f"/{REPO}/resolve/{SHA}/", 1)[-1] for _, p in hub.requests if "/resolve/" in p}
    assert asked == set(wanted)
    # Progress and its log count the selected bytes only: the weights once, not three times.
    assert progress.phase == "ready"
    assert progress.total_bytes == sum(len(hub.files[p]) for p in wanted)
    assert f"downloading {len(wanted)} of the {len(hub.files)} files of {REPO}" in caplog.text


def test_offline_restart_loads_the_partial_snapshot_from_the_cache(hub, monkeypatch):
    load_model(make_settings(model=REPO, dtype="float32"))
    before = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = load_model(make_settings(model=REPO, dtype="float32"))
    assert again.source == "hub" and len(hub.requests) == before  # no request, and no "incomplete snapshot"
    assert not Path(constants.HF_HUB_CACHE, "models--tiny-org--tiny-gpt-oss", "snapshots", SHA, "original").exists()
