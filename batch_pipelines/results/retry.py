"""Which rows of a joined (or merged) frame to send again, and their request files.

Only what failed for a reason that may pass is sent again: an HTTP failure the transport would
retry too (one rule, :func:`batch_pipelines.providers.retry_policy.retryable_status`, so a row is
not re-sent by one layer and given up by the other), a failure without an HTTP answer that says
"not run in time", and rows that never came back. Bad input (a 400, a rejected row) is reported,
not paid for again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.retry_policy import retryable_status
from batch_pipelines.requests import RequestManifest, RequestSpec, build_request_files
from batch_pipelines.results.outcomes import CANCELLED, EXPIRED, FAILED, INVALID, MISSING, OUTCOMES, STALE, SUCCEEDED

__all__ = ["DEFAULT_MAX_ATTEMPTS", "RetryPlan", "build_retry_requests", "plan_retry"]

#: How many times a row may be sent, unless a pipeline says otherwise (its ``max_attempts``).
DEFAULT_MAX_ATTEMPTS = 2

#: Failures without an HTTP status worth sending again: the request never got its turn.
_RETRY_CODES = frozenset({"request_timeout", "batch_expired", "batch_cancelled"})


class RetryPlan(BaseModel):
    """Which rows to send again, under which attempt number, and why (or why not)."""

    model_config = ConfigDict(frozen=True)

    #: The attempt number the retry's request files carry.
    attempt: int
    custom_ids: list[str]
    #: reason -> rows sent again: missing, expired, cancelled, http_429, http_5xx, request_timeout...
    retry_reasons: dict[str, int] = Field(default_factory=dict)
    #: reason -> rows not sent again: http_400 (and other client errors), rejected,
    #: invalid_output (unless asked), attempts_exhausted...
    kept_reasons: dict[str, int] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.custom_ids


def plan_retry(
    frame: pd.DataFrame, *, retry_invalid_output: bool = False, retry_stale: bool = True, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> RetryPlan:
    """The rows of a joined (or merged) frame to send again.

    Retried: missing, expired, cancelled, HTTP failures that :func:`retryable_status` passes (408,
    409, 429 and 5xx, not a 429 saying the quota or credit ran out), request_timeout, and
    invalid_output when ``retry_invalid_output``, stale rows (changed since they were sent: they go
    with their current content) unless ``retry_stale`` is False. Not retried: 400 and other client errors,
    rejected rows (fix the input), and rows already tried ``max_attempts`` times. Build the
    retry's request files with :func:`build_retry_requests`.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    codes = pd.Categorical(frame["outcome"], categories=list(OUTCOMES)).codes
    status = frame["status_code"].to_numpy(dtype=np.float64, na_value=np.nan)
    error_code = frame["error_code"].to_numpy(dtype=object, na_value=None)
    failed = codes == FAILED
    http = ~np.isnan(status)
    http_failed = failed & http
    retry_http = np.zeros(len(frame), dtype=bool)
    retry_http[http_failed] = _retryable_http(status[http_failed], error_code[http_failed])
    retry_code = ~http & pd.Series(error_code).isin(_RETRY_CODES).to_numpy()
    retryable = (
        np.isin(codes, [MISSING, EXPIRED, CANCELLED])
        | retry_http
        | (failed & retry_code)
        | ((codes == INVALID) & retry_invalid_output)
        | ((codes == STALE) & retry_stale)
    )
    exhausted = retryable & (frame["attempt"].to_numpy() >= max_attempts)
    retry = retryable & ~exhausted

    reasons = np.array(OUTCOMES, dtype=object)[codes]
    reasons[http_failed] = ["http_" + str(int(s)) for s in status[http_failed]]
    code_failed = failed & ~http
    reasons[code_failed] = [c or "failed" for c in error_code[code_failed]]
    kept = (codes != SUCCEEDED) & ~retry
    kept_reasons = np.where(exhausted, "attempts_exhausted", reasons)
    next_attempt = int(frame["attempt"].max()) + 1 if len(frame) else 1
    return RetryPlan(
        attempt=next_attempt,
        custom_ids=frame["custom_id"].to_numpy(dtype=object)[retry].tolist(),
        retry_reasons=_tally(reasons[retry]),
        kept_reasons=_tally(kept_reasons[kept]),
    )


def _retryable_http(status: np.ndarray, error_code: np.ndarray) -> np.ndarray:
    """:func:`retryable_status` of each (status, error code) pair, asked once per distinct pair.

    A million failed rows hold a handful of distinct pairs: the rule stays in one place and the
    plan stays vectorized.
    """
    code_index, code_names = pd.factorize(pd.Series(error_code, dtype=object))  # -1: no error code
    pairs, pair_of_row = np.unique(np.stack([status.astype(np.int64), code_index]), axis=1, return_inverse=True)
    verdicts = np.array(
        [retryable_status(int(s), None if c < 0 else str(code_names[c])) for s, c in pairs.T.tolist()],
        dtype=bool,
    )
    return verdicts[pair_of_row.reshape(-1)]


def _tally(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def build_retry_requests(
    plan: RetryPlan,
    source: pd.DataFrame,
    custom_ids: pd.Series,
    spec: RequestSpec,
    out_dir: Path,
    *,
    profile: ProviderProfile,
    **options: Any,
) -> RequestManifest:
    """Request files for the plan's rows: same custom_ids, attempt number ``plan.attempt``.

    ``source`` and ``custom_ids`` are those given to :func:`~batch_pipelines.results.join_results`;
    ``options`` go on to :func:`batch_pipelines.requests.build_request_files` (policy,
    upload_media, media_refs...).
    """
    if plan.empty:
        raise ValueError("the retry plan holds no rows")
    # isin, not an index lookup: ids of rejected rows may be missing or repeat (a duplicate key).
    wanted = custom_ids.isin(plan.custom_ids).to_numpy()
    found = custom_ids[wanted]
    if len(found) != len(plan.custom_ids) or not found.is_unique:
        unknown = sorted(set(plan.custom_ids) - set(found))[:10]
        repeated = found[found.duplicated()].unique()[:10].tolist()
        raise ValueError(f"the plan's custom_ids do not each name one row of custom_ids: absent {unknown}, repeated {repeated}")
    subset = source[wanted]
    manifest = build_request_files(subset, spec, out_dir, profile=profile, attempt=plan.attempt, **options)
    written = set(manifest.read_ids()["custom_id"]) | {r.custom_id for r in manifest.rejected}
    if written != set(plan.custom_ids):
        raise RuntimeError("the retry's request files do not carry the plan's custom_ids (did the spec's key_column change?)")
    return manifest
