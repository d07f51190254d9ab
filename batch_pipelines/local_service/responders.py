"""Responders: what answers each request of a batch, and the default one.

A responder turns a chunk of request bodies for one endpoint into replies, ``(status, body)``
each. Its JSON ``spec`` is what a batch records of it, so any worker process rebuilds it
(``responder_specs.py``). Two ship: :class:`DefaultResponder`, here, and the
:class:`~batch_pipelines.local_service.forwarding.ForwardingResponder` (``forwarding.py``).

The default responder answers every batch endpoint without a network, deterministically (same
input, same content) and with well-formed bodies: ``chat.completion`` with usage counts,
``/v1/responses``, ``/v1/embeddings`` (fixed dimension, unit vectors derived from the input text),
``/v1/completions``, ``/v1/moderations``, ``/v1/images/generations`` and ``/v1/images/edits`` (a tiny
PNG per image asked), ``/v1/videos`` (a completed video job) and Anthropic's ``/v1/messages``. A chat request with ``response_format: {"type":
"json_schema"}`` (or a responses request with ``text.format``) gets content that validates
against its schema (``schema_instance.py``), its choices picked by the prompt; so does a
Messages request that forces a tool (``tool_choice: {type: tool}``: a ``tool_use`` block whose
input fits the tool's ``input_schema``) or asks for ``output_format: {type: json_schema}``, and
a Gemini GenerateContentRequest with ``generationConfig.responseMimeType: application/json`` and
``responseJsonSchema`` (or ``responseSchema``, Google's OpenAPI subset with upper-case types).
"""

from __future__ import annotations

import itertools
import math
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from batch_pipelines.local_service.errors import error_body
from batch_pipelines.local_service.schema_instance import schema_instance
from batch_pipelines.profiles import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    GENERATE_CONTENT,
    IMAGES_EDITS,
    IMAGES_GENERATIONS,
    MESSAGES,
    MODERATIONS,
    RESPONSES,
    VIDEOS,
)

__all__ = ["EMBEDDING_DIMENSIONS", "DefaultResponder", "Reply", "Responder"]

#: (status_code, body). A status of 0 marks a failure with no HTTP answer; the body is then the
#: output line's ``error`` object ({"code", "message"}).
Reply = tuple[int, dict[str, Any]]

EMBEDDING_DIMENSIONS = 16
_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# A 1x1 transparent PNG: every image the default responder makes (b64_json, as the Batch API answers).
_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


class Responder(Protocol):
    """Answers requests; one reply per body, in order."""

    #: JSON a worker in any process rebuilds this responder from (``{"kind": ..., **arguments}``).
    spec: dict[str, Any]

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]: ...

    def close(self) -> None: ...


class DefaultResponder:
    """Deterministic answers for every batch endpoint, no network."""

    spec: dict[str, Any] = {"kind": "default"}

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._schema_cache: dict[bytes, Any] = {}
        self._handlers = {
            CHAT_COMPLETIONS: self._chat,
            RESPONSES: self._responses,
            EMBEDDINGS: self._embeddings,
            COMPLETIONS: self._completions,
            MODERATIONS: self._moderations,
            IMAGES_GENERATIONS: self._images,
            IMAGES_EDITS: self._images,
            VIDEOS: self._videos,
            MESSAGES: self._messages,
            GENERATE_CONTENT: self._generate_content,
        }

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]:
        handler = self._handlers.get(endpoint)
        if handler is None:
            return [(404, error_body(f"Unknown endpoint {endpoint}", "invalid_request_error")) for _ in bodies]
        now = int(time.time())
        return [handler(body, now) for body in bodies]

    def close(self) -> None:
        pass

    # One method per endpoint; each returns (200, body) shaped like OpenAI's.
    def _chat(self, body: Mapping[str, Any], now: int) -> Reply:
        # The hot path of every benchmark: plain loops and exact type checks, no helpers per row.
        messages = body.get("messages") or ()
        chars = 0
        last_user = ""
        for message in messages:
            text = message.get("content") if type(message) is dict else None
            if type(text) is not str:
                text = _parts_text(text)
            chars += len(text)
            if message.get("role") == "user":
                last_user = text
        response_format = body.get("response_format")
        content = self._structured(response_format, _messages_text(messages)) if response_format is not None else None
        if content is None:
            content = "Local reply to: " + last_user[:120]
        prompt_tokens = chars // 4 + 1 + 3 * len(messages)
        completion_tokens = _tokens(content)
        return 200, {
            "id": f"chatcmpl-local{next(self._ids)}",
            "object": "chat.completion",
            "created": now,
            "model": body.get("model", "local"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _responses(self, body: Mapping[str, Any], now: int) -> Reply:
        raw_input = body.get("input", "")
        prompt = raw_input if isinstance(raw_input, str) else _messages_text(raw_input)
        text_format = (body.get("text") or {}).get("format")
        if text_format and text_format.get("type") == "json_schema":
            text_format = {"type": "json_schema", "json_schema": text_format}
        text = self._structured(text_format, prompt)
        if text is None:
            text = f"Local reply to: {prompt[-120:]}"
        n = next(self._ids)
        input_tokens, output_tokens = _tokens(prompt), _tokens(text)
        return 200, {
            "id": f"resp_local{n}",
            "object": "response",
            "created_at": now,
            "status": "completed",
            "model": body.get("model", "local"),
            "output": [
                {
                    "type": "message",
                    "id": f"msg_local{n}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata") or {},
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }

    def _embeddings(self, body: Mapping[str, Any], now: int) -> Reply:
        inputs = body.get("input", "")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += _tokens(text)
            data.append({"object": "embedding", "index": index, "embedding": _embedding(text, dims)})
        return 200, {
            "object": "list",
            "data": data,
            "model": body.get("model", "local"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _completions(self, body: Mapping[str, Any], now: int) -> Reply:
        prompt = body.get("prompt", "")
        prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        text = f" Local completion of: {prompt[-120:]}"
        prompt_tokens, completion_tokens = _tokens(prompt), _tokens(text)
        return 200, {
            "id": f"cmpl-local{next(self._ids)}",
            "object": "text_completion",
            "created": now,
            "model": body.get("model", "local"),
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _moderations(self, body: Mapping[str, Any], now: int) -> Reply:
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        results = []
        for item in inputs:
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            score = (zlib.crc32(text.encode()) % 1000) / 10_000  # < 0.1: nothing is ever flagged
            results.append(
                {
                    "flagged": False,
                    "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
                    "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, score),
                    "category_applied_input_types": dict.fromkeys(_MODERATION_CATEGORIES, ["text"]),
                }
            )
        model = body.get("model", "omni-moderation-latest")
        return 200, {"id": f"modr-local{next(self._ids)}", "model": model, "results": results}

    def _images(self, body: Mapping[str, Any], now: int) -> Reply:
        prompt = str(body.get("prompt", ""))
        count = body.get("n") if type(body.get("n")) is int and body.get("n") > 0 else 1
        input_tokens, output_tokens = _tokens(prompt), 272 * count  # a low-quality square image's tokens
        return 200, {
            "created": now,
            "data": [{"b64_json": _PNG_B64, "revised_prompt": prompt} for _ in range(count)],
            "output_format": "png",
            "size": body.get("size", "1024x1024"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
        }

    def _videos(self, body: Mapping[str, Any], now: int) -> Reply:
        return 200, {
            "id": f"video_local{next(self._ids)}",
            "object": "video",
            "model": body.get("model", "sora-2"),
            "status": "completed",
            "progress": 100,
            "created_at": now,
            "completed_at": now,
            "expires_at": None,
            "prompt": body.get("prompt"),
            "seconds": str(body.get("seconds", "4")),
            "size": body.get("size", "720x1280"),
            "remixed_from_video_id": None,
            "error": None,
        }

    def _messages(self, body: Mapping[str, Any], now: int) -> Reply:
        messages = body.get("messages") or ()
        prompt = _messages_text(messages)
        system = body.get("system")
        system_text = system if isinstance(system, str) else _parts_text(system)
        n = next(self._ids)
        forced = body.get("tool_choice") or {}
        tool = None
        if isinstance(forced, Mapping) and forced.get("type") == "tool":
            tool = next((t for t in body.get("tools") or () if isinstance(t, Mapping) and t.get("name") == forced.get("name")), None)
        content: list[dict[str, Any]]
        if tool is not None:
            schema_format = {"type": "json_schema", "json_schema": {"schema": tool.get("input_schema") or {}}}
            answer = self._structured(schema_format, prompt) or "{}"
            content = [{"type": "tool_use", "id": f"toolu_local{n}", "name": tool["name"], "input": orjson.loads(answer)}]
            stop_reason, output_text = "tool_use", answer
        else:
            output_format = body.get("output_format")
            if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
                output_format = {"type": "json_schema", "json_schema": {"schema": output_format.get("schema") or {}}}
            text = self._structured(output_format, prompt) or "Local reply to: " + prompt[-120:]
            content = [{"type": "text", "text": text}]
            stop_reason, output_text = "end_turn", text
        input_tokens, output_tokens = _tokens(system_text + prompt), _tokens(output_text)
        return 200, {
            "id": f"msg_local{n}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "local"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _generate_content(self, body: Mapping[str, Any], now: int) -> Reply:
        """A GenerateContentResponse: one candidate, its text (schema-valid JSON when asked), usageMetadata."""
        prompt = _gemini_text(body.get("contents"))
        system_text = _gemini_text([body.get("systemInstruction")])
        config = body.get("generationConfig") or {}
        schema = None
        if isinstance(config, Mapping) and config.get("responseMimeType") == "application/json":
            schema = config.get("responseJsonSchema") or _lower_types(config.get("responseSchema")) or {}
        if schema is not None:
            text = self._structured({"type": "json_schema", "json_schema": {"schema": schema}}, prompt) or "{}"
        else:
            text = "Local reply to: " + prompt[-120:]
        n = next(self._ids)
        prompt_tokens, output_tokens = _tokens(system_text + prompt), _tokens(text)
        return 200, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": output_tokens,
                "totalTokenCount": prompt_tokens + output_tokens,
            },
            "modelVersion": str(body.get("model", "local")),
            "responseId": f"local{n}",
        }

    def _structured(self, response_format: Any, prompt: str) -> str | None:
        """JSON content for a structured-output request, None for a free-text one."""
        if not isinstance(response_format, Mapping):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            return orjson.dumps({"result": prompt[-60:]}).decode()
        if kind != "json_schema":
            return None
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        pick = zlib.crc32(prompt.encode())
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS) + pick.to_bytes(4, "little")
        content = self._schema_cache.get(key)
        if content is None:
            if len(self._schema_cache) > 4096:  # bounded: a batch rarely has many distinct prompts+schemas
                self._schema_cache.clear()
            content = self._schema_cache[key] = orjson.dumps(schema_instance(schema, pick=pick)).decode()
        return content


def _messages_text(messages: Any) -> str:
    parts = []
    for message in messages or ():
        if type(message) is dict:
            content = message.get("content")
            parts.append(content if type(content) is str else _parts_text(content))
    return "\n".join(parts)


def _gemini_text(contents: Any) -> str:
    """The text parts of Gemini ``contents`` (inline data carries none)."""
    parts = []
    for content in contents or ():
        if type(content) is dict:
            parts.extend(p["text"] for p in content.get("parts") or () if type(p) is dict and type(p.get("text")) is str)
    return "\n".join(parts)


def _lower_types(schema: Any) -> Any:
    """Google's ``responseSchema`` (OpenAPI, ``"type": "OBJECT"``) as JSON Schema's lower-case types."""
    if isinstance(schema, Mapping):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _parts_text(content: Any) -> str:
    """The text of a multi-part message content (image and video parts carry none)."""
    if type(content) is not list:
        return ""
    return "\n".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)


def _tokens(text: str) -> int:
    """A rough token count (4 characters a token), never 0, as real tokenizers would say."""
    return len(text) // 4 + 1


def _embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``: the same text always embeds the same."""
    seed = zlib.crc32(text.encode())
    raw = [((seed * (i + 1) * 2654435761) % 2003) / 1001.5 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    # Round through float32 as real services do: shorter lines, same precision as theirs.
    return [struct.unpack("f", struct.pack("f", v / norm))[0] for v in raw]
