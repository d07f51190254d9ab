"""One options record: the factory takes exactly its fields, the component offers every one of them."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from batch_pipelines import BatchPipelineComponent, PipelineOptions, build_batch_pipeline
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS
from batch_pipelines_tests.support.driver import SPEC, make_texts


def test_the_component_has_every_option_with_its_default():
    attributes = {f.name: f for f in dataclasses.fields(BatchPipelineComponent)}
    missing = [name for name in PipelineOptions.names() if name not in attributes]
    assert not missing, f"options the component does not offer: {missing}"
    component = BatchPipelineComponent(name="x", source="texts", request={"model": "m", "input_template": "{text}"})  # type: ignore[arg-type]
    assert component.options() == DEFAULT_OPTIONS


def test_the_component_passes_every_option_on():
    changed = dict(
        policy="quarantine", max_attempts=4, retry_invalid_output=True, on_stale="report", cancel_superseded=False, superseded_wait_seconds=9.0, reuse=False, reuse_retention_days=2.5, storage_retention_days=7.0,
        failure_rate_threshold=0.5, blocking=True,
        cancel_on_termination=False, resource_key="other", io_manager_key="parquet", group_name="g", key_prefix=["team"],
        batch_tags={"team": "ml"}, max_cost_per_partition_usd=1.5, max_cost_per_run_usd=4.0, max_requests_per_shard=7, max_partitions_per_run=3, results_gather_seconds=1.0, sensor_minimum_interval_seconds=5,
        sensor_tick_budget_seconds=3.0, sensor_default_status="stopped",
    )  # fmt: skip
    assert set(changed) == set(PipelineOptions.names()), "a new option: give it a changed value here"
    component = BatchPipelineComponent(name="x", source="texts", request={"model": "m", "input_template": "{text}"}, **changed)  # type: ignore[arg-type]
    options = component.options()
    for name in PipelineOptions.names():
        assert getattr(options, name) != getattr(DEFAULT_OPTIONS, name), f"{name} did not reach the options"
    assert options.sensor_default_status == dg.DefaultSensorStatus.STOPPED


def test_the_factory_refuses_an_unknown_option_by_name():
    with pytest.raises(TypeError, match="max_attempt"):
        build_batch_pipeline("x", source=make_texts(), spec=SPEC, max_attempt=3)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("max_attempts", 0, "max_attempts"), ("policy", "drop", "policy"), ("on_stale", "keep", "on_stale"), ("max_cost_per_partition_usd", -1.0, "max_cost"), ("failure_rate_threshold", 2.0, "failure_rate_threshold"), ("max_partitions_per_run", 0, "max_partitions_per_run"), ("results_gather_seconds", -1.0, "results_gather_seconds"), ("storage_retention_days", 0.5, "storage_retention_days must be at least 1")],
)
def test_options_out_of_range_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        PipelineOptions(**{option: value})
