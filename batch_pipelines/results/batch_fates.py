"""Rows no line answered, given the fate of the batch that held them.

A batch cancelled while validating, expired before it ran, or failing validation writes no line
for its rows; the join calls them ``missing`` (sent, absent from both files), which would blame
the provider. Their batch's own end says what happened to them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from batch_pipelines.providers import Batch, BatchStatus

__all__ = ["apply_batch_fates"]


def apply_batch_fates(frame: pd.DataFrame, sent: pd.DataFrame, by_shard: Mapping[int, Batch]) -> pd.DataFrame:
    """Rows without a line whose batch ended cancelled, expired or failed take their batch's fate.

    A batch cancelled while validating, or failing validation, writes no file at all: its rows
    are not "missing" (lost by the provider) but cancelled, expired or failed with its error.

    ``sent`` is the attempt's id map (custom_id -> shard), ``by_shard`` the batch that ran each shard.
    """
    unfinished = {shard: b for shard, b in by_shard.items() if b.status != BatchStatus.COMPLETED}
    missing = frame["outcome"] == "missing"
    if not unfinished or not missing.any():
        return frame
    frame = frame.copy()
    shard_of = frame["custom_id"].map(dict(zip(sent["custom_id"], sent["shard"])))
    for shard, batch in unfinished.items():
        rows = missing & (shard_of == shard)
        if batch.status == BatchStatus.FAILED:
            error = batch.errors[0] if batch.errors else None
            fate = ("failed", (error and error.code) or "batch_failed", (error and error.message) or "the batch failed")
        elif batch.status == BatchStatus.EXPIRED:
            fate = ("expired", "batch_expired", "the batch expired before this request ran")
        else:
            fate = ("cancelled", "batch_cancelled", "the batch was cancelled before this request ran")
        frame.loc[rows, "outcome"] = fate[0]
        frame.loc[rows, "error_code"] = fate[1]
        frame.loc[rows, "error_message"] = fate[2]
        frame.loc[rows, "batch_id"] = batch.id
    return frame
