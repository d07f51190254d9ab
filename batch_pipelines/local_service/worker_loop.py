"""The worker loop: moves a data directory's batches through their lifecycle, off the request path.

Only the holder of the directory's :class:`~batch_pipelines.local_service.worker_lock.WorkerLock`
processes batches. Each tick advances every active batch by one step (round robin, so a
million-row batch does not starve a small one; see ``batch_run.py``) and sleeps until the
earliest batch wants its next step, or until woken.

The loop runs in a thread of an engine's process, waiting for the lock while another process
holds it, or in a detached worker process (``worker.py``), which leaves when the lock is taken
and exits once idle.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from batch_pipelines.local_service.batch_run import BatchRun, fail_batch
from batch_pipelines.local_service.store import Store
from batch_pipelines.local_service.worker_lock import WorkerLock

__all__ = ["Worker"]

_IDLE_POLL = 0.1  # how often an idle worker looks for batches created by other processes
_LOCK_POLL = 0.5


class Worker:
    """The processing loop for one data directory.

    ``stop`` ends :meth:`run`; ``wake`` cuts a sleep short (an engine sets it on new work).
    With ``idle_exit`` (a detached worker) the loop leaves when the lock is taken, or after that
    many seconds with no active batch; without it the loop serves until stopped.
    """

    def __init__(
        self,
        store: Store,
        *,
        stop: threading.Event | None = None,
        wake: threading.Event | None = None,
        idle_exit: float | None = None,
    ) -> None:
        self._store = store
        self._stop = stop or threading.Event()
        self._wake = wake
        self._idle_exit = idle_exit
        self._runs: dict[str, BatchRun] = {}

    def run(self) -> None:
        lock = WorkerLock(self._store.lock_path)
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                if not lock.held and not lock.try_acquire():
                    if self._idle_exit is not None:
                        return  # a detached worker: the lock holder serves the directory
                    self._sleep(_LOCK_POLL)
                    continue
                try:
                    due = self._tick()
                except Exception:  # e.g. the database stayed locked past the busy timeout: retry
                    traceback.print_exc()
                    self._sleep(_LOCK_POLL)
                    continue
                if due is not None:
                    idle_since = time.monotonic()
                    self._sleep(min(due - time.time(), _IDLE_POLL))
                elif self._idle_exit is not None and time.monotonic() - idle_since > self._idle_exit:
                    # Release, then look once more: an engine that saw the lock held just before
                    # the release has committed its batch, so this check sees it.
                    lock.release()
                    if not self._store.active_batch_ids() or not lock.try_acquire():
                        return
                else:
                    self._sleep(_IDLE_POLL)
        finally:
            for run in self._runs.values():
                run.close()
            self._runs.clear()
            lock.release()

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._wake is not None:
            if self._wake.wait(seconds):
                self._wake.clear()
        else:
            self._stop.wait(seconds)

    def _tick(self) -> float | None:
        """Advance every active batch one step; the earliest time more work is due, None if idle."""
        ids = self._store.active_batch_ids()
        for gone in set(self._runs) - set(ids):  # finished or cancelled by another process
            self._runs.pop(gone).close()
        earliest: float | None = None
        for batch_id in ids:
            if self._stop.is_set():
                break
            try:
                run = self._runs.get(batch_id) or self._runs.setdefault(batch_id, BatchRun(self._store, batch_id))
                with _gc_paused():
                    due = run.step()
            except Exception:
                traceback.print_exc()
                fail_batch(self._store, batch_id, sys.exc_info()[1])
                due = None
            if due is None:
                finished = self._runs.pop(batch_id, None)
                if finished is not None:
                    finished.close()
            else:
                earliest = due if earliest is None else min(earliest, due)
        return earliest


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one bounded step.

    A step makes a chunk of short-lived, acyclic objects (parsed lines, bodies) that reference
    counting frees; the collector would only scan them again and again, which doubled the time
    per row in the benchmark. Steps are bounded, so cyclic garbage waits at most one step.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
