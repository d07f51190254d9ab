"""Gemini Batch Mode (the Developer API) behind the provider interface.

The shape differs from OpenAI's in four ways, and the interface hides all four:

- One model per batch, in its URL: :meth:`GeminiProvider.submit` reads the shard (the same
  ``{custom_id, method, url, body}`` lines every provider's shards have; the profile keeps one
  model per file), takes the model out of every body and creates the batch at
  ``models/{model}:batchGenerateContent``.
- Requests inline or in a file: a shard of at most the profile's ``max_inline_bytes`` (20 MB)
  goes inline, each request with ``metadata.key`` = its custom_id; a larger one is uploaded
  (Google's resumable protocol, 8 MiB chunks) as JSONL ``{"key", "request"}`` lines and the
  batch names the file. Either way the results come back as one file of ``{"key", "response" |
  "error"}`` lines (inline answers are written in that form), read by the Gemini line parser
  (``results/line_formats.py``).
- No metadata, but a free-text ``displayName``: the batch's tags (pipeline, partition, shard
  fingerprint...) travel in it, URL-encoded, and are read back as :attr:`Batch.metadata`. So a
  create whose answer was lost, or a crash between the accept and the record, finds the batch
  again by its tags (a list, as for OpenAI-style providers) instead of paying twice.
- Long-running operations: ``{name: batches/ID, metadata: {state, batchStats, output...}, done}``,
  normalized by :func:`~batch_pipelines.providers.gemini_wire.parse_operation`; ``batches/`` is dropped from the id (it names files).

The key comes from ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``, and is sent as
``x-goog-api-key``. The calls go through :class:`GeminiApi`: over HTTP here, or into the local
engine (``local_gemini.py``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from pydantic import SecretStr

from batch_pipelines.profiles import ProviderProfile, endpoint_problem, get_profile, window_problem
from batch_pipelines.providers.base import CLOCK_SKEW_SECONDS, BatchProvider, created_since
from batch_pipelines.providers.errors import APIResponseValidationError, NotFoundError, ProviderError
from batch_pipelines.providers.http import DEFAULT_TIMEOUT, HttpTransport, profile_transport, write_atomically
from batch_pipelines.providers.retry_policy import RetryPolicy
from batch_pipelines.providers.gemini_wire import display_name, inline_item, keyed_answer, keyed_requests, parse_operation
from batch_pipelines.providers.types import Batch, FileObject, ResultFiles, rfc3339_epoch

__all__ = [
    "GeminiApi",
    "GeminiProvider",
    "UPLOAD_CHUNK_BYTES",
]

#: The resumable upload's chunk: the SDK's 8 MiB.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
#: The longest displayName sent (the local service's limit; Google documents none).
MAX_DISPLAY_NAME = 512
_KEY_HEADER = "x-goog-api-key"


class GeminiApi(Protocol):
    """The Batch Mode and Files calls, answering Gemini's JSON objects."""

    def create(self, model: str, body: bytes, *, recover: Any = None) -> dict[str, Any]: ...

    def retrieve(self, name: str) -> dict[str, Any]: ...

    def list_page(self, *, page_size: int, page_token: str | None) -> dict[str, Any]: ...

    def cancel(self, name: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def upload(self, path: Path, *, display_name: str) -> dict[str, Any]: ...

    def download(self, name: str, dest: Path) -> Path: ...

    def delete_file(self, name: str) -> None: ...

    def close(self) -> None: ...


class _HttpGemini:
    """The calls over HTTP: the shared transport (retries, typed errors, the guarded key)."""

    def __init__(self, transport: HttpTransport) -> None:
        self._http = transport
        # Uploads go to {root}/upload/{version}/files, beside the versioned base URL.
        root, _, version = transport.base_url.rstrip("/").rpartition("/")
        self._upload_url = f"{root}/upload/{version}/files"

    def create(self, model: str, body: bytes, *, recover: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        return self._http.request("POST", f"models/{model}:batchGenerateContent", content=body, headers=headers, recover=recover)

    def retrieve(self, name: str) -> dict[str, Any]:
        return self._http.request("GET", name)

    def list_page(self, *, page_size: int, page_token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"pageSize": page_size} | ({"pageToken": page_token} if page_token else {})
        return self._http.request("GET", "batches", params=params)

    def cancel(self, name: str) -> None:
        self._http.request("POST", f"{name}:cancel")

    def delete(self, name: str) -> None:
        self._http.request("DELETE", name)

    def upload(self, path: Path, *, display_name: str) -> dict[str, Any]:
        size = path.stat().st_size
        start = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            "Content-Type": "application/json",
        }
        file = {"file": {"displayName": display_name, "mimeType": "application/jsonl", "sizeBytes": str(size)}}
        session = self._http.exchange("POST", self._upload_url, _upload_url_of, content=orjson.dumps(file), headers=start)
        offset = 0
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(UPLOAD_CHUNK_BYTES)
                last = offset + len(chunk) >= size
                headers = {"X-Goog-Upload-Command": "upload, finalize" if last else "upload", "X-Goog-Upload-Offset": str(offset)}
                # A chunk whose answer was lost may have arrived: the session says how much it holds
                # before the chunk is sent again (at an offset it has passed, it would be refused).
                recover = None if last else partial(self._chunk_arrived, session, offset + len(chunk))
                status, answer = self._http.exchange("POST", session, _upload_status, content=chunk, headers=headers, recover=recover)
                offset += len(chunk)
                if last:
                    if status != "final" or not isinstance(answer.get("file"), dict):
                        raise APIResponseValidationError(f"the upload of {path.name} did not finalize (status {status!r})")
                    return answer["file"]
                if status != "active":
                    raise APIResponseValidationError(f"the upload of {path.name} stopped at {offset} bytes (status {status!r})")

    def _chunk_arrived(self, session: str, end: int) -> tuple[str, dict[str, Any]] | None:
        """The answer a chunk ending at ``end`` would have had, if the session holds it; else None (send it again)."""
        headers = {"X-Goog-Upload-Command": "query"}
        received = self._http.exchange("POST", session, lambda r: r.headers.get("x-goog-upload-size-received"), headers=headers)
        return ("active", {}) if received is not None and received.isdigit() and int(received) >= end else None

    def download(self, name: str, dest: Path) -> Path:
        return self._http.download(f"{name}:download?alt=media", dest)

    def delete_file(self, name: str) -> None:
        self._http.request("DELETE", name)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"_HttpGemini(base_url={self._http.base_url!r})"


def _upload_url_of(response: httpx.Response) -> str:
    url = response.headers.get("x-goog-upload-url")
    if not url:
        raise APIResponseValidationError("the upload's start was answered without an X-Goog-Upload-URL")
    return url


def _upload_status(response: httpx.Response) -> tuple[str | None, dict[str, Any]]:
    content = response.read()
    try:
        body = orjson.loads(content) if content.strip() else {}
    except orjson.JSONDecodeError:
        body = {}
    return response.headers.get("x-goog-upload-status"), body if isinstance(body, dict) else {}


class GeminiProvider(BatchProvider):
    """Gemini Batch Mode.

    Args:
        profile: ``"gemini"`` or a :class:`ProviderProfile` of the ``gemini`` protocol.
        api_key: the key; defaults to ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``. Never logged or shown.
        base_url: overrides the profile's (``https://generativelanguage.googleapis.com/v1beta``),
            e.g. the local service's ``http://127.0.0.1:8787/v1beta`` (or ``/v1``).
        max_retries, retry, timeout: as for the OpenAI-compatible client.
        api: the calls themselves, when not over HTTP (the local provider posing as Gemini).
    """

    def __init__(
        self,
        profile: str | ProviderProfile = "gemini",
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        api: GeminiApi | None = None,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if api is None:
            transport = profile_transport(
                self.profile, api_key=api_key or _key_from_env(self.profile), base_url=base_url, max_retries=max_retries,
                retry=retry, timeout=timeout, key_header=_KEY_HEADER,
            )  # fmt: skip
            api = _HttpGemini(transport)
        self._api = api

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile.name!r}, api={self._api!r})"

    def close(self) -> None:
        self._api.close()

    # ---- the high-level calls this shape needs -----------------------------------------------
    def submit(
        self,
        path: Path,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Batch:
        """Create the shard's batch at its model, inline or from an uploaded file by its size; ``metadata``
        travels in the displayName."""
        path = Path(path)
        problem = endpoint_problem(self.profile, endpoint) or window_problem(self.profile, completion_window or self.profile.default_window)
        if problem:
            raise ValueError(problem)
        name = display_name(metadata) if metadata else path.stem
        if len(name) > MAX_DISPLAY_NAME:
            raise ValueError(f"the tags of {path.name} make a {len(name)}-character displayName; at most {MAX_DISPLAY_NAME} are sent")
        with tempfile.TemporaryDirectory(prefix="gemini-") as tmp:
            keyed = Path(tmp) / f"{path.stem}.jsonl"
            model, size = keyed_requests(path, keyed, self.profile)
            if size <= (self.profile.max_inline_bytes or 0):
                with keyed.open("rb") as fh:
                    items = b",".join(inline_item(raw) for raw in fh)
                body = b'{"batch":{"displayName":' + orjson.dumps(name) + b',"inputConfig":{"requests":{"requests":['
                body += items + b"]}}}}"
            else:
                uploaded = self._api.upload(keyed, display_name=path.name)
                body = orjson.dumps({"batch": {"displayName": name, "inputConfig": {"fileName": uploaded["name"]}}})
        started = time.time()

        def find_created() -> dict[str, Any] | None:
            # The create may have taken effect although its answer was lost: a batch of this
            # displayName created since is it (its tags are this shard's), not to be paid twice.
            since = started - CLOCK_SKEW_SECONDS
            for batch in created_since(self.list_batches(), since, lambda b: b.created_at):
                if batch.raw.get("metadata", {}).get("displayName") == name:
                    return batch.raw
            return None

        return parse_operation(self._api.create(model, body, recover=find_created))

    def download_results(self, batch: Batch, dest_dir: Path) -> ResultFiles:
        """A terminal batch's responses as one file of ``{"key", "response" | "error"}`` lines (every outcome in it)."""
        path = dest_dir / f"{batch.id}.output.jsonl"
        if batch.is_terminal and not path.exists():
            if batch.output_file_id:
                self._api.download(batch.output_file_id, path)
            else:
                # Inline answers come with the batch itself (left out of Batch.raw: they can be 20 MB).
                output = (self._api.retrieve(_batch_name(batch.id)).get("metadata") or {}).get("output") or {}
                answers = (output.get("inlinedResponses") or {}).get("inlinedResponses")
                if answers is not None:
                    write_atomically(path, (keyed_answer(answer) for answer in answers))
        return ResultFiles(batch_id=batch.id, output_path=path if path.exists() else None, error_path=None)

    def delete_batch(self, batch_id: str) -> None:
        """Delete an ended batch (its responses with it)."""
        self._api.delete(_batch_name(batch_id))

    def delete_batch_files(self, batch: Batch) -> list[str]:
        """Delete the input file a terminal batch was created from (its responses go with the batch)."""
        if not batch.input_file_id:
            return []
        self.delete_file(batch.input_file_id)
        return [batch.input_file_id]

    # ---- the low-level calls -----------------------------------------------------------------
    def retrieve_batch(self, batch_id: str) -> Batch:
        return parse_operation(self._api.retrieve(_batch_name(batch_id)))

    def cancel_batch(self, batch_id: str) -> Batch:
        self._api.cancel(_batch_name(batch_id))
        return self.retrieve_batch(batch_id)

    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        """Every batch, newest first, following ``nextPageToken``; only those whose tags hold ``metadata``."""
        token: str | None = None
        while True:
            page = self._api.list_page(page_size=page_size, page_token=token)
            for item in page.get("operations") or []:
                batch = parse_operation(item)
                if not metadata or all(batch.metadata.get(k) == v for k, v in metadata.items()):
                    yield batch
            next_token = page.get("nextPageToken")
            if not next_token:
                return
            if next_token == token:
                raise APIResponseValidationError(f"the list's nextPageToken does not advance ({next_token!r})")
            token = next_token

    def upload_file(self, path: Path, *, purpose: str = "batch") -> FileObject:
        """Upload a JSONL file of ``{"key", "request"}`` lines (resumable, in chunks)."""
        file = self._api.upload(Path(path), display_name=Path(path).name)
        return FileObject(id=file["name"], bytes=int(file.get("sizeBytes") or 0), filename=file.get("displayName"), purpose=purpose,
                          created_at=rfc3339_epoch(file.get("createTime")), raw=file)  # fmt: skip

    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Batch:
        raise ProviderError(f"{self.profile.name} batches are created per model, which the shard's lines name: use submit()")

    def download_file(self, file_id: str, dest: Path) -> Path:
        return self._api.download(file_id, Path(dest))

    def delete_file(self, file_id: str) -> None:
        try:
            self._api.delete_file(file_id)
        except NotFoundError:
            pass  # already gone: the outcome the caller wanted


def _batch_name(batch_id: str) -> str:
    return batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"


def _key_from_env(profile: ProviderProfile) -> SecretStr | None:
    """``GEMINI_API_KEY``, else ``GOOGLE_API_KEY`` (the profile's variables in order); None when neither is set."""
    for env in (profile.api_key_env, *profile.api_key_fallback_envs):
        value = os.environ.get(env) if env else None
        if value:
            return SecretStr(value)
    if profile.api_key_fallback_envs:
        names = " or ".join(e for e in (profile.api_key_env, *profile.api_key_fallback_envs) if e)
        raise ProviderError(f"no API key for provider {profile.name!r}: pass api_key= or set {names}")
    return None

