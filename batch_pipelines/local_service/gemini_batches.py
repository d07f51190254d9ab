"""Gemini Batch Mode over the engine: batches per model, requests inline or in a file, resumable uploads.

:class:`GeminiBatches` is what the HTTP face posing as Gemini (``gemini_app.py``) and the embedded
provider posing as Gemini (``providers/local_gemini.py``) call. A create checks synchronously
what it can (the body's shape, every request's ``contents``, unique keys, the input file), then
translates the requests into engine lines ``{custom_id: key, method, url: generateContent, body:
request + model}`` and creates an engine batch whose metadata keeps the Gemini batch's model,
displayName and input. The engine processes it as any other batch: same worker, faults and
responders; the objects and lines are translated back in ``gemini_objects.py``.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.gemini_objects import (
    ENDED,
    engine_batch_id,
    engine_file_id,
    file_json,
    operation_json,
    response_line,
    responses_batch_id,
    responses_file_name,
)
from batch_pipelines.profiles import GENERATE_CONTENT

__all__ = ["GeminiBatches", "UploadSession"]

#: The longest displayName kept (the engine's metadata value limit; Google documents none).
MAX_DISPLAY_NAME = 512
_DEFAULT_PAGE_SIZE = 50
_MIME_TYPE = "application/jsonl"


@dataclass
class UploadSession:
    """A resumable upload under way: its bytes so far land in ``path``."""

    path: Path
    size: int
    display_name: str
    received: int = 0


class GeminiBatches:
    """Gemini batches and files kept by ``engine``."""

    def __init__(self, engine: BatchEngine) -> None:
        self.engine = engine
        self._uploads: dict[str, UploadSession] = {}
        self._lock = threading.Lock()

    # ---- batches -------------------------------------------------------------------------
    def create(self, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST models/{model}:batchGenerateContent``: the operation of the batch created."""
        batch = body.get("batch")
        if not isinstance(batch, dict):
            raise ServiceError(400, "batch: Field required (an object with displayName and inputConfig).")
        display = batch.get("displayName", "")
        if not isinstance(display, str) or len(display) > MAX_DISPLAY_NAME:
            raise ServiceError(400, f"batch.displayName: a string of at most {MAX_DISPLAY_NAME} characters.")
        model = model.removeprefix("models/")
        if not model:
            raise ServiceError(400, "model: Field required.")
        config = batch.get("inputConfig")
        if not isinstance(config, dict) or not ({"fileName", "requests"} & set(config)):
            raise ServiceError(400, "batch.inputConfig: give fileName (an uploaded JSONL file) or requests (inline).")
        path = self.engine.store.tmp_path()
        try:
            with path.open("wb") as fh:
                if "fileName" in config:
                    source = str(config["fileName"])
                    try:
                        input_path = self.engine.file_content_path(engine_file_id(source))
                    except ServiceError:
                        raise ServiceError(400, f"batch.inputConfig.fileName: no file {source!r}.") from None
                    fh.writelines(_file_lines(input_path, model))
                else:
                    source = "inline"
                    fh.writelines(_inline_lines(config["requests"], model))
            file = self.engine.create_file("gemini_batch_requests.jsonl", "batch", path, move=True)
        finally:
            path.unlink(missing_ok=True)
        metadata = {"displayName": display, "model": f"models/{model}", "input": source}
        created = self.engine.create_batch(file["id"], GENERATE_CONTENT, self.engine.profile.default_window, metadata)
        return self._operation(created)

    def retrieve(self, name: str) -> dict[str, Any]:
        return self._operation(self.engine.get_batch(engine_batch_id(name)))

    def list(self, *, page_size: int | None = None, page_token: str | None = None) -> dict[str, Any]:
        """A page of batches, newest first: ``{operations, nextPageToken}`` (no token on the last page)."""
        size = _DEFAULT_PAGE_SIZE if page_size is None else page_size
        if size < 1:
            raise ServiceError(400, "pageSize must be positive.")
        after = engine_batch_id(page_token) if page_token else None
        page = self.engine.list_batches(after=after, limit=min(size, 100))
        answer: dict[str, Any] = {"operations": [self._operation(b) for b in page["data"]]}
        if page["has_more"] and page["data"]:
            answer["nextPageToken"] = page["data"][-1]["id"].removeprefix("batch_")
        return answer

    def cancel(self, name: str) -> dict[str, Any]:
        engine_id = engine_batch_id(name)
        if self.engine.get_batch(engine_id)["status"] not in ENDED:  # cancelling an ended batch changes nothing
            self.engine.cancel_batch(engine_id)
        return {}

    def delete(self, name: str) -> dict[str, Any]:
        engine_id = engine_batch_id(name)
        if self.engine.get_batch(engine_id)["status"] not in ENDED:
            raise ServiceError(400, f"Batch {name} is still running; cancel it before deleting it.")
        self.engine.delete_batch(engine_id)
        return {}

    # ---- files ---------------------------------------------------------------------------
    def start_upload(self, display_name: str, size: int) -> str:
        """Open a resumable upload of ``size`` bytes; its id (the ``upload_id`` of its URL)."""
        limit = self.engine.profile.max_file_bytes
        if size > limit:
            raise ServiceError(400, f"File of {size} bytes is over the {limit} bytes allowed.")
        upload_id = secrets.token_hex(16)
        with self._lock:
            self._uploads[upload_id] = UploadSession(self.engine.store.tmp_path(), size, display_name)
        return upload_id

    def upload_session(self, upload_id: str) -> UploadSession:
        with self._lock:
            session = self._uploads.get(upload_id)
        if session is None:
            raise ServiceError(404, "No upload session with that id (finished, or never started).")
        return session

    def finish_upload(self, upload_id: str) -> dict[str, Any]:
        """The uploaded file, stored: ``{"file": File}``."""
        with self._lock:
            session = self._uploads.pop(upload_id)
        try:
            if session.received != session.size:
                raise ServiceError(400, f"Upload finalized at {session.received} bytes; {session.size} were declared.")
            name = session.display_name if session.display_name.endswith(".jsonl") else f"{session.display_name or 'upload'}.jsonl"
            row = self.engine.create_file(name, "batch", session.path, move=True)
        finally:
            session.path.unlink(missing_ok=True)
        return {"file": self.get_file_by_id(row["id"])}

    def upload_file(self, display_name: str, source: Path) -> dict[str, Any]:
        """An upload in one step (the embedded provider has no wire to cut it in chunks)."""
        name = display_name if display_name.endswith(".jsonl") else f"{display_name or 'upload'}.jsonl"
        row = self.engine.create_file(name, "batch", source)
        return self.get_file_by_id(row["id"])

    def get_file(self, name: str) -> dict[str, Any]:
        return self.get_file_by_id(engine_file_id(name))

    def get_file_by_id(self, file_id: str) -> dict[str, Any]:
        row = self.engine.get_file(file_id)
        return file_json(row, row["filename"], _MIME_TYPE)

    def delete_file(self, name: str) -> dict[str, Any]:
        if responses_batch_id(name) is not None:
            raise ServiceError(400, f"{name} holds a batch's responses: it goes when the batch is deleted.")
        self.engine.delete_file(engine_file_id(name))
        return {}

    def download(self, name: str) -> Iterator[bytes]:
        """``GET files/{id}:download?alt=media``: an uploaded file's bytes, or a batch's response lines."""
        batch_id = responses_batch_id(name)
        if batch_id is None:
            path = self.engine.file_content_path(engine_file_id(name))
            return _chunks(path)
        batch = self.engine.get_batch(batch_id)
        if batch["status"] not in ENDED:
            raise ServiceError(400, f"Batch {name} has not ended; its responses are not ready.")
        return (line + b"\n" for line in self._response_lines(batch))

    # ---- helpers -------------------------------------------------------------------------
    def _operation(self, batch: dict[str, Any]) -> dict[str, Any]:
        source = (batch.get("metadata") or {}).get("input", "")
        total = batch["request_counts"]["total"] if batch["status"] != "validating" else self._input_rows(batch)
        output = None
        if batch["status"] in ENDED:
            records = list(self._records(batch)) if source == "inline" else None
            if records is not None:
                ok = sum(1 for succeeded, _ in records if succeeded)
                stats = {"successful": ok, "failed": len(records) - ok}
            else:
                kinds = Counter(succeeded for succeeded, _ in self._records(batch))
                stats = {"successful": kinds[True], "failed": kinds[False]}
            if batch["status"] != "failed":
                if records is not None:
                    output = {"inlinedResponses": {"inlinedResponses": [record for _, record in self._in_input_order(batch, records)]}}
                else:
                    output = {"responsesFile": responses_file_name(batch["id"])}
        else:
            counts = batch["request_counts"]
            stats = {"successful": counts["completed"], "failed": counts["failed"]}
        pending = max(0, total - stats["successful"] - stats["failed"])
        batch_stats = {
            "requestCount": total,
            "successfulRequestCount": stats["successful"],
            "failedRequestCount": stats["failed"],
            "pendingRequestCount": pending,
        }
        return operation_json(batch, batch_stats, output)

    def _records(self, batch: Mapping[str, Any]) -> Iterator[tuple[bool, dict[str, Any]]]:
        """Every response record of an ended batch, with its key: (succeeded, record)."""
        for raw in self._response_lines(batch):
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict):  # a line a fault plan corrupted: a garbled answer without a key
                yield False, {"response": raw.decode(errors="replace")}
                continue
            yield "response" in record, record

    def _in_input_order(self, batch: Mapping[str, Any], records: list[tuple[bool, dict[str, Any]]]) -> Iterator[tuple[bool, dict[str, Any]]]:
        """Inline responses come in the order of the requests, each with its metadata (its key); what a
        fault plan added (answers to keys never sent, garbled ones without a key) comes after."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        garbled = []
        for _, record in records:
            key = record.get("key")
            if isinstance(key, str):
                by_key.setdefault(key, []).append(record)
            else:
                garbled.append(record)
        with self.engine.file_content_path(batch["input_file_id"]).open("rb") as fh:
            keys = [orjson.loads(raw)["custom_id"] for raw in fh if raw.strip()]
        sent = set(keys)
        for key in [*keys, *(k for k in by_key if k not in sent)]:
            for record in by_key.pop(key, ()):
                answer = {k: v for k, v in record.items() if k != "key"}
                yield "response" in answer, {**answer, "metadata": {"key": key}}
        for record in garbled:
            yield False, record

    def _response_lines(self, batch: Mapping[str, Any]) -> Iterator[bytes]:
        """The Gemini response lines of an ended batch (not in input order), without line ends."""
        counts = batch["request_counts"]
        if batch["status"] == "failed":
            return
        if batch["status"] == "cancelled" and counts["completed"] + counts["failed"] == 0:
            # Cancelled before the engine ran (or even validated) it: every request was cancelled.
            with self.engine.file_content_path(batch["input_file_id"]).open("rb") as fh:
                for raw in fh:
                    if raw.strip():
                        line = {"custom_id": orjson.loads(raw)["custom_id"], "response": None, "error": {"code": "batch_cancelled"}}
                        _, record = response_line(line)
                        yield orjson.dumps({"key": line["custom_id"], **record})
            return
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            if not file_id:
                continue
            with self.engine.file_content_path(file_id).open("rb") as fh:
                for raw in fh:
                    if not raw.strip():
                        continue
                    try:
                        line = orjson.loads(raw)
                        _, record = response_line(line)
                        yield orjson.dumps({"key": line["custom_id"], **record})
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        yield raw.rstrip(b"\n")  # a line a fault plan corrupted: passed on as it is

    def _input_rows(self, batch: Mapping[str, Any]) -> int:
        with self.engine.file_content_path(batch["input_file_id"]).open("rb") as fh:
            return sum(1 for raw in fh if raw.strip())


def _engine_line(key: str, request: dict[str, Any], model: str) -> bytes:
    # The model first, as request lines carry it: the body is byte for byte the line the client's
    # shard held before its model went into the URL.
    body = {"model": model, **{k: v for k, v in request.items() if k != "model"}}
    return orjson.dumps({"custom_id": key, "method": "POST", "url": GENERATE_CONTENT, "body": body}) + b"\n"


def _request_problem(request: Any) -> str | None:
    """Why ``request`` is not a GenerateContentRequest, or None."""
    if not isinstance(request, dict):
        return "request: Field required (a GenerateContentRequest)."
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "request.contents: Field required (a non-empty list)."
    for j, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
            return f"request.contents[{j}].parts: Field required (a non-empty list)."
        if content.get("role", "user") not in ("user", "model"):
            return f"request.contents[{j}].role: must be 'user' or 'model'."
    return None


def _inline_lines(requests: Any, model: str) -> Iterator[bytes]:
    """Engine lines of inline ``{"requests": [{request, metadata}]}``; ServiceError(400) naming the first problem."""
    items = requests.get("requests") if isinstance(requests, dict) else None
    if not isinstance(items, list) or not items:
        raise ServiceError(400, "batch.inputConfig.requests.requests: Field required (a non-empty list).")
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"batch.inputConfig.requests.requests[{i}]"
        if not isinstance(item, dict):
            raise ServiceError(400, f"{where}: must be an object with request and metadata.")
        problem = _request_problem(item.get("request"))
        if problem:
            raise ServiceError(400, f"{where}.{problem}")
        metadata = item.get("metadata") or {}
        key = metadata.get("key") if isinstance(metadata, dict) else None
        key = key if isinstance(key, str) and key else f"request-{i + 1}"
        if key in seen:
            raise ServiceError(400, f"{where}.metadata.key: duplicate key {key!r}; keys must be unique within a batch.")
        seen.add(key)
        yield _engine_line(key, item["request"], model)


def _file_lines(path: Path, model: str) -> Iterator[bytes]:
    """Engine lines of a JSONL input file of ``{"key", "request"}`` lines, streamed; ServiceError(400) naming a bad line."""
    seen: set[str] = set()
    count = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ServiceError(400, f"Input file line {n} is not JSON.") from None
            key = line.get("key") if isinstance(line, dict) else None
            if not isinstance(key, str) or not key:
                raise ServiceError(400, f"Input file line {n}: key must be a non-empty string.")
            problem = _request_problem(line.get("request"))
            if problem:
                raise ServiceError(400, f"Input file line {n}: {problem}")
            if key in seen:
                raise ServiceError(400, f"Input file line {n}: duplicate key {key!r}; keys must be unique within a batch.")
            seen.add(key)
            count += 1
            yield _engine_line(key, line["request"], model)
    if not count:
        raise ServiceError(400, "The input file holds no requests.")


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk
