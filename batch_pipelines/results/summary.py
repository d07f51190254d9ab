"""What a result frame comes to: rows per outcome, tokens, cost after the batch discount, failure rate."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.results.anomalies import ResultAnomalies
from batch_pipelines.results.body_readers import TOKEN_COLUMNS
from batch_pipelines.results.outcomes import OUTCOMES, REUSED_COLUMN

__all__ = ["Prices", "ResultSummary", "summarize"]


class Prices(BaseModel):
    """The provider's standard (real-time) prices per million tokens, in USD.

    Configured by the user, or looked up in an offline price table (:mod:`.prices`); ``source``
    says which. The batch discount comes from the provider profile (``batch_discount``). Cached
    input tokens cost ``cached_input_per_million`` when given, else the input price.
    """

    model_config = ConfigDict(frozen=True)

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(default=None, ge=0)
    #: Input written to the prompt cache (Anthropic bills it above the input price); None: the input price.
    cache_write_per_million: float | None = Field(default=None, ge=0)
    #: Where the prices come from: "configured", or the price table and its version.
    source: str = "configured"

    def batch_cost(
        self, profile: ProviderProfile, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
    ) -> float:
        """USD for these tokens through ``profile``'s Batch API (its discount applied); ``input_tokens``
        include the cached ones, read and written."""
        cached = self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million
        written = self.input_per_million if self.cache_write_per_million is None else self.cache_write_per_million
        fresh = input_tokens - cached_tokens - cache_write_tokens
        full = (
            fresh * self.input_per_million + cached_tokens * cached + cache_write_tokens * written + output_tokens * self.output_per_million
        ) / 1_000_000
        return full * (1 - profile.batch_discount)


class ResultSummary(BaseModel):
    """Counts per outcome, token totals, cost and failure rate of a result frame."""

    model_config = ConfigDict(frozen=True)

    rows: int
    succeeded: int = 0
    failed: int = 0
    invalid_output: int = 0
    expired: int = 0
    cancelled: int = 0
    rejected: int = 0
    missing: int = 0
    stale: int = 0
    #: Rows given the answer to an identical request, not paid for again (their tokens are not counted).
    reused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    #: USD (the currency of prices), after the batch discount; None without prices.
    cost_usd: float | None = None
    #: Share of rows without a usable answer: 1 - succeeded / rows.
    failure_rate: float = 0.0
    unknown_lines: int = 0
    duplicate_lines: int = 0
    corrupt_lines: int = 0

    def to_metadata(self) -> dict[str, int | float]:
        """Plain values for Dagster metadata (cost left out when no prices were given)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def summarize(
    frame: pd.DataFrame,
    *,
    profile: ProviderProfile | None = None,
    prices: Prices | None = None,
    anomalies: ResultAnomalies | None = None,
) -> ResultSummary:
    """The summary of a joined (or merged) result frame; cost needs ``prices`` and ``profile``."""
    if prices is not None and profile is None:
        raise ValueError("cost needs the provider profile (its batch_discount) as well as prices")
    counts = pd.Categorical(frame["outcome"], categories=list(OUTCOMES)).value_counts()
    rows = len(frame)
    if int(counts.sum()) != rows:
        raise RuntimeError(f"outcome counts {counts.to_dict()} do not add up to the {rows} rows")
    # Tokens and cost are what this round paid for: a reused row's answer was bought before.
    paid = ~frame[REUSED_COLUMN].to_numpy(dtype=bool) if REUSED_COLUMN in frame.columns else slice(None)
    tokens = {name: int(frame[name][paid].sum()) for name in TOKEN_COLUMNS}
    cost = None
    if prices is not None and profile is not None:
        cost = prices.batch_cost(
            profile,
            input_tokens=tokens["prompt_tokens"],
            output_tokens=tokens["completion_tokens"],
            cached_tokens=tokens["cached_tokens"],
            cache_write_tokens=tokens["cache_write_tokens"],
        )
    anomalies = anomalies or ResultAnomalies()
    return ResultSummary(
        rows=rows,
        **{outcome: int(counts[outcome]) for outcome in OUTCOMES},
        reused=int(frame[REUSED_COLUMN].sum()) if REUSED_COLUMN in frame.columns else 0,
        **tokens,
        cost_usd=cost,
        failure_rate=(1 - int(counts["succeeded"]) / rows) if rows else 0.0,
        unknown_lines=anomalies.unknown_lines,
        duplicate_lines=anomalies.duplicate_lines,
        corrupt_lines=anomalies.corrupt_lines,
    )
