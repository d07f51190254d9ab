"""What a superseded batch bought: its answers, keyed by the content they answer, for the reuse store.

A partition whose request files are rebuilt with other content while its batches run gets those
batches cancelled. What they finished before the cancel was paid for: each answer still belongs
to the request line that was sent (its fingerprint, from the id map of the build that sent it),
so any later row with that content can use it. No source row is needed to know that.
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from batch_pipelines.providers import ResultFiles
from batch_pipelines.requests import FINGERPRINT_COLUMN, RequestManifest
from batch_pipelines.results.join import join_results
from batch_pipelines.results.reuse import answer_columns, fresh_answers

__all__ = ["superseded_answers"]


def superseded_answers(
    manifest: RequestManifest, shard: int, files: ResultFiles, *, output_model: type[BaseModel] | None = None
) -> pd.DataFrame:
    """The succeeded answers in ``files`` (one batch, which ran ``shard`` of ``manifest``), ready for the store.

    ``manifest`` is the build that sent the shard: its id map must have been read before the
    request files were rebuilt (:meth:`RequestManifest.read_ids` keeps it).
    """
    ids = manifest.read_ids()
    if FINGERPRINT_COLUMN not in ids.columns:
        return pd.DataFrame(columns=[FINGERPRINT_COLUMN])  # an id map from before fingerprints: nothing to key them by
    sent = ids[ids["shard"] == shard].reset_index(drop=True)
    rows = pd.DataFrame(index=sent.index)
    joined = join_results(rows, sent["custom_id"], [files], endpoint=manifest.endpoint, output_model=output_model, attempt=manifest.attempt)
    frame = joined.frame.assign(**{FINGERPRINT_COLUMN: sent[FINGERPRINT_COLUMN].to_numpy()})
    return fresh_answers(frame, answer_columns(frame, []))
