"""Real-time prices from an offline, maintained price table, for models the user gave no price for.

The table is the ``genai-prices`` package's snapshot: no network, versioned with the package, so
a cost figure says which table it came from. A model the table does not know has no price (and
no cost is shown) rather than a guess.
"""

from __future__ import annotations

from importlib.metadata import version

from genai_prices import Usage, calc_price

from batch_pipelines.results.summary import Prices

__all__ = ["table_prices"]

#: Our provider names -> the table's provider ids (a gateway or the local provider: looked up by model alone).
_PROVIDER_IDS = {"openai": "openai", "moonshot": "moonshotai", "groq": "groq", "anthropic": "anthropic", "gemini": "google"}
_MILLION = 1_000_000


def table_prices(provider: str, model: str) -> Prices | None:
    """``model``'s real-time prices on ``provider`` from the price table; None when it has none."""
    try:
        found = calc_price(
            Usage(input_tokens=3 * _MILLION, output_tokens=_MILLION, cache_read_tokens=_MILLION, cache_write_tokens=_MILLION),
            model_ref=model,
            provider_id=_PROVIDER_IDS.get(provider),
        )
    except LookupError:
        return None
    price = found.model_price
    try:  # a price by tiers (the first million at one rate...) is no flat rate: no price then
        rates = [
            None if r is None else float(r)
            for r in (price.input_mtok, price.output_mtok, price.cache_read_mtok, price.cache_write_mtok)
        ]
    except TypeError:
        return None
    return Prices(
        input_per_million=rates[0] or 0.0,
        output_per_million=rates[1] or 0.0,
        cached_input_per_million=rates[2],
        cache_write_per_million=rates[3],
        source=f"genai-prices {version('genai-prices')}",
    )
