"""The Dagster instances tests run on: SQLite files in a temporary folder, or a PostgreSQL database.

The ``instance`` fixture (conftest) opens one with :func:`open_instance`. A test or module marked
:data:`on_every_storage` runs once per storage in :data:`STORAGES` (``[sqlite]``, ``[postgres]``),
so what a deployment keeps in PostgreSQL (runs, the event log, the sensor's key-value state, ticks)
is proven there too; unmarked tests run on SQLite alone.

SQLite instances live in :func:`scratch_dir` (memory) where the machine has one: each event Dagster
stores is a committed transaction, and an fsync per event made event-heavy tests (a sensor storing
1,000 observations) spend most of their time waiting on the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from batch_pipelines_tests.support.postgres import PostgresServer

__all__ = ["STORAGES", "on_every_storage", "open_instance", "postgres_overrides", "scratch_dir"]

STORAGES = ("sqlite", "postgres")
on_every_storage = pytest.mark.storages(*STORAGES)


def scratch_dir() -> str | None:
    """A memory filesystem for throwaway instances (Linux's /dev/shm), or None for the default temp dir."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def postgres_overrides(url: str) -> dict[str, Any]:
    """dagster.yaml's ``storage`` for the database of ``url`` (runs, event log and schedules in one)."""
    return {"storage": {"postgres": {"postgres_url": url}}}


def _migrate(url: str) -> None:
    """Dagster creates and migrates its tables when an instance first opens the database."""
    with dg.instance_for_test(overrides=postgres_overrides(url)):
        pass


@contextmanager
def open_instance(storage: str, postgres: Callable[[], PostgresServer]) -> Iterator[dg.DagsterInstance]:
    """A temporary instance on ``storage``; ``postgres()`` is the server, asked for only when needed."""
    if storage == "sqlite":
        with tempfile.TemporaryDirectory(dir=scratch_dir(), ignore_cleanup_errors=True) as home:
            with dg.instance_for_test(temp_dir=home) as instance:
                yield instance
        return
    if storage != "postgres":
        raise ValueError(f"unknown storage {storage!r}; known: {', '.join(STORAGES)}")
    server = postgres()
    url = server.fresh_database(_migrate)
    try:
        with dg.instance_for_test(overrides=postgres_overrides(url)) as instance:
            yield instance
    finally:
        server.drop(url)
