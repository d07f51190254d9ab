"""What each endpoint's answer bodies hold: one reader per endpoint, and the typed road for chat.

A reader takes a succeeded body and returns the values of its columns: the endpoint's content
columns, then :data:`TOKEN_COLUMNS`, as one tuple. A body it does not understand raises (the line
becomes an invalid_output, see :mod:`batch_pipelines.results.line_formats`). A new endpoint is a
reader and the names of its content columns in :data:`READERS`.

The common line, a chat completion that succeeded, takes a faster road: msgspec decodes it straight
into the few fields the join reads (:class:`_ChatLine`) and skips the rest of the line without
building it, which costs less than building the whole line as dicts. A line that road does not
take (a failure, an unexpected shape or type, bad JSON) goes down the general one instead, so the
fast road only ever speeds up lines whose answer it would not change.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from batch_pipelines.profiles import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, GENERATE_CONTENT, MESSAGES, MODERATIONS, RESPONSES
from batch_pipelines.results.line_formats import Read, Typed

__all__ = [
    "ANTHROPIC_MESSAGES",
    "COLUMN_TYPES",
    "GEMINI_GENERATE_CONTENT",
    "LINE_TEXT",
    "READERS",
    "TEXT_COLUMNS",
    "TOKEN_COLUMNS",
    "TYPED",
    "chat_fields",
    "content_columns",
]

#: Anthropic Message Batches results: one Messages API response per line (``result.message``).
ANTHROPIC_MESSAGES = MESSAGES
#: Gemini Batch Mode results: one GenerateContentResponse per line (``response``).
GEMINI_GENERATE_CONTENT = GENERATE_CONTENT

TEXT_COLUMNS = ("content", "finish_reason")
#: ``cached_tokens``: input read from the provider's prompt cache; ``cache_write_tokens``: input
#: written to it (Anthropic bills those apart; OpenAI-style answers have none).
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens")
# Line-level columns are held whole until the join knows each line's row: the narrow types keep
# them small (4-byte string offsets, 4-byte token counts); the join widens what it keeps.
LINE_TEXT = pa.string()

_NO_FIELDS: dict[str, Any] = {}


def chat_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """A chat completion's text, finish reason and tokens: what the typed road gives for the lines it takes."""
    # The general road's hot path (lines the typed road hands over): written out, no helper calls.
    choice = body["choices"][0]
    text = choice["message"]["content"]
    if type(text) is not str and text is not None:
        raise TypeError("message.content is not text")
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("prompt_tokens_details") or _NO_FIELDS
    return (
        text,
        choice.get("finish_reason"),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("total_tokens"),
        details.get("cached_tokens"),
        None,
    )


# The typed road for chat completions: the fields chat_fields reads and nothing else. Every field
# is as strict as chat_fields is or stricter (a line it refuses goes to chat_fields), and a body it
# takes gives what chat_fields gives for it. gc=False: these objects never hold a cycle, and
# leaving them out of the collector's count keeps a million of them from triggering collections.


class _ChatMessage(msgspec.Struct, gc=False):
    content: str | None


class _ChatChoice(msgspec.Struct, gc=False):
    message: _ChatMessage
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _ChatUsage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _ChatBody(msgspec.Struct, gc=False):
    choices: list[_ChatChoice] = []
    usage: _ChatUsage | None = None

    def values(self) -> tuple[Any, ...] | None:
        """What chat_fields returns for this body; None when it has no choice (chat_fields says why)."""
        if not self.choices:
            return None
        choice, usage = self.choices[0], self.usage
        if usage is None:
            return choice.message.content, choice.finish_reason, None, None, None, None, None
        details = usage.prompt_tokens_details
        cached = None if details is None else details.cached_tokens
        return choice.message.content, choice.finish_reason, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached, None


class _ChatResponse(msgspec.Struct, gc=False):
    status_code: int
    body: _ChatBody | None = None


class _ChatLine(msgspec.Struct, gc=False):
    custom_id: str
    response: _ChatResponse | None = None


def _completion_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    choice = body["choices"][0]
    return (_text(choice["text"]), choice.get("finish_reason"), *_openai_usage(body))


def _responses_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    parts = [
        _text(part["text"])
        for item in body["output"]
        if item.get("type") == "message"
        for part in item["content"]
        if part.get("type") == "output_text"
    ]
    reason = (body.get("incomplete_details") or _NO_FIELDS).get("reason") or body.get("status")
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("input_tokens_details") or _NO_FIELDS
    tokens = (usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens"), details.get("cached_tokens"))
    return ("".join(parts) if parts else None), reason, *tokens, details.get("cache_write_tokens")


def _message_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """A Messages answer: its text; without text (structured output through a forced tool, which
    answers with one ``tool_use`` block) the tool's input as JSON."""
    blocks = body["content"]
    parts = [_text(block["text"]) for block in blocks if block.get("type") == "text"]
    text = "".join(parts) if parts else None
    if text is None:
        tool = next((block for block in blocks if block.get("type") == "tool_use"), None)
        text = None if tool is None else orjson.dumps(tool["input"]).decode()
    usage = body.get("usage") or _NO_FIELDS
    # Anthropic counts cached input apart from input_tokens; OpenAI's prompt_tokens include it.
    fresh, output = usage.get("input_tokens"), usage.get("output_tokens")
    read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
    prompt = None if fresh is None else fresh + (read or 0) + (written or 0)
    total = None if prompt is None or output is None else prompt + output
    return text, body.get("stop_reason"), prompt, output, total, read, written


def _generate_content_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """A GenerateContentResponse: the first candidate's text (thought parts left out), its finish
    reason, usageMetadata. A response without candidates (a blocked prompt) is not understood."""
    candidate = body["candidates"][0]
    parts = (candidate.get("content") or _NO_FIELDS).get("parts") or ()
    texts = [_text(part["text"]) for part in parts if "text" in part and not part.get("thought")]
    usage = body.get("usageMetadata") or _NO_FIELDS
    prompt, output = usage.get("promptTokenCount"), usage.get("candidatesTokenCount")
    thoughts = usage.get("thoughtsTokenCount")  # billed as output
    if output is not None and thoughts:
        output += thoughts
    total = usage.get("totalTokenCount")
    if total is None and prompt is not None and output is not None:
        total = prompt + output
    return ("".join(texts) if texts else None), candidate.get("finishReason"), prompt, output, total, usage.get("cachedContentTokenCount"), None


def _embedding_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    data = body["data"]
    if len(data) != 1:
        raise ValueError(f"{len(data)} embeddings in one answer; a row sends one input")
    vector = data[0]["embedding"]
    if type(vector) is str:  # encoding_format="base64": little-endian float32
        vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
    elif type(vector) is not list:
        raise TypeError("embedding is neither a list of numbers nor base64")
    return (vector, *_openai_usage(body))


def _moderation_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    result = body["results"][0]
    if type(result["flagged"]) is not bool:
        raise TypeError("results[0].flagged is not a boolean")
    return result["flagged"], result, None, None, None, None, None  # moderations report no usage


def _openai_usage(body: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("prompt_tokens_details") or _NO_FIELDS
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens"), details.get("cached_tokens"), None


def _text(value: Any) -> str | None:
    if type(value) is not str and value is not None:
        raise TypeError("the answer's text is not a string")
    return value


#: Arrow type of each column a line gives; None keeps Python objects (moderation results).
COLUMN_TYPES: dict[str, pa.DataType | None] = {
    "custom_id": LINE_TEXT,
    "status_code": pa.int16(),
    "error_code": LINE_TEXT,
    "error_message": LINE_TEXT,
    "content": LINE_TEXT,
    "finish_reason": LINE_TEXT,
    "embedding": pa.list_(pa.float32()),
    "flagged": pa.bool_(),
    "moderation": None,
    **dict.fromkeys(TOKEN_COLUMNS, pa.int32()),
}
#: endpoint -> (content columns, reader returning their values then those of TOKEN_COLUMNS).
READERS: dict[str, tuple[tuple[str, ...], Read]] = {
    CHAT_COMPLETIONS: (TEXT_COLUMNS, chat_fields),
    RESPONSES: (TEXT_COLUMNS, _responses_fields),
    COMPLETIONS: (TEXT_COLUMNS, _completion_fields),
    EMBEDDINGS: (("embedding",), _embedding_fields),
    MODERATIONS: (("flagged", "moderation"), _moderation_fields),
    ANTHROPIC_MESSAGES: (TEXT_COLUMNS, _message_fields),
    GEMINI_GENERATE_CONTENT: (TEXT_COLUMNS, _generate_content_fields),
}
#: endpoint -> the typed decoder tried before its reader (OpenAI line format only).
TYPED: dict[str, Typed] = {CHAT_COMPLETIONS: msgspec.json.Decoder(_ChatLine)}


def content_columns(endpoint: str) -> tuple[str, ...]:
    """The columns an endpoint's answers fill besides the tokens; ValueError for an unknown endpoint."""
    try:
        return READERS[endpoint][0]
    except KeyError:
        raise ValueError(f"endpoint {endpoint!r} is not one of {', '.join(READERS)}") from None
