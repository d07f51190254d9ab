"""The asset factory: one call builds a pipeline's assets, sensor, checks and cancel job.

::

    pipeline = build_batch_pipeline("classify", source=texts, spec=RequestSpec(...))
    defs = dg.Definitions.merge(pipeline.defs, dg.Definitions(assets=[texts], resources={...}))

builds, with the source's partitions:

``<name>_requests``
    The source DataFrame as validated, sharded JSONL request files and a manifest, written to the
    partition's deterministic folder; downstream assets find them there, no pickled object travels.
``<name>_batch``
    One batch per shard, submitted once (:mod:`batch_pipelines.submission`); the submission is
    recorded as an observation for the sensor, which materializes the asset when the batches have
    ended (:mod:`batch_pipelines.pipeline.progress`): a partition in flight is not materialized yet.
``<name>_sensor``
    Polls the batches and launches ``<name>_results`` when a partition's batches are done (see
    :mod:`batch_pipelines.pipeline.sensor`). Not built in blocking mode, where runs poll themselves.
``<name>_results``
    Every row once, with its outcome, joined from the batches' files; failed rows sent again
    first while attempts are left (see :mod:`batch_pipelines.pipeline.collect`).
``<name>_cancel``
    A job cancelling the in-flight batches of chosen partitions (config ``partitions``).

The three assets take several partitions per backfill run (``max_partitions_per_run``), each
partition still its own files, batches, metadata and checks (:mod:`batch_pipelines.pipeline.run_partitions`).
"""

# No ``from __future__ import annotations`` here: Dagster reads the context annotations of the
# decorated functions at definition time.
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from batch_pipelines.pipeline.checks import results_check_specs
from batch_pipelines.pipeline.collect import collect_results
from batch_pipelines.pipeline.options import PipelineOptions
from batch_pipelines.pipeline.request_files import build_requests
from batch_pipelines.pipeline.runtime import PipelineRuntime
from batch_pipelines.pipeline.sensor import build_batch_sensor
from batch_pipelines.requests import RequestSpec

__all__ = ["BatchPipeline", "CancelPartitionsConfig", "build_batch_pipeline"]

SourceLike = dg.AssetKey | dg.AssetSpec | dg.AssetsDefinition | str | Sequence[str]


@dataclass(frozen=True)
class BatchPipeline:
    """What :func:`build_batch_pipeline` built. Merge ``defs`` into your code location."""

    name: str
    requests_asset: dg.AssetsDefinition
    batch_asset: dg.AssetsDefinition
    results_asset: dg.AssetsDefinition
    checks: tuple[dg.AssetCheckSpec, ...]
    #: None in blocking mode: runs poll their own batches.
    sensor: dg.SensorDefinition | None
    cancel_job: dg.JobDefinition

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.requests_asset, self.batch_asset, self.results_asset]

    @property
    def defs(self) -> dg.Definitions:
        """Assets, sensor and cancel job; the resource (``BatchProviderResource``) is yours to add."""
        return dg.Definitions(assets=self.assets, sensors=[self.sensor] if self.sensor else [], jobs=[self.cancel_job])


class CancelPartitionsConfig(dg.Config):
    """Run config of ``<name>_cancel``."""

    partitions: list[str] = []


def build_batch_pipeline(
    name: str,
    *,
    source: SourceLike,
    spec: RequestSpec,
    partitions_def: dg.PartitionsDefinition | None = None,
    **options: Any,
) -> BatchPipeline:
    """Build the assets, sensor, checks and cancel job that run ``spec`` over ``source`` as batches.

    Args:
        name: prefix of every definition (``<name>_requests``, ``<name>_batch``...) and the tag
            that finds this pipeline's batches at the provider: keep it stable.
        source: the asset holding the rows, a pandas DataFrame loaded through its IO manager.
        spec: how a row becomes a request (endpoint, model, template, output model, key column).
        partitions_def: defaults to the source's (when ``source`` is an AssetSpec or
            AssetsDefinition); each partition is submitted, polled and joined on its own.
        **options: the fields of :class:`~batch_pipelines.pipeline.options.PipelineOptions`
            (``policy``, ``max_attempts``, ``blocking``, ``resource_key``, ``batch_tags``...), each
            documented and defaulted there.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"pipeline name {name!r}: use letters, digits and underscores (it names assets and tags batches)")
    unknown = sorted(set(options) - set(PipelineOptions.names()))
    if unknown:
        raise TypeError(f"build_batch_pipeline() got unknown options {unknown}; the options are {PipelineOptions.names()}")
    opts = PipelineOptions(**options)
    source_key, source_partitions = _source(source)
    partitions_def = partitions_def if partitions_def is not None else source_partitions
    prefix = opts.key_path
    rt = PipelineRuntime(
        name=name,
        spec=spec,
        options=opts,
        source_key=source_key,
        requests_key=dg.AssetKey([*prefix, f"{name}_requests"]),
        batch_key=dg.AssetKey([*prefix, f"{name}_batch"]),
        results_key=dg.AssetKey([*prefix, f"{name}_results"]),
    )
    check_specs = results_check_specs(rt.results_key, structured=spec.output_model is not None, threshold=opts.failure_rate_threshold)
    common: dict[str, Any] = dict(
        partitions_def=partitions_def,
        group_name=opts.group_name,
        required_resource_keys={opts.resource_key},
        backfill_policy=_backfill_policy(partitions_def, opts),
    )

    # The source is a dependency, not an input: each partition of a run is loaded on its own
    # (Dagster would load a run's whole range at once).
    @dg.asset(
        key=rt.requests_key,
        deps=[source_key],
        description=f"Request files for {name}: the rows of {source_key.to_user_string()} as validated, sharded JSONL.",
        kinds={"jsonl"},
        **common,
    )
    def requests_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return build_requests(rt, context)

    @dg.asset(
        key=rt.batch_key,
        deps=[requests_asset],
        description=(
            f"The provider batches running {name}'s request files (re-attached, never submitted twice): "
            "materialized when they have ended; while in flight, their progress is observed."
        ),
        # The submit run ends while the batches run: the materialization comes when they end.
        output_required=False,
        **common,
    )
    def batch_asset(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        yield from rt.submit_batches(context)

    # A multi_asset for can_subset: a run that sends a retry instead of materializing must not
    # owe Dagster its check results (those outputs are only optional on a subsettable op).
    @dg.multi_asset(
        name=f"{name}_results",
        outs={
            "result": dg.AssetOut(
                key=rt.results_key,
                io_manager_key=opts.io_manager_key,
                is_required=opts.blocking,
                description=f"{name}'s results joined back to the source rows: every row once, with its outcome.",
            )
        },
        deps=[batch_asset, source_key],
        check_specs=check_specs,
        can_subset=True,
        **{**common, "required_resource_keys": {opts.resource_key, opts.io_manager_key}},
    )
    def results_asset(context: dg.AssetExecutionContext) -> Iterator[Any]:
        yield from collect_results(rt, context, output_name="result")

    @dg.op(name=f"{name}_cancel_batches", required_resource_keys={opts.resource_key})
    def cancel_op(context: dg.OpExecutionContext, config: CancelPartitionsConfig) -> None:
        rt.cancel(context, config.partitions)

    @dg.job(name=f"{name}_cancel", description=f"Cancel the in-flight batches of chosen partitions of {name}.")
    def cancel_job() -> None:
        cancel_op()

    sensor = None
    if not opts.blocking:
        sensor = build_batch_sensor(
            name=name,
            requests_key=rt.requests_key,
            batch_key=rt.batch_key,
            results_key=rt.results_key,
            resource_key=opts.resource_key,
            partitions_def=partitions_def,
            max_partitions_per_run=opts.max_partitions_per_run,
            gather_seconds=opts.results_gather_seconds,
            minimum_interval_seconds=opts.sensor_minimum_interval_seconds,
            tick_budget_seconds=opts.sensor_tick_budget_seconds,
            default_status=opts.sensor_default_status,
        )
    return BatchPipeline(
        name=name,
        requests_asset=requests_asset,
        batch_asset=batch_asset,
        results_asset=results_asset,
        checks=tuple(check_specs),
        sensor=sensor,
        cancel_job=cancel_job,
    )


def _backfill_policy(partitions_def: dg.PartitionsDefinition | None, opts: PipelineOptions) -> dg.BackfillPolicy | None:
    """Several partitions per backfill run (each still its own batches); blocking runs wait for theirs, one each."""
    if partitions_def is None or opts.blocking:
        return None
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=opts.max_partitions_per_run)


def _source(source: SourceLike) -> tuple[dg.AssetKey, dg.PartitionsDefinition | None]:
    if isinstance(source, (dg.AssetsDefinition, dg.AssetSpec)):
        return source.key, source.partitions_def
    if isinstance(source, dg.AssetKey):
        return source, None
    return dg.AssetKey.from_coercible(source), None
