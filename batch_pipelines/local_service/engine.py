"""The batch engine: files and batches of an OpenAI-style Batch API, kept in a data directory.

:class:`BatchEngine` is what both faces of the local service call: the HTTP app (``create_app``)
and the embedded ``local`` provider. Its methods return dicts shaped exactly like OpenAI's JSON
(``FileObject``, ``Batch``, list pages) and raise :class:`ServiceError` carrying the HTTP status
and OpenAI error body a real service would answer with.

The engine poses as a provider profile (``moonshot``, ``openai``, any
:class:`~batch_pipelines.profiles.ProviderProfile`) and checks at create time what the real
service checks at create time (answered 400): the endpoint, the completion window, the metadata
limits, the input file (exists, purpose ``batch``, ``.jsonl`` name, non-empty, size, the
profile's ``file_quota`` of batch files held at once). Line-level
problems are found later, while the batch is ``validating`` (see ``validation.py``).

Processing never runs on the request path. Each batch records at creation how it is to be
processed (profile, speed, time scale, fault plan, responder spec), and a worker runs it:
``worker="thread"`` in a thread of this process, ``worker="process"`` in a detached process
shared by every engine on the data directory, ``worker="none"`` leaves processing to some other
process's worker (``supervision.py``).

Speeds (``pacing.py``): ``instant`` runs as fast as the machine allows; ``realistic`` paces a
batch like a real provider would, visibly. ``time_scale`` speeds up the completion window and
file expiry only: with ``time_scale=8640`` a ``24h`` window lasts 10 real seconds, and
``expires_at`` is ``created_at + window / time_scale``.

File expiry (posing as a profile with ``supports_file_expiry``): an upload's ``expires_after``
and a batch's ``output_expires_after`` (for its output and error files) are ``{"anchor":
"created_at", "seconds": 3600..2592000}``; the file's ``expires_at`` is ``created_at + seconds /
time_scale``, and from then on it is gone as if deleted: 404 on retrieve and content, out of the
list, its bytes removed (at the next upload or listing) unless a running batch still reads it.

Request counts: ``completed`` counts rows answered 2xx, ``failed`` every other row (HTTP errors,
expired, cancelled), so ``completed + failed == total`` once a batch is terminal, and the two files hold one line
per row, except where a fault plan deliberately loses, duplicates or corrupts lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.faults import FaultPlan, plan_from_metadata
from batch_pipelines.local_service.openai_objects import batch_json, file_json, file_row_json, page
from batch_pipelines.local_service.pacing import SPEEDS, Speed
from batch_pipelines.local_service.responder_specs import spec_of
from batch_pipelines.local_service.responders import Responder
from batch_pipelines.local_service.store import ACTIVE_WHERE, BATCH_ID_RE, FILE_ID_RE, Store, new_batch_id, new_file_id
from batch_pipelines.local_service.supervision import WORKER_MODES, WorkerMode, supervise
from batch_pipelines.profiles import (
    ProviderProfile,
    endpoint_problem,
    expires_after_problem,
    get_profile,
    metadata_problem,
    parse_window,
    profile_to_json,
    window_problem,
)

__all__ = ["BatchEngine", "ServiceError", "Speed", "WorkerMode"]

_COPY_CHUNK = 1024 * 1024
#: The SQL condition "the file has not expired" at the moment bound as its one parameter.
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class BatchEngine:
    """Files and batches in ``data_dir``, processed off the request path by a worker.

    ``profile`` is the provider posed as; ``speed``, ``time_scale``, ``faults`` and ``responder``
    apply to batches created from then on (each batch records them). Only the responder's
    ``spec`` is recorded: workers rebuild it (``responder_specs.py``), so it must be one of the
    responders this package ships. ``worker`` picks who processes batches (see above).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        profile: str | ProviderProfile = "openai",
        speed: Speed = "instant",
        time_scale: float = 1.0,
        faults: FaultPlan | None = None,
        responder: Responder | None = None,
        worker: WorkerMode = "thread",
    ) -> None:
        if speed not in SPEEDS:
            raise ValueError(f"speed must be 'instant' or 'realistic', not {speed!r}")
        if not time_scale > 0:
            raise ValueError("time_scale must be positive")
        if worker not in WORKER_MODES:
            raise ValueError(f"worker must be 'thread', 'process' or 'none', not {worker!r}")
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.speed = speed
        self.time_scale = float(time_scale)
        #: Service-wide fault plan for batches created from now on (assign to change it).
        self.faults = faults or FaultPlan()
        self.responder_spec = spec_of(responder)
        self.store = Store(data_dir)
        self.data_dir = self.store.data_dir
        self._worker = supervise(self.store, worker)

    def __repr__(self) -> str:
        return f"BatchEngine(data_dir={str(self.data_dir)!r}, profile={self.profile.name!r}, speed={self.speed!r})"

    def close(self) -> None:
        """Stop this engine's worker thread (a detached worker process keeps running until idle)."""
        self._worker.close()
        self.store.close()

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- files ---------------------------------------------------------------------------
    def create_file(
        self,
        filename: str,
        purpose: str,
        source: Path | BinaryIO,
        *,
        move: bool = False,
        expires_after: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store an upload. ``move=True`` renames ``source`` (a path in ``store.tmp_dir``) instead of copying;
        ``expires_after`` is the Files API's expiry policy."""
        if purpose not in self.profile.upload_purposes:
            expected = ", ".join(self.profile.upload_purposes)
            raise ServiceError(400, f"Invalid purpose {purpose!r}; expected one of {expected}.", param="purpose")
        problem = expires_after_problem(self.profile, expires_after, "expires_after")
        if problem is not None:
            raise ServiceError(400, f"{problem}.", param="expires_after")
        display_name = _display_name(filename)
        limit = self.profile.max_file_bytes
        tmp = self.store.tmp_path()
        try:
            if move and isinstance(source, Path):
                source.rename(tmp)
                size = tmp.stat().st_size
            else:
                size = _copy_limited(source, tmp, limit)
            if size > limit:
                raise ServiceError(413, f"File is larger than the {limit} bytes allowed.", code="file_too_large", param="file")
            if purpose == "batch":
                if not display_name.endswith(".jsonl"):
                    raise ServiceError(400, f"Batch input files must have a .jsonl name, got {display_name!r}.", param="file")
                if size == 0:
                    raise ServiceError(400, "The file is empty.", code="empty_file", param="file")
            file_id = new_file_id()
            tmp.rename(self.store.file_path(file_id))
        finally:
            tmp.unlink(missing_ok=True)
        created = int(time.time())
        expires_at = created + self.expiry_seconds(expires_after["seconds"]) if expires_after is not None else None
        self._sweep_expired()
        quota = self.profile.file_quota if purpose == "batch" else None
        try:
            with self.store.write() as db:
                if quota is not None:
                    held = db.execute(f"SELECT COUNT(*) FROM files WHERE purpose = 'batch' AND {_LIVE}", (created,)).fetchone()[0]
                    if held >= quota:
                        message = f"{self.profile.name} allows {quota} batch files at once; delete some before uploading."
                        raise ServiceError(400, message, code="file_quota_exceeded", param="purpose")
                db.execute(
                    "INSERT INTO files (id, filename, purpose, bytes, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (file_id, display_name, purpose, size, created, expires_at),
                )
        except ServiceError:
            self.store.file_path(file_id).unlink(missing_ok=True)
            raise
        return file_json(file_id, display_name, purpose, size, created, expires_at)

    def expiry_seconds(self, seconds: int) -> int:
        """Real seconds an expiry policy of ``seconds`` lasts here (``time_scale`` speeds it up)."""
        return math.ceil(seconds / self.time_scale)

    def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc"
    ) -> dict[str, Any]:
        """Files, newest first (``order="desc"``, OpenAI's default) or oldest first (``"asc"``), ``after`` a file id."""
        if not 1 <= limit <= 10000:
            raise ServiceError(400, "limit must be between 1 and 10000.", param="limit")
        if order not in ("asc", "desc"):
            raise ServiceError(400, f"Invalid value for 'order': expected 'asc' or 'desc', got {order!r}.", param="order")
        self._sweep_expired()
        clauses, params = [_LIVE], [int(time.time())]
        if purpose is not None:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after is not None:
            clauses.append("seq < ?" if order == "desc" else "seq > ?")
            params.append(self._seq("files", after))
        where = f"WHERE {' AND '.join(clauses)}"
        direction = "DESC" if order == "desc" else "ASC"
        rows = self.store.read(f"SELECT * FROM files {where} ORDER BY seq {direction} LIMIT ?", (*params, limit + 1))
        return page([file_row_json(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def get_file(self, file_id: str) -> dict[str, Any]:
        return file_row_json(self._file_row(file_id))

    def file_content_path(self, file_id: str) -> Path:
        self._file_row(file_id)
        return self.store.file_path(file_id)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        self._file_row(file_id)
        with self.store.write() as db:
            busy = db.execute(f"SELECT id FROM batches WHERE input_file_id = ? AND {ACTIVE_WHERE}", (file_id,)).fetchone()
            if busy is not None:
                message = f"File {file_id} is the input of batch {busy['id']}, which is still running."
                raise ServiceError(400, message, param="file_id")
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.store.file_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- batches -------------------------------------------------------------------------
    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        profile = self.profile
        problem = endpoint_problem(profile, endpoint)
        if problem is not None:
            raise ServiceError(400, f"{problem}.", param="endpoint")
        problem = window_problem(profile, completion_window)
        if problem is not None:
            raise ServiceError(400, f"{problem}.", param="completion_window")
        if isinstance(metadata, Mapping) and metadata and not profile.supports_metadata:
            raise ServiceError(400, f"{profile.name} batches do not take metadata.", param="metadata")
        problem = metadata_problem(metadata)
        if problem is not None:
            raise ServiceError(400, f"{problem}.", param="metadata")
        problem = expires_after_problem(profile, output_expires_after, "output_expires_after")
        if problem is not None:
            raise ServiceError(400, f"{problem}.", param="output_expires_after")
        metadata = dict(metadata) if metadata is not None else None
        try:
            batch_plan = plan_from_metadata(metadata)
        except ValueError as exc:
            raise ServiceError(400, str(exc), param="metadata") from None
        file_row = None
        if isinstance(input_file_id, str) and FILE_ID_RE.match(input_file_id):
            file_row = self.store.read_one(f"SELECT * FROM files WHERE id = ? AND {_LIVE}", (input_file_id, int(time.time())))
        if file_row is None:
            raise ServiceError(400, f"Invalid input_file_id {input_file_id!r}: no such file.", param="input_file_id")
        if file_row["purpose"] != "batch":
            raise ServiceError(
                400,
                f"File {input_file_id} has purpose {file_row['purpose']!r}; a batch input needs purpose 'batch'.",
                param="input_file_id",
            )
        plan = self.faults.merged(batch_plan) if batch_plan is not None else self.faults
        settings = {
            "profile": profile_to_json(profile),
            "speed": self.speed,
            "time_scale": self.time_scale,
            "faults": plan.model_dump(mode="json"),
            "responder": self.responder_spec,
        }
        batch_id = new_batch_id()
        now = time.time()
        window = parse_window(completion_window) / self.time_scale
        with self.store.write() as db:
            db.execute(
                "INSERT INTO batches (id, status, endpoint, input_file_id, completion_window, created_at, expires_at,"
                " metadata, settings, deadline, output_expires_after, input_tokens, cached_tokens, output_tokens,"
                " reasoning_tokens) VALUES (?, 'validating', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
                (
                    batch_id,
                    endpoint,
                    input_file_id,
                    completion_window,
                    int(now),
                    int(now) + math.ceil(window),
                    orjson.dumps(metadata).decode() if metadata is not None else None,
                    orjson.dumps(settings).decode(),
                    now + window,
                    self.expiry_seconds(output_expires_after["seconds"]) if output_expires_after is not None else None,
                ),
            )
        created = self.get_batch(batch_id)  # as created: an instant worker may finish it at once
        self._worker.kick()
        return created

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return batch_json(self._batch_row(batch_id))

    def list_batches(self, *, after: str | None = None, before: str | None = None, limit: int = 20) -> dict[str, Any]:
        """A page of batches, newest first: older than ``after``, or (Anthropic's ``before_id``) the
        ``limit`` oldest of those newer than ``before``."""
        if not 1 <= limit <= 100:
            raise ServiceError(400, "limit must be between 1 and 100.", param="limit")
        if before is not None:
            rows = self.store.read(
                "SELECT * FROM batches WHERE seq > ? ORDER BY seq ASC LIMIT ?", (self._seq("batches", before), limit + 1)
            )
            return page([batch_json(r) for r in reversed(rows[:limit])], has_more=len(rows) > limit)
        if after is None:
            rows = self.store.read("SELECT * FROM batches ORDER BY seq DESC LIMIT ?", (limit + 1,))
        else:
            rows = self.store.read(
                "SELECT * FROM batches WHERE seq < ? ORDER BY seq DESC LIMIT ?", (self._seq("batches", after), limit + 1)
            )
        return page([batch_json(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def delete_batch(self, batch_id: str) -> None:
        """Forget a terminal batch and its files (Anthropic's delete; OpenAI has none)."""
        self._batch_row(batch_id)
        with self.store.write() as db:
            row = db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row["status"] not in ("completed", "failed", "expired", "cancelled"):
                raise ServiceError(400, f"Batch {batch_id} is still {row['status']}; only ended batches can be deleted.")
            file_ids = [row[k] for k in ("input_file_id", "output_file_id", "error_file_id") if row[k]]
            db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            for file_id in file_ids:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        for file_id in file_ids:
            self.store.file_path(file_id).unlink(missing_ok=True)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        self._batch_row(batch_id)
        with self.store.write() as db:
            status = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()["status"]
            if status in ("validating", "in_progress", "finalizing"):
                db.execute(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ?", (int(time.time()), batch_id)
                )
            elif status != "cancelling":
                raise ServiceError(400, f"Cannot cancel a batch with status '{status}'.", param="batch_id")
        cancelling = self.get_batch(batch_id)
        self._worker.kick()
        return cancelling

    # ---- helpers -------------------------------------------------------------------------
    def _file_row(self, file_id: str) -> Any:
        row = None
        if FILE_ID_RE.match(file_id):
            row = self.store.read_one(f"SELECT * FROM files WHERE id = ? AND {_LIVE}", (file_id, int(time.time())))
        if row is None:
            raise ServiceError(404, f"No such File object: {file_id}", param="id")
        return row

    def _batch_row(self, batch_id: str) -> Any:
        row = self.store.read_one("SELECT * FROM batches WHERE id = ?", (batch_id,)) if BATCH_ID_RE.match(batch_id) else None
        if row is None:
            raise ServiceError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return row

    def _sweep_expired(self) -> None:
        """Forget expired files and remove their bytes, but for the input of a batch still running."""
        now = int(time.time())
        # Read first: a listing takes the write lock only when something has expired.
        if self.store.read_one("SELECT 1 FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1", (now,)) is None:
            return
        with self.store.write() as db:
            rows = db.execute(
                "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?"
                f" AND id NOT IN (SELECT input_file_id FROM batches WHERE {ACTIVE_WHERE})",
                (now,),
            ).fetchall()
            db.executemany("DELETE FROM files WHERE id = ?", [(row["id"],) for row in rows])
        for row in rows:
            self.store.file_path(row["id"]).unlink(missing_ok=True)

    def _seq(self, table: str, object_id: str) -> int:
        row = self.store.read_one(f"SELECT seq FROM {table} WHERE id = ?", (object_id,))
        if row is None:
            raise ServiceError(400, f"Invalid 'after': no object with id {object_id!r}.", param="after")
        return int(row["seq"])


# ---- storing an upload -----------------------------------------------------------------------


def _display_name(filename: str) -> str:
    """The client's file name, for display only: last path component, no control characters."""
    name = str(filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or "upload"


def _copy_limited(source: Path | BinaryIO, dest: Path, limit: int) -> int:
    """Copy at most ``limit + 1`` bytes (enough to know the source is too big); returns bytes copied."""
    with dest.open("wb") as out:
        if isinstance(source, Path):
            with source.open("rb") as f:
                return _copy_stream(f, out, limit)
        return _copy_stream(source, out, limit)


def _copy_stream(src: BinaryIO, out: BinaryIO, limit: int) -> int:
    size = 0
    while size <= limit:
        chunk = src.read(min(_COPY_CHUNK, limit + 1 - size))
        if not chunk:
            break
        out.write(chunk)
        size += len(chunk)
    return size
