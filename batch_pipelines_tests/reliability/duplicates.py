"""Duplicate submissions counted from what the service received, for batches that carry no tags.

OpenAI-style batches carry the pipeline's tags (shard fingerprint, partition, attempt) in their
metadata, and a duplicate is a batch beyond the first for one such triple (``World.measure``).
Anthropic's carry none, so here a batch is known by its content: the requests the service was
sent (custom_id and body of each, in any order). Sending the same content again is sometimes
right: a shard whose every row failed goes again whole, as the next attempt. So each content is
allowed as many batches as the pipeline meant to submit it: the distinct (shard fingerprint,
partition, attempt) among the pipeline's own records of its batches (``RecordedBatches``: an
intent before the paid create, the batch id after) whose batch or shard has that content.
Anything beyond is a batch paid twice: two creates of one intent, an orphan nobody claimed, a
shard sent again while its first batch still ran.

Only batches that ran count, as with metadata: one refused before running costs nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from batch_pipelines.local_service.anthropic_objects import engine_batch_id
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.submission import ATTEMPT_TAG, FINGERPRINT_TAG, PARTITION_TAG
from batch_pipelines_tests.support.service import LocalService

__all__ = ["content_digest", "ran", "recorded_tags", "records", "unrecorded_duplicates"]


def ran(batch: Mapping[str, Any]) -> bool:
    """Whether a batch ran (one failed at validation ran nothing and cost nothing)."""
    return batch["status"] != "failed" or batch["in_progress_at"] is not None


def content_digest(lines: Iterable[bytes]) -> str:
    """What a batch asks, whatever the order or the serialization: its (custom_id, body) pairs."""
    pairs = []
    for raw in lines:
        if raw.strip():
            line = orjson.loads(raw)
            pairs.append(orjson.dumps([line["custom_id"], line.get("body")], option=orjson.OPT_SORT_KEYS))
    return hashlib.sha256(b"\n".join(sorted(pairs))).hexdigest()


def records(root: Path) -> list[dict[str, Any]]:
    """The pipeline's records of its batches under ``root`` (the recorded tags' folder)."""
    found = []
    for path in sorted(root.glob("**/*.json")):
        try:
            found.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    return found


def recorded_tags(root: Path) -> dict[str, dict[str, str]]:
    """The service's batch id -> the tags the pipeline recorded for it."""
    return {engine_batch_id(r["batch_id"]): r["tags"] for r in records(root) if r.get("batch_id")}


def unrecorded_duplicates(service: LocalService, batches: list[dict[str, Any]], root: Path) -> int:
    """Batches that ran beyond the ones the pipeline meant, each content counted on its own."""
    digests = {}
    for batch in batches:
        try:
            digests[batch["id"]] = content_digest(service.engine.file_content_path(batch["input_file_id"]).open("rb"))
        except ServiceError:  # the input is gone: nothing to compare (the service keeps it for Anthropic)
            continue
    meant: defaultdict[str, set[tuple[str | None, ...]]] = defaultdict(set)
    for record in records(root):
        tags = tuple(record["tags"].get(k) for k in (FINGERPRINT_TAG, PARTITION_TAG, ATTEMPT_TAG))
        engine_id = engine_batch_id(record["batch_id"]) if record.get("batch_id") else None
        if engine_id in digests:
            meant[digests[engine_id]].add(tags)
        shard = Path(record["shard"])
        if shard.exists():  # an intent still unresolved is meant too
            meant[content_digest(shard.open("rb"))].add(tags)
    sent = Counter(digests[b["id"]] for b in batches if ran(b) and b["id"] in digests)
    return sum(max(0, n - len(meant[digest])) for digest, n in sent.items())
