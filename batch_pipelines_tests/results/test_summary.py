"""Counts, tokens and cost of a result frame, from configured prices and the profile's batch discount."""

from __future__ import annotations

import pytest

from batch_pipelines.local_service import FaultPlan
from batch_pipelines.profiles import get_profile
from batch_pipelines.results import Prices, summarize
from batch_pipelines_tests.support.result_files import MOONSHOT, OPENAI, Run, chat_spec, http_error, join, ok, source, texts


def test_cost_from_configured_prices_and_the_profile_discount(tmp_path):
    df, ids = source(3)
    output = [ok("r0", prompt=1_000_000, completion=200_000, cached=400_000), ok("r1", prompt=500_000, completion=100_000)]
    frame = join(tmp_path, df, ids, output, [http_error("r2", 429)]).frame
    prices = Prices(input_per_million=2.0, output_per_million=8.0, cached_input_per_million=0.5)
    # (1.1M fresh input * 2 + 0.4M cached * 0.5 + 0.3M output * 8) / 1M = 2.2 + 0.2 + 2.4 = 4.8 before the discount.
    assert summarize(frame, profile=OPENAI, prices=prices).cost_usd == pytest.approx(4.8 * 0.5)
    assert summarize(frame, profile=MOONSHOT, prices=prices).cost_usd == pytest.approx(4.8 * 0.6)
    no_cached_price = Prices(input_per_million=2.0, output_per_million=8.0)
    assert summarize(frame, profile=OPENAI, prices=no_cached_price).cost_usd == pytest.approx((1.5 * 2 + 0.3 * 8) * 0.5)
    summary = summarize(frame, profile=OPENAI, prices=prices)
    metadata = summary.to_metadata()
    assert metadata["succeeded"] == 2 and metadata["failed"] == 1 and metadata["failure_rate"] == pytest.approx(1 / 3)
    assert metadata["cost_usd"] == pytest.approx(2.4) and all(isinstance(v, (int, float)) for v in metadata.values())
    assert "cost_usd" not in summarize(frame).to_metadata()
    with pytest.raises(ValueError, match="profile"):
        summarize(frame, prices=prices)
    with pytest.raises(ValueError):
        Prices(input_per_million=-1, output_per_million=1)


# ---- through the local service --------------------------------------------------------------


def test_summary_and_cost_match_the_service_usage(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    df, spec = texts(50), chat_spec(model="kimi-k2.5")
    moonshot = get_profile("moonshot")
    prices = Prices(input_per_million=0.6, output_per_million=2.5)
    run = Run(svc, tmp_path, "a").submit(df, spec, profile=moonshot, faults=FaultPlan(seed=4, row_failures={429: 0.2}))
    result = run.join(df, spec, profile=moonshot, prices=prices)
    s = result.summary
    f = result.frame
    assert s.prompt_tokens == int(f["prompt_tokens"].sum()) > 0 and s.completion_tokens == int(f["completion_tokens"].sum()) > 0
    assert s.total_tokens == s.prompt_tokens + s.completion_tokens and s.cached_tokens == 0
    assert s.cost_usd == pytest.approx((s.prompt_tokens * 0.6 + s.completion_tokens * 2.5) / 1e6 * (1 - 0.4))
    assert s.failure_rate == pytest.approx(s.failed / 50) and s.failed == run.batches[0].request_counts.failed
    assert summarize(f, profile=moonshot, prices=prices) == s.model_copy(update={"unknown_lines": 0, "duplicate_lines": 0, "corrupt_lines": 0})
    assert set(s.to_metadata()) >= {"rows", "succeeded", "failed", "cost_usd", "failure_rate", "total_tokens"}
