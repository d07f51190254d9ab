"""The spec: how every row of a table becomes one request, written once per pipeline."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from batch_pipelines.profiles import CHAT_COMPLETIONS, GENERATE_CONTENT, MESSAGES, RESPONSES, TEXT_ENDPOINTS
from batch_pipelines.requests.media import MediaPart
from batch_pipelines.requests.schema import strict_json_schema
from batch_pipelines.requests.templates import Placeholder, parse_template, strings


#: Every endpoint a spec can write requests for: those whose answers the results read (OpenAI's
#: text endpoints), Anthropic's Messages API and Gemini's generateContent.
SPEC_ENDPOINTS = (*TEXT_ENDPOINTS, MESSAGES, GENERATE_CONTENT)
#: Endpoints whose requests are conversations (messages, media parts, structured output).
_CONVERSATIONS = (CHAT_COMPLETIONS, RESPONSES, MESSAGES, GENERATE_CONTENT)
#: Gemini's structured-output parameters, in ``generationConfig``.
_GEMINI_FORMAT_KEYS = frozenset({"responseMimeType", "responseSchema", "responseJsonSchema"})


class RequestSpec(BaseModel):
    """How every row of a table becomes one request; written once per pipeline.

    Give exactly one of:

    - ``messages`` (chat completions, responses): message dicts whose string values are
      ``str.format`` templates over the row's columns: ``"Classify: {text}"``, ``"{price:.2f}"``;
      literal braces are doubled (``{{ }}``).
    - ``input_template``: one such text, sent as ``prompt`` (completions), ``input`` (responses,
      embeddings, moderations) or as the one user message (chat completions).
    - ``build_body``: a function of the row (column -> Python value; numpy scalars already boxed)
      returning the body; ``model`` and the fixed ``body`` parameters fill in what it leaves out.

    ``body`` holds fixed parameters (temperature, max_tokens, ...). ``output_model`` asks for
    structured output: its strict JSON schema goes to ``response_format`` (chat),
    ``text.format`` (responses) or, on Anthropic's ``/v1/messages``, becomes the ``input_schema``
    of a tool the request forces (``tool_choice``), whose input is the answer. On
    ``/v1/messages`` a ``system`` message becomes the ``system`` parameter, images become base64
    image blocks, and ``body`` must set ``max_tokens`` (Anthropic requires it). On Gemini's
    ``generateContent`` the requests are GenerateContentRequests: ``system`` messages become
    ``systemInstruction``, the others ``contents`` (``assistant`` is the ``model`` role), images
    inline data, ``body`` holds ``generationConfig`` and the like, and ``output_model`` asks for
    ``responseMimeType: application/json`` with its schema as ``responseJsonSchema``.
    ``key_column`` names the column custom_ids come from (default: the DataFrame index).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    endpoint: str = CHAT_COMPLETIONS
    model: str
    messages: list[dict[str, Any]] | None = None
    input_template: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)
    build_body: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    output_model: type[BaseModel] | None = None
    media: list[MediaPart] = Field(default_factory=list)
    key_column: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RequestSpec:
        given = [n for n in ("messages", "input_template", "build_body") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of messages, input_template, build_body (got {given or 'none'})")
        if self.endpoint not in SPEC_ENDPOINTS:
            raise ValueError(f"endpoint {self.endpoint!r} is not one of {', '.join(SPEC_ENDPOINTS)}")
        if self.messages is not None and self.endpoint not in _CONVERSATIONS:
            raise ValueError(f"messages need {', '.join(_CONVERSATIONS)}; use input_template for {self.endpoint}")
        if self.media:
            if self.build_body is not None or self.endpoint not in _CONVERSATIONS:
                raise ValueError("media parts need a messages or input_template spec on chat completions, responses or messages")
            if self.endpoint in (RESPONSES, MESSAGES, GENERATE_CONTENT) and any(p.kind == "video" for p in self.media):
                raise ValueError(f"{self.endpoint} takes no video parts")
            if self.messages is not None and not any(m.get("role") == "user" for m in self.messages):
                raise ValueError("media parts go into a user message, and messages has none")
        reserved = {"model", "messages", "input", "prompt"} | ({"system"} if self.endpoint == MESSAGES else set())
        if self.endpoint == GENERATE_CONTENT:
            reserved |= {"contents", "systemInstruction"}
        if reserved & set(self.body):
            raise ValueError(f"body sets {sorted(reserved & set(self.body))}: give them through the spec's own fields")
        if self.endpoint == MESSAGES and self.build_body is None and not isinstance(self.body.get("max_tokens"), int):
            raise ValueError(f"{MESSAGES} requires max_tokens: set body={{'max_tokens': <int>}}")
        if self.output_model is not None:
            if self.endpoint not in _CONVERSATIONS:
                raise ValueError(f"output_model needs {', '.join(_CONVERSATIONS)}")
            if "response_format" in self.body or "format" in (self.body.get("text") or {}):
                raise ValueError("body already sets the output format; drop it or output_model")
            if self.endpoint == GENERATE_CONTENT and _GEMINI_FORMAT_KEYS & set(self.body.get("generationConfig") or {}):
                raise ValueError("body's generationConfig already sets the output format; drop it or output_model")
            if self.endpoint == MESSAGES and ({"tools", "tool_choice"} & set(self.body)):
                raise ValueError("body sets tools or tool_choice, which output_model sets on /v1/messages; drop one")
            strict_json_schema(self.output_model)
        for template in self._templates():
            parse_template(template)
        return self

    def _templates(self) -> Iterator[str]:
        if self.input_template is not None:
            yield self.input_template
        for message in self.messages or ():
            yield from strings(message)

    @property
    def columns(self) -> list[str]:
        """Columns the templates and media parts read, in first-use order."""
        fields = (f.column for t in self._templates() for f in parse_template(t) if isinstance(f, Placeholder))
        return list(dict.fromkeys([*fields, *(p.column for p in self.media)]))

    def output_format(self) -> dict[str, Any]:
        """The body parameters asking for ``output_model`` (empty without one)."""
        if self.output_model is None:
            return {}
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", self.output_model.__name__)[:64]
        schema = strict_json_schema(self.output_model)
        if self.endpoint == CHAT_COMPLETIONS:
            return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}}
        if self.endpoint == MESSAGES:
            # Anthropic's structured output on every model: one tool, forced; its input is the answer.
            tool = {"name": name, "description": f"Record the answer as {name}.", "input_schema": schema}
            return {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}
        if self.endpoint == GENERATE_CONTENT:
            return {"generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}}
        return {"text": {"format": {"type": "json_schema", "name": name, "strict": True, "schema": schema}}}


def merge_output_format(body: dict[str, Any], output_format: Mapping[str, Any]) -> None:
    """Add structured-output parameters unless the body already sets them."""
    for key, value in output_format.items():
        current = body.get(key)
        if current is None:
            body[key] = value
        elif isinstance(current, dict) and isinstance(value, dict):
            body[key] = {**value, **current}


def request_line(custom_id: Any, endpoint: str, body: Any) -> dict[str, Any]:
    """One line of a request file; the key order is the bytes every build writes."""
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
