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
    from batch_pipelines.assets import BatchPipeline, CancelPartitionsConfig, build_batch_pipeline
    from batch_pipelines.component import BatchPipelineComponent
    from batch_pipelines.checks import FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK, ROWS_CHECK
    from batch_pipelines.providers import Batch, BatchProvider, BatchStatus, make_provider
    from batch_pipelines.requests import MediaPart, RequestManifest, RequestSpec, RequestValidationError
    from batch_pipelines.resources import BatchProviderResource
    from batch_pipelines.results import Prices, ResultSummary
    from batch_pipelines.sensors import build_batch_sensor

_EXPORTS = {
    "BatchPipeline": "batch_pipelines.assets",
    "CancelPartitionsConfig": "batch_pipelines.assets",
    "build_batch_pipeline": "batch_pipelines.assets",
    "BatchPipelineComponent": "batch_pipelines.component",
    "FAILURE_RATE_CHECK": "batch_pipelines.checks",
    "OUTPUT_VALID_CHECK": "batch_pipelines.checks",
    "ROWS_CHECK": "batch_pipelines.checks",
    "Batch": "batch_pipelines.providers",
    "BatchProvider": "batch_pipelines.providers",
    "BatchStatus": "batch_pipelines.providers",
    "make_provider": "batch_pipelines.providers",
    "MediaPart": "batch_pipelines.requests",
    "RequestManifest": "batch_pipelines.requests",
    "RequestSpec": "batch_pipelines.requests",
    "RequestValidationError": "batch_pipelines.requests",
    "BatchProviderResource": "batch_pipelines.resources",
    "Prices": "batch_pipelines.results",
    "ResultSummary": "batch_pipelines.results",
    "build_batch_sensor": "batch_pipelines.sensors",
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
