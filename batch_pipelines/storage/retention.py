"""Deleting the files of a pipeline older than a retention period, never those still in use.

A partition folder holds its attempts (``attempt-<n>/``: request shards, id map, manifest,
values) and its ``downloads/``. Under one listing of the pipeline's folder, a file goes when it
is older than the retention, unless it is

- in the partition's first attempt (what its requests asset built last, read by every later
  submit and results run and by the next build) or its newest attempt;
- in a partition with any file written within the retention, other than the partitions the
  caller knows have no round in flight: such a partition may have batches out, whose results
  join every attempt and download;
- in a folder the caller names as not a partition's (the reuse store: it keeps its own retention).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from batch_pipelines.storage.store import Storage, StoredFile

__all__ = ["Cleanup", "clean_up"]

_DAY = 86_400
_ATTEMPT = re.compile(r"attempt-(\d+)")


@dataclass(frozen=True)
class Cleanup:
    """What a clean-up deleted: how many files, how many bytes, in how many partition folders."""

    files: int = 0
    bytes: int = 0
    partitions: int = 0


def clean_up(
    storage: Storage,
    folder: str,
    *,
    retention_days: float,
    settled: Collection[str] = (),
    not_partitions: Collection[str] = (),
    now: float | None = None,
) -> Cleanup:
    """Delete what is older than ``retention_days`` under ``folder`` (a pipeline's), as the module says.

    ``settled``: partition folder names known to have no round in flight (a results step's own);
    ``not_partitions``: folder names under ``folder`` left alone.
    """
    if retention_days <= 0:
        raise ValueError(f"retention_days must be positive, not {retention_days}")
    cutoff = (time.time() if now is None else now) - retention_days * _DAY
    base = folder.strip("/")
    by_partition: dict[str, list[tuple[list[str], StoredFile]]] = defaultdict(list)
    for stored in storage.files(base):
        parts = stored.path[len(base) :].strip("/").split("/")
        if len(parts) >= 2 and parts[0] not in not_partitions:
            by_partition[parts[0]].append((parts[1:], stored))
    doomed: list[StoredFile] = []
    partitions = 0
    for partition, files in by_partition.items():
        if partition not in settled and any(f.modified >= cutoff for _, f in files):
            continue  # maybe in flight: left whole
        attempts = [int(m.group(1)) for parts, _ in files if (m := _ATTEMPT.fullmatch(parts[0]))]
        kept = {f"attempt-{n}" for n in (1, max(attempts, default=1))}
        old = [f for parts, f in files if f.modified < cutoff and parts[0] not in kept]
        if old:
            doomed += old
            partitions += 1
    storage.delete(f.path for f in doomed)
    return Cleanup(files=len(doomed), bytes=sum(f.size for f in doomed), partitions=partitions)
