"""One attempt of a round, joined: its batches' files onto the rows it sent, every answer checked
against the content the row has now, held-back rows given the answer to their request.

The steps, in order: the join (:mod:`.join`), the fate of batches that wrote no line
(:mod:`.batch_fates`), the answers of held-back rows (:mod:`.reuse`), and the staleness check
(:mod:`.staleness`). The results asset calls this per attempt; so does the reuse benchmark.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers import Batch, ResultFiles
from batch_pipelines.requests import (
    FINGERPRINT_COLUMN,
    HELD_BACK,
    RequestManifest,
    RequestSpec,
    build_request_files,
    source_digest,
)
from batch_pipelines.results.batch_fates import apply_batch_fates
from batch_pipelines.results.join import JoinedResults, join_results
from batch_pipelines.results.reuse import fill_held_back
from batch_pipelines.results.reuse_store import KnownAnswers
from batch_pipelines.results.staleness import mark_stale
from batch_pipelines.results.summary import summarize

__all__ = ["current_fingerprints", "join_attempt", "sent_fingerprints"]


def current_fingerprints(
    source: pd.DataFrame, spec: RequestSpec, built: RequestManifest, *, profile: ProviderProfile, **build_options: object
) -> pa.Array:
    """Each source row's request fingerprint as its content is now (null where it cannot become a request).

    The id map's fingerprints when the source and spec are those ``built`` (the first attempt's
    manifest) was made from, the usual case; otherwise the lines are made again in a scratch
    folder (``build_options`` as for the build: policy...). Raises ``RequestValidationError``
    when the source no longer makes valid requests.
    """
    if built.source_digest is not None and built.source_digest == source_digest(source, spec, profile):
        ids = built.read_ids()
    else:
        with tempfile.TemporaryDirectory(prefix="bp-fingerprints-") as scratch:
            ids = build_request_files(source, spec, Path(scratch), profile=profile, **build_options).read_ids()  # type: ignore[arg-type]
    return _by_row(pa.array(ids[FINGERPRINT_COLUMN], from_pandas=True), ids["row"].to_numpy(), len(source))


def sent_fingerprints(manifest: RequestManifest, sent: pd.DataFrame, recorded: Mapping[int, str], provider: str) -> pa.Array:
    """The fingerprint each request of the id map ``sent`` went with (aligned with it).

    ``recorded`` maps a shard to the fingerprint of the shard its batch was submitted with. The
    files on disk are what was sent only while each shard's fingerprint is still that one: files
    rebuilt since (the source or the spec changed, the batch not submitted again) say nothing of
    what the batch answered, so their rows count as changed (""). Null: an id map written before
    fingerprints existed, trusted as it was.
    """
    if FINGERPRINT_COLUMN not in sent.columns:
        return pa.nulls(len(sent), pa.string())
    prints = pa.array(sent[FINGERPRINT_COLUMN], from_pandas=True).cast(pa.string())
    rewritten = [
        index for index, shard in enumerate(manifest.shards)
        if recorded.get(index) not in (None, shard.fingerprint(provider, manifest.endpoint))
    ]  # fmt: skip
    if not rewritten:
        return prints
    return pc.if_else(pa.array(sent["shard"].isin(rewritten).to_numpy()), pa.scalar("", pa.string()), prints)


def join_attempt(
    source: pd.DataFrame,
    custom_ids: pd.Series,
    current: pa.Array,
    manifest: RequestManifest,
    files: Sequence[ResultFiles],
    *,
    by_shard: Mapping[int, Batch],
    recorded: Mapping[int, str],
    provider: str,
    known: Callable[[], KnownAnswers | None],
    output_model: type[BaseModel] | None = None,
) -> JoinedResults:
    """The rows ``manifest`` (one attempt) was built from, joined to its batches' ``files``.

    ``source``, ``custom_ids`` and ``current`` (see :func:`current_fingerprints`) cover the whole
    source; ``by_shard`` is the batch that ran each shard, ``recorded`` the fingerprint each was
    submitted with; ``known`` gives the reuse store's answers, asked only if a row was held back.
    An answer stays only on a row whose current content is what was sent.
    """
    sent = manifest.read_ids()
    if manifest.attempt == 1:  # built from the whole source: every row was sent, held back or rejected
        rows = np.ones(len(source), dtype=bool)
    else:
        rows = custom_ids.isin(set(sent["custom_id"]) | {r.custom_id for r in manifest.rejected}).to_numpy()
    covered, covered_ids = source[rows], custom_ids[rows]
    at = _id_map_rows(sent, covered_ids, first=manifest.attempt == 1)
    went_with = _by_row(sent_fingerprints(manifest, sent, recorded, provider), at, len(covered))
    held = np.zeros(len(covered), dtype=bool)
    held[at] = sent["shard"].to_numpy() == HELD_BACK
    # Only the rows sent (or rejected) are joined: a rerun holds back nearly all.
    sent_rows = np.flatnonzero(~held)
    rejected = [r.model_copy(update={"row": int(np.searchsorted(sent_rows, r.row))}) for r in manifest.rejected]
    joined = join_results(
        covered.iloc[sent_rows], covered_ids.iloc[sent_rows], files, endpoint=manifest.endpoint, output_model=output_model,
        rejected=rejected, attempt=manifest.attempt,
    )  # fmt: skip
    frame = apply_batch_fates(joined.frame, sent, by_shard)
    frame = fill_held_back(
        frame, covered, covered_ids, sent_rows, went_with, known() if held.any() else None, attempt=manifest.attempt
    )  # fmt: skip
    frame = mark_stale(frame, went_with, current.filter(pa.array(rows)))
    return JoinedResults(frame, summarize(frame, anomalies=joined.anomalies), joined.anomalies)


def _id_map_rows(sent: pd.DataFrame, custom_ids: pd.Series, *, first: bool) -> np.ndarray:
    """For each id-map row, the position of its row among the rows the attempt covers.

    A first attempt covers the whole source, in order: the id map's ``row``. A retry covers only
    the rows it sent, matched by custom_id.
    """
    if first:
        return sent["row"].to_numpy()
    of_row = pd.Index(sent["custom_id"]).get_indexer(custom_ids)
    at = np.full(len(sent), -1, dtype=np.int64)
    listed = of_row >= 0
    at[of_row[listed]] = np.flatnonzero(listed)
    if (at < 0).any():
        raise RuntimeError("the id map names custom_ids the rows of its attempt lack")
    return at


def _by_row(values: pa.Array, rows: np.ndarray, n: int) -> pa.Array:
    """``values`` (one per id-map row) placed at ``rows`` of an ``n``-row result; null elsewhere."""
    where = np.full(n, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return values.take(pa.array(where, mask=where < 0))
