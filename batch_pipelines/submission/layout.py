"""Where one partition's files live: request files per attempt, downloaded results.

``<storage root>/<pipeline>/<partition folder>/attempt-<n>/`` holds an attempt's request shards
and manifest, ``downloads/`` the batches' result files;
``<storage root>/<pipeline>/_reuse/`` the answers every partition may reuse (no partition folder
starts with an underscore but the unpartitioned one, ``__all__``).
Folders are deterministic, so every run of the partition finds what an earlier run wrote. The
root here is a local folder: the storage itself, or a run's working copy of it (see
:mod:`batch_pipelines.storage.working_copy`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from batch_pipelines.submission.tags import UNPARTITIONED

__all__ = ["REUSE_FOLDER", "PartitionFolder", "partition_dir", "reuse_dir"]

#: The reuse store's folder under a pipeline's.
REUSE_FOLDER = "_reuse"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def partition_dir(partition: str | None) -> str:
    """A partition key as a folder name: itself when safe, else a safe slug plus a short hash."""
    if partition is None:
        return UNPARTITIONED
    if _SAFE.fullmatch(partition):
        return partition
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", partition)[:60]
    return f"{slug}-{hashlib.sha256(partition.encode()).hexdigest()[:12]}"


def reuse_dir(storage_root: Path, pipeline: str) -> Path:
    """Where a pipeline's reuse store lives: beside its partitions, shared by all of them."""
    return Path(storage_root) / pipeline / REUSE_FOLDER


@dataclass(frozen=True)
class PartitionFolder:
    """The files of one partition of one pipeline under a storage root."""

    root: Path

    @classmethod
    def of(cls, storage_root: Path, pipeline: str, partition: str | None) -> PartitionFolder:
        return cls(Path(storage_root) / pipeline / partition_dir(partition))

    def attempt(self, attempt: int) -> Path:
        return self.root / f"attempt-{attempt}"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"
