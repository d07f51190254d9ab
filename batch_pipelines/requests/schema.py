"""Structured output: a pydantic model as the JSON schema strict structured output accepts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, PydanticInvalidForJsonSchema, PydanticUserError


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` in the form strict structured output accepts.

    Every object gets ``additionalProperties: false`` and all its properties required; a ``$ref``
    with siblings is inlined; ``default: null`` is dropped. ValueError when the model cannot be
    expressed: a field pydantic cannot put in a schema, or a free-form dict.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"output_model must be a pydantic BaseModel subclass, not {model!r}")
    try:
        schema = model.model_json_schema()
    except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
        raise ValueError(f"output_model {model.__name__} cannot become a JSON schema: {exc}") from None
    return _strict(schema, schema, model.__name__)


def _strict(node: dict[str, Any], root: dict[str, Any], where: str) -> dict[str, Any]:
    if "$ref" in node and len(node) > 1:  # strict mode takes no siblings next to $ref: inline it
        target = root
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    node = dict(node)
    if "default" in node and node["default"] is None:
        del node["default"]
    if node.get("type") == "object":
        if node.get("additionalProperties") not in (None, False):
            raise ValueError(f"output_model: {where} is a free-form mapping; strict structured output needs named fields")
        node["additionalProperties"] = False
        props = node.get("properties", {})
        node["properties"] = {k: _strict(v, root, f"{where}.{k}") for k, v in props.items()}
        node["required"] = list(props)
    for key in ("$defs", "definitions"):
        if key in node:
            node[key] = {k: _strict(v, root, k) for k, v in node[key].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root, f"{where}[]")
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict(v, root, where) for v in node[key]]
    if len(node.get("allOf", ())) == 1:
        node = {**node.pop("allOf")[0], **node}
    return node
