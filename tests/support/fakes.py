"""A scripted backend: a real Backend object whose answers a test queues with enqueue()."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from gptoss_space.backends.base import Backend, Delta, GenerationRequest


@dataclass
class Script:
    pieces: list = field(default_factory=list)  # str (content), Delta, or an Exception to raise
    finish_reason: str = "stop"
    delay: float = 0.0  # seconds before each piece
    prompt_tokens: int = 5


class ScriptedBackend(Backend):
    """Answers with queued scripts (or echoes the last user message) and records what it was asked."""

    kind = "scripted"

    def __init__(self, model_id: str = "scripted-model", ready: bool = True):
        self.model_id = model_id
        self.ready = ready
        self.native_date = False
        self.scripts: deque[Script] = deque()
        self.requests: list[GenerationRequest] = []
        self.started = self.finished = self.cancelled = 0
        self.running = 0
        self.max_running = 0

    def enqueue(self, *pieces, finish_reason: str = "stop", delay: float = 0.0, prompt_tokens: int = 5) -> None:
        self.scripts.append(Script(list(pieces), finish_reason, delay, prompt_tokens))

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def health(self) -> dict:
        return {"backend": "scripted", "model_loaded": self.model_id}

    async def stream(self, req: GenerationRequest):
        self.requests.append(req)
        script = self.scripts.popleft() if self.scripts else Script([f"echo: {req.messages[-1]['content']}"])
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        done = False
        try:
            count = 0
            for piece in script.pieces:
                if script.delay:
                    await asyncio.sleep(script.delay)
                if isinstance(piece, BaseException):
                    raise piece
                yield piece if isinstance(piece, Delta) else Delta(content=piece)
                count += 1
            done = True
            self.finished += 1
            yield Delta(finish_reason=script.finish_reason, prompt_tokens=script.prompt_tokens, completion_tokens=count)
        finally:
            self.running -= 1
            if not done:
                self.cancelled += 1
