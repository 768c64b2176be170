"""Hermes-style tool calls in streamed text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` -> call pieces.

The convention of Hermes, Qwen 2.5/3 and SmolLM3 templates, and of tool_prompt.py's block for
templates without tools. Text outside the tags stays content; whitespace around a call is dropped.
Each call streams as OpenAI streams one: a first piece with its index, a fresh `call_...` id, the
type and the function name (arguments ""), then the arguments' JSON text in pieces as it arrives
(held back only where it could be the closing `}` of the call object or the closing tag). A call
written with "arguments" before "name" is read whole at its closing tag. A `<tool_call>` whose
body is not a call object is given back as content, tags included (vLLM's hermes parser does the
same). An answer cut off inside a call (max_tokens) keeps the arguments read so far.
"""

from __future__ import annotations

import json
import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\{)')


def new_call_id() -> str:
    """OpenAI's form: "call_" and 24 characters."""
    return "call_" + uuid.uuid4().hex[:24]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class HermesToolParser:
    """feed() text pieces in order, finish() once; each returns (content, tool call pieces)."""

    def __init__(self, *, parallel: bool = True):
        self.parallel = parallel
        self.calls = 0  # calls started
        self.done = False  # parallel_tool_calls false and one call complete: the rest is dropped
        self._buf = ""  # text not yet given out
        self._in_call = False
        self._head_sent = False
        self._after_call = False
        self._space = ""

    @property
    def called(self) -> bool:
        return self.calls > 0

    def feed(self, text: str) -> tuple[str, list[dict]]:
        if self.done:
            return "", []
        self._buf += text
        content, pieces = [], []
        while not self.done:
            if not self._in_call:
                if self._after_call:
                    self._buf = self._buf.lstrip()
                    if not self._buf:
                        break
                    self._after_call = False
                at = self._buf.find(OPEN)
                if at < 0:
                    # Hold a tail that may start a tag, and trailing whitespace (it goes if a call follows).
                    keep = _partial_suffix(self._buf, OPEN)
                    head = self._buf[: len(self._buf) - keep]
                    safe = head.rstrip()
                    content.append(safe)
                    self._buf = self._buf[len(safe):]
                    break
                before = self._buf[:at]
                content.append(before.rstrip())
                self._space = before[len(before.rstrip()):]  # given back if this is not a call after all
                self._buf = self._buf[at + len(OPEN):]
                self._in_call, self._head_sent = True, False
                continue
            if not self._step_call(content, pieces):
                break
        return "".join(content), pieces

    def _step_call(self, content: list[str], pieces: list[dict]) -> bool:
        """Progress inside a call; True when the call ended (the loop goes on with the text after it)."""
        if not self._head_sent:
            m = _HEAD.match(self._buf)
            if m:
                try:
                    name = json.loads(f'"{m.group(1)}"')
                except ValueError:
                    name = None
                if name:
                    pieces.append(self._head(name))
                    self._buf = self._buf[m.end():]
                    self._head_sent = True
        end = self._buf.find(CLOSE)
        if not self._head_sent:
            if end < 0:
                return False
            body, self._buf = self._buf[:end], self._buf[end + len(CLOSE):]
            if self._whole(body, content, pieces):
                self._end_call()
            else:
                self._in_call = False
            return True
        if end < 0:
            # Hold back from the last "}" (maybe the call object's own) and a partial closing tag.
            text = self._buf
            cut = text.rfind("}")
            if cut < 0:
                cut = len(text) - _partial_suffix(text, CLOSE)
            if cut > 0:
                pieces.append(self._args(text[:cut]))
                self._buf = text[cut:]
            return False
        tail, self._buf = self._buf[:end].rstrip(), self._buf[end + len(CLOSE):]
        if tail.endswith("}"):
            tail = tail[:-1].rstrip()
        if tail:
            pieces.append(self._args(tail))
        self._end_call()
        return True

    def _whole(self, body: str, content: list[str], pieces: list[dict]) -> bool:
        """A call read at its closing tag (True), or the text given back as content when it is not one."""
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str) or not name:
            content.append(self._space + OPEN + body + CLOSE)
            return False
        arguments = call.get("arguments", call.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        pieces.append(self._head(name))
        if text:
            pieces.append(self._args(text))
        return True

    def _head(self, name: str) -> dict:
        self.calls += 1
        return {"index": self.calls - 1, "id": new_call_id(), "type": "function", "function": {"name": name, "arguments": ""}}

    def _args(self, text: str) -> dict:
        return {"index": self.calls - 1, "function": {"arguments": text}}

    def _end_call(self) -> None:
        self._in_call = False
        self._after_call = True
        if not self.parallel and self.calls:
            self.done = True

    def finish(self) -> tuple[str, list[dict]]:
        """The end of the answer: whatever is held goes out (an unfinished call keeps its arguments so far)."""
        if self.done:
            return "", []
        buf, self._buf = self._buf, ""
        if not self._in_call:
            return ("" if self.called and not buf.strip() else buf), []
        if self._head_sent:
            return "", [self._args(buf)] if buf else []
        return self._space + OPEN + buf, []
