"""A Llama checkpoint as plain tensors and a config: what llama_runner's runner reads, from transformers or from disk.

`LlamaWeights.from_model` wraps a loaded transformers LlamaForCausalLM (its tensors, not copies);
`LlamaWeights.from_folder` reads a saved checkpoint (config.json + safetensors) without
importing transformers, applying LlamaConfig's defaults and rope standardization. The rope
tables are computed here for the rope types the lean runner supports (default, linear, llama3)
exactly as transformers' LlamaRotaryEmbedding computes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch

# LlamaConfig's defaults for the fields the runner and the backend read (transformers 5).
LLAMA_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
    pad_token_id=None, bos_token_id=1, eos_token_id=2, pretraining_tp=1, tie_word_embeddings=False,
    rope_parameters=None, attention_bias=False, mlp_bias=False,
)
ROPE_TYPES = ("default", "linear", "llama3")  # fixed tables (dynamic NTK changes with the length)
_DEFAULT_THETA = 10_000.0


def llama_config(raw: dict) -> SimpleNamespace:
    """config.json as LlamaConfig would read it: defaults filled in, rope_scaling/rope_theta moved into rope_parameters."""
    cfg = {**LLAMA_DEFAULTS, **raw}
    if cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if cfg["num_key_value_heads"] is None:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    rope = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    rope.setdefault("rope_theta", raw.get("rope_theta", _DEFAULT_THETA))
    if raw.get("partial_rotary_factor") is not None:
        rope.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    rope.setdefault("rope_type", rope.get("type", "default"))
    if rope["rope_type"] in ("llama3", "yarn", "longrope"):
        if "original_max_position_embeddings" in raw:  # transformers lets the top-level value win
            rope["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
        else:
            rope.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
    cfg["rope_parameters"] = rope
    return SimpleNamespace(**cfg)


def config_supported(cfg) -> bool:
    """The Llama variants whose forward llama_runner reproduces exactly."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (
        getattr(cfg, "hidden_act", "") == "silu"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and (getattr(cfg, "pretraining_tp", 1) or 1) == 1
        and rope.get("rope_type", "default") in ROPE_TYPES
        and rope.get("partial_rotary_factor", 1.0) == 1.0
    )


def rope_inv_freq(cfg) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling, as transformers' rope init functions compute them."""
    rope = cfg.rope_parameters
    kind = rope.get("rope_type", "default")
    base = rope["rope_theta"]
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if kind == "default":
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    factor = rope["factor"]
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind != "llama3":
        raise ValueError(f"rope type {kind!r} is not supported")
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_freq_llama), 1.0


def rope_cos_sin(inv_freq: torch.Tensor, scaling: float, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, head_dim] for positions 0..length-1: LlamaRotaryEmbedding.forward's arithmetic."""
    positions = torch.arange(length)[None]
    freqs = positions[..., None].float() * inv_freq.to(dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype)[0], (emb.sin() * scaling).to(dtype)[0]


class LlamaWeights:
    """Tensors by their transformers names ("model.layers.0.self_attn.q_proj.weight", ...), config, dtype, rope."""

    def __init__(self, config, tensors: dict[str, torch.Tensor], dtype: torch.dtype, *, generation_config=None,
                 inv_freq: torch.Tensor | None = None, attention_scaling: float = 1.0):
        self.config = config
        self.tensors = tensors
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.generation_config = generation_config or SimpleNamespace(eos_token_id=getattr(config, "eos_token_id", None))
        self.inv_freq, self.attention_scaling = inv_freq, attention_scaling  # None: from the config, when asked

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def lm_head(self) -> torch.Tensor:
        return self.tensors.get("lm_head.weight", self.tensors["model.embed_tokens.weight"])

    def rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [length, head_dim] in the weights' dtype."""
        if self.inv_freq is None:
            self.inv_freq, self.attention_scaling = rope_inv_freq(self.config)
        return rope_cos_sin(self.inv_freq, self.attention_scaling, length, self.dtype)

    @classmethod
    def from_model(cls, model) -> LlamaWeights:
        """A transformers LlamaForCausalLM's own tensors, and the inverse frequencies its forward uses.

        The model's inv_freq buffer, not one computed from the config: `model.to(bfloat16)` rounds
        that buffer too, and the runner must reproduce the model it was given.
        """
        tensors = dict(model.state_dict())
        tensors["lm_head.weight"] = model.lm_head.weight.detach()
        rotary = model.model.rotary_emb
        dtype = next(model.parameters()).dtype
        return cls(model.config, tensors, dtype, generation_config=getattr(model, "generation_config", None),
                   inv_freq=rotary.inv_freq, attention_scaling=rotary.attention_scaling)

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype) -> LlamaWeights:
        """config.json (+ generation_config.json) and the safetensors weights, cast to `dtype`, on the CPU."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = llama_config(json.loads((folder / "config.json").read_text()))
        tensors: dict[str, torch.Tensor] = {}
        for file in weight_files(folder):
            for name, t in load_file(file).items():
                tensors[name] = t if t.dtype == dtype else t.to(dtype)
        missing = [n for n in expected_names(config) if n not in tensors]
        if missing:
            raise ValueError(f"{folder} lacks {len(missing)} weights the model needs, e.g. {missing[0]}")
        if config.tie_word_embeddings:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        gen = None
        if (folder / "generation_config.json").is_file():
            gen = SimpleNamespace(**json.loads((folder / "generation_config.json").read_text()))
        return cls(config, tensors, dtype, generation_config=gen)


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index lists."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / "model.safetensors"]


def expected_names(cfg) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    return names
