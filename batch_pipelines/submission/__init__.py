"""Submission: each shard of a partition's request files becomes exactly one batch, never two.

Dagster-free: the Dagster face hands in a provider, a logger, the run id and how far back the
partition's batches can reach, and gets back which batch runs each shard.

- :mod:`.tags` the batch metadata every submission carries, and the one partition marker;
- :mod:`.layout` where a partition's request files, attempts and downloads live;
- :mod:`.submitter` submit once, re-attach, keep the first of racing submitters;
- :mod:`.batch_records` the tags of batches at providers that keep no metadata (Anthropic),
  recorded before paying, orphans of a crash found and proven;
- :mod:`.cancel` cancel the live batches of partitions (found by their tags), of a stopped run,
  or superseded by rebuilt request files.
"""

from batch_pipelines.submission.batch_records import RecordedBatches
from batch_pipelines.submission.cancel import cancel_partition_batches, cancel_run_batches, cancel_superseded, superseded_batches
from batch_pipelines.submission.layout import REUSE_FOLDER, PartitionFolder, partition_dir, reuse_dir
from batch_pipelines.submission.submitter import Submission, Submitter
from batch_pipelines.submission.tags import (
    ASSET_TAG,
    ATTEMPT_TAG,
    FINGERPRINT_TAG,
    PARTITION_TAG,
    PIPELINE_TAG,
    RESUBMIT_TAG,
    RUN_TAG,
    SHARD_TAG,
    UNPARTITIONED,
    partition_of_tag,
    partition_tag,
)
from batch_pipelines.submission.types import SubmittedBatch

__all__ = [
    "ASSET_TAG",
    "ATTEMPT_TAG",
    "FINGERPRINT_TAG",
    "PARTITION_TAG",
    "PIPELINE_TAG",
    "PartitionFolder",
    "REUSE_FOLDER",
    "RESUBMIT_TAG",
    "RUN_TAG",
    "RecordedBatches",
    "SHARD_TAG",
    "Submission",
    "SubmittedBatch",
    "Submitter",
    "UNPARTITIONED",
    "cancel_partition_batches",
    "cancel_run_batches",
    "cancel_superseded",
    "superseded_batches",
    "partition_dir",
    "partition_of_tag",
    "partition_tag",
    "reuse_dir",
]
