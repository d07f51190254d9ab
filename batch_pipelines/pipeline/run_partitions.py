"""A run over several partitions: which ones, and how each keeps its own source, table, metadata and checks.

A backfill with the policy ``multi_run(max_partitions_per_run)`` and the sensor's results runs
cover a range of partitions in one run (``context.partition_keys``). Dagster gives such a step one
input and one output for the whole range, but each partition here is submitted, joined and
checked on its own, so:

- each partition's source is loaded on its own (:func:`load_source`: one partition in memory at a
  time, whatever IO manager holds it);
- metadata goes to each partition's materialization (``context.add_asset_metadata(partition_key=)``);
- a results table is written through the results' IO manager once per partition
  (:func:`write_partition`: a file IO manager takes one partition per output), recorded as that
  partition's materialization, and its checks are evaluated against that materialization
  (:func:`partition_check_evaluations`).

:func:`contiguous_ranges` cuts a set of partitions into the ranges one run request can name.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
import pandas as pd

# Not exported by dagster: the link from a check evaluation to the materialization it checked,
# which AssetCheckResult makes only for a run of one partition; and the run tags naming the ends
# of the partition range a run covers, as Dagster's own backfills set them.
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "CHECKED_PARTITION_KEY",
    "contiguous_ranges",
    "load_source",
    "partition_check_evaluations",
    "run_partitions",
    "write_partition",
]

Context = dg.AssetExecutionContext
#: Metadata key of a check evaluation naming the partition it checked, in a run over several.
CHECKED_PARTITION_KEY = "partition"


def run_partitions(context: Context) -> list[str | None]:
    """The partitions this run materializes, in order ([None] for an unpartitioned asset)."""
    if context.has_partition_key:
        return [context.partition_key]
    if context.has_partition_key_range:
        return list(context.partition_keys)
    return [None]


def load_source(context: Context, key: dg.AssetKey, partition: str | None) -> pd.DataFrame:
    """One partition of the source, through the IO manager that stored it."""
    value = context.load_asset_value(key, partition_key=partition, python_type=pd.DataFrame)
    if not isinstance(value, pd.DataFrame):
        where = f" partition {partition}" if partition is not None else ""
        raise dg.Failure(f"the source {key.to_user_string()}{where} is a {type(value).__name__}, not a pandas DataFrame")
    return value


def write_partition(
    context: Context, *, io_manager_key: str, key: dg.AssetKey, output_name: str, partition: str, frame: pd.DataFrame
) -> dict[str, Any]:
    """Store one partition's table through the IO manager; the metadata it reports (a path...)."""
    io_manager = getattr(context.resources, io_manager_key)
    with dg.build_output_context(
        name=output_name,
        asset_key=key,
        partition_key=partition,
        asset_partitions_def=context.assets_def.partitions_def,
        run_id=context.run_id,
        instance=context.instance,
    ) as output_context:
        io_manager.handle_output(output_context, frame)
        return dict(output_context.consume_logged_metadata())


def partition_check_evaluations(
    context: Context, key: dg.AssetKey, partition: str, results: Iterable[dg.AssetCheckResult]
) -> list[dg.AssetCheckEvaluation]:
    """The check results of one partition, each tied to that partition's latest materialization."""
    latest = context.instance.fetch_materializations(dg.AssetRecordsFilter(key, asset_partitions=[partition]), limit=1).records
    target = (
        AssetCheckEvaluationTargetMaterializationData(
            storage_id=latest[0].storage_id, run_id=latest[0].event_log_entry.run_id, timestamp=latest[0].timestamp
        )
        if latest
        else None
    )
    return [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=str(result.check_name),
            passed=result.passed,
            metadata={**result.metadata, CHECKED_PARTITION_KEY: partition},
            target_materialization_data=target,
            severity=result.severity,
            description=result.description,
        )
        for result in results
    ]


def contiguous_ranges(ordered: Sequence[str], wanted: Iterable[str], *, most: int) -> list[list[str]]:
    """``wanted`` cut into runs of neighbours in ``ordered`` (the partitions definition's order), at most ``most`` each.

    A run over a range covers every partition between its ends, so a range never spans one that
    is not wanted. Partitions not in ``ordered`` (a dynamic partition deleted since) stand alone.
    """
    wanted = set(wanted)
    position = {p: i for i, p in enumerate(ordered)}
    known = sorted((p for p in wanted if p in position), key=position.__getitem__)
    ranges: list[list[str]] = []
    for partition in known:
        last = ranges[-1] if ranges else None
        if last is not None and position[partition] == position[last[-1]] + 1 and len(last) < most:
            last.append(partition)
        else:
            ranges.append([partition])
    return ranges + [[p] for p in sorted(wanted - position.keys())]
