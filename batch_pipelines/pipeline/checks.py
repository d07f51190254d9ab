"""Asset checks on ``<name>_results``: the promises a user reads off the asset page.

- ``every_row_accounted_for``: each source row appears exactly once with a known outcome, and no
  row the provider was sent went missing from both of its files.
- ``failure_rate_below_threshold``: the share of rows that did not succeed stays under the
  pipeline's threshold.
- ``structured_output_valid`` (with an output model): no answer failed to parse or validate.

The checks are evaluated by the results asset itself, on the table it materializes, and yielded
with it.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from batch_pipelines.results import OUTCOMES, ResultSummary

__all__ = [
    "FAILURE_RATE_CHECK",
    "OUTPUT_VALID_CHECK",
    "ROWS_CHECK",
    "evaluate_checks",
    "results_check_specs",
]

ROWS_CHECK = "every_row_accounted_for"
FAILURE_RATE_CHECK = "failure_rate_below_threshold"
OUTPUT_VALID_CHECK = "structured_output_valid"


def results_check_specs(results_key: dg.AssetKey, *, structured: bool, threshold: float) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(ROWS_CHECK, asset=results_key, description="Every source row appears once with its outcome; none went missing."),
        dg.AssetCheckSpec(
            FAILURE_RATE_CHECK,
            asset=results_key,
            description=f"At most {threshold:.1%} of the rows did not succeed.",
        ),
    ]
    if structured:
        specs.append(
            dg.AssetCheckSpec(OUTPUT_VALID_CHECK, asset=results_key, description="Every answer parses and validates against the output model.")
        )
    return specs


def evaluate_checks(
    frame: pd.DataFrame,
    *,
    results_key: dg.AssetKey,
    source_rows: int,
    summary: ResultSummary,
    threshold: float,
    structured: bool,
) -> list[dg.AssetCheckResult]:
    """The check results for a final results table of ``source_rows`` source rows."""
    outcomes = frame["outcome"].astype(object)
    unknown = sorted(str(o) for o in set(outcomes.dropna()) - set(OUTCOMES))
    without_outcome = int(outcomes.isna().sum())
    # Rows rejected for a missing key have no custom_id; every other id must appear once.
    duplicated = int(frame["custom_id"].dropna().duplicated().sum())
    missing = summary.missing
    accounted = len(frame) == source_rows and not (duplicated or unknown or missing or without_outcome)
    rate = summary.failure_rate
    results = [
        dg.AssetCheckResult(
            asset_key=results_key,
            check_name=ROWS_CHECK,
            passed=bool(accounted),
            metadata={
                "source_rows": source_rows,
                "result_rows": len(frame),
                "duplicated_rows": duplicated,
                "missing_rows": missing,
                # Accounted for, with an outcome of their own: changed after they were sent, never shown with the old answer.
                "stale_rows": summary.stale,
                "rows_without_outcome": without_outcome,
                "unknown_outcomes": dg.MetadataValue.json(unknown),
            },
        ),
        dg.AssetCheckResult(
            asset_key=results_key,
            check_name=FAILURE_RATE_CHECK,
            passed=rate <= threshold,
            metadata={
                "failure_rate": dg.MetadataValue.float(rate),
                "threshold": dg.MetadataValue.float(threshold),
                "not_succeeded": summary.rows - summary.succeeded,
            },
        ),
    ]
    if structured:
        invalid = summary.invalid_output
        results.append(
            dg.AssetCheckResult(asset_key=results_key, check_name=OUTPUT_VALID_CHECK, passed=invalid == 0, metadata={"invalid_output": invalid})
        )
    return results
