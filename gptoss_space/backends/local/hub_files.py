"""Which files of a Hub model repo a load reads, and a download of only those.

`snapshot_download(name)` alone fetches the whole repo: for openai/gpt-oss-20b that is the root
checkpoint (~13.8 GB) plus `original/` (~13.8 GB) and `metal/` (~13.8 GB) copies, ~41 GB where
transformers reads ~14 GB.
"""

from __future__ import annotations

import glob
import logging
import re

log = logging.getLogger(__name__)

CONFIG_FILES = ("config.json", "generation_config.json")
# Read by AutoTokenizer whenever present; a fast tokenizer.json makes the slow-tokenizer files unnecessary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
SLOW_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
                        "merges.txt")
# The weight formats transformers loads, best first: (single file, index, shard pattern).
WEIGHT_FORMATS = (
    ("model.safetensors", "model.safetensors.index.json", re.compile(r"model-\d+-of-\d+\.safetensors")),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", re.compile(r"pytorch_model-\d+-of-\d+\.bin")),
)


def files_to_load(repo_files: list[str]) -> list[str]:
    """The files of a repo listing that a transformers load reads, sorted.

    Root files only (never `original/`, `metal/` or other folders); one weight format: safetensors
    when the root has them, else PyTorch .bin (never .gguf, .onnx, .msgpack, .h5 alongside).
    """
    root = {f for f in repo_files if "/" not in f}
    chosen = [f for f in (*CONFIG_FILES, *TOKENIZER_FILES) if f in root]
    if "tokenizer.json" not in root:
        chosen += [f for f in SLOW_TOKENIZER_FILES if f in root]
    for single, index, shard in WEIGHT_FORMATS:
        shards = [f for f in root if shard.fullmatch(f)]
        if index in root and shards:
            chosen += [index, *shards]
        elif single in root:
            chosen.append(single)
        elif single.endswith(".safetensors") and any(f.endswith(".safetensors") for f in root):
            chosen += [f for f in root if f.endswith(".safetensors")]  # odd names: take them all
        else:
            continue
        break
    return sorted(set(chosen))


def _repo_files(api, name: str) -> list[str] | None:
    """The repo's file listing: from the Hub, else (offline, unreachable) the one cached by an earlier download."""
    import httpx2
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, OfflineModeIsEnabled

    try:
        return api.list_repo_files(name)
    except (OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException) as e:
        try:
            files = [f.path for f in get_cached_repo_tree(name)]
        except CachedRepoTreeNotFoundError:
            log.warning("the Hub cannot be reached (%s) and no listing of %s is cached", type(e).__name__, name)
            return None
        log.info("the Hub cannot be reached (%s): using the cached listing of %s", type(e).__name__, name)
        return files


def download(name: str, *, token: str | None, tqdm_class=None, endpoint: str | None = None) -> str:
    """snapshot_download of only `files_to_load(listing)`; returns the snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download

    files = _repo_files(HfApi(token=token, endpoint=endpoint), name)
    patterns = None
    if files is not None:
        wanted = files_to_load(files)
        log.info("downloading %d of the %d files of %s: %s", len(wanted), len(files), name, ", ".join(wanted))
        patterns = [glob.escape(f) for f in wanted]  # exact names: fnmatch would read [ ] * ? as wildcards
    return snapshot_download(name, token=token, endpoint=endpoint, allow_patterns=patterns, tqdm_class=tqdm_class)
