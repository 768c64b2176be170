"""response_format as OpenAI defines it (text, json_object, json_schema), and the grammar each asks for.

Every fault is reported as the field 'response_format', the sub-field named in the message; a
schema the grammar engine cannot compile is refused here too, before the request queues.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gptoss_space.errors import InvalidRequest


class JSONSchemaSpec(BaseModel):
    """response_format.json_schema, as OpenAI defines it. `strict` is accepted; the schema is always enforced."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=False)
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict = Field(alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["json_object"]


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]
_RESPONSE_FORMAT = TypeAdapter(ResponseFormat)


def _format_error(e: ValidationError) -> str:
    """One sub-error of response_format as 'json_schema.name: ...' (the union's tag left out of the path)."""
    err = e.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in ("text", "json_object", "json_schema") and len(loc) > 1:
        loc = loc[1:]  # the discriminator's branch name
    where = ".".join(loc)
    msg = err["msg"]
    if err["type"] == "union_tag_invalid":
        msg = "'type' must be one of 'text', 'json_object', 'json_schema'"
    elif err["type"] == "union_tag_not_found":
        msg = "'type' is required ('text', 'json_object' or 'json_schema')"
    return f"{where}: {msg}" if where else msg


def parse_response_format(v: Any) -> Any:
    """A ChatRequest field validator's body: the parsed format, or ValueError saying what is wrong."""
    if v is None:
        return v
    if not isinstance(v, dict):
        raise ValueError("must be an object such as {\"type\": \"json_object\"}")
    try:
        return _RESPONSE_FORMAT.validate_python(v)
    except ValidationError as e:
        raise ValueError(_format_error(e)) from None


def format_grammar(fmt: TextFormat | JSONObjectFormat | JSONSchemaFormat | None) -> str | None:
    """The grammar (llguidance Lark text) a format asks for, compile-checked; None for free text.

    Raises InvalidRequest naming response_format when the schema cannot compile. A grammar over
    grammar.INLINE_CHECK_CHARS is left to the backend, which compiles it off the event loop anyway.
    """
    from gptoss_space.backends.local import grammar as g

    if fmt is None or fmt.type == "text":
        return None
    text = g.json_object_grammar() if fmt.type == "json_object" else g.json_schema_grammar(fmt.json_schema.schema_)
    if len(text) <= g.INLINE_CHECK_CHARS:
        try:
            g.compile_check(text)
        except g.GrammarError as e:
            raise InvalidRequest(f"Invalid 'response_format': {e}", param="response_format") from None
    return text
