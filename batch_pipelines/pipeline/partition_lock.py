"""One submitter at a time for a partition, held in the Dagster instance every run worker shares.

Held while the partition's batches are listed and the missing ones created, so two runs of the
same partition (a retried run and a backfill, two clicks, two run workers on two machines) never
both create a batch for one shard: the second lists after the first created, and re-attaches.
Held too while request files are written, so a submit never reads them half rewritten.

Run workers share the instance and the storage, not a disk, so the lock is one of the instance's
global concurrency slots: one key per pipeline and partition (``batch_pipelines/<pipeline>/<partition>``)
with one slot, claimed by the holder's run and a step id of its own, freed in a ``finally``. The
claim is atomic in the instance's database (SQLite, PostgreSQL). A holder that died without
freeing it (a killed run worker) must not block forever: a waiter that finds the holding run
ended, or gone from run storage (as run monitoring leaves a run whose worker died), frees that
run's slots and claims. The holder's step id names its host and process too, so a waiter on the
same host frees at once the slot of a process that is gone. An instance without global
concurrency support gets a lock of this process only. Beyond the lock,
:meth:`~batch_pipelines.submission.Submitter.keep_first` reconciles after the fact.

The runtime (:meth:`~batch_pipelines.pipeline.runtime.PipelineRuntime.lock`) holds it around its
calls into the Dagster-free code below the face, which takes no lock of its own.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import dagster as dg

from batch_pipelines.submission import partition_dir

__all__ = ["PartitionLock", "lock_key"]

#: Seconds between two claims of a waiter: the holder's steps last seconds, not milliseconds.
_POLL_SECONDS = 0.2
#: Seconds between two looks at whether the holding run is still alive.
_LIVENESS_SECONDS = 1.0
# The fallback's locks, by key: one holder per process.
_LOCAL: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


def lock_key(pipeline: str, partition: str | None) -> str:
    """The concurrency key of a pipeline's partition."""
    return f"batch_pipelines/{pipeline}/{partition_dir(partition)}"


class PartitionLock:
    """The partition locks of one run: ``lock(pipeline, partition)`` is a context manager."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, step: str, log: Callable[[str], None] | None = None) -> None:
        self.instance = instance
        self.run_id = run_id
        self.step = step
        self.log = log

    def __call__(self, pipeline: str, partition: str | None) -> AbstractContextManager[None]:
        return self.hold(lock_key(pipeline, partition))

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            with _local_lock(key):
                yield
            return
        # A step id per holding, so two holdings of one run (two steps, two partitions) never mix.
        holder = f"{self.step}#{uuid.uuid4().hex[:12]}@{socket.gethostname()}:{os.getpid()}"
        try:
            self._claim(storage, key, holder)
            yield
        finally:
            storage.free_concurrency_slot_for_step(self.run_id, holder)

    def _claim(self, storage, key: str, holder: str) -> None:  # noqa: ANN001 (an EventLogStorage)
        if storage.get_concurrency_info(key).slot_count != 1:
            storage.set_concurrency_slots(key, 1)
        looked = float("-inf")  # the first refusal looks at once whether the holder is alive
        waited = False
        while not storage.claim_concurrency_slot(key, self.run_id, holder).is_claimed:
            if not waited and self.log is not None:
                self.log(f"waiting for the lock {key}, held by runs {self._holders(storage, key)}")
            waited = True
            if time.monotonic() - looked >= _LIVENESS_SECONDS:
                self._free_dead_holders(storage, key)
                looked = time.monotonic()
            time.sleep(_POLL_SECONDS)

    def _holders(self, storage, key: str) -> list[str]:  # noqa: ANN001
        return sorted({slot.run_id for slot in storage.get_concurrency_info(key).claimed_slots})

    def _free_dead_holders(self, storage, key: str) -> None:  # noqa: ANN001
        """Free the slots of holders (or of waiters the slot was assigned to) whose run is no longer in
        progress (ended, or deleted), or whose process is gone from this host."""
        info = storage.get_concurrency_info(key)
        # A waiter that died is still queued: once the slot is assigned to it, it blocks like a holder.
        assigned = [step for step in info.pending_steps if step.assigned_timestamp is not None]
        for slot in [*info.claimed_slots, *assigned]:
            if _process_gone(slot.step_key):
                self._note(key, slot.run_id, "its process on this host is gone")
                storage.free_concurrency_slot_for_step(slot.run_id, slot.step_key)
                continue
            if slot.run_id == self.run_id:
                continue  # this run's other step: alive while this one is
            run = self.instance.get_run_by_id(slot.run_id)
            if run is None or run.is_finished:
                self._note(key, slot.run_id, "absent from run storage" if run is None else str(run.status.value))
                storage.free_concurrency_slots_for_run(slot.run_id)

    def _note(self, key: str, run_id: str, why: str) -> None:
        if self.log is not None:
            self.log(f"the lock {key} was held by run {run_id} ({why}): freed")


def _process_gone(step_key: str) -> bool:
    """Whether the holder named ``step_key`` ran on this host in a process that no longer exists."""
    host, _, pid = step_key.rpartition("@")[2].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


@contextmanager
def _local_lock(key: str) -> Iterator[None]:
    with _LOCAL_GUARD:
        lock = _LOCAL.setdefault(key, threading.Lock())
    with lock:
        yield
