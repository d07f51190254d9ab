"""The ``local`` provider: the local batch service's engine, in-process, with no server and no key.

Batches are processed by the engine's detached worker process (``worker="process"``): it outlives
the call, run or process that created a batch, and every process pointed at the same data
directory sees the same files and batches, as it would with a real provider. The engine answers
OpenAI-shaped dicts, so they are normalized by the HTTP client's parsers, and its errors become the
same typed exceptions an HTTP service's would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from batch_pipelines.local_service.engine import BatchEngine, ServiceError, Speed, WorkerMode
from batch_pipelines.local_service.faults import FaultPlan
from batch_pipelines.local_service.forwarding import DEFAULT_CONCURRENCY as DEFAULT_FORWARD_CONCURRENCY
from batch_pipelines.local_service.forwarding import ForwardingResponder
from batch_pipelines.local_service.responders import Responder
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.base import BatchProvider
from batch_pipelines.providers.types import Batch, FileObject
from batch_pipelines.providers.errors import APIStatusError, NotFoundError, status_error_class
from batch_pipelines.providers.http import write_atomically
from batch_pipelines.providers.openai_compatible import batch_create_body, iter_batches, parse_batch, parse_file, upload_expiry

__all__ = ["DEFAULT_FORWARD_CONCURRENCY", "LOCAL", "ForwardingResponder", "LocalProvider", "default_local_dir", "engine_call"]

#: The name ``make_provider`` knows the local provider by.
LOCAL = "local"

_T = TypeVar("_T")
_CHUNK = 1024 * 1024


def default_local_dir() -> Path:
    """``$DAGSTER_HOME/batch_pipelines/local``, or ``~/.batch_pipelines/local`` without DAGSTER_HOME."""
    dagster_home = os.environ.get("DAGSTER_HOME")
    base = Path(dagster_home) / "batch_pipelines" if dagster_home else Path.home() / ".batch_pipelines"
    return base / "local"


class LocalProvider(BatchProvider):
    """A Batch API on this machine, posing as ``profile`` (its limits, windows and endpoints).

    Args:
        data_dir: where files and batches live; :func:`default_local_dir` when None.
        profile: the provider whose rules the engine applies.
        speed: ``"instant"`` or ``"realistic"`` (paced like a real provider, visibly).
        time_scale: shrinks the completion window (``8640``: a ``24h`` window lasts 10 s).
        faults: a fault plan for every batch created through this provider.
        responder: what answers each request (the engine's default when None).
        worker: ``"process"`` (a detached worker shared by all processes on ``data_dir``) or
            ``"thread"`` (a worker thread that stops with this provider).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        profile: str | ProviderProfile = "openai",
        speed: Speed = "instant",
        time_scale: float = 1.0,
        faults: FaultPlan | None = None,
        responder: Responder | None = None,
        worker: WorkerMode = "process",
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_local_dir()
        self._engine = BatchEngine(
            self.data_dir,
            profile=profile,
            speed=speed,
            time_scale=time_scale,
            faults=faults,
            responder=responder,
            worker=worker,
        )
        self.profile = self._engine.profile

    def __repr__(self) -> str:
        return f"LocalProvider(data_dir={str(self.data_dir)!r}, profile={self.profile.name!r})"

    def close(self) -> None:
        self._engine.close()

    def console_url(self, batch_id: str) -> str | None:
        return None  # no console: the posed-as provider's would not know this batch

    def upload_file(self, path: Path, *, purpose: str = "batch", expires_after_seconds: int | None = None) -> FileObject:
        path = Path(path)
        policy = upload_expiry(self.profile, expires_after_seconds)
        return parse_file(engine_call(lambda: self._engine.create_file(path.name, purpose, path, expires_after=policy)))

    def download_file(self, file_id: str, dest: Path) -> Path:
        source = engine_call(lambda: self._engine.file_content_path(file_id))
        with source.open("rb") as fh:
            return write_atomically(Path(dest), iter(lambda: fh.read(_CHUNK), b""))

    def delete_file(self, file_id: str) -> None:
        try:
            engine_call(lambda: self._engine.delete_file(file_id))
        except NotFoundError:
            pass  # already gone: the outcome the caller wanted

    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        body = batch_create_body(
            self.profile, input_file_id, endpoint, completion_window, metadata, output_expires_after_seconds
        )
        return parse_batch(engine_call(lambda: self._engine.create_batch(**body)))

    def retrieve_batch(self, batch_id: str) -> Batch:
        return parse_batch(engine_call(lambda: self._engine.get_batch(batch_id)))

    def cancel_batch(self, batch_id: str) -> Batch:
        return parse_batch(engine_call(lambda: self._engine.cancel_batch(batch_id)))

    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        def fetch(after: str | None) -> dict[str, Any]:
            return engine_call(lambda: self._engine.list_batches(after=after, limit=page_size))

        return iter_batches(fetch, metadata)


def engine_call(operation: Callable[[], _T]) -> _T:
    """Run an engine call, turning its ServiceError into the exception an HTTP client would raise."""
    try:
        return operation()
    except ServiceError as exc:
        error: APIStatusError = status_error_class(exc.status_code)(
            exc.message,
            status_code=exc.status_code,
            code=exc.code,
            type=exc.type,
            param=exc.param,
            body=exc.body()["error"],
        )
    raise error from None
