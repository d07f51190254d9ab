"""A small classification pipeline and the driver that runs it through a real Dagster instance.

The driver (:class:`Harness`) does what a deployment's daemon would: it materializes assets as
runs on the instance (launching a failed run again, as run retries would, when asked to), evaluates
the sensor tick after tick with the cursor it returned, stores the sensor's observations and
launches each run it requests unless a run with that run key exists, on the local batch service
over HTTP. The reliability world composes it.
"""

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg
import pandas as pd

# Dagster's own run tags (not exported): a run request's run key, a run of one partition, and the
# ends of a run over a range of partitions.
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END_TAG
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START_TAG
from dagster._core.storage.tags import PARTITION_NAME_TAG as PARTITION_TAG
from dagster._core.storage.tags import RUN_KEY_TAG
from pydantic import BaseModel

from batch_pipelines import BatchPipeline, BatchProviderResource, RequestSpec, build_batch_pipeline
from batch_pipelines.pipeline.ledger import is_submission
from batch_pipelines.pipeline.sensor_state import Group, SensorState
from batch_pipelines_tests.support.waiting import wait_until

#: The environment variable the tests' resource reads its API key from (dg.EnvVar).
KEY_ENV = "BATCH_PIPELINES_TEST_KEY"
DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01")
CATEGORIES = ("Literature", "News", "Academic", "Technology", "Lifestyle")
_SAYINGS = (
    "Hamlet is one of Shakespeare's most famous tragedies",
    "Scientists discover a new potentially habitable planet",
    "How to make a delicious braised pork dish",
    "A new smartphone chip doubles battery life",
    "The paper proves a tighter bound for sorting networks",
)


class Label(BaseModel):
    category: Literal["Literature", "News", "Academic", "Technology", "Lifestyle"]
    confidence: float


SPEC = RequestSpec(
    model="gpt-4o-mini",
    messages=[
        {"role": "system", "content": "Classify the text into one of: " + "/".join(CATEGORIES)},
        {"role": "user", "content": "Please classify the following text: {text}"},
    ],
    output_model=Label,
    key_column="text_id",
)


def in_progress_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED) -> dg.DagsterRun:
    """A run the instance records with ``status`` (started: as a run worker's elsewhere would be)."""
    return instance.add_run(dg.DagsterRun(job_name="elsewhere", run_id=str(uuid.uuid4()), status=status))


def make_texts(rows: int = 8, edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> dg.AssetsDefinition:
    """The source: ``rows`` short texts per day, keyed ``<day>-<n>`` (then ``edit``-ed, if given)."""

    @dg.asset(name="texts", partitions_def=DAYS)
    def texts(context: dg.AssetExecutionContext) -> pd.DataFrame:
        day = context.partition_key
        frame = pd.DataFrame(
            {
                "text_id": [f"{day}-{i:03d}" for i in range(rows)],
                "text": [f"{_SAYINGS[i % len(_SAYINGS)]} (#{i}, {day})" for i in range(rows)],
            }
        )
        return edit(frame) if edit else frame

    return texts


def make_resource(base_url: str, storage_dir: Any, *, cls: type[BatchProviderResource] = BatchProviderResource, **overrides: Any) -> BatchProviderResource:
    """The provider over HTTP (posing as OpenAI at the local service's URL), polled without delay."""
    settings: dict[str, Any] = dict(
        provider="openai",
        base_url=base_url,
        api_key=dg.EnvVar(KEY_ENV),
        storage_dir=str(storage_dir),
        poll_interval_seconds=0,
        max_poll_interval_seconds=0,
    )
    return cls(**{**settings, **overrides})


@dataclass
class Harness:
    instance: dg.DagsterInstance
    pipeline: BatchPipeline
    texts: dg.AssetsDefinition
    resource: BatchProviderResource
    cursor: str | None = None
    #: How many times a failed run is launched again before the driver gives up (run retries).
    run_retries: int = 0
    requested: list[dg.RunRequest] = field(default_factory=list)
    executed: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    #: Runs that failed and were launched again.
    failed_runs: int = 0

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.texts, *self.pipeline.assets]

    @property
    def defs(self) -> dg.Definitions:
        return dg.Definitions.merge(
            self.pipeline.defs, dg.Definitions(assets=[self.texts], resources={"batch_provider": self.resource})
        )

    def materialize(
        self, selection: Sequence[dg.AssetsDefinition], partition: str | None, *, raise_on_error: bool = True, tags: Any = None
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets,
            selection=list(selection),
            partition_key=partition,
            instance=self.instance,
            resources={"batch_provider": self.resource},
            raise_on_error=raise_on_error,
            tags=tags,
        )

    def run(self, selection: Sequence[Any], partition: str | None, *, tags: Mapping[str, str] | None = None) -> dg.ExecuteInProcessResult:
        """One run, launched again while it fails (at most ``run_retries`` times)."""
        for _ in range(self.run_retries + 1):
            result = self.materialize(selection, partition, raise_on_error=not self.run_retries, tags=dict(tags or {}))
            if result.success:
                return result
            self.failed_runs += 1
        raise AssertionError(f"a run of {partition} failed {self.run_retries + 1} times: {_failure(result)}")

    def submit(self, partitions: Iterable[str]) -> None:
        """texts -> requests -> batch for each partition, one run each."""
        for partition in partitions:
            self.run([self.texts, self.pipeline.requests_asset, self.pipeline.batch_asset], partition)

    def evaluate(self) -> Any:
        """One sensor evaluation from the saved cursor, nothing stored (a tick the daemon dies in)."""
        assert self.pipeline.sensor is not None
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs, resources={"batch_provider": self.resource}
        ) as context:
            return self.pipeline.sensor.evaluate_tick(context)

    def tick(self, *, launch: bool = False) -> Any:
        """One sensor evaluation, stored as the daemon would store it; with ``launch``, its runs launched."""
        data = self.evaluate()
        self.cursor = data.cursor
        for event in data.asset_events:
            self.instance.report_runless_asset_event(event)
        self.requested += data.run_requests
        if launch:
            for request in data.run_requests:
                self.launch(request)
        return data

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult | None:
        """Launch a requested run unless a run with its run key exists (the daemon's rule)."""
        key = {RUN_KEY_TAG: request.run_key} if request.run_key else {}
        if key and self.instance.get_runs(dg.RunsFilter(tags=key), limit=1):
            return None
        selection = list(request.asset_selection or [self.pipeline.results_asset.key])
        result = self.run(selection, request.partition_key, tags={**request.tags, **key})
        self.executed.append(result)
        return result

    def partitions_of(self, request: dg.RunRequest) -> list[str]:
        """The partitions a requested run covers: its partition, or the range its tags name."""
        return [request.partition_key] if request.partition_key is not None else partitions_of_tags(request.tags)

    def requested_partitions(self) -> list[str]:
        """Every partition the sensor asked results for so far, sorted (one entry per request of it)."""
        return sorted(p for request in self.requested for p in self.partitions_of(request))

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """Run a requested run whatever its run key (a test replaying a request)."""
        result = self.run(list(request.asset_selection or []), request.partition_key, tags=request.tags)
        self.executed.append(result)
        return result

    def drive(self, partitions: Iterable[str]) -> None:
        """Tick and launch requested runs until every partition's results are materialized."""
        wanted = set(partitions)

        def done() -> bool:
            if wanted <= self.materialized_results():
                return True
            self.tick(launch=True)
            return False

        wait_until(done)

    def next_round(self, partition: str) -> None:
        """Tick and launch requested runs until the partition's results are materialized again."""
        key = self.pipeline.results_asset.key

        def latest() -> int:
            records = self.instance.fetch_materializations(dg.AssetRecordsFilter(key, asset_partitions=[partition]), limit=1).records
            return records[0].storage_id if records else 0

        before = latest()

        def done() -> bool:
            if latest() > before:
                return True
            self.tick(launch=True)
            return False

        wait_until(done)

    def tracked(self) -> list[Group]:
        """The groups the sensor still polls or holds back, as the instance stores them (not those handed off)."""
        groups = SensorState.load(self.instance, self.pipeline.batch_asset.key).groups.values()
        return [g for g in groups if not g.handed_off]

    def materialized_results(self) -> set[str]:
        key = self.pipeline.results_asset.key
        return set(self.instance.get_materialized_partitions(key))

    def results(self, partition: str) -> pd.DataFrame:
        return self.defs.load_asset_value(self.pipeline.results_asset.key, partition_key=partition, instance=self.instance)

    def latest_metadata(self, asset: dg.AssetsDefinition, partition: str | None) -> dict[str, Any]:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset.key, asset_partitions=[partition] if partition else None), limit=1
        ).records
        assert records, f"{asset.key.to_user_string()} {partition} was never materialized"
        return _plain(records[0].asset_materialization.metadata)

    def submission(self, partition: str | None) -> dict[str, Any]:
        """The metadata of the partition's latest submission (an observation of ``<name>_batch``)."""
        records = self.instance.fetch_observations(
            dg.AssetRecordsFilter(self.pipeline.batch_asset.key, asset_partitions=[partition] if partition else None), limit=1000
        ).records
        found = [r for r in records if is_submission(r.asset_observation.metadata)]
        assert found, f"{self.pipeline.batch_asset.key.to_user_string()} {partition} was never submitted"
        return _plain(found[0].asset_observation.metadata)


def _plain(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def partitions_of_tags(tags: Mapping[str, str]) -> list[str]:
    """The partitions a run with these tags covers: its partition, or the range the tags name."""
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start is None or end is None:
        return []
    return list(DAYS.get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))


def range_tags(partitions: Sequence[str]) -> dict[str, str]:
    """The tags of one run over ``partitions`` (neighbours, in order), as a backfill sets them."""
    return {RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1]}


def build(name: str = "classify", **options: Any) -> BatchPipeline:
    return build_batch_pipeline(name, source=options.pop("source"), spec=options.pop("spec", SPEC), **options)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "; ".join(str(e.message) for e in result.all_events if e.is_failure)[:500] or "unknown failure"
