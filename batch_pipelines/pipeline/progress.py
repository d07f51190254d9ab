"""What the asset pages show of a batch's life: submitted, in flight, finished.

``<name>_batch`` is materialized when its batches have finished (the sensor reports it; blocking
runs do it themselves), so its partitions read as Dagster reads any asset's: missing while in
flight, materialized when done, failed when the submit run failed. On the way:

- the submission is an observation (:data:`~batch_pipelines.pipeline.ledger.BATCHES_KEY` makes it
  the round's opener in the ledger), with batch ids and console links;
- every poll that changed something adds an observation per partition: status, completed /
  failed / total as a sentence, percent done, the expected finish once it can be estimated;
- one unpartitioned observation per tick sums the batches in flight, the line the asset's Events
  plots draw (a per-partition number there would zigzag between partitions);
- the finishing materialization holds the partition's figures as numbers, which the Partitions
  plots draw one point per partition.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from batch_pipelines.pipeline.ledger import ROUND_KEY
from batch_pipelines.providers import TERMINAL_STATUSES, Batch

__all__ = ["BatchState", "console_metadata", "ended_at", "finished_metadata", "in_flight_metadata", "progress_metadata", "started_at", "usage_of"]

#: The order a batch goes through; a group of batches is as far as its least advanced one.
_STAGES = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True)
class BatchState:
    """One batch as last polled: what the progress figures are made of."""

    id: str
    status: str
    completed: int = 0
    failed: int = 0
    total: int = 0
    #: time.time() when it started running (the provider's ``in_progress_at``; else when first seen).
    started_at: float | None = None
    #: time.time() when it ended, as the provider tells (None while in flight).
    ended_at: float | None = None
    #: The model and, once it ended, the token usage the provider reports (None where it does not).
    model: str | None = None
    usage: dict[str, Any] | None = None

    @classmethod
    def of(cls, batch: Batch) -> BatchState:
        counts = batch.request_counts
        return cls(
            batch.id, str(batch.status), counts.completed, counts.failed, counts.total, started_at(batch), ended_at(batch),
            batch.model, usage_of(batch),
        )  # fmt: skip

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES  # StrEnum members: equal to their strings


def started_at(batch: Batch) -> float | None:
    started = batch.in_progress_at or batch.created_at
    return float(started) if started else None


def ended_at(batch: Batch) -> float | None:
    ended = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
    return float(ended) if ended else None


def usage_of(batch: Batch) -> dict[str, Any] | None:
    """The batch's token usage as plain numbers, once it has ended (None before, or where not reported)."""
    return batch.usage.model_dump(exclude_none=True) if batch.usage is not None and batch.is_terminal else None


def _status(states: Sequence[BatchState]) -> str:
    """The group's status: the least advanced open batch's, or when all ended, the one outcome or a count of each."""
    open_statuses = [s.status for s in states if not s.terminal]
    if open_statuses:
        return min(open_statuses, key=lambda s: _STAGES.index(s) if s in _STAGES else -1)
    ended = sorted({s.status for s in states})
    if len(ended) == 1:
        return ended[0]
    return ", ".join(f"{sum(1 for s in states if s.status == e)} {e}" for e in ended)


def _counts(states: Sequence[BatchState]) -> tuple[int, int, int]:
    return sum(s.completed for s in states), sum(s.failed for s in states), sum(s.total for s in states)


def _sentence(completed: int, failed: int, total: int) -> str:
    if not total:
        return "not started"
    return f"{completed + failed} of {total} requests done ({(completed + failed) / total:.0%}), {failed} failed"


def _expected_finish(states: Sequence[BatchState], now: float) -> float | None:
    """When the open batches should end at the rate they went so far (None before any request is done)."""
    ends = []
    for s in states:
        done = s.completed + s.failed
        if s.terminal or not s.total or not done or s.started_at is None or now <= s.started_at:
            continue
        ends.append(now + (s.total - done) * (now - s.started_at) / done)
    return max(ends) if ends and len(ends) == sum(1 for s in states if not s.terminal) else None


def console_metadata(links: Mapping[str, str]) -> dict[str, Any]:
    """Links to the provider's console page of each batch, where it has one."""
    if not links:
        return {}
    if len(links) == 1:
        return {"console": dg.MetadataValue.url(next(iter(links.values())))}
    return {"console": dg.MetadataValue.md("\n".join(f"- [{i}]({url})" for i, url in links.items()))}


def progress_metadata(states: Sequence[BatchState], *, attempt: int, links: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """An in-flight observation of one partition's batches (no numbers: see the module docstring)."""
    now = time.time() if now is None else now
    completed, failed, total = _counts(states)
    metadata: dict[str, Any] = {
        "status": _status(states),
        "progress": _sentence(completed, failed, total),
        "percent_done": f"{(completed + failed) / total:.0%}" if total else "0%",
        "batch_ids": dg.MetadataValue.json([s.id for s in states]),
        "attempt": str(attempt),
    }
    finish = _expected_finish(states, now)
    if finish is not None:
        metadata["expected_finish"] = dg.MetadataValue.timestamp(finish)
    return {**metadata, **console_metadata(links)}


def finished_metadata(states: Sequence[BatchState], *, round_id: int | None, links: Mapping[str, str]) -> dict[str, Any]:
    """The materialization of ``<name>_batch`` for a partition whose batches have all ended."""
    completed, failed, total = _counts(states)
    started = [s.started_at for s in states if s.started_at is not None]
    ended = [s.ended_at for s in states if s.ended_at is not None]
    metadata: dict[str, Any] = {
        "status": _status(states),
        "statuses": dg.MetadataValue.json({s.id: s.status for s in states}),
        "batch_ids": dg.MetadataValue.json([s.id for s in states]),
        "batches": len(states),
        "requests": total,
        "completed": completed,
        "failed": failed,
        "progress": _sentence(completed, failed, total),
    }
    if models := {s.id: s.model for s in states if s.model}:
        metadata["models"] = dg.MetadataValue.json(models)
    if usage := {s.id: s.usage for s in states if s.usage is not None}:
        metadata["batch_usage"] = dg.MetadataValue.json(usage)
    if started and len(ended) == len(states):
        metadata["duration_s"] = dg.MetadataValue.float(round(max(0.0, max(ended) - min(started)), 1))
    if round_id is not None:
        metadata[ROUND_KEY] = dg.MetadataValue.int(round_id)
    return {**metadata, **console_metadata(links)}


def in_flight_metadata(groups: Sequence[Sequence[BatchState]]) -> dict[str, Any]:
    """The pipeline's batches in flight, summed over partitions: the numbers the Events plots draw."""
    states = [s for group in groups for s in group if not s.terminal]
    completed, failed, total = _counts(states)
    return {
        "partitions_in_flight": sum(1 for group in groups if any(not s.terminal for s in group)),
        "batches_in_flight": len(states),
        "requests_in_flight": total,
        "requests_done_in_flight": completed + failed,
        "percent_done_in_flight": dg.MetadataValue.float(round(100 * (completed + failed) / total, 1) if total else 0.0),
    }
