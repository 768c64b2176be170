"""A tokenizer without transformers: tokenizer.json through `tokenizers`, the chat template through jinja2.

It covers exactly what the app asks of a tokenizer (the chat template, encoding without special
tokens, decoding, special-token ids) for folders whose tokenizer transformers itself would only
wrap (`TokenizersBackend` / `PreTrainedTokenizerFast` over tokenizer.json), and renders templates
as transformers' `apply_chat_template` does (utils/chat_template_utils.py): the same sandboxed
environment, options, filters, globals and template variables. Importing transformers costs
seconds at start-up; this costs milliseconds.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): the variables a template sees.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
WRAPPER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_MISTRAL_PATCH_VOCAB = 100_000  # above this transformers may patch the pre-tokenizer's regex


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        return value.get("content")
    return value


def unsupported_reason(folder: str | Path) -> str | None:
    """Why ChatTokenizer cannot stand in for AutoTokenizer on this folder (from its files alone), or None."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return "no tokenizer.json/tokenizer_config.json"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") not in WRAPPER_CLASSES:
        return f"tokenizer class {config.get('tokenizer_class')!r}"
    if (folder / "additional_chat_templates").exists() or not isinstance(_template(folder, config), str):
        return "no single chat template"
    return None


def _template(folder: Path, config: dict):
    file = folder / "chat_template.jinja"  # transformers 5 saves it beside tokenizer_config.json; it wins
    return file.read_text(encoding="utf-8") if file.is_file() else config.get("chat_template")


class ChatTokenizer:
    """The slice of transformers' tokenizer interface the app uses, over a `tokenizers.Tokenizer`."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._config = config = json.loads((folder / "tokenizer_config.json").read_text())
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
        self.chat_template: str = _template(folder, config)
        self.special_tokens_map = {n: _token_text(config[n]) for n in SPECIAL_TOKENS if _token_text(config.get(n)) is not None}
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.name_or_path = str(folder)
        # The Rust decode itself: what textstream.IncrementalDecoder calls per token.
        self.backend_decode = self._tokenizer.decode
        # transformers' name for the `tokenizers.Tokenizer` underneath (grammar.py reads its JSON).
        self.backend_tokenizer = self._tokenizer

    def unsupported_reason(self) -> str | None:
        """Why this tokenizer would differ from transformers' wrapper of the same tokenizer.json, or None."""
        if self._tokenizer.get_vocab_size(with_added_tokens=False) > _MISTRAL_PATCH_VOCAB:
            return "large vocabulary"
        added = {t.content: t for t in self._tokenizer.get_added_tokens_decoder().values()}
        for name, text in self.special_tokens_map.items():
            if text not in added or not added[text].special:
                return f"{name} {text!r} is not a special token of tokenizer.json"  # transformers would add it
        for key in ("added_tokens_decoder", "extra_special_tokens", "additional_special_tokens"):
            values = self._config.get(key) or {}
            for value in values.values() if isinstance(values, dict) else values:
                text = _token_text(value)
                if text not in added or (isinstance(value, dict) and value.get("special", True) != added[text].special):
                    return f"{key} entry {text!r} differs from tokenizer.json"
        return None

    def __getattr__(self, name: str):
        # bos_token_id, eos_token_id, pad_token_id, ... and bos_token, eos_token, ...
        if name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_TOKENS:
            text = self.__dict__.get("special_tokens_map", {}).get(name[: -len("_id")])
            return None if text is None else self.convert_tokens_to_ids(text)
        if name in SPECIAL_TOKENS:
            return self.__dict__.get("special_tokens_map", {}).get(name)
        raise AttributeError(name)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        if isinstance(tokens, str):
            tid = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if tid is None else tid
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if isinstance(ids, int):
            ids = [ids]
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        # transformers skips the clean-up for BPE models (it strips real spaces before punctuation).
        if clean and type(self._tokenizer.model).__name__ != "BPE":
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def apply_chat_template(self, conversation: list[dict], *, add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = False, sanitize_control_tokens: bool = False,
                            **kwargs):
        """One conversation rendered as transformers renders it; ids (add_special_tokens=False) when `tokenize`.

        sanitize_control_tokens: as transformers does it, the control tokens found in the client's strings
        (every special added token, and the added tokens written in the template's literal text) are
        wrapped in private markers before rendering and encoded as plain text afterwards.
        """
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        chat = [{k: v for k, v in message.items() if v is not None} for message in conversation]
        chat = json.loads(json.dumps(chat))  # plain JSON data, a fresh copy
        kwargs = json.loads(json.dumps(kwargs))
        if sanitize_control_tokens:
            if not tokenize:
                raise ValueError("`sanitize_control_tokens=True` requires `tokenize=True`.")
            pattern, _ = _control_patterns(self._control_tokens())
            chat, kwargs = _mark(chat, pattern), _mark(kwargs, pattern)
        tools = kwargs.pop("tools", None) or None  # OpenAI function tools, as transformers passes dicts through
        documents = kwargs.pop("documents", None) or None
        variables = {**self.special_tokens_map, **kwargs}
        text = compile_template(self.chat_template).render(
            messages=[_alias_reasoning(m) for m in chat], tools=tools, documents=documents,
            add_generation_prompt=add_generation_prompt, **variables
        )
        if not tokenize:
            return text
        ids = self._encode_marked(text) if sanitize_control_tokens else self.encode(text, add_special_tokens=False)
        return {"input_ids": ids} if return_dict else ids

    # -- control tokens (transformers' utils/chat_template_utils.py: mark_control_tokens, encode_marked_chat) --

    def _control_tokens(self) -> tuple[str, ...]:
        added = self._tokenizer.get_added_tokens_decoder().values()
        listed = self._config.get("chat_control_tokens")
        if listed is not None:
            return tuple(t.content for t in added if t.special or t.content in set(listed))
        literal = _template_literal_text(self.chat_template)
        return tuple(t.content for t in added if t.special or (t.content in literal and not t.content.isspace()))

    def _encode_without_added_tokens(self, text: str) -> list[int]:
        backend = self._tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [text] if backend.pre_tokenizer is None else [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        return [token.id for split in splits for token in backend.model.tokenize(split)]

    def _encode_marked(self, chat: str) -> list[int]:
        added = tuple(t.content for t in self._tokenizer.get_added_tokens_decoder().values())
        _, markers = _control_patterns(added)
        pieces = markers.split(chat)
        newline = self.encode("\n", add_special_tokens=False)
        ids = self.encode(pieces[0], add_special_tokens=False)
        for i, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = i % 2 == 1  # odd pieces are the client's control tokens
            encode = self._encode_without_added_tokens if as_text else (lambda t: self.encode(t, add_special_tokens=False))
            piece_ids = encode("\n" + piece)  # after a newline, as transformers does (SentencePiece's prefix space)
            piece_ids = piece_ids[len(newline):] if piece_ids[: len(newline)] == newline else encode(piece)
            if as_text and self.convert_tokens_to_ids(piece) in piece_ids:
                raise ValueError(f"Can't sanitize {piece!r}: the tokenizer produces it from plain text")
            ids += piece_ids
        return ids


_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"  # transformers' private-use markers


@lru_cache
def _control_patterns(tokens: tuple[str, ...]):
    """(any control token, a marked control token or a lone marker); longer tokens first."""
    import re

    any_token = re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)")
    return any_token, re.compile(f"{_MARK_START}({any_token.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]")


def _mark(obj, pattern):
    if isinstance(obj, str):
        obj = obj.replace(_MARK_START, "").replace(_MARK_END, "")  # no forged markers
        return pattern.sub(f"{_MARK_START}\\g<0>{_MARK_END}", obj)
    if isinstance(obj, dict):
        return {k: _mark(v, pattern) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark(v, pattern) for v in obj]
    return obj


@lru_cache
def _template_literal_text(source: str) -> str:
    """The template's raw text and string constants, joined by NULs (no match across two of them)."""
    import jinja2.nodes

    ast = compile_template(source).environment.parse(source)
    literals = {n.data for n in ast.find_all(jinja2.nodes.TemplateData)}
    literals |= {n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
    return "\0".join(literals)


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


@lru_cache
def compile_template(source: str):
    """transformers' template environment: sandboxed, trim/lstrip blocks, loop controls, {% generation %}."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # transformers tracks assistant spans with {% generation %}; when not asked to, the body renders as is.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)
