"""The results runs the sensor asks for: one per range of neighbouring partitions done together.

When many partitions finish in the same tick (a backfill's batches ending together) one run
request per partition would cost a run each, and the daemon minutes to create them. Instead the
partitions done in a tick go in runs over ranges of neighbours (Dagster's partition range tags,
as its own backfills set them), of one attempt each (the run's attempt tag), at most
``max_partitions_per_run`` partitions each; the results step joins each partition on its own
(:mod:`batch_pipelines.pipeline.run_partitions`).

Partitions of one backfill run end close together but not in one tick: the run submits them
one after another, and their batches end in their own time. So a partition done while others
its run submitted are still in flight, or while that run may still submit more (a run over a
range, not finished), waits for them a while (:func:`waiting_to_gather`): they go in one run.
"""

import hashlib
from collections.abc import Sequence

import dagster as dg

from batch_pipelines.pipeline.ledger import ATTEMPT_RUN_TAG, PIPELINE_RUN_TAG
from batch_pipelines.pipeline.run_partitions import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, contiguous_ranges
from batch_pipelines.pipeline.sensor_state import Group
from batch_pipelines.submission import partition_tag

__all__ = ["results_run_requests", "shares_runs", "waiting_to_gather"]


def shares_runs(partitions_def: dg.PartitionsDefinition | None, most: int) -> bool:
    """Whether partitions done together may share a results run.

    A range of multi-dimensional keys is not one key range per dimension: those go one by one.
    """
    return partitions_def is not None and not isinstance(partitions_def, dg.MultiPartitionsDefinition) and most > 1


def waiting_to_gather(instance: dg.DagsterInstance, groups: Sequence[Group], *, now: float, seconds: float) -> set[str]:
    """The partitions done less than ``seconds`` ago that wait for the others their run sent.

    A done group waits while another group of the same run and attempt is in flight, or while
    that run, over a range of partitions, is not finished (it may record more). A run found
    finished may have recorded its last rounds after the tick read them: the sensor reads again
    and asks once more. A run that died unseen (its worker's machine gone) holds nobody longer
    than ``seconds``.
    """
    if seconds <= 0:
        return set()
    by_run: dict[tuple[str, int], list[Group]] = {}
    for group in groups:
        if group.run_id is not None and group.partition is not None:
            by_run.setdefault((group.run_id, group.attempt), []).append(group)
    waiting: set[str] = set()
    for (run_id, _), siblings in by_run.items():
        fresh = [g for g in siblings if g.done and now - (g.done_at or now) < seconds]
        if fresh and (any(not g.done for g in siblings) or _submitting(instance, run_id)):
            waiting.update(str(g.partition) for g in fresh)
    return waiting


def _submitting(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run may still record batches of more partitions: a run over a range, not finished."""
    run = instance.get_run_by_id(run_id)
    return run is not None and not run.is_finished and ASSET_PARTITION_RANGE_START_TAG in run.tags


def results_run_requests(
    instance: dg.DagsterInstance,
    name: str,
    results_key: dg.AssetKey,
    ready: Sequence[Group],
    partitions_def: dg.PartitionsDefinition | None,
    *,
    most: int,
) -> list[dg.RunRequest]:
    """The results runs for the groups whose batches are done: a range of neighbouring partitions
    per run, of one attempt (the run's attempt tag), at most ``most`` partitions each.

    The run key names every partition's round, attempt and batches, and each group keeps the key
    it was handed off in: a tick made again after it was lost asks for the very runs it asked for
    (even if more partitions have finished since), which the daemon launches once.
    """
    ordered: list[str] = []  # the partitions definition's order, read once when a range is made

    def order() -> list[str]:
        if not ordered and partitions_def is not None:
            ordered.extend(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        return ordered

    again: dict[str, list[Group]] = {}
    for group in ready:
        if group.run_key is not None and group.partition is not None:
            again.setdefault(group.run_key, []).append(group)
    # A group keeps its run key only while it is of the round and attempt it was handed off with
    # (a new round opens a new group): such groups are asked for again under that very key, even
    # when some of that run's partitions are missing, because that run joined them already (it
    # was launched before the tick was lost): the daemon sees the key and launches nothing.
    runs: list[dg.RunRequest] = []
    index: dict[str, int] = {}
    for key, groups in again.items():
        if len(groups) > 1:
            index = index or {p: i for i, p in enumerate(order())}
            groups.sort(key=lambda g: index.get(str(g.partition), len(index)))
        runs.append(_results_run(name, results_key, groups, run_key=key))
    taken = {id(g) for groups in again.values() for g in groups}
    fresh = [g for g in ready if id(g) not in taken]
    ranges: list[list[Group]] = [[g] for g in fresh if g.partition is None]
    by_attempt: dict[int, dict[str, Group]] = {}
    for group in fresh:
        if group.partition is not None:
            by_attempt.setdefault(group.attempt, {})[group.partition] = group
    one_by_one = not shares_runs(partitions_def, most)
    for groups_of in by_attempt.values():
        if len(groups_of) == 1 or one_by_one:
            ranges += [[g] for g in groups_of.values()]
        else:
            ranges += [[groups_of[p] for p in keys] for keys in contiguous_ranges(order(), groups_of, most=most)]
    for groups in ranges:
        run = _results_run(name, results_key, groups, run_key=_results_run_key(name, groups))
        for group in groups:
            group.run_key = run.run_key
        runs.append(run)
    return runs


def _results_run_key(name: str, groups: Sequence[Group]) -> str:
    rounds = ";".join(f"{g.partition}:{g.round}:{g.attempt}:{','.join(sorted(b.id for b in g.batches))}" for g in groups)
    digest = hashlib.sha256(rounds.encode()).hexdigest()[:12]
    first, last = groups[0], groups[-1]
    if len(groups) == 1:  # the key a run of one partition always had
        ids = hashlib.sha256(",".join(sorted(b.id for b in first.batches)).encode()).hexdigest()[:12]
        return f"{name}:{partition_tag(first.partition)}:round{first.round}:attempt{first.attempt}:{ids}"
    return f"{name}:{first.partition}...{last.partition}:attempt{first.attempt}:{digest}"


def _results_run(name: str, results_key: dg.AssetKey, groups: Sequence[Group], *, run_key: str) -> dg.RunRequest:
    first, last, attempt = groups[0], groups[-1], groups[0].attempt
    tags = {PIPELINE_RUN_TAG: name, ATTEMPT_RUN_TAG: str(attempt)}
    if len(groups) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=first.partition, asset_selection=[results_key], tags=tags)
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=[results_key],
        tags={**tags, ASSET_PARTITION_RANGE_START_TAG: str(first.partition), ASSET_PARTITION_RANGE_END_TAG: str(last.partition)},
    )
