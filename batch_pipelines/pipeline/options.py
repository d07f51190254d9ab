"""Every setting of a pipeline, with its default: the one record the factory, the runtime and the
component read.

``build_batch_pipeline(name, source=..., spec=..., max_attempts=3)`` takes these as keyword
arguments, ``BatchPipelineComponent`` as YAML attributes of the same names; neither repeats a
default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import dagster as dg

from batch_pipelines.results import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION_DAYS
from batch_pipelines.submission.tags import MAX_USER_TAGS

__all__ = ["DEFAULT_OPTIONS", "DEFAULT_RESOURCE_KEY", "BatchTags", "PipelineOptions"]

#: Extra batch tags: fixed, or computed from (partition key, attempt).
BatchTags = Mapping[str, str] | Callable[[str | None, int], Mapping[str, str]]

#: The resource key of the BatchProviderResource every pipeline reads by default.
DEFAULT_RESOURCE_KEY = "batch_provider"


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline submits, retries, checks and polls; every field has its default here."""

    #: ``"fail"`` rejects the partition if any row is invalid; ``"quarantine"`` sends the valid
    #: rows and reports the others as ``rejected``.
    policy: Literal["fail", "quarantine"] = "fail"
    #: How many times a row may be sent (1: never retried).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Also send again rows whose structured output did not validate.
    retry_invalid_output: bool = False
    #: A row whose content changed after it was sent never keeps the old answer: ``"resend"`` sends
    #: it again with its current content (a follow-up batch of only such rows, spending an attempt);
    #: ``"report"`` leaves it with the outcome ``stale``.
    on_stale: Literal["resend", "report"] = "resend"
    #: Cancel the in-flight batches of a partition when its request files are rebuilt with other
    #: content (a new prompt, corrected rows): their answers would be stale.
    cancel_superseded: bool = True
    #: Seconds the rebuild waits for the batches it cancelled to end, to keep what they finished
    #: for reuse (their rows are then not sent again); 0: do not wait, send those rows again.
    superseded_wait_seconds: float = 300.0
    #: Pay once per request: a row whose request (same content, see ``request_fingerprint``) was
    #: answered in an earlier round of this pipeline, in any partition, or is asked by another row
    #: of the same submission, is not sent; it gets that answer (``reused`` in the results). One run
    #: can bypass it (a full resend) with the run tag ``batch_pipelines/reuse: "off"``.
    reuse: bool = True
    #: Days an answer stays reusable; older ones are deleted from the reuse store.
    reuse_retention_days: float = DEFAULT_RETENTION_DAYS
    #: Days a partition's stored files (request files of past attempts, downloaded results) are
    #: kept; older ones are deleted after a results run, never the first or newest attempt of a
    #: partition, nor the files of a partition that may have batches in flight.
    storage_retention_days: float = 30.0
    #: The failure-rate check fails above this share of rows.
    failure_rate_threshold: float = 0.05
    #: Poll inside the run (small jobs, tests): materialize the three assets together; no sensor is built.
    blocking: bool = False
    #: In blocking mode, cancel the batches when the run is terminated.
    cancel_on_termination: bool = True
    #: Key of the :class:`BatchProviderResource`.
    resource_key: str = DEFAULT_RESOURCE_KEY
    #: IO manager storing the results DataFrame.
    io_manager_key: str = "io_manager"
    group_name: str | None = None
    key_prefix: str | Sequence[str] | None = None
    #: Extra batch metadata (a team tag), or a function of (partition, attempt) returning it; at
    #: most 8 pairs (the provider keeps 16, the pipeline uses up to 8).
    batch_tags: BatchTags | None = None
    #: Refuse to submit a partition whose estimated cost (USD) exceeds this, before any upload
    #: (the resource's ``max_cost_per_partition_usd`` applies too: the lower wins).
    max_cost_per_partition_usd: float | None = None
    #: Refuse a submission that would take the estimated cost of what one run submits (every
    #: pipeline's batches and retries in it) over this (USD); the resource's applies too.
    max_cost_per_run_usd: float | None = None
    #: Split request files further than the provider's limits require.
    max_requests_per_shard: int | None = None
    #: At most this many partitions per run: a backfill of the three assets (the backfill policy
    #: ``multi_run``), and each results run the sensor requests for partitions that finished
    #: together. Each partition keeps its own batches, metadata and checks; 1: a run per partition.
    #: Blocking mode always runs one partition per run (each run waits for its batches).
    max_partitions_per_run: int = 10
    #: Seconds a partition whose batches ended may wait for the others its submitting run sent
    #: (the run still submitting, or their batches still in flight), so that the sensor asks for
    #: all their results in one run rather than one run per partition as each ends. Batches take
    #: hours; a few minutes more for fewer, fuller runs. 0: ask as soon as each partition is done.
    results_gather_seconds: float = 300.0
    #: Seconds between two sensor ticks.
    sensor_minimum_interval_seconds: int = 30
    #: Seconds one tick may spend polling (keep it under the deployment's sensor timeout, 60 s by default).
    sensor_tick_budget_seconds: float = 30.0
    #: Whether the sensor runs as soon as the code location loads.
    sensor_default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING

    def __post_init__(self) -> None:
        if self.policy not in ("fail", "quarantine"):
            raise ValueError(f"policy must be 'fail' or 'quarantine', not {self.policy!r}")
        if self.on_stale not in ("resend", "report"):
            raise ValueError(f"on_stale must be 'resend' or 'report', not {self.on_stale!r}")
        if self.max_partitions_per_run < 1:
            raise ValueError(f"max_partitions_per_run must be >= 1, got {self.max_partitions_per_run}")
        if self.results_gather_seconds < 0:
            raise ValueError(f"results_gather_seconds must be >= 0, got {self.results_gather_seconds}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.failure_rate_threshold <= 1:
            raise ValueError(f"failure_rate_threshold must be within [0, 1], got {self.failure_rate_threshold}")
        if self.superseded_wait_seconds < 0:
            raise ValueError(f"superseded_wait_seconds must be >= 0, got {self.superseded_wait_seconds}")
        if self.reuse_retention_days <= 0:
            raise ValueError(f"reuse_retention_days must be positive, got {self.reuse_retention_days}")
        if self.storage_retention_days < 1:
            # A round lasts up to a day (the completion window): younger files may be in use.
            raise ValueError(f"storage_retention_days must be at least 1, got {self.storage_retention_days}")
        for name in ("max_cost_per_partition_usd", "max_cost_per_run_usd"):
            if (value := getattr(self, name)) is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if isinstance(self.batch_tags, Mapping) and len(self.batch_tags) > MAX_USER_TAGS:
            raise ValueError(f"batch_tags has {len(self.batch_tags)} pairs; at most {MAX_USER_TAGS} are left for yours")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def key_path(self) -> list[str]:
        """``key_prefix`` as a list of key components."""
        prefix = self.key_prefix
        return [prefix] if isinstance(prefix, str) else list(prefix or [])

    def user_tags(self, partition: str | None, attempt: int) -> Mapping[str, str]:
        """The user's extra batch tags for one attempt of one partition."""
        tags = self.batch_tags
        return tags(partition, attempt) if callable(tags) else (tags or {})


DEFAULT_OPTIONS = PipelineOptions()
