"""A small classification pipeline and a harness that drives it through a real Dagster instance.

The harness does what the Dagster daemon would: it materializes assets as runs on the instance,
evaluates the sensor tick after tick with the cursor it returned, stores the sensor's observations
and executes each run it requests, on the local batch service over HTTP.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import BaseModel

from batch_pipelines import BatchPipeline, BatchProviderResource, RequestSpec, build_batch_pipeline

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
    requested: list[dg.RunRequest] = field(default_factory=list)
    executed: list[dg.ExecuteInProcessResult] = field(default_factory=list)

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

    def submit(self, partitions: Iterable[str]) -> None:
        """texts -> requests -> batch for each partition, one run each."""
        for partition in partitions:
            self.materialize([self.texts, self.pipeline.requests_asset, self.pipeline.batch_asset], partition)

    def tick(self) -> Any:
        """One sensor evaluation; its observations are stored as the daemon would store them."""
        assert self.pipeline.sensor is not None
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs, resources={"batch_provider": self.resource}
        ) as context:
            data = self.pipeline.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        for event in data.asset_events:
            self.instance.report_runless_asset_event(event)
        self.requested += data.run_requests
        return data

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            self.assets,
            selection=request.asset_selection,
            partition_key=request.partition_key,
            instance=self.instance,
            resources={"batch_provider": self.resource},
            tags=request.tags,
        )
        self.executed.append(result)
        return result

    def drive(self, partitions: Iterable[str], *, timeout: float = 60.0) -> None:
        """Tick and execute requested runs until every partition's results are materialized."""
        wanted = set(partitions)
        deadline = time.monotonic() + timeout
        while wanted - self.materialized_results():
            if time.monotonic() > deadline:
                raise AssertionError(f"no results after {timeout}s for {sorted(wanted - self.materialized_results())}")
            for request in self.tick().run_requests:
                self.execute(request)

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
        return {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}


def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; its value then. Fails the test on the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.02)


def build(name: str = "classify", **options: Any) -> BatchPipeline:
    return build_batch_pipeline(name, source=options.pop("source"), spec=options.pop("spec", SPEC), **options)
