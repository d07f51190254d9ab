"""The records of a submission: which batch runs which shard of which attempt."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from batch_pipelines.providers import Batch

__all__ = ["Submission", "SubmittedBatch"]


class SubmittedBatch(BaseModel):
    """One batch as Dagster records it: which shard of which attempt it runs."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    shard: int
    fingerprint: str
    attempt: int


class Submission(BaseModel):
    """What submitting one shard gave: its record, the batch as the provider last showed it, and
    whether it was an existing batch re-attached to rather than a new one."""

    model_config = ConfigDict(frozen=True)

    record: SubmittedBatch
    batch: Batch
    reattached: bool
