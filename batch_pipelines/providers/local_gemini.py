"""The local provider posing as Gemini: Batch Mode from the engine, in-process, no key.

The same :class:`~batch_pipelines.providers.gemini.GeminiProvider` as over HTTP, its calls going
straight into the local service's :class:`GeminiBatches` instead: the same JSON objects, the same
parser, the engine's errors as the typed exceptions an HTTP answer would raise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.gemini_batches import GeminiBatches
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.gemini import GeminiProvider
from batch_pipelines.providers.http import write_atomically
from batch_pipelines.providers.local import default_local_dir, engine_call

__all__ = ["local_gemini_provider"]


class _LocalGemini:
    def __init__(self, engine: BatchEngine) -> None:
        self._engine = engine
        self._batches = GeminiBatches(engine)

    def create(self, model: str, body: bytes, *, recover: Any = None) -> dict[str, Any]:
        return engine_call(lambda: self._batches.create(model, orjson.loads(body)))

    def retrieve(self, name: str) -> dict[str, Any]:
        return engine_call(lambda: self._batches.retrieve(name))

    def list_page(self, *, page_size: int, page_token: str | None) -> dict[str, Any]:
        return engine_call(lambda: self._batches.list(page_size=page_size, page_token=page_token))

    def cancel(self, name: str) -> None:
        engine_call(lambda: self._batches.cancel(name))

    def delete(self, name: str) -> None:
        engine_call(lambda: self._batches.delete(name))

    def upload(self, path: Path, *, display_name: str) -> dict[str, Any]:
        return engine_call(lambda: self._batches.upload_file(display_name, path))

    def download(self, name: str, dest: Path) -> Path:
        chunks = engine_call(lambda: self._batches.download(name))
        return write_atomically(dest, chunks)

    def delete_file(self, name: str) -> None:
        engine_call(lambda: self._batches.delete_file(name))

    def close(self) -> None:
        self._engine.close()

    def __repr__(self) -> str:
        return f"_LocalGemini(data_dir={str(self._engine.data_dir)!r})"


def local_gemini_provider(
    data_dir: str | Path | None = None, *, profile: str | ProviderProfile = "gemini", **engine_options: Any
) -> GeminiProvider:
    """A Gemini provider over a local engine in ``data_dir`` (``speed``, ``time_scale``, ``faults``,
    ``responder``, ``worker`` as for :class:`~batch_pipelines.providers.local.LocalProvider`)."""
    engine_options.setdefault("worker", "process")
    engine = BatchEngine(Path(data_dir) if data_dir is not None else default_local_dir(), profile=profile, **engine_options)
    return GeminiProvider(engine.profile, api=_LocalGemini(engine))
