"""The Backend protocol and make_backend(settings), with lazy imports (no torch in proxy mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass
class GenerationRequest:
    """What a backend generates from: composed messages and resolved sampling parameters."""

    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}], system prompt already composed
    max_tokens: int | None  # None: until the model stops, the context is full, or the server cap
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.9
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    reasoning_effort: str | None = None
    now: datetime | None = None  # the injected date, for formats that carry it themselves (harmony)
    inject_datetime: bool = True


@dataclass
class Delta:
    """A piece of the answer. The last one carries finish_reason and the token counts."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend(Protocol):
    kind: str  # "local" | "proxy"
    model_id: str  # what is loaded or fronted
    ready: bool

    async def start(self) -> None:
        """Load the model or open the client. Called once in the lifespan."""

    async def close(self) -> None:
        """Free everything; called once at shutdown."""

    def health(self) -> dict:
        """Backend facts for GET /api: never a secret."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate. Raises errors.APIError subclasses; closing the iterator cancels generation."""


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "proxy":
        from .proxy import ProxyBackend

        return ProxyBackend(settings)
    from .local import LocalBackend

    return LocalBackend(settings)
