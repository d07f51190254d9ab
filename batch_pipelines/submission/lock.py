"""One submitter at a time for a partition.

Held while the partition's batches are listed and the missing ones created, so two runs of the
same partition (a retried run and a backfill, two clicks) never both create a batch for one shard:
the second lists after the first created, and re-attaches. Held too while the request files are
written, so a submit never reads them half rewritten. It is an advisory lock on a file in the
storage directory, which every run worker of a deployment shares, so it covers one deployment;
the OS frees it if its holder dies. Beyond it, :meth:`Submitter.keep_first` reconciles after the
fact.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["partition_lock"]


@contextmanager
def partition_lock(path: Path) -> Iterator[None]:
    """Hold the advisory lock on ``path`` (created with its folder if absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
