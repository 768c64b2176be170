"""Tiny gpt-oss checkpoints built offline: a random one, and one whose greedy output is a fixed harmony script."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

HARMONY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    "<|call|>",
    "<|constrain|>",
]
SCRIPT_REASONING = "Cogitating about the greeting."
SCRIPT_CONTENT = "Hello from gpt-oss!"
# What the scripted model writes after a prompt ending in <|start|>assistant, then it stops.
SCRIPTED_OUTPUT = (
    f"<|channel|>analysis<|message|>{SCRIPT_REASONING}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{SCRIPT_CONTENT}<|return|>"
)

_CORPUS = [
    "You are ChatGPT, a large language model trained by OpenAI.",
    "Knowledge cutoff: 2024-06\nCurrent date: 2026-01-31\n\nReasoning: medium",
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.",
    "# Instructions\n\nYou are a helpful assistant. Answer briefly.",
    "Hello! How are you today? What is the capital of France? Paris is the capital.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > | _ ~",
    "café naïve Ünïcødé Привет мир 思考 你好 🤔 👋 ✅",
]
# Whole words in the vocabulary, so the script is a short chain of distinct tokens.
_WORDS = ["system", "developer", "user", "assistant", "analysis", "commentary", "final", "json"]


def build_tokenizer():
    """A byte-level BPE tokenizer trained here (~400 tokens) with the harmony special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=HARMONY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    script_lines = [SCRIPT_REASONING, SCRIPT_CONTENT] * 30 + _WORDS * 30
    tok.train_from_iterator(_CORPUS * 3 + script_lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|return|>", pad_token="<|endoftext|>", unk_token=None
    )


def tiny_config(vocab_size: int, **overrides):
    from transformers import GptOssConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=128,
        max_position_embeddings=4096,
    )
    kwargs.update(overrides)
    return GptOssConfig(**kwargs)


def build_tiny_gpt_oss(directory: str | Path, *, scripted: bool = False, seed: int = 0) -> Path:
    """Saves a tiny gpt-oss model + tokenizer into `directory` (from_pretrained loads it); returns it.

    scripted=False: random weights (garbage text, any markup). scripted=True: weights crafted so
    that greedy decoding after any harmony prompt (ending `<|start|>assistant`) writes exactly
    SCRIPTED_OUTPUT and stops at `<|return|>`, whatever the sampling settings in practice.
    """
    import torch
    from transformers import GenerationConfig, GptOssForCausalLM

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in HARMONY_SPECIAL_TOKENS}
    config = tiny_config(
        len(tokenizer),
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|return|>"], ids["<|call|>"], ids["<|endoftext|>"]],
    )
    model = GptOssForCausalLM(config).eval()
    if scripted:
        _script(model, tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _script(model, tokenizer) -> None:
    """Crafts the weights so the next token depends on the current token and one flag.

    Every layer is silenced (zero attention and expert outputs) except one attention head that
    raises a flag dimension once the first reasoning token is in the context: its query is a
    constant, its key is non-zero only for that token, both in the lowest RoPE frequency pair so
    the match ignores positions; the sink soaks up the attention when the token is absent. The
    token embeddings are one-hot, and lm_head maps (token, flag) to the next script token: the
    two tokens whose successor differs between the analysis and the final message
    (<|channel|> and <|message|>) read the flag.
    """
    import torch

    prompt_end = tokenizer("<|start|>assistant", add_special_tokens=False)["input_ids"]
    script = tokenizer(SCRIPTED_OUTPUT, add_special_tokens=False)["input_ids"]
    chain = [prompt_end[-1], *script]
    message_id = tokenizer.convert_tokens_to_ids("<|message|>")
    flag_token = script[script.index(message_id) + 1]

    transitions: dict[tuple[int, bool], int] = {}
    flag = False
    for cur, nxt in zip(chain, chain[1:]):
        flag = flag or cur == flag_token
        if transitions.setdefault((cur, flag), nxt) != nxt:
            raise ValueError("the script needs more context than (token, flag)")
    flagged_targets = {nxt for (_, flagged), nxt in transitions.items() if flagged}
    tokens = sorted({t for t, _ in transitions})
    hidden = model.config.hidden_size
    flag_dim = hidden - 1
    if len(tokens) >= flag_dim:
        raise ValueError("script too long for the hidden size")
    slot = {t: i for i, t in enumerate(tokens)}

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
        emb = model.model.embed_tokens.weight
        for t, i in slot.items():
            emb[t, i] = 1.0

        # The flag head: layer 1 (full attention), query head 0 over kv head 0.
        attn = model.model.layers[1].self_attn
        hd = attn.head_dim
        low = hd // 2 - 1  # lowest RoPE frequency: the rotation is ~0 at any practical distance
        attn.q_proj.bias[low] = 10.0
        attn.k_proj.weight[low, slot[flag_token]] = 10.0
        attn.v_proj.weight[0, slot[flag_token]] = 1.0 / 8.0  # the normed one-hot is 8 (sqrt(64))
        attn.o_proj.weight[flag_dim, 0] = 1.0

        head = model.lm_head.weight
        strength = 10.0
        for (cur, flagged), nxt in transitions.items():
            other = transitions.get((cur, not flagged))
            if other is None or other == nxt:
                head[nxt, slot[cur]] = strength
            elif not flagged:
                if nxt in flagged_targets:
                    raise ValueError("a token needed after the flag would be silenced by it")
                head[nxt, slot[cur]] = strength  # before the flag: the stronger reading
                head[nxt, flag_dim] = -strength  # ... and silenced once the flag is up
            else:
                head[nxt, slot[cur]] = strength / 2
    log.debug("scripted %d transitions over %d tokens", len(transitions), len(tokens))
