"""A responder as JSON and back: each batch records who answers it, any worker rebuilds that.

A batch may be run by a worker in another process, later, so it records its responder's
``spec`` (``{"kind": "default"}`` or ``{"kind": "forward", **arguments}``), never the object:
only the responders shipped here can answer a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch_pipelines.local_service.forwarding import ForwardingResponder
from batch_pipelines.local_service.responders import DefaultResponder, Responder

__all__ = ["responder_from_spec", "spec_of"]


def spec_of(responder: Responder | None) -> dict[str, Any]:
    """What a batch records of ``responder`` (None: the default responder)."""
    return dict(responder.spec if responder is not None else DefaultResponder.spec)


def responder_from_spec(spec: Mapping[str, Any] | None) -> Responder:
    """Rebuild the responder a batch recorded at creation."""
    kind = (spec or {}).get("kind", "default")
    if kind == "default":
        return DefaultResponder()
    if kind == "forward":
        args = {k: v for k, v in spec.items() if k != "kind"}  # type: ignore[union-attr]
        return ForwardingResponder(**args)
    raise ValueError(f"unknown responder kind {kind!r}")
