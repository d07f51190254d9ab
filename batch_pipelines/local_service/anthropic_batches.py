"""Anthropic's Message Batches over the engine: what the service posing as Anthropic does.

:class:`MessageBatches` is called by both faces, like the engine itself: the HTTP routes under
``/v1/messages/batches`` (``anthropic_app.py``) and the embedded provider posing as Anthropic.

A create is checked at once, as Anthropic checks it (a malformed batch is a synchronous 400, it
never fails later): at most the profile's request count and bytes, every custom_id matching the
profile's rule and unique, every ``params`` a Messages request with ``model``, ``max_tokens`` and
``messages``. The requests then become an engine input file (``{custom_id, method, url: /v1/messages,
body: params}`` lines) and an engine batch, processed by the same worker, faults and responders
as every other batch; its answers are shown in Anthropic's objects (``anthropic_objects.py``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from batch_pipelines.local_service.anthropic_objects import (
    engine_batch_id,
    message_batch_id,
    message_batch_json,
    result_line,
)
from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.profiles import MESSAGES

__all__ = ["MessageBatches"]

_ENDED = ("completed", "failed", "expired", "cancelled")


class MessageBatches:
    """Message Batches kept by ``engine``. ``results_base`` (the API's base URL as the client
    reached it) is what a batch's ``results_url`` starts with: the SDK fetches it verbatim."""

    def __init__(self, engine: BatchEngine) -> None:
        self.engine = engine
        self._custom_id = re.compile(engine.profile.custom_id_pattern)

    # ---- calls ---------------------------------------------------------------------------
    def create(self, body: Mapping[str, Any], results_base: str) -> dict[str, Any]:
        lines = self._request_lines(body)
        path = self.engine.store.tmp_path()
        try:
            with path.open("wb") as fh:
                fh.writelines(lines)
            file = self.engine.create_file("message_batch_requests.jsonl", "batch", path, move=True)
        finally:
            path.unlink(missing_ok=True)
        window = self.engine.profile.default_window
        batch = self.engine.create_batch(file["id"], MESSAGES, window)
        return self._json(batch, results_base)

    def retrieve(self, batch_id: str, results_base: str) -> dict[str, Any]:
        return self._json(self.engine.get_batch(self._engine_id(batch_id)), results_base)

    def list(self, results_base: str, *, limit: int = 20, after_id: str | None = None, before_id: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise ServiceError(400, "limit: must be between 1 and 1000.")
        after = self._engine_id(after_id) if after_id else None
        before = self._engine_id(before_id) if before_id else None
        page = self.engine.list_batches(after=after, before=before, limit=min(limit, 100))
        data = [self._json(batch, results_base) for batch in page["data"]]
        return {
            "data": data,
            "has_more": page["has_more"],
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def cancel(self, batch_id: str, results_base: str) -> dict[str, Any]:
        engine_id = self._engine_id(batch_id)
        if self.engine.get_batch(engine_id)["status"] not in _ENDED:  # canceling an ended batch changes nothing
            self.engine.cancel_batch(engine_id)
        return self._json(self.engine.get_batch(engine_id), results_base)

    def delete(self, batch_id: str) -> dict[str, Any]:
        engine_id = self._engine_id(batch_id)
        if self.engine.get_batch(engine_id)["status"] not in _ENDED:
            raise ServiceError(400, f"Batch {batch_id} cannot be deleted while it is still in progress; cancel it first.")
        self.engine.delete_batch(engine_id)
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> Iterator[bytes]:
        """The result lines of an ended batch (not in input order), one ``\\n``-ended line each."""
        batch = self.engine.get_batch(self._engine_id(batch_id))
        if batch["status"] not in _ENDED:
            raise ServiceError(400, f"Batch {batch_id} has not ended yet; its results are not available.")
        for _, line in self._result_lines(batch):
            yield line + b"\n"

    # ---- helpers -------------------------------------------------------------------------
    def _engine_id(self, batch_id: str) -> str:
        engine_id = engine_batch_id(batch_id)
        if engine_id == "unknown":
            raise ServiceError(404, f"No message batch found with id '{batch_id}'.")
        return engine_id

    def _json(self, batch: dict[str, Any], results_base: str) -> dict[str, Any]:
        if batch["status"] in _ENDED:
            counts: Counter[str] = Counter(kind for kind, _ in self._result_lines(batch))
        else:
            done = batch["request_counts"]
            # The engine counts rows once it has validated the file; Anthropic's from the create on.
            total = done["total"] if batch["status"] != "validating" else self._input_rows(batch)
            counts = Counter(succeeded=done["completed"], errored=done["failed"], processing=total - done["completed"] - done["failed"])
        url = f"{results_base}/messages/batches/{message_batch_id(batch['id'])}/results"
        return message_batch_json(batch, counts, url)

    def _result_lines(self, batch: Mapping[str, Any]) -> Iterator[tuple[str, bytes]]:
        if batch["status"] in ("cancelled", "failed") and batch["request_counts"]["completed"] + batch["request_counts"]["failed"] == 0:
            yield from self._unrun_lines(batch)
            return
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            if not file_id:
                continue
            with self.engine.file_content_path(file_id).open("rb") as fh:
                for raw in fh:
                    if raw.strip():
                        try:
                            yield result_line(orjson.loads(raw))
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            yield "errored", raw.rstrip(b"\n")  # a line a fault plan corrupted: passed on as it is

    def _input_rows(self, batch: Mapping[str, Any]) -> int:
        with self.engine.file_content_path(batch["input_file_id"]).open("rb") as fh:
            return sum(1 for raw in fh if raw.strip())

    def _unrun_lines(self, batch: Mapping[str, Any]) -> Iterator[tuple[str, bytes]]:
        """A line per request of a batch that ended before any ran: canceled while the engine was
        still validating it, or refused by a fault plan (every request errored, as Anthropic has
        no failed batches)."""
        errors = (batch.get("errors") or {}).get("data") or [{}]
        message = errors[0].get("message") or "the batch was refused"
        end = {"code": "batch_cancelled"} if batch["status"] == "cancelled" else None
        with self.engine.file_content_path(batch["input_file_id"]).open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    custom_id = orjson.loads(raw)["custom_id"]
                    if end is not None:
                        line = {"custom_id": custom_id, "response": None, "error": end}
                    else:
                        line = {"custom_id": custom_id, "response": {"status_code": 400, "body": {"error": {"message": message}}}}
                    yield result_line(line)

    def _request_lines(self, body: Mapping[str, Any]) -> list[bytes]:
        """The engine input lines of a create body; ServiceError(400) naming the first problem."""
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ServiceError(400, "requests: Field required (a non-empty list of {custom_id, params}).")
        most = self.engine.profile.max_requests_per_file
        if most is not None and len(requests) > most:
            raise ServiceError(400, f"requests: a batch holds at most {most} requests, got {len(requests)}.")
        seen: set[str] = set()
        lines = []
        for i, item in enumerate(requests):
            where = f"requests.{i}"
            if not isinstance(item, dict):
                raise ServiceError(400, f"{where}: must be an object with custom_id and params.")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not self._custom_id.match(custom_id):
                raise ServiceError(400, f"{where}.custom_id: String should match pattern '{self._custom_id.pattern}'.")
            if custom_id in seen:
                raise ServiceError(400, f"{where}.custom_id: Duplicate custom_id {custom_id!r}; custom_ids must be unique within a batch.")
            seen.add(custom_id)
            params = item.get("params")
            if not isinstance(params, dict):
                raise ServiceError(400, f"{where}.params: Field required.")
            problem = _params_problem(params)
            if problem:
                raise ServiceError(400, f"{where}.params.{problem}")
            lines.append(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": MESSAGES, "body": params}) + b"\n")
        return lines


def _params_problem(params: Mapping[str, Any]) -> str | None:
    """Why ``params`` is not a Messages request, or None."""
    if not isinstance(params.get("model"), str) or not params["model"]:
        return "model: Field required."
    max_tokens = params.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return "max_tokens: Field required (a positive integer)."
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required (a non-empty list)."
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{j}.role: Input should be 'user' or 'assistant'."
    if params.get("stream"):
        return "stream: batch requests cannot stream."
    return None
