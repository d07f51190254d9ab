"""Prices from the offline price table, and the one cost formula both estimate and results use."""

from __future__ import annotations

import pytest

from batch_pipelines.profiles import get_profile
from batch_pipelines.results import Prices, table_prices


def test_known_models_have_table_prices_and_unknown_ones_none():
    prices = table_prices("openai", "gpt-4o-mini")
    assert prices is not None and prices.source.startswith("genai-prices ")
    assert prices.input_per_million > 0 and prices.output_per_million > prices.input_per_million
    assert table_prices("moonshot", "kimi-k2.5") is not None
    assert table_prices("local", "kimi-k2.5") == table_prices("moonshot", "kimi-k2.5")  # by model alone
    assert table_prices("openai", "no-such-model-anywhere") is None


def test_batch_cost_applies_the_profile_discount_and_the_cached_price():
    prices = Prices(input_per_million=2.0, output_per_million=8.0, cached_input_per_million=0.5)
    openai, moonshot = get_profile("openai"), get_profile("moonshot")
    assert prices.batch_cost(openai, input_tokens=1_000_000, output_tokens=500_000) == pytest.approx((2 + 4) * 0.5)
    assert prices.batch_cost(moonshot, input_tokens=1_000_000, output_tokens=0, cached_tokens=400_000) == pytest.approx(
        (0.6 * 2 + 0.4 * 0.5) * 0.6
    )


def test_cache_reads_and_writes_are_priced_apart_with_the_batch_discount():
    anthropic = get_profile("anthropic")
    prices = Prices(input_per_million=1.0, output_per_million=5.0, cached_input_per_million=0.1, cache_write_per_million=1.25)
    cost = prices.batch_cost(anthropic, input_tokens=3_000_000, output_tokens=1_000_000, cached_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert cost == pytest.approx((1.0 + 0.1 + 1.25 + 5.0) * 0.5)


def test_gemini_prices_come_from_the_table_under_google():
    prices = table_prices("gemini", "gemini-2.5-flash")
    assert prices is not None and prices.source.startswith("genai-prices")
    assert prices.input_per_million > 0 and prices.output_per_million > prices.input_per_million
    cost = prices.batch_cost(get_profile("gemini"), input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost == pytest.approx((prices.input_per_million + prices.output_per_million) * 0.5)  # half price
