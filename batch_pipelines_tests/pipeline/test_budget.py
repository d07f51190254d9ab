"""Cost before spending: the requests asset records an estimate in USD; a budget refuses a
submission before anything is uploaded."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipelines_tests.support.driver import SPEC, build, make_resource, make_texts
from batch_pipelines_tests.support.service import service_batches

DAY = "2024-01-01"
CAPPED = SPEC.model_copy(update={"body": {"max_tokens": 50}})
PRICES = {"input_price_per_million": 0.6, "output_price_per_million": 2.5}


def _nothing_uploaded(service) -> None:
    assert service.engine.list_files()["data"] == [] and service_batches(service) == []


def test_a_submission_over_budget_is_refused_before_any_upload(harness, service):
    h = harness(rows=8, spec=CAPPED, resource=PRICES, max_cost_per_partition_usd=0.000001)
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)
    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["rows_to_send"] == 8 and meta["max_output_tokens"] == 8 * 50
    assert meta["price_source"] == "configured" and meta["budget_usd"] == pytest.approx(0.000001)
    bound = (meta["estimated_input_tokens"] * 0.6 + 8 * 50 * 2.5) / 1e6 * 0.5  # openai's batch discount
    assert meta["estimated_cost_usd"] == pytest.approx(bound)

    with pytest.raises(dg.Failure, match=r"not submitted, nothing uploaded: the estimated cost is [0-9.e-]+ USD \(8 requests.*over the budget of 1e-06 USD"):
        h.materialize([h.pipeline.batch_asset], DAY)
    _nothing_uploaded(service)


def test_within_budget_it_submits_with_prices_from_the_price_table(harness, service):
    h = harness(rows=4, spec=CAPPED, max_cost_per_partition_usd=1.0)
    h.submit([DAY])
    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["price_source"].startswith("genai-prices ") and meta["estimated_cost_usd"] < 1.0
    assert len(service_batches(service)) == 1
    h.drive([DAY])
    assert h.latest_metadata(h.pipeline.results_asset, DAY)["cost_usd"] > 0  # the results' cost, from the same table


def test_a_budget_needs_a_bound_on_the_answers(harness, service):
    h = harness(rows=4, resource={**PRICES, "max_cost_per_partition_usd": 5.0})  # SPEC caps no answer
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)
    assert h.latest_metadata(h.pipeline.requests_asset, DAY)["max_output_tokens"] == "unbounded (no max_tokens)"
    with pytest.raises(dg.Failure, match="set max_tokens"):
        h.materialize([h.pipeline.batch_asset], DAY)
    _nothing_uploaded(service)


def test_a_run_budget_counts_what_the_run_already_submitted(instance, service, tmp_path):
    """Two pipelines in one run: the first fits the run's budget, the second would take it over."""
    texts = make_texts(4)
    first, second = (build(name, source=texts, spec=CAPPED, max_cost_per_run_usd=1.0) for name in ("first", "second"))
    resource = make_resource(service.base_url, tmp_path / "storage", **PRICES)

    def materialize(selection, **kwargs):
        assets = [texts, *first.assets, *second.assets]
        return dg.materialize(assets, selection=selection, partition_key=DAY, instance=instance, resources={"batch_provider": resource}, **kwargs)

    materialize([texts, first.requests_asset, second.requests_asset])
    one = instance.fetch_materializations(first.requests_asset.key, limit=1).records[0].asset_materialization.metadata
    cost = one["estimated_cost_usd"].value
    assert one["run_budget_usd"].value == pytest.approx(1.0)
    first, second = (build(name, source=texts, spec=CAPPED, max_cost_per_run_usd=cost * 1.5) for name in ("first", "second"))

    result = materialize([first.batch_asset, second.batch_asset], raise_on_error=False)

    assert len(service_batches(service)) == 1  # one pipeline's batch went, the other was refused before any upload
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1
    message = failures[0].step_failure_data.error.message
    assert "per run" in message and "submitted by this run already" in message
