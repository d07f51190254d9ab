"""The Dagster instances tests run on: SQLite files in a temporary folder, or a PostgreSQL database.

The ``instance`` fixture (conftest) opens one with :func:`open_instance`. A test or module marked
:data:`on_every_storage` runs once per storage in :data:`STORAGES` (``[sqlite]``, ``[postgres]``),
so what a deployment keeps in PostgreSQL (runs, the event log, the sensor's key-value state, ticks)
is proven there too; unmarked tests run on SQLite alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pytest

from batch_pipelines_tests.support.postgres import PostgresServer

__all__ = ["STORAGES", "on_every_storage", "open_instance", "postgres_overrides"]

STORAGES = ("sqlite", "postgres")
on_every_storage = pytest.mark.storages(*STORAGES)


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
        with dg.instance_for_test() as instance:
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
