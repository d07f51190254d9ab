"""A JSON-schema instance generator: the content the default responder gives a structured-output request.

:func:`schema_instance` builds a small instance that validates against the JSON Schema subset
of structured outputs: required properties, enums, ``const``, ``$defs``/``$ref``, ``anyOf``/
``oneOf`` (a non-null branch), ``allOf``, arrays within their item bounds, strings within their
length and format, numbers within their bounds. A ``pick`` number makes the choices (enum member,
boolean, a number within its range) vary by prompt yet stay reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["schema_instance"]


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
