"""The worker: moves batches through their lifecycle, off the request path.

One worker serves a data directory at a time: it holds ``worker.lock`` with ``fcntl.flock``, which
the OS releases when the holder dies, so a crashed worker never blocks the next. It runs either as
a thread of an engine's process (``worker="thread"``; it waits for the lock if another process
holds it) or as a detached process (``python -m batch_pipelines.local_service.worker DATA_DIR``,
started by :func:`ensure_worker_process`) that outlives its caller and exits after
``BATCH_PIPELINES_WORKER_IDLE`` seconds (default 60) with nothing to do.

Each tick the worker advances every active batch by one step (round robin, so a million-row batch
does not starve a small one): a chunk of validation, a chunk of rows, or a status change.
Progress is checkpointed after every chunk: the output and error work files are appended, flushed,
and their lengths saved together with the input offset and the counts. A worker that resumes a
batch truncates the work files to the checkpointed lengths and continues from the saved offset,
so no row is ever written twice. Within a chunk, lines are written in reverse input order: the
output order differs from the input order, as real providers' does.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import itertools
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batch_pipelines.local_service.engine import profile_from_json
from batch_pipelines.local_service.faults import FaultPlan, RowFaults
from batch_pipelines.local_service.responders import Responder, responder_from_spec
from batch_pipelines.local_service.store import ACTIVE_STATUSES, Store, new_file_id
from batch_pipelines.local_service.validation import ValidationResult, validate_input

__all__ = ["Worker", "ensure_worker_process", "main"]

IDLE_ENV = "BATCH_PIPELINES_WORKER_IDLE"
_DEFAULT_IDLE_EXIT = 60.0
_CHUNK = 4096  # lines per step: one checkpoint per chunk
# Requests per responder call: enough for a forwarding responder's concurrency, few enough that a
# batch of parsed requests stays in the CPU cache (4096 at once made every row ~30 % slower).
_RESPOND_BATCH = 128
_IDLE_POLL = 0.1  # how often an idle worker looks for batches created by other processes
_LOCK_POLL = 0.5
# Realistic pace: visible phases, 20 rows/s for small batches, about a minute for big ones.
_REALISTIC_PHASE_SECONDS = {"validating": 2.0, "finalizing": 1.0, "cancelling": 1.0}
_REALISTIC_MIN_RATE = 20.0
_REALISTIC_MAX_SECONDS = 60.0

_ROW_ERROR_BODIES: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "The request was rejected as invalid (injected by the local fault plan).", None),
    429: ("rate_limit_error", "Rate limit reached for requests (injected by the local fault plan).", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request (injected by the local fault plan).", None),
}
_END_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}

_spawned: list[subprocess.Popen[bytes]] = []


class WorkerLock:
    """An exclusive, non-blocking flock on ``worker.lock``; freed by the OS if the holder dies."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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


class Worker:
    """The processing loop for one data directory."""

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
        self._runs: dict[str, _BatchRun] = {}

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
                    if not self._active_ids() or not lock.try_acquire():
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

    def _active_ids(self) -> list[str]:
        sql = f"SELECT id FROM batches WHERE status IN ({', '.join('?' * len(ACTIVE_STATUSES))}) ORDER BY seq"
        return [r["id"] for r in self._store.read(sql, ACTIVE_STATUSES)]

    def _tick(self) -> float | None:
        """Advance every active batch one step; the earliest time more work is due, None if idle."""
        ids = self._active_ids()
        for gone in set(self._runs) - set(ids):
            self._runs.pop(gone).close()
        earliest: float | None = None
        for batch_id in ids:
            if self._stop.is_set():
                break
            try:
                run = self._runs.get(batch_id) or self._runs.setdefault(batch_id, _BatchRun(self._store, batch_id))
                with _gc_paused():
                    due = run.step()
            except Exception:
                traceback.print_exc()
                _fail_unexpectedly(self._store, batch_id, sys.exc_info()[1])
                due = None
            if due is None:
                run_done = self._runs.pop(batch_id, None)
                if run_done is not None:
                    run_done.close()
            else:
                earliest = due if earliest is None else min(earliest, due)
        return earliest


class _BatchRun:
    """One batch's processing state in this worker (file handles, validation progress...)."""

    def __init__(self, store: Store, batch_id: str) -> None:
        row = store.read_one("SELECT * FROM batches WHERE id = ?", (batch_id,))
        settings = orjson.loads(row["settings"])
        self._store = store
        self._id = batch_id
        self._tag = batch_id.removeprefix("batch_")[:12]
        self._profile = profile_from_json(settings["profile"])
        self._plan = FaultPlan.model_validate(settings["faults"])
        self._realistic = settings["speed"] == "realistic"
        self._responder_spec = settings["responder"]
        self._endpoint: str = row["endpoint"]
        self._input_path = store.file_path(row["input_file_id"])
        self._deadline: float = row["deadline"]
        self._validation: Any = None
        self._validated: ValidationResult | None = None
        self._faults: RowFaults | None = None
        self._responder: Responder | None = None
        self._handles: tuple[BinaryIO, BinaryIO, BinaryIO] | None = None

    def close(self) -> None:
        if self._handles is not None:
            for handle in self._handles:
                handle.close()
            self._handles = None
        if self._responder is not None:
            self._responder.close()
            self._responder = None
        if self._validation is not None:
            self._validation.close()
            self._validation = None

    def step(self) -> float | None:
        """Do one bounded piece of work; when to come back (None: the batch is terminal)."""
        row = self._store.read_one("SELECT * FROM batches WHERE id = ?", (self._id,))
        now = time.time()
        status = row["status"]
        if status == "validating":
            return self._validate(row, now)
        if status == "in_progress":
            return self._progress(row, now)
        if status == "cancelling":
            return self._cancel(row, now)
        if status == "finalizing":
            return self._finalize(row, now)
        return None

    # ---- phases --------------------------------------------------------------------------
    def _validate(self, row: Any, now: float) -> float:
        if self._validated is None:
            if self._validation is None:
                self._validation = validate_input(self._input_path, self._profile, self._endpoint)
            try:
                next(self._validation)
                return now
            except StopIteration as done:
                self._validated = done.value
                self._validation = None
        wait_until = self._phase_wait(row["created_at"], "validating")
        if wait_until > now:
            return wait_until
        result = self._validated
        errors = None
        if self._plan.validation_error:
            code = self._plan.validation_error
            errors = [{"code": code, "line": None, "message": _fault_validation_message(code, result.model), "param": None}]
        elif result.error_count:
            errors = result.report()
        with self._store.write() as db:
            if errors is not None:
                db.execute(
                    "UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ? AND status = 'validating'",
                    (int(now), orjson.dumps(errors).decode(), self._id),
                )
            else:
                db.execute(
                    "UPDATE batches SET status = 'in_progress', in_progress_at = ?, started = ?, total = ?,"
                    " work_output_id = ?, work_error_id = ? WHERE id = ? AND status = 'validating'",
                    (int(now), now, result.total, new_file_id(), new_file_id(), self._id),
                )
        return now

    def _progress(self, row: Any, now: float) -> float:
        self._open(row)
        done = row["completed"] + row["failed"]
        total = row["total"]
        expire_row = self._faults.expire_at_row  # type: ignore[union-attr]
        expiring = now >= self._deadline or (expire_row is not None and expire_row < total and done >= expire_row)
        if done >= total:
            if expiring:
                self._finish(row, "expired", expect="in_progress")
            else:
                self._set_status("finalizing", now, expect="in_progress")
            return now
        if expiring:
            self._advance(row, _CHUNK, end="batch_expired")
            return now
        limit, due = self._due_rows(row, now, done)
        if limit == 0:
            return due
        if expire_row is not None and expire_row < total:
            limit = min(limit, expire_row - done)
        if done + self._advance(row, limit) >= total:
            # Decided in the same step, so a deadline passing now cannot expire a finished batch.
            self._set_status("finalizing", now, expect="in_progress")
        return now

    def _cancel(self, row: Any, now: float) -> float:
        if row["work_output_id"] is None:  # cancelled while validating: nothing was started
            self._finish(row, "cancelled", expect="cancelling")
            return now
        self._open(row)
        if row["completed"] + row["failed"] < row["total"]:
            self._advance(row, _CHUNK, end="batch_cancelled")
            return now
        wait_until = self._phase_wait(row["cancelling_at"], "cancelling")
        if wait_until > now:
            return wait_until
        self._finish(row, "cancelled", expect="cancelling")
        return now

    def _finalize(self, row: Any, now: float) -> float:
        wait_until = self._phase_wait(row["finalizing_at"], "finalizing")
        if wait_until > now:
            return wait_until
        self._finish(row, "completed", expect="finalizing")
        return now

    # ---- work ----------------------------------------------------------------------------
    def _phase_wait(self, since: int | None, phase: str) -> float:
        if not self._realistic or since is None:
            return 0.0
        return since + _REALISTIC_PHASE_SECONDS[phase]

    def _due_rows(self, row: Any, now: float, done: int) -> tuple[int, float]:
        """How many rows may run now at this batch's pace, and when the next one is due if none."""
        rate = None
        if self._realistic:
            rate = max(_REALISTIC_MIN_RATE, row["total"] / _REALISTIC_MAX_SECONDS)
        if self._plan.row_delay:
            rate = min(rate or float("inf"), 1.0 / self._plan.row_delay)
        if rate is None:
            return _CHUNK, now
        due = int((now - row["started"]) * rate) + 1 - done
        if due <= 0:
            return 0, row["started"] + done / rate
        return min(due, _CHUNK), now

    def _open(self, row: Any) -> None:
        """Open the input at the checkpoint and the work files cut back to their checkpointed length."""
        if self._handles is not None:
            return
        out_path = self._store.file_path(row["work_output_id"])
        err_path = self._store.file_path(row["work_error_id"])
        for path, size in ((out_path, row["output_bytes"]), (err_path, row["error_bytes"])):
            with path.open("ab") as f:
                f.truncate(size)
        source = self._input_path.open("rb")
        source.seek(row["input_offset"])
        self._handles = (source, out_path.open("ab"), err_path.open("ab"))
        self._faults = RowFaults(self._plan, row["total"])

    def _advance(self, row: Any, limit: int, *, end: str | None = None) -> int:
        """Process the next ``limit`` lines (or close their rows with error code ``end``) and
        checkpoint; how many rows were done."""
        source, out_file, err_file = self._handles  # type: ignore[misc]
        faults = self._faults if self._plan.has_row_faults else None
        loads, dumps = orjson.loads, orjson.dumps
        id_prefix = f"batch_req_{self._tag}_"
        outputs: list[bytes] = []
        errors: list[bytes] = []
        numbers: list[int] = []
        custom_ids: list[str] = []
        bodies: list[Any] = []
        completed = failed = 0
        index = row["completed"] + row["failed"]  # 0-based row index, what fault plans pick by
        for raw in itertools.islice(source, limit):
            if raw.isspace():
                continue
            index += 1
            request = loads(raw)
            custom_id = request["custom_id"]
            if end is not None:
                error = {"code": end, "message": _END_MESSAGES[end]}
                errors.append(dumps({"id": f"{id_prefix}{index}", "custom_id": custom_id, "response": None, "error": error}))
                failed += 1
                continue
            if faults is not None:
                if index - 1 in faults.missing:
                    completed += 1  # counted as done, written nowhere: a lost row
                    continue
                status = faults.failure_status(index - 1)
                if status is not None:
                    errors.append(self._line(index, custom_id, status, _injected_error(status)))
                    failed += 1
                    continue
            numbers.append(index)
            custom_ids.append(custom_id)
            bodies.append(request["body"])
            if len(bodies) == _RESPOND_BATCH:
                done, bad = self._respond(numbers, custom_ids, bodies, outputs, errors, faults)
                completed, failed = completed + done, failed + bad
                numbers, custom_ids, bodies = [], [], []
        if bodies:
            done, bad = self._respond(numbers, custom_ids, bodies, outputs, errors, faults)
            completed, failed = completed + done, failed + bad
        outputs.reverse()
        errors.reverse()
        if outputs:
            out_file.write(b"\n".join(outputs) + b"\n")
            out_file.flush()
        if errors:
            err_file.write(b"\n".join(errors) + b"\n")
            err_file.flush()
        with self._store.write() as db:
            db.execute(
                "UPDATE batches SET input_offset = ?, output_bytes = ?, error_bytes = ?,"
                " output_lines = output_lines + ?, error_lines = error_lines + ?,"
                " completed = completed + ?, failed = failed + ? WHERE id = ?",
                (source.tell(), out_file.tell(), err_file.tell(), len(outputs), len(errors), completed, failed, self._id),
            )
        return completed + failed

    def _respond(
        self,
        numbers: list[int],
        custom_ids: list[str],
        bodies: list[Any],
        outputs: list[bytes],
        errors: list[bytes],
        faults: RowFaults | None,
    ) -> tuple[int, int]:
        """Answer a few requests and encode their lines; (completed, failed) among them."""
        if self._responder is None:
            self._responder = responder_from_spec(self._responder_spec)
        replies = self._responder.respond(self._endpoint, bodies)
        dumps = orjson.dumps
        id_prefix, request_prefix = f"batch_req_{self._tag}_", f"req_{self._tag}_"
        completed = failed = 0
        for n, custom_id, (status, body) in zip(numbers, custom_ids, replies, strict=True):
            if 200 <= status < 300:
                completed += 1
                encoded = dumps(
                    {
                        "id": f"{id_prefix}{n}",
                        "custom_id": custom_id,
                        "response": {"status_code": status, "request_id": f"{request_prefix}{n}", "body": body},
                        "error": None,
                    }
                )
                if faults is None:
                    outputs.append(encoded)
                else:
                    outputs.extend(self._output_faults(faults, n - 1, encoded, custom_id))
            elif status == 0:
                errors.append(dumps({"id": f"{id_prefix}{n}", "custom_id": custom_id, "response": None, "error": body}))
                failed += 1
            else:
                errors.append(self._line(n, custom_id, status, body))
                failed += 1
        return completed, failed

    def _line(self, n: int, custom_id: str, status: int, body: Any) -> bytes:
        return orjson.dumps(
            {
                "id": f"batch_req_{self._tag}_{n}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{self._tag}_{n}", "body": body},
                "error": None,
            }
        )

    def _output_faults(self, faults: RowFaults, index: int, encoded: bytes, custom_id: str) -> list[bytes]:
        if index in faults.corrupt:
            return [encoded[: len(encoded) // 2]]
        if index in faults.duplicate:
            return [encoded, encoded]
        if index in faults.unknown:
            stranger = encoded.replace(orjson.dumps(custom_id), orjson.dumps(f"unknown-{self._tag}-{index}"), 1)
            return [encoded, stranger]
        return [encoded]

    # ---- status changes ------------------------------------------------------------------
    def _set_status(self, status: str, now: float, *, expect: str) -> None:
        with self._store.write() as db:
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ? WHERE id = ? AND status = ?",
                (status, int(now), self._id, expect),
            )

    def _finish(self, row: Any, status: str, *, expect: str) -> None:
        """Publish the result files and enter a terminal status (if nobody changed the status meanwhile)."""
        if self._handles is not None:
            for handle in self._handles:
                handle.close()
            self._handles = None
        now = int(time.time())
        keep_output = row["output_lines"] > 0 and not (status == "completed" and self._plan.no_output_file)
        output_id = row["work_output_id"] if keep_output else None
        error_id = row["work_error_id"] if row["error_lines"] > 0 else None
        published: list[tuple[str, str, int]] = []
        for work_id, kept, kind in ((row["work_output_id"], output_id, "output"), (row["work_error_id"], error_id, "error")):
            if work_id is None:
                continue
            path = self._store.file_path(work_id)
            if kept is None:
                path.unlink(missing_ok=True)
            else:
                published.append((work_id, f"{self._id}_{kind}.jsonl", path.stat().st_size))
        with self._store.write() as db:
            current = db.execute("SELECT status FROM batches WHERE id = ?", (self._id,)).fetchone()["status"]
            if current != expect:
                return  # a cancel arrived: the next step finishes the other way
            for file_id, name, size in published:
                db.execute(
                    "INSERT OR IGNORE INTO files (id, filename, purpose, bytes, created_at) VALUES (?, ?, 'batch_output', ?, ?)",
                    (file_id, name, size, now),
                )
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, error_file_id = ? WHERE id = ?",
                (status, now, output_id, error_id, self._id),
            )


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


def _injected_error(status: int) -> dict[str, Any]:
    type_, message, code = _ROW_ERROR_BODIES.get(status, ("server_error", f"Injected HTTP {status} (local fault plan).", None))
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _fault_validation_message(code: str, model: str | None) -> str:
    if code == "token_limit_exceeded":
        return (
            f"Enqueued token limit reached for {model or 'this model'} in organization local. "
            "Please try again once some in_progress batches have been completed."
        )
    return f"Validation failed with {code} (injected by the local fault plan)."


def _fail_unexpectedly(store: Store, batch_id: str, exc: BaseException | None) -> None:
    message = f"The local service failed processing this batch: {exc!r}"
    errors = [{"code": "server_error", "line": None, "message": message, "param": None}]
    with store.write() as db:
        db.execute(
            "UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ? AND status IN (?, ?, ?, ?)",
            (int(time.time()), orjson.dumps(errors).decode(), batch_id, *ACTIVE_STATUSES),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batch_pipelines.local_service.worker", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=float(os.environ.get(IDLE_ENV, _DEFAULT_IDLE_EXIT)),
        help=f"exit after this many idle seconds (env {IDLE_ENV}, default {_DEFAULT_IDLE_EXIT:g})",
    )
    args = parser.parse_args(argv)
    store = Store(args.data_dir)
    try:
        Worker(store, idle_exit=args.idle_exit).run()
    finally:
        store.close()


if __name__ == "__main__":
    main()
