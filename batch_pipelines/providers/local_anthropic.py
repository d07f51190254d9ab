"""The local provider posing as Anthropic: Message Batches from the engine, in-process, no key.

The same :class:`~batch_pipelines.providers.anthropic.AnthropicProvider` as over HTTP, its calls
going straight into the local service's :class:`MessageBatches` instead: the same JSON objects,
the same parser, the engine's errors as the typed exceptions an HTTP answer would raise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batch_pipelines.local_service.anthropic_batches import MessageBatches
from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.anthropic import AnthropicProvider
from batch_pipelines.providers.http import write_atomically
from batch_pipelines.providers.local import default_local_dir, engine_call
from batch_pipelines.providers.types import Batch

__all__ = ["local_anthropic_provider"]

#: What ``results_url`` starts with in-process (read through the engine, never fetched).
_LOCAL_BASE = "local:/v1"


class _LocalMessageBatches:
    def __init__(self, engine: BatchEngine) -> None:
        self._engine = engine
        self._batches = MessageBatches(engine)

    def create(self, body: bytes, *, recover: Any = None) -> dict[str, Any]:
        return engine_call(lambda: self._batches.create(orjson.loads(body), _LOCAL_BASE))

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return engine_call(lambda: self._batches.retrieve(batch_id, _LOCAL_BASE))

    def list_page(self, *, limit: int, after_id: str | None) -> dict[str, Any]:
        return engine_call(lambda: self._batches.list(_LOCAL_BASE, limit=limit, after_id=after_id))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return engine_call(lambda: self._batches.cancel(batch_id, _LOCAL_BASE))

    def delete(self, batch_id: str) -> dict[str, Any]:
        return engine_call(lambda: self._batches.delete(batch_id))

    def download_results(self, batch: Batch, dest: Path) -> Path:
        lines = engine_call(lambda: list(self._batches.results(batch.id)))
        return write_atomically(dest, lines)

    def close(self) -> None:
        self._engine.close()

    def __repr__(self) -> str:
        return f"_LocalMessageBatches(data_dir={str(self._engine.data_dir)!r})"


def local_anthropic_provider(
    data_dir: str | Path | None = None, *, profile: str | ProviderProfile = "anthropic", **engine_options: Any
) -> AnthropicProvider:
    """An Anthropic provider over a local engine in ``data_dir`` (``speed``, ``time_scale``, ``faults``,
    ``responder``, ``worker`` as for :class:`~batch_pipelines.providers.local.LocalProvider`)."""
    engine_options.setdefault("worker", "process")
    engine = BatchEngine(Path(data_dir) if data_dir is not None else default_local_dir(), profile=profile, **engine_options)
    return AnthropicProvider(engine.profile, api=_LocalMessageBatches(engine))
