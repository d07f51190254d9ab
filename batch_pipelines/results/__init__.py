"""Results: output and error files joined back to the source rows, every row exactly once.

A batch's answers come back in files whose order is not the input order, split between an output
file and an error file (either may be absent), sometimes with a line the provider cut short, a
custom_id it wrote twice or one nobody sent. :func:`join_results` turns them into one DataFrame:
the source rows, in their order, each with exactly one ``outcome`` (:mod:`.outcomes`)

- ``succeeded``: an answer, parsed (and validated against the user's pydantic model, if any);
- ``failed``: an HTTP error (429, 500, 400...) or a non-HTTP failure such as ``request_timeout``;
- ``invalid_output``: an answer that is not valid JSON, does not match the model, or whose body
  has an unexpected shape;
- ``expired`` / ``cancelled``: not run before the batch expired or was cancelled;
- ``rejected``: never sent (bad input, see :mod:`batch_pipelines.requests`);
- ``missing``: sent, but absent from both files,

plus the content for the endpoint, token usage, HTTP status, error code and message, batch id and
attempt. Lines that cannot be joined are counted in :class:`ResultAnomalies`, never silently
dropped. :func:`summarize` gives counts, tokens and cost for metadata; :func:`plan_retry`,
:func:`build_retry_requests` and :func:`merge_attempts` send again what failed for a retryable
reason and keep each row's final outcome across attempts.

How the modules stack (each imports only those above it):

- :mod:`.outcomes`: the outcome names, their int8 codes and which one wins;
- :mod:`.line_formats`: OpenAI's and Anthropic's line envelopes, parsed into flat lists;
- :mod:`.body_readers`: what each endpoint's answer body holds, and msgspec's typed road for chat;
- :mod:`.line_table`: files read a chunk at a time into columns (or one record at a time);
- :mod:`.anomalies`, :mod:`.structured_output`, :mod:`.summary`: what the join reports and adds;
- :mod:`.join`: lines matched to rows in one hash pass, taken to source order;
- :mod:`.retry`, :mod:`.merge`: the next attempt and the final outcome across attempts;
- :mod:`.staleness`: answers kept only for the content that was sent;
- :mod:`.reuse_store`, :mod:`.reuse`: answers already bought, and the rows held back given them;
- :mod:`.superseded`: the answers a cancelled (superseded) batch bought, for the store;
- :mod:`.attempt`: one attempt joined, checked against the current content, held-back rows filled.
"""

from batch_pipelines.results.anomalies import ResultAnomalies
from batch_pipelines.results.attempt import current_fingerprints, join_attempt, sent_fingerprints
from batch_pipelines.results.batch_fates import apply_batch_fates
from batch_pipelines.results.body_readers import ANTHROPIC_MESSAGES, TOKEN_COLUMNS
from batch_pipelines.results.join import JoinedResults, join_results, manifest_custom_ids
from batch_pipelines.results.line_formats import CorruptLine, LineFormat
from batch_pipelines.results.line_table import ResultLine, iter_result_lines
from batch_pipelines.results.merge import merge_attempts
from batch_pipelines.results.outcomes import OUTCOMES, Outcome
from batch_pipelines.results.retry import DEFAULT_MAX_ATTEMPTS, RetryPlan, build_retry_requests, plan_retry
from batch_pipelines.results.structured_output import OUTPUT_PREFIX
from batch_pipelines.results.staleness import STALE_CODE, mark_stale
from batch_pipelines.results.prices import table_prices
from batch_pipelines.results.reuse import REUSED_COLUMN, UNAVAILABLE_CODE, answer_columns, fill_held_back, fresh_answers
from batch_pipelines.results.superseded import superseded_answers
from batch_pipelines.results.reuse_store import DEFAULT_RETENTION_DAYS, KnownAnswers, ReuseStore
from batch_pipelines.results.summary import Prices, ResultSummary, summarize

__all__ = [
    "current_fingerprints",
    "join_attempt",
    "sent_fingerprints",
    "DEFAULT_RETENTION_DAYS",
    "KnownAnswers",
    "REUSED_COLUMN",
    "ReuseStore",
    "UNAVAILABLE_CODE",
    "answer_columns",
    "fill_held_back",
    "fresh_answers",
    "superseded_answers",
    "table_prices",
    "STALE_CODE",
    "mark_stale",
    "DEFAULT_MAX_ATTEMPTS",
    "apply_batch_fates",
    "ANTHROPIC_MESSAGES",
    "OUTCOMES",
    "OUTPUT_PREFIX",
    "TOKEN_COLUMNS",
    "CorruptLine",
    "JoinedResults",
    "LineFormat",
    "Outcome",
    "Prices",
    "ResultAnomalies",
    "ResultLine",
    "ResultSummary",
    "RetryPlan",
    "build_retry_requests",
    "iter_result_lines",
    "join_results",
    "manifest_custom_ids",
    "merge_attempts",
    "plan_retry",
    "summarize",
]
