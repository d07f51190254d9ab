"""Fixtures of the Dagster tests: a temporary Dagster instance, the local service over HTTP, a harness."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from batch_pipelines_tests.conftest import LocalService
from batch_pipelines_tests.dagster.harness import KEY_ENV, Harness, build, make_resource, make_texts


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def service(local_service: Callable[..., LocalService], monkeypatch: pytest.MonkeyPatch) -> LocalService:
    started = local_service()
    monkeypatch.setenv(KEY_ENV, started.api_key or "")
    return started


@pytest.fixture
def harness(instance: dg.DagsterInstance, service: LocalService, tmp_path: Any) -> Callable[..., Harness]:
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
