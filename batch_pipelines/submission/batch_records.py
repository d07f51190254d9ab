"""Batch tags for providers that keep none (Anthropic): recorded before paying, orphans proven.

OpenAI-style batches carry their tags in metadata, and a submit finds a batch it never recorded
by listing. Anthropic's carry nothing, so :class:`RecordedBatches` keeps the tags beside the
request files, in the storage every run worker of the deployment shares (a local folder or object
storage: each record is one file, written whole):

1. Before the paid create, an *intent*: the tags (pipeline, partition, shard fingerprint...),
   the shard, its request count, the digest of its custom_ids and the time.
2. After it, the intent gains the batch id: ``find_batches`` retrieves recorded batches and
   shows them with their recorded tags, so re-attaching, cancelling and keeping the first work
   as with metadata.
3. An intent without a batch (a crash between accept and record, a create whose answer was
   lost) is resolved when its tags are looked for. The candidates are the batches created since
   the intent with its request count that no record claims. None: the shard is proven not
   submitted and the intent is dropped, so it goes again. An ended candidate is proven by its
   custom_ids (its results hold exactly the shard's) and claimed, or ruled out. A candidate still
   running cannot be proven yet: it is shown as the shard's batch meanwhile (re-attached to, not
   paid for twice) and proven once it ends; ruled out then, the shard goes again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from batch_pipelines.providers import CLOCK_SKEW_SECONDS, Batch, BatchProvider, FileObject, ResultFiles
from batch_pipelines.providers.base import created_since
from batch_pipelines.storage import Storage
from batch_pipelines.submission.layout import partition_dir
from batch_pipelines.submission.tags import PARTITION_TAG, PIPELINE_TAG

__all__ = ["RecordedBatches"]

_ANY = "_any"


class RecordedBatches(BatchProvider):
    """``provider`` (which keeps no batch metadata) with its batches' tags recorded under ``folder`` of ``storage``."""

    def __init__(self, provider: BatchProvider, storage: Storage | Path, folder: str = "") -> None:
        self.provider = provider
        self.profile = provider.profile
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.folder = folder.strip("/")

    def __repr__(self) -> str:
        return f"RecordedBatches({self.provider!r})"

    # ---- what changes: submit records, find reads the records ----------------------------------
    def submit(
        self,
        path: Path,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Batch:
        tags = dict(metadata or {})
        custom_ids = _custom_ids(Path(path))
        record = {
            "tags": tags, "shard": str(Path(path)), "requests": len(custom_ids), "custom_ids": _digest(custom_ids),
            "since": time.time(), "batch_id": None,
        }  # fmt: skip
        where = f"{self._dir(tags)}/{uuid.uuid4().hex}.json"
        self._write(where, record)  # the intent, before any money moves
        batch = self.provider.submit(path, endpoint=endpoint, completion_window=completion_window, metadata=metadata, **options)
        self._write(where, {**record, "batch_id": batch.id})
        return batch.model_copy(update={"metadata": tags})

    def find_batches(self, metadata: Mapping[str, str], *, created_after: float | None = None) -> list[Batch]:
        records = [(path, record) for path, record in self._records(metadata) if all(record["tags"].get(k) == v for k, v in metadata.items())]
        claimed = {r["batch_id"] for _, r in self._records({}) if r["batch_id"]}
        found: list[Batch] = []
        for path, record in records:
            batch = self._recorded(record) if record["batch_id"] else self._resolve(path, record, claimed)
            if batch is not None:
                claimed.add(batch.id)
                found.append(batch.model_copy(update={"metadata": dict(record["tags"])}))
        return sorted(found, key=lambda b: b.created_at or 0, reverse=True)

    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        if metadata:
            return iter(self.find_batches(metadata))
        return self.provider.list_batches(page_size=page_size)

    # ---- the rest is the provider's ------------------------------------------------------------
    def retrieve_batch(self, batch_id: str) -> Batch:
        return self.provider.retrieve_batch(batch_id)

    def cancel_batch(self, batch_id: str) -> Batch:
        return self.provider.cancel_batch(batch_id)

    def download_results(self, batch: Batch, dest_dir: Path) -> ResultFiles:
        return self.provider.download_results(batch, dest_dir)

    def delete_batch_files(self, batch: Batch) -> list[str]:
        return self.provider.delete_batch_files(batch)

    def console_url(self, batch_id: str) -> str | None:
        return self.provider.console_url(batch_id)

    def upload_file(self, path: Path, **options: Any) -> FileObject:  # type: ignore[override]
        return self.provider.upload_file(path, **options)

    def create_batch(self, input_file_id: str, **options: Any) -> Batch:  # type: ignore[override]
        return self.provider.create_batch(input_file_id, **options)

    def download_file(self, file_id: str, dest: Path) -> Path:
        return self.provider.download_file(file_id, dest)

    def delete_file(self, file_id: str) -> None:
        self.provider.delete_file(file_id)

    def close(self) -> None:
        self.provider.close()

    # ---- records -------------------------------------------------------------------------------
    def _dir(self, tags: Mapping[str, str]) -> str:
        pipeline = tags.get(PIPELINE_TAG)
        partition = tags.get(PARTITION_TAG)
        return f"{self._under(pipeline or _ANY)}/{partition_dir(partition) if partition is not None else _ANY}"

    def _under(self, path: str) -> str:
        return f"{self.folder}/{path}" if self.folder else path

    def _records(self, metadata: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The records that can match ``metadata`` (its pipeline and partition narrow the folders read)."""
        pipeline, partition = metadata.get(PIPELINE_TAG), metadata.get(PARTITION_TAG)
        folder = self._under(pipeline) if pipeline else self.folder
        if pipeline and partition is not None:
            folder = f"{folder}/{partition_dir(partition)}"
        pattern = self._under(f"{pipeline or '*'}/{partition_dir(partition) if partition is not None else '*'}/*.json")
        for stored in self.storage.files(folder):
            if not fnmatch.fnmatchcase(stored.path, pattern):
                continue
            try:
                yield stored.path, orjson.loads(self.storage.read_bytes(stored.path))
            except (OSError, orjson.JSONDecodeError):
                continue  # removed meanwhile (an intent proven not submitted)

    def _write(self, path: str, record: Mapping[str, Any]) -> None:
        """Write a record whole or not at all (a reader never sees half of one)."""
        self.storage.write_bytes(path, orjson.dumps(record))

    def _recorded(self, record: Mapping[str, Any]) -> Batch | None:
        return self.provider.retrieve_batch(record["batch_id"])

    def _resolve(self, path: str, record: dict[str, Any], claimed: set[str]) -> Batch | None:
        """The batch of an intent that never learned its id: proven, provisional, or none."""
        since = record["since"] - CLOCK_SKEW_SECONDS
        candidates = [
            b
            for b in created_since(self.provider.list_batches(), since, lambda b: b.created_at)
            if b.id not in claimed and b.id not in record.get("ruled_out", ()) and b.request_counts.total == record["requests"]
        ]
        shard = Path(record["shard"])
        # Recorded with the intent; an intent older than that field proves by its shard, if still there.
        wanted = record.get("custom_ids") or (_digest(_custom_ids(shard)) if shard.exists() else None)
        unproven = None
        for batch in sorted(candidates, key=lambda b: b.created_at or 0):
            if not batch.is_terminal or wanted is None:  # a shard removed since cannot prove anything
                unproven = unproven or batch
                continue
            if self._custom_ids_digest(batch) == wanted:
                self._write(path, {**record, "batch_id": batch.id})  # proven: the shard's batch
                return batch
            record = {**record, "ruled_out": [*record.get("ruled_out", ()), batch.id]}
            self._write(path, record)
        if unproven is not None:
            return unproven  # cannot be proven before it ends: re-attached to meanwhile, never paid twice
        self.storage.delete([path])  # proven not submitted: the shard may go
        return None

    def _custom_ids_digest(self, batch: Batch) -> str:
        with tempfile.TemporaryDirectory() as folder:
            files = self.provider.download_results(batch, Path(folder))
            ids = []
            for result in (files.output_path, files.error_path):
                if result is not None and result.exists():
                    ids += [orjson.loads(raw)["custom_id"] for raw in result.read_bytes().splitlines() if raw.strip()]
        return _digest(ids)


def _custom_ids(shard: Path) -> list[str]:
    return [orjson.loads(raw)["custom_id"] for raw in shard.read_bytes().splitlines() if raw.strip()]


def _digest(custom_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()

