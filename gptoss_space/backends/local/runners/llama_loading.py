"""The lean load path: a saved Llama checkpoint straight into llama_runner's runner, without importing transformers.

Importing transformers (and what from_pretrained imports on the way: torch.distributed,
torch._dynamo) takes about 4 s of a warm start on a small CPU machine, and the weights
themselves well under one. For a CPU Llama checkpoint that the lean runner reproduces exactly,
with a tokenizer that transformers would only wrap, the folder is read here instead: the
safetensors weights into `LlamaWeights`, the tokenizer into `ChatTokenizer`. Anything else
(other architectures, GPUs, ZeroGPU, other tokenizer classes) keeps the transformers path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptoss_space.backends.local.chat_tokenizer import ChatTokenizer, unsupported_reason
from gptoss_space.backends.local.runners.llama_weights import LlamaWeights, llama_config, weight_files


def load_lean(folder: str | Path, device: str, dtype: torch.dtype) -> tuple[LlamaWeights, ChatTokenizer] | str:
    """The weights and the tokenizer, or why this folder must load through transformers."""
    result = _prepare(Path(folder), device, dtype)
    if isinstance(result, str):
        return result
    return LlamaWeights.from_folder(folder, dtype), result


def _prepare(folder: Path, device: str, dtype: torch.dtype) -> ChatTokenizer | str:
    """Every check that needs no weights; the tokenizer (it is checked against its own tokenizer.json)."""
    from gptoss_space.backends.local.runners.llama_runner import supports

    if device != "cpu":
        return f"device {device}"
    if not (folder / "config.json").is_file():
        return "no config.json"
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") != "llama" or raw.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        return f"model type {raw.get('model_type')!r}"
    if raw.get("quantization_config"):
        return "quantized weights"
    if not supports(LlamaWeights(llama_config(raw), {}, dtype)):
        return "a Llama variant the lean runner does not reproduce (or a dtype other than bfloat16/float32)"
    if not all(f.is_file() for f in weight_files(folder)):
        return "no safetensors weights"
    reason = unsupported_reason(folder)
    if reason:
        return reason
    tokenizer = ChatTokenizer(folder)
    return tokenizer.unsupported_reason() or tokenizer
