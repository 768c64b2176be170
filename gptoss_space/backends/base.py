"""What a backend is: the request it generates from, the deltas it yields, and the protocol callers use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass
class GenerationRequest:
    """What a backend generates from: composed messages and resolved sampling parameters."""

    # [{"role": "system"|"user"|"assistant"|"tool", "content": str}], system prompt already composed; an assistant
    # message may add "tool_calls" (OpenAI's shape, arguments a JSON string), a tool message "tool_call_id".
    messages: list[dict]
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
    # OpenAI function tools offered to the model ([{"type": "function", "function": {"name", "description",
    # "parameters"}}]); empty: none offered (also when the client said tool_choice "none").
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict | None = None  # "auto" | "required" | {"type": "function", "function": {"name"}} | None
    parallel_tool_calls: bool = True  # False: at most one call in the answer
    # Constrained decoding (local backend): llguidance Lark text, which may embed JSON schemas (`%json {...}`);
    # see backends/local/grammar.py. None: free text.
    grammar: str | None = None
    # The client's response_format as it sent it, for a proxy to forward unchanged; None when absent.
    response_format: dict | None = None
    logprobs: bool = False  # each answer token's logprob on the Deltas
    top_logprobs: int = 0  # and this many most likely alternatives (0..20), with logprobs


@dataclass
class Delta:
    """A piece of the answer. The last one carries finish_reason and the token counts."""

    content: str = ""
    reasoning: str = ""
    # Pieces of tool calls as OpenAI streams them: the first piece of a call {"index", "id", "type": "function",
    # "function": {"name", "arguments": ""}}, later ones {"index", "function": {"arguments": "<more JSON text>"}}.
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # With GenerationRequest.logprobs: OpenAI's entries for the tokens of this piece, each
    # {"token": str, "logprob": float, "bytes": list[int] | None, "top_logprobs": [{"token", "logprob", "bytes"}, ...]};
    # [] on the last Delta (the marker that they were asked for). None: not asked.
    logprobs: list[dict] | None = None


class Backend(Protocol):
    """What the service, the routes and the page use of a backend; implementations subclass it for the defaults."""

    kind: str  # "local" | "proxy"
    model_id: str  # what is loaded or fronted
    ready: bool
    # The prompt format carries the date itself (harmony's "Current date:"): none is added to the system text.
    native_date: bool = False
    # A gpt-oss (harmony) model: reasoning effort changes what it does.
    harmony: bool = False

    async def start(self) -> None:
        """Load the model or open the client. Called once in the lifespan."""

    async def close(self) -> None:
        """Free everything; called once at shutdown."""

    def health(self) -> dict:
        """Backend facts for GET /api: never a secret."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate. Raises errors.APIError subclasses; closing the iterator cancels generation."""

    async def check(self) -> None:
        """Refresh what health() reports (the proxy probes its upstream); most backends know it already."""
