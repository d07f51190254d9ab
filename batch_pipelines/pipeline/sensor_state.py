"""What the batch sensor keeps between ticks: a small cursor, and each partition's batches in the instance.

Dagster stores a sensor's cursor with every tick record (skipped ticks too) and keeps the records
as long as the instance's tick retention says, so a cursor that held every batch in flight grew
with the deployment (about 270 bytes a batch) and was written again with every tick. The cursor
(:class:`Cursor`) keeps only what must travel with a tick: the event-log storage ids read up to,
and the token of the last tick that reported something. The batches' polling state (:class:`Group`
per partition: status, counts, poll times, errors, hold, model, usage) lives in the key-value table
of the instance's run storage (``instance.daemon_cursor_storage``, where Dagster's own daemons keep
their cursors, on SQLite and PostgreSQL alike), which every daemon and run of the deployment
shares: one row per partition in flight and one index row per pipeline, written only when they
change (:class:`SensorState`).

State outside the cursor outlives a tick whose results are never stored (the daemon died in it).
What that tick polled is a fact about the provider and may stay; what it reported (progress, the
finishing materialization, the results run) was lost with it. So a group the tick reported on
carries the tick's token (``pending``) until a later tick finds that token in its cursor (the tick
was stored: the group is handed off, and dropped when it had ended) or does not (the tick was lost:
the report is made again). Reporting twice is harmless: the results run's run key, and the
ledger's ``round_finished`` / ``results_cover``, keep anything from running twice. A results run
covers a range of partitions, so each group keeps the run key it was handed off in: the tick made
again asks for the same run, even when more partitions have finished since. A cursor reset
from the UI starts over: the state is dropped and rebuilt from the event log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field, ValidationError

from batch_pipelines.pipeline.progress import BatchState
from batch_pipelines.providers import TERMINAL_STATUSES

__all__ = ["Cursor", "Group", "SensorState", "Tracked"]

#: Prefix of the key-value rows the sensors write (the run storage's table is the deployment's).
_KEY_PREFIX = "batch_pipelines/sensor"
#: Keys read per query, well under any database's limit on bound parameters.
_READ_CHUNK = 500


class Tracked(BaseModel):
    """A batch in flight, as the sensor remembers it."""

    id: str
    status: str = "validating"
    completed: int = 0
    failed: int = 0
    total: int = 0
    #: time.time() when first seen (for the growing poll delay), last polled, next due.
    seen_at: float
    polled_at: float = 0.0
    due_at: float = 0.0
    #: Consecutive polls that raised.
    errors: int = 0
    #: time.time() before which the results run waits (a refusal for a full queue is resubmitted then).
    hold_until: float = 0.0
    #: When the provider started running it (for the expected finish) and when it ended.
    started_at: float | None = None
    ended_at: float | None = None
    #: What the provider reports of its model, and of its usage once it ended.
    model: str | None = None
    usage: dict[str, Any] | None = None

    def state(self) -> BatchState:
        return BatchState(
            self.id, self.status, self.completed, self.failed, self.total, self.started_at or self.seen_at, self.ended_at,
            self.model, self.usage,
        )  # fmt: skip


class Group(BaseModel):
    """The batches of one attempt of one partition's round."""

    partition: str | None
    round: int
    attempt: int
    batches: list[Tracked]
    #: The run that recorded the round or attempt (it may send more partitions' batches), and
    #: time.time() when the sensor first saw every batch of the group ended.
    run_id: str | None = None
    done_at: float | None = None
    #: Token of the tick that reported on the group, until a stored cursor carries it (module docstring).
    pending: str | None = None
    #: The reporting tick handed the ended group off (materialization, results run): dropped once it is stored.
    handed_off: bool = False
    #: The run key of the results run the group was handed off in, kept past a lost tick so that
    #: the tick made again asks for that very run (same partitions, same key), not another range.
    run_key: str | None = None

    @property
    def done(self) -> bool:
        return all(b.status in TERMINAL_STATUSES for b in self.batches)

    @property
    def newness(self) -> tuple[int, int]:
        return self.round, self.attempt


class Cursor(BaseModel):
    """The sensor's cursor: what must travel with the tick, nothing that grows with the batches."""

    #: Storage ids of the last ``<name>_batch`` and ``<name>_results`` observations read.
    after_batch: int | None = None
    after_control: int | None = None
    #: The token of the tick that returned this cursor, when that tick reported on a group.
    tick: str | None = None
    #: What cursors held before the state moved out of them: read once, moved into the state.
    groups: list[Group] = Field(default_factory=list, exclude=True)

    @classmethod
    def load(cls, raw: str | None) -> Cursor:
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(f"unreadable batch sensor cursor (reset it from the UI to start over): {exc}") from None

    def dump(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


class SensorState:
    """The groups in flight of one pipeline, as stored in the instance's key-value table.

    Rows are keyed by a digest of the pipeline's ``<name>_batch`` asset key (unique in a
    deployment, like the ledger it reads) and of the partition, so keys stay short whatever the
    names (some databases index only a key's first 64 characters).
    """

    def __init__(self, instance: dg.DagsterInstance, batch_key: dg.AssetKey, groups: dict[str | None, Group], stored: dict[str | None, str]) -> None:
        self._storage = instance.daemon_cursor_storage
        self._namespace = f"{_KEY_PREFIX}/{_digest(batch_key.to_user_string())}"
        self.groups = groups
        #: Each listed partition's row as read (or last written): what saving compares with.
        self._stored = stored

    @classmethod
    def load(cls, instance: dg.DagsterInstance, batch_key: dg.AssetKey, *, fresh: bool = False) -> SensorState:
        """The pipeline's groups in flight; with ``fresh`` none (a reset: what was listed is dropped at the next save)."""
        state = cls(instance, batch_key, {}, {})
        listed = state._listed()
        if fresh:
            state._stored = {p: "" for p in listed}
            return state
        keys = {p: state._group_key(p) for p in listed}
        rows: dict[str, str] = {}
        wanted = list(keys.values())
        for start in range(0, len(wanted), _READ_CHUNK):
            rows.update(state._storage.get_cursor_values(set(wanted[start : start + _READ_CHUNK])))
        for partition, key in keys.items():
            raw = rows.get(key)
            if not raw:
                continue  # dropped by a save that stopped before the index was written
            try:
                state.groups[partition] = Group.model_validate_json(raw)
            except ValidationError as exc:
                raise ValueError(f"unreadable batch sensor state {key} (reset the sensor's cursor from the UI to start over): {exc}") from None
            state._stored[partition] = raw
        return state

    def open(self, group: Group) -> None:
        """Track ``group`` unless the partition's tracked one is newer or the same (a record read again)."""
        current = self.groups.get(group.partition)
        if current is not None:
            if current.newness > group.newness:
                return
            if current.newness == group.newness and [b.id for b in current.batches] == [b.id for b in group.batches]:
                return
        self.groups[group.partition] = group

    def settle(self, stored_tick: str | None) -> set[str | None]:
        """Hand off what the stored tick reported on; the partitions a lost tick reported on, to report again."""
        lost: set[str | None] = set()
        for partition, group in list(self.groups.items()):
            if group.pending is None:
                continue
            if group.pending == stored_tick:
                if group.handed_off:
                    del self.groups[partition]
                else:
                    group.pending = None
            else:
                lost.add(partition)
                group.pending, group.handed_off = None, False
        return lost

    def save(self) -> None:
        """Write the groups that changed, blank the dropped ones, and the index if its partitions changed."""
        rows = {p: g.model_dump_json(exclude_defaults=True) for p, g in self.groups.items()}
        pairs = {self._group_key(p): raw for p, raw in rows.items() if raw != self._stored.get(p)}
        # The table has no delete: a dropped partition's row is emptied (it is reused by its next round).
        pairs.update({self._group_key(p): "" for p in self._stored.keys() - rows.keys()})
        if set(rows) != set(self._stored):
            pairs[self._index_key] = json.dumps(sorted(rows, key=lambda p: (p is not None, p or "")))
        if pairs:
            self._upsert(pairs)
        self._stored = rows

    @property
    def _index_key(self) -> str:
        return f"{self._namespace}/partitions"

    def _group_key(self, partition: str | None) -> str:
        return f"{self._namespace}/{_digest(json.dumps(partition))}"

    def _listed(self) -> list[str | None]:
        raw = self._storage.get_cursor_values({self._index_key}).get(self._index_key)
        try:
            listed = json.loads(raw) if raw else []
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            raise ValueError(f"unreadable batch sensor state {self._index_key} (reset the sensor's cursor from the UI to start over)")
        return listed

    def _upsert(self, pairs: Mapping[str, str]) -> None:
        """Insert the new rows, then update the others (the index last of all).

        Dagster's SQLite run storage inserts a batch of rows or, when one exists already, updates
        the batch: a new row in a batch with an existing one would be lost. New rows are inserted
        first, so a save stopped halfway lists no row it has not written.
        """
        existing: set[str] = set()
        keys = list(pairs)
        for start in range(0, len(keys), _READ_CHUNK):
            existing |= set(self._storage.get_cursor_values(set(keys[start : start + _READ_CHUNK])))
        new = {k: v for k, v in pairs.items() if k not in existing}
        if new:
            self._storage.set_cursor_values(new)
        updates = {k: v for k, v in pairs.items() if k in existing}
        if updates:
            self._storage.set_cursor_values(updates)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
