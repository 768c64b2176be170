"""The Parameters tab: sampling sliders, system prompt and switches; ranges and defaults come from Settings."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import gradio as gr
from annotated_types import Ge, Gt, Le, Lt

from gptoss_space.errors import InvalidRequest
from gptoss_space.prompting import PromptOptions
from gptoss_space.protocol.request import ChatMessage, ChatRequest
from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

EFFORTS = ["low", "medium", "high"]
DEFAULT_EFFORT = "medium"


def field_range(name: str) -> tuple[float, float, bool]:
    """(low, high, low_is_exclusive) of a Settings field, read from its pydantic bounds."""
    lo, hi, exclusive = float("-inf"), float("inf"), False
    for m in Settings.model_fields[name].metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo, exclusive = m.gt, True
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi = m.lt
    return lo, hi, exclusive


def _number(name: str, value) -> float:
    """A finite number from a widget's value: an int, a float or a short numeric string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (isinstance(value, str) and len(value) > 32):
        raise InvalidRequest(f"Invalid '{name}': must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise InvalidRequest(f"Invalid '{name}': must be a number") from None
    if not math.isfinite(number):
        raise InvalidRequest(f"Invalid '{name}': must be a finite number")
    return number


@dataclass(frozen=True)
class ChatParams:
    """One turn's settings as the page sends them; turned into the same ChatRequest /api builds."""

    temperature: float
    top_p: float
    max_tokens: int = -1
    system_prompt: str = ""
    inject_datetime: bool = True
    reasoning_effort: str = DEFAULT_EFFORT

    @classmethod
    def defaults(cls, settings: Settings) -> ChatParams:
        return cls(
            temperature=settings.default_temperature,
            top_p=settings.default_top_p,
            system_prompt=settings.system_prompt if settings.inject_system_prompt else "",
            inject_datetime=settings.inject_datetime,
        )

    @classmethod
    def from_values(cls, temperature, top_p, max_tokens, system_prompt, inject_datetime, effort) -> ChatParams:
        """From the widgets' values (or a caller's), forgiving: a max tokens of 0 or less means 'as many as allowed'.

        Anything that is not a finite number where one belongs, or text where text belongs, is an
        InvalidRequest (400), never a ValueError from float() or int() (a 500 through Gradio).
        """
        mt = -1 if max_tokens is None else int(_number("max_tokens", max_tokens))
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidRequest("Invalid 'system_prompt': must be text")
        return cls(
            temperature=_number("temperature", temperature),
            top_p=_number("top_p", top_p),
            max_tokens=mt if mt > 0 else -1,
            system_prompt=system_prompt or "",
            inject_datetime=bool(inject_datetime),
            reasoning_effort=effort if effort in EFFORTS else DEFAULT_EFFORT,
        )

    def chat_request(self, messages: list[ChatMessage]) -> ChatRequest:
        return ChatRequest(
            messages=messages,
            stream=True,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            # The default is left unsaid: gpt-oss assumes it, and upstreams that do not reason may refuse the field.
            reasoning_effort=None if self.reasoning_effort == DEFAULT_EFFORT else self.reasoning_effort,
        )

    def prompt_options(self) -> PromptOptions:
        prompt = self.system_prompt.strip()
        return PromptOptions(system_prompt=prompt, inject_system_prompt=bool(prompt), inject_datetime=self.inject_datetime)


@dataclass
class ParameterControls:
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    system_prompt: gr.Textbox
    inject_datetime: gr.Checkbox
    reasoning_effort: gr.Radio

    def inputs(self) -> list[gr.components.Component]:
        """In ChatParams.from_values order."""
        return [self.temperature, self.top_p, self.max_tokens, self.system_prompt, self.inject_datetime, self.reasoning_effort]


def _step(lo: float, hi: float) -> float:
    return 0.01 if hi - lo <= 2 else 1


def build_parameters(settings: Settings) -> ParameterControls:
    """Render the controls into the current Blocks context."""
    d = ChatParams.defaults(settings)
    t_lo, t_hi, _ = field_range("default_temperature")
    p_lo, p_hi, p_open = field_range("default_top_p")
    cap = settings.max_tokens_cap
    gr.Markdown(
        "These settings apply to your next message in the **Chat** tab. The API takes the same "
        "fields per request; the ranges here are the ones the server accepts.",
        elem_classes=["gs-note"],
    )
    with gr.Row():
        temperature = gr.Slider(
            t_lo, t_hi, value=d.temperature, step=_step(t_lo, t_hi), label="Temperature",
            info=f"0 is deterministic (greedy); higher is more varied. Default {d.temperature:g}.",
            elem_id="param-temperature", min_width=280,
        )
        top_p = gr.Slider(
            p_lo + 0.01 if p_open else p_lo, p_hi, value=d.top_p, step=0.01, label="Top p",
            info=f"Nucleus sampling: the smallest set of tokens whose probability adds up to p. Default {d.top_p:g}.",
            elem_id="param-top-p", min_width=280,
        )
    max_tokens = gr.Slider(
        -1, cap, value=-1, step=1, label="Max tokens",
        info=f"-1 = unlimited (up to this server's cap of {cap} tokens).",
        elem_id="param-max-tokens",
    )
    system_prompt = gr.Textbox(
        value=d.system_prompt, lines=3, max_lines=10, label="System prompt",
        placeholder="Empty: no system prompt", elem_id="param-system-prompt",
    )
    inject_datetime = gr.Checkbox(
        value=d.inject_datetime, label="Tell the model the current date and time (UTC)", elem_id="param-datetime",
    )
    reasoning_effort = gr.Radio(
        EFFORTS, value=DEFAULT_EFFORT, label="Reasoning effort", info=effort_note(None),
        elem_id="param-effort",
    )
    reset = gr.Button("Reset to defaults", variant="secondary", size="sm")
    controls = ParameterControls(temperature, top_p, max_tokens, system_prompt, inject_datetime, reasoning_effort)
    reset.click(
        lambda: [d.temperature, d.top_p, -1, d.system_prompt, d.inject_datetime, DEFAULT_EFFORT],
        None, controls.inputs(), queue=False, api_visibility="private",
    )
    return controls


def effort_note(backend) -> str:
    """What reasoning effort does with this backend (known once the model has loaded)."""
    if backend is None:
        return "Used by gpt-oss (harmony) models; other models ignore it."
    if backend.harmony:
        return "This model is a gpt-oss (harmony) model: higher effort thinks longer before answering."
    if backend.kind == "proxy":
        return "Passed to the upstream server; reasoning models use it, others ignore it."
    return "This model does not reason, so it ignores this setting (gpt-oss models use it)."
