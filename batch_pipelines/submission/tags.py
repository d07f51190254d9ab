"""The metadata every batch carries, so that it can be found again at the provider.

A batch is tagged with its pipeline, partition, shard fingerprint, attempt and shard, and the run
and asset that submitted it. These tags are how a submit re-attaches to a batch whose creation
Dagster never recorded (a crash between the provider's accept and the run's record), how the
cancel job reaches every live batch of a partition, and how a refusal for a full queue is counted.
They use 8 of the 16 metadata pairs OpenAI-style providers keep; the user's own tags get the rest.
"""

from __future__ import annotations

__all__ = [
    "ASSET_TAG",
    "ATTEMPT_TAG",
    "FINGERPRINT_TAG",
    "MAX_USER_TAGS",
    "PARTITION_TAG",
    "PIPELINE_TAG",
    "RESUBMIT_TAG",
    "RUN_TAG",
    "SHARD_TAG",
    "UNPARTITIONED",
    "partition_of_tag",
    "partition_tag",
]

PIPELINE_TAG = "bp_pipeline"
PARTITION_TAG = "bp_partition"
#: The shard's content fingerprint (see ``requests.Shard.fingerprint``): what "the same shard" means.
FINGERPRINT_TAG = "bp_fingerprint"
ASSET_TAG = "bp_asset"
RUN_TAG = "bp_run_id"
ATTEMPT_TAG = "bp_attempt"
SHARD_TAG = "bp_shard"
#: How many times the shard was submitted again after the provider refused it for a full queue.
RESUBMIT_TAG = "bp_resubmit"
#: Metadata pairs left for the user's own batch tags.
MAX_USER_TAGS = 8

#: The partition of an unpartitioned pipeline, in tags, folders and run keys.
UNPARTITIONED = "__all__"


def partition_tag(partition: str | None) -> str:
    return UNPARTITIONED if partition is None else partition


def partition_of_tag(tag: str) -> str | None:
    return None if tag == UNPARTITIONED else tag
