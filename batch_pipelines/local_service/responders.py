"""Responders: what answers each request of a batch.

A responder turns a chunk of request bodies for one endpoint into replies. Two ship here:

- :class:`DefaultResponder` (the default): deterministic, well-formed bodies for every batch
  endpoint: ``chat.completion`` with usage counts, ``/v1/responses``, ``/v1/embeddings`` (fixed
  dimension, unit vectors derived from the input text), ``/v1/completions`` and
  ``/v1/moderations``. A chat request with ``response_format: {"type": "json_schema"}`` (or a
  responses request with ``text.format``) gets content that validates against its schema: a minimal
  instance built from the schema (required properties, a deterministic enum member chosen by the
  prompt, ``$defs``/``$ref``, ``anyOf``...). Same input, same content.
- :class:`ForwardingResponder`: sends each request to a real-time OpenAI-compatible endpoint (a
  local model server, say) with bounded concurrency. Its API key is read from the environment
  variable it is told about, never stored.

A responder has a JSON ``spec`` so that a batch records how it is answered and any worker process
can rebuild it with :func:`responder_from_spec`.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import httpx
import orjson

from batch_pipelines.profiles import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES

__all__ = ["DefaultResponder", "ForwardingResponder", "Reply", "Responder", "responder_from_spec", "schema_instance"]

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


class Responder(Protocol):
    spec: dict[str, Any]

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]: ...

    def close(self) -> None: ...


def responder_from_spec(spec: Mapping[str, Any] | None) -> Responder:
    """Rebuild the responder a batch recorded at creation."""
    kind = (spec or {}).get("kind", "default")
    if kind == "default":
        return DefaultResponder()
    if kind == "forward":
        args = {k: v for k, v in spec.items() if k != "kind"}  # type: ignore[union-attr]
        return ForwardingResponder(**args)
    raise ValueError(f"unknown responder kind {kind!r}")


# ---- default responder -------------------------------------------------------------------------


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
        }

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]:
        handler = self._handlers.get(endpoint)
        if handler is None:
            return [(404, _error_body(f"Unknown endpoint {endpoint}", "invalid_request_error")) for _ in bodies]
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


def schema_instance(schema: Mapping[str, Any], *, pick: int = 0) -> Any:
    """A small instance that validates against ``schema`` (the JSON Schema subset of structured outputs).

    ``pick`` chooses enum members and booleans deterministically, so different prompts give
    different but reproducible answers.
    """
    return _instance(schema, schema, pick, 0)


def _instance(schema: Any, root: Mapping[str, Any], pick: int, depth: int) -> Any:
    if not isinstance(schema, Mapping):
        return None
    if "$ref" in schema:
        return _instance(_resolve_ref(schema["$ref"], root), root, pick, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = schema["enum"]
        return options[pick % len(options)]
    for combinator in ("anyOf", "oneOf"):
        if schema.get(combinator):
            options = schema[combinator]
            # A non-null branch makes a more useful answer than null.
            chosen = next((o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")), options[0])
            return _instance(chosen, root, pick, depth + 1)
    if schema.get("allOf"):
        parts = [_instance(s, root, pick, depth + 1) for s in schema["allOf"]]
        if all(isinstance(p, dict) for p in parts):
            return {k: v for p in parts for k, v in p.items()}
        return parts[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: _instance(props.get(name, {}), root, pick, depth + 1) for name in required}
    if kind == "array":
        count = schema.get("minItems", 0 if depth > 8 else 1)
        if schema.get("maxItems") is not None:
            count = min(count, schema["maxItems"])
        return [_instance(schema.get("items") or {}, root, pick + i, depth + 1) for i in range(count)]
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, pick, integer=kind == "integer")
    if kind == "boolean":
        return pick % 2 == 0
    return None


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    value = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "local@example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "uri": "https://example.com",
        "hostname": "example.com",
        "ipv4": "127.0.0.1",
    }.get(fmt, "local")
    min_len, max_len = schema.get("minLength", 0), schema.get("maxLength")
    if len(value) < min_len:
        value += "x" * (min_len - len(value))
    if max_len is not None:
        value = value[:max_len]
    return value


def _number(schema: Mapping[str, Any], pick: int, *, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    step = schema.get("multipleOf")
    if low is not None and high is not None and not step:
        # Both bounds (a confidence in 0..1, a rating in 1..5): spread answers over the range by
        # ``pick``, staying clear of exclusive bounds, so results look like a model's.
        if integer:
            first = math.floor(low) + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else math.ceil(low)
            last = math.ceil(high) - 1 if "exclusiveMaximum" in schema and "maximum" not in schema else math.floor(high)
            return first + pick % max(last - first + 1, 1)
        return low + (high - low) * (1 + pick % 99) / 100
    value: float = 0
    if low is not None:
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    elif high is not None and value >= high:
        value = high - 1
    if step:
        value = math.ceil(value / step) * step
    return int(math.ceil(value)) if integer else float(value)


def _messages_text(messages: Any) -> str:
    parts = []
    for message in messages or ():
        if type(message) is dict:
            content = message.get("content")
            parts.append(content if type(content) is str else _parts_text(content))
    return "\n".join(parts)


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


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# ---- forwarding responder ----------------------------------------------------------------------


class ForwardingResponder:
    """Answers each request by calling a real-time OpenAI-compatible endpoint.

    ``base_url`` is the server's API root (``http://127.0.0.1:8000/v1``); the batch endpoint's path
    below ``/v1`` is appended. At most ``concurrency`` requests are in flight. ``model``, when set,
    replaces the body's model (run a batch on your own model). The API key is read from the
    environment variable named by ``api_key_env`` when the responder is built.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        model: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.spec = {
            "kind": "forward",
            "base_url": base_url,
            "api_key_env": api_key_env,
            "concurrency": concurrency,
            "timeout": timeout,
            "model": model,
        }
        self._base_url = base_url.rstrip("/")
        self._model = model
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"environment variable {api_key_env} (the forwarding API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="forward")

    def __repr__(self) -> str:
        return f"ForwardingResponder(base_url={self._base_url!r}, concurrency={self.spec['concurrency']})"

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]:
        url = self._base_url + endpoint.removeprefix("/v1")
        return list(self._pool.map(lambda body: self._send(url, body), bodies))

    def _send(self, url: str, body: Mapping[str, Any]) -> Reply:
        if self._model is not None:
            body = {**body, "model": self._model}
        try:
            response = self._client.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        except httpx.TimeoutException:
            return 0, {"code": "request_timeout", "message": "The upstream model server did not answer in time."}
        except httpx.HTTPError as exc:
            return 502, _error_body(f"Upstream model server unreachable: {type(exc).__name__}", "server_error")
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return 502, _error_body(f"Upstream answered {response.status_code} with a non-JSON body", "server_error")
        if not isinstance(payload, dict):
            return 502, _error_body("Upstream answered with a non-object JSON body", "server_error")
        return response.status_code, payload

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
