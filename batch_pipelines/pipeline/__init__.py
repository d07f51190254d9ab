"""The Dagster face: the only layer that imports dagster.

- :mod:`.options` every pipeline setting and its default;
- :mod:`.factory` ``build_batch_pipeline``: the assets, sensor, checks and cancel job;
- :mod:`.runtime` what the requests and batch assets and the cancel job do in a run;
- :mod:`.collect` what the results asset does: join, retry, materialize;
- :mod:`.blocking` runs that poll their own batches;
- :mod:`.ledger` the event-log records: batches submitted, rounds, control observations;
- :mod:`.sensor` the sensor polling every in-flight batch;
- :mod:`.sensor_state` what it keeps between ticks: a small cursor, the batches in the instance;
- :mod:`.metadata` previews for the asset pages;
- :mod:`.resource` ``BatchProviderResource``: the provider behind a Dagster resource;
- :mod:`.checks` the results' asset checks;
- :mod:`.component` ``BatchPipelineComponent``: a pipeline in a ``defs.yaml``.
- :mod:`.scaffold` what ``dg scaffold defs batch_pipelines.BatchPipelineComponent`` writes.
"""

from batch_pipelines.pipeline.checks import FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK, ROWS_CHECK
from batch_pipelines.pipeline.component import BatchPipelineComponent
from batch_pipelines.pipeline.factory import BatchPipeline, CancelPartitionsConfig, build_batch_pipeline
from batch_pipelines.pipeline.ledger import REUSE_RUN_TAG
from batch_pipelines.pipeline.options import PipelineOptions
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.sensor import build_batch_sensor

__all__ = [
    "FAILURE_RATE_CHECK",
    "OUTPUT_VALID_CHECK",
    "REUSE_RUN_TAG",
    "ROWS_CHECK",
    "BatchPipeline",
    "BatchPipelineComponent",
    "BatchProviderResource",
    "CancelPartitionsConfig",
    "PipelineOptions",
    "build_batch_pipeline",
    "build_batch_sensor",
]
