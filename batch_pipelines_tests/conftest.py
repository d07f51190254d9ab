"""Shared fixtures: the local batch service over HTTP on 127.0.0.1, a Dagster instance, the driver.

``local_service(**options)`` starts a service and returns a :class:`LocalService` (``base_url``,
``api_key``, ``engine``, ``data_dir``, ``app``, ``set_faults(plan)``); every service is stopped at
teardown. ``instance`` is a temporary Dagster instance, ``service`` one local service with its key
in the environment, and ``harness(rows=8, ...)`` the classification pipeline's driver on both.

``instance`` keeps runs and events in SQLite; a test or module marked ``on_every_storage``
(``support/instances.py``) runs on PostgreSQL too, a database of its own on the session's
throwaway server (``postgres_server``, started on first use and removed at the end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from batch_pipelines_tests.support.driver import KEY_ENV, Harness, build, make_resource, make_texts
from batch_pipelines_tests.support.instances import open_instance
from batch_pipelines_tests.support.postgres import PostgresServer, start_postgres
from batch_pipelines_tests.support.service import LocalService, start_service


@pytest.fixture
def local_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalService]]:
    """Factory: ``local_service(profile=, faults=, api_key=, speed=, time_scale=, responder=, worker=, data_dir=)``."""
    started: list[LocalService] = []

    def start(*, data_dir: Path | None = None, **options: Any) -> LocalService:
        service = start_service(data_dir or tmp_path_factory.mktemp("local_service"), **options)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("storages")
    if marker and "instance" in metafunc.fixturenames:
        metafunc.parametrize("instance_storage", marker.args, indirect=True)


@pytest.fixture
def instance_storage(request: pytest.FixtureRequest) -> str:
    """Where ``instance`` keeps runs and events: the ``storages`` marker's parameter, SQLite without one."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def instance(instance_storage: str, request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    with open_instance(instance_storage, lambda: request.getfixturevalue("postgres_server")) as instance:
        yield instance


@pytest.fixture
def service(local_service: Callable[..., LocalService], monkeypatch: pytest.MonkeyPatch) -> LocalService:
    started = local_service()
    monkeypatch.setenv(KEY_ENV, started.api_key or "")
    return started


@pytest.fixture
def harness(instance: dg.DagsterInstance, service: LocalService, tmp_path: Path) -> Callable[..., Harness]:
    """``harness(rows=8, on=service, resource={...}, edit=fn, **pipeline_options)``: a pipeline over ``rows`` texts a day."""

    def make(
        rows: int = 8,
        on: LocalService | None = None,
        resource: dict[str, Any] | None = None,
        edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        **options: Any,
    ) -> Harness:
        texts = make_texts(rows, edit)
        pipeline = build(source=texts, **options)
        url = (on or service).base_url
        return Harness(instance, pipeline, texts, make_resource(url, tmp_path / "storage", **(resource or {})))

    return make
