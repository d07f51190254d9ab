"""batch_pipelines: huge LLM jobs through providers' Batch APIs, as Dagster assets.

The public API, importable from here::

    from batch_pipelines import BatchProviderResource, RequestSpec, build_batch_pipeline

Names are loaded on first use, so importing one layer (the local service, the providers) does not
import dagster or pandas with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch_pipelines.pipeline import (
        FAILURE_RATE_CHECK,
        OUTPUT_VALID_CHECK,
        ROWS_CHECK,
        BatchPipeline,
        BatchPipelineComponent,
        BatchProviderResource,
        CancelPartitionsConfig,
        PipelineOptions,
        build_batch_pipeline,
        build_batch_sensor,
    )
    from batch_pipelines.providers import Batch, BatchProvider, BatchStatus, make_provider
    from batch_pipelines.requests import MediaPart, RequestManifest, RequestSpec, RequestValidationError
    from batch_pipelines.results import Prices, ResultSummary

_EXPORTS = {
    "BatchPipeline": "batch_pipelines.pipeline",
    "BatchPipelineComponent": "batch_pipelines.pipeline",
    "BatchProviderResource": "batch_pipelines.pipeline",
    "CancelPartitionsConfig": "batch_pipelines.pipeline",
    "FAILURE_RATE_CHECK": "batch_pipelines.pipeline",
    "OUTPUT_VALID_CHECK": "batch_pipelines.pipeline",
    "PipelineOptions": "batch_pipelines.pipeline",
    "ROWS_CHECK": "batch_pipelines.pipeline",
    "build_batch_pipeline": "batch_pipelines.pipeline",
    "build_batch_sensor": "batch_pipelines.pipeline",
    "Batch": "batch_pipelines.providers",
    "BatchProvider": "batch_pipelines.providers",
    "BatchStatus": "batch_pipelines.providers",
    "make_provider": "batch_pipelines.providers",
    "MediaPart": "batch_pipelines.requests",
    "RequestManifest": "batch_pipelines.requests",
    "RequestSpec": "batch_pipelines.requests",
    "RequestValidationError": "batch_pipelines.requests",
    "Prices": "batch_pipelines.results",
    "ResultSummary": "batch_pipelines.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batch_pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
