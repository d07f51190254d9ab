"""``make smoke``: the demo end to end through Dagster, without the UI, on a temporary instance.

For every demo day (or those given with ``--days``) it materializes ``texts``, the requests and the
batch (neighbouring days in one run, as a backfill does), evaluates the pipeline's sensor tick after tick as the daemon would (recording its progress
observations, executing each results run it requests once, following retry rounds) until every
day has its results, then prints the outcome counts read back from the Parquet files. Exit status
1 when a day has no results or a source row is missing, duplicated or without an outcome.

The local provider runs at ``instant`` speed unless ``BATCH_PIPELINES_LOCAL_SPEED`` says otherwise;
``BATCH_PIPELINES_PROVIDER`` and the key variable run it on a real provider (see the README).
"""

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline import ROWS_CHECK
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS
from batch_pipelines.pipeline.run_partitions import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    CHECKED_PARTITION_KEY,
    contiguous_ranges,
)

#: Runs log warnings and errors only: the smoke prints its own summary.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_SENSOR_PAUSE = 0.2  # seconds between two sensor ticks: the sensor's own poll delay paces the provider


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_pipelines.demo.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--days", nargs="+", metavar="YYYY-MM-DD", help="partitions to run (default: every demo day)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every day's results")
    args = parser.parse_args(argv)

    os.environ.setdefault("BATCH_PIPELINES_LOCAL_SPEED", "instant")
    # The local provider's worker process outlives this one; let it go soon after the last batch.
    os.environ.setdefault("BATCH_PIPELINES_WORKER_IDLE", "5")
    with tempfile.TemporaryDirectory(prefix="batch-pipelines-smoke-") as home:
        # The local provider keeps its batches under DAGSTER_HOME: set before the demo is imported.
        os.environ["DAGSTER_HOME"] = home
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with dg.DagsterInstance.get() as instance:
            return _smoke(instance, args.days, args.timeout)


def _smoke(instance: dg.DagsterInstance, days: Sequence[str] | None, timeout: float) -> int:
    from batch_pipelines.demo import definitions as demo

    pipeline = demo.classify_texts
    days = list(days or demo.DAYS.get_partition_keys())
    unknown = sorted(set(days) - set(demo.DAYS.get_partition_keys()))
    if unknown:
        print(f"smoke: unknown days {unknown}; the demo has {demo.DAYS.get_partition_keys()}", file=sys.stderr)
        return 2
    resource = demo.defs.resources["batch_provider"]
    print(f"smoke: {len(days)} days on provider {resource.provider!r}, model {demo.request_spec.model!r}")

    submit = demo.defs.resolve_job_def(demo.submit_texts.name)
    # Neighbouring days in one run each, as a backfill with the assets' multi_run policy runs them.
    ranges = contiguous_ranges(demo.DAYS.get_partition_keys(), days, most=DEFAULT_OPTIONS.max_partitions_per_run)
    for covered in ranges:
        result = submit.execute_in_process(instance=instance, tags=_range_tags(covered), run_config=_QUIET, raise_on_error=False)
        if not result.success:
            print(f"smoke: submitting {', '.join(covered)} failed: {_failure(result)}", file=sys.stderr)
            return 1
    runs = f"{len(ranges)} run" + ("s" if len(ranges) != 1 else "")
    print(f"smoke: submitted {len(days)} days in {runs}; ticking {pipeline.sensor.name} until every day has results")

    results_job = demo.defs.resolve_implicit_global_asset_job_def()
    results_key = pipeline.results_asset.key
    checks: dict[str, dict[str, bool]] = {}
    cursor: str | None = None
    launched: set[str] = set()
    deadline = time.monotonic() + timeout
    while set(days) - set(checks):
        if time.monotonic() > deadline:
            print(f"smoke: no results after {timeout:.0f}s for {sorted(set(days) - set(checks))}", file=sys.stderr)
            return 1
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=demo.defs, resources={"batch_provider": resource}
        ) as context:
            tick = pipeline.sensor.evaluate_tick(context)
        cursor = tick.cursor
        for event in tick.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with a sensor's events
        for request in tick.run_requests:
            if request.run_key in launched:
                continue  # the daemon runs a run key once
            launched.add(request.run_key)
            covered = _partitions(demo.DAYS, request)
            run = results_job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                asset_selection=list(request.asset_selection or [results_key]),
                tags=dict(request.tags),
                run_config=_QUIET,
                raise_on_error=False,
            )
            if not run.success:
                print(f"smoke: results run for {', '.join(covered)} failed: {_failure(run)}", file=sys.stderr)
                return 1
            joined = {m.partition for m in run.asset_materializations_for_node(pipeline.results_asset.op.name)}
            for day in covered:
                if day in joined:
                    checks[day] = {
                        e.check_name: e.passed
                        for e in run.get_asset_check_evaluations()
                        if e.asset_key == results_key and _checked(e, request) == day
                    }
                else:
                    print(f"smoke: {day}: retryable rows sent again; waiting for that batch")
        if not tick.run_requests:
            time.sleep(_SENSOR_PAUSE)

    # Where the demo's Parquet IO manager put each day's results.
    folder = Path(instance.storage_directory()).joinpath(*results_key.path)
    return _report(pd.read_csv(demo.DATA_FILE, dtype=str), folder, days, checks)


def _range_tags(days: Sequence[str]) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]}


def _partitions(partitions_def: dg.PartitionsDefinition, request: dg.RunRequest) -> list[str]:
    """The days a requested run covers: its partition, or the range its tags name."""
    if request.partition_key is not None:
        return [request.partition_key]
    start, end = request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]
    return list(partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))


def _checked(evaluation: dg.AssetCheckEvaluation, request: dg.RunRequest) -> str | None:
    """The day a check evaluated: a run over several days names it in the check's metadata."""
    named = evaluation.metadata.get(CHECKED_PARTITION_KEY)
    return str(named.value) if named is not None else request.partition_key


def _report(texts: pd.DataFrame, folder: Path, days: Sequence[str], checks: dict[str, dict[str, bool]]) -> int:
    """Print each day's outcomes from its Parquet file; 1 if a row is unaccounted for."""
    totals: Counter[str] = Counter()
    problems: list[str] = []
    for day in days:
        results = pd.read_parquet(folder / f"{day}.parquet")
        expected = set(texts.loc[texts["day"] == day, "text_id"])
        ids = results["text_id"]
        duplicated = sorted(set(ids[ids.duplicated()]))
        absent = sorted(expected - set(ids))
        foreign = sorted(set(ids) - expected)
        without_outcome = sorted(set(ids[results["outcome"].isna() | (results["outcome"] == "missing")]))
        for label, bad in (
            ("missing from the results", absent),
            ("not in the source", foreign),
            ("duplicated", duplicated),
            ("without an outcome", without_outcome),
        ):
            if bad:
                problems.append(f"{day}: {len(bad)} rows {label}: {bad[:5]}")
        outcomes = Counter(results["outcome"])
        totals.update(outcomes)
        failed_checks = [name for name, passed in checks[day].items() if not passed]
        if ROWS_CHECK in failed_checks:
            problems.append(f"{day}: check {ROWS_CHECK} failed")
        print(
            f"  {day}  rows={len(results):<4} "
            + " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
            + f"  checks={'all passed' if not failed_checks else 'FAILED: ' + ', '.join(failed_checks)}"
        )
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    rows = sum(totals.values())
    verdict = "OK" if not problems else "ROWS UNACCOUNTED FOR"
    print(f"smoke: {rows} rows, " + " ".join(f"{k}={v}" for k, v in sorted(totals.items())) + f": {verdict}")
    return 0 if not problems else 1


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_failure]
    return "; ".join(str(e.message) for e in failures) or "unknown failure"


if __name__ == "__main__":
    sys.exit(main())
