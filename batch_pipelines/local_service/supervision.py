"""Who processes an engine's batches: a worker thread, a detached worker process, or someone else.

An engine picks one with ``worker=``:

- ``"thread"``: a :class:`~batch_pipelines.local_service.worker_loop.Worker` in a daemon thread of
  this process, woken at once when the engine creates or cancels a batch; it stops with the engine.
- ``"process"``: a detached worker process (``python -m batch_pipelines.local_service.worker``)
  shared by every engine on the data directory. It is started when there is work and nobody holds
  the worker lock, outlives short-lived callers, and exits when idle.
- ``"none"``: some other process's worker runs the batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal, Protocol

from batch_pipelines.local_service.store import Store
from batch_pipelines.local_service.worker_lock import WorkerLock
from batch_pipelines.local_service.worker_loop import Worker

__all__ = ["WORKER_MODES", "Supervision", "WorkerMode", "ensure_worker_process", "supervise"]

WorkerMode = Literal["thread", "process", "none"]
WORKER_MODES = ("thread", "process", "none")

_spawned: list[subprocess.Popen[bytes]] = []


class Supervision(Protocol):
    """What an engine holds of its chosen worker."""

    def kick(self) -> None:
        """There is new work (a batch created or cancelled): see that it gets done."""

    def close(self) -> None:
        """The engine closes."""


def supervise(store: Store, mode: WorkerMode) -> Supervision:
    """Start processing ``store``'s batches the way ``mode`` says."""
    if mode == "thread":
        return _WorkerThread(store)
    if mode == "process":
        return _WorkerProcess(store)
    return _Elsewhere()


class _WorkerThread:
    def __init__(self, store: Store) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        loop = Worker(store, stop=self._stop, wake=self._wake)
        self._thread = threading.Thread(target=loop.run, name="batch-worker", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)


class _WorkerProcess:
    def __init__(self, store: Store) -> None:
        self._store = store
        if store.active_batch_ids(limit=1):  # left by callers that are gone: resume them
            ensure_worker_process(store)

    def kick(self) -> None:
        ensure_worker_process(self._store)

    def close(self) -> None:
        pass  # the worker process serves the directory until it is idle


class _Elsewhere:
    def kick(self) -> None:
        pass

    def close(self) -> None:
        pass


def ensure_worker_process(store: Store) -> None:
    """Start a detached worker for ``store`` unless some process already serves it."""
    for proc in list(_spawned):  # reap workers that exited, no zombies in long-lived callers
        if proc.poll() is not None:
            _spawned.remove(proc)
    probe = WorkerLock(store.lock_path)
    if not probe.try_acquire():
        return
    probe.release()
    # A racing second worker finds the lock taken and exits at once, so a spare spawn is harmless.
    # The package's own root goes on the child's path: it imports what this process imported.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with store.log_path.open("ab") as log:
        _spawned.append(
            subprocess.Popen(
                [sys.executable, "-m", "batch_pipelines.local_service.worker", str(store.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        )
