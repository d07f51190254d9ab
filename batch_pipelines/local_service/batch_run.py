"""The state machine of one batch: ``validating -> in_progress -> finalizing -> completed``, or
``failed``, ``expired``, ``cancelling -> cancelled``, one bounded step at a time.

A worker calls :meth:`BatchRun.step` for every active batch in turn; each step does a chunk of
validation, a chunk of rows, or a status change, and says when the batch wants the next one.
Every status change is conditional on the status the step read (``WHERE status = ?``), so a
cancel that lands meanwhile wins and the next step finishes the batch the other way.

Progress is checkpointed after every chunk: the output and error work files are appended,
flushed, and their lengths saved together with the input offset and the counts. A run that
resumes a batch (after its worker died) cuts the work files back to the checkpointed lengths and
continues from the saved offset, so no row is ever written twice. Within a chunk, lines are
written in reverse input order: the output order differs from the input order, as real
providers' does. The work files become the batch's output and error files when it ends.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, BinaryIO

import orjson

from batch_pipelines.local_service.batch_usage import UsageSum
from batch_pipelines.local_service.faults import FaultPlan, RowFaults, injected_row_error, injected_validation_error
from batch_pipelines.local_service.output_lines import OutputLines
from batch_pipelines.local_service.pacing import Pace
from batch_pipelines.local_service.responder_specs import responder_from_spec
from batch_pipelines.local_service.responders import Responder
from batch_pipelines.local_service.store import ACTIVE_WHERE, Store, new_file_id
from batch_pipelines.local_service.validation import ValidationResult, validate_input
from batch_pipelines.profiles import profile_from_json

__all__ = ["BatchRun", "fail_batch"]

_CHUNK = 4096  # lines per step: one checkpoint per chunk
# Requests per responder call: enough for a forwarding responder's concurrency, few enough that a
# batch of parsed requests stays in the CPU cache (4096 at once made every row ~30 % slower).
_RESPOND_BATCH = 128


class BatchRun:
    """One batch's processing state in a worker: the settings it was created with, open files,
    validation progress. Everything else is read from the store at every step."""

    def __init__(self, store: Store, batch_id: str) -> None:
        row = store.batch_row(batch_id)
        settings = orjson.loads(row["settings"])
        self._store = store
        self._id = batch_id
        self._lines = OutputLines(batch_id)
        self._profile = profile_from_json(settings["profile"])
        self._plan = FaultPlan.model_validate(settings["faults"])
        self._pace = Pace(realistic=settings["speed"] == "realistic", row_delay=self._plan.row_delay)
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
        self._close_files()
        if self._responder is not None:
            self._responder.close()
            self._responder = None
        if self._validation is not None:
            self._validation.close()
            self._validation = None

    def step(self) -> float | None:
        """Do one bounded piece of work; when to come back (None: the batch is terminal)."""
        row = self._store.batch_row(self._id)
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
        phase_end = self._pace.phase_end(row["created_at"], "validating")
        if phase_end > now:
            return phase_end
        result = self._validated
        errors = None
        if self._plan.validation_error:
            errors = [injected_validation_error(self._plan.validation_error, result.model)]
        elif result.error_count:
            errors = result.report()
        with self._store.write() as db:
            if errors is not None:
                db.execute(
                    "UPDATE batches SET status = 'failed', failed_at = ?, errors = ?, model = ? WHERE id = ? AND status = 'validating'",
                    (int(now), orjson.dumps(errors).decode(), result.model, self._id),
                )
            else:
                db.execute(
                    "UPDATE batches SET status = 'in_progress', in_progress_at = ?, started = ?, total = ?,"
                    " work_output_id = ?, work_error_id = ?, model = ? WHERE id = ? AND status = 'validating'",
                    (int(now), now, result.total, new_file_id(), new_file_id(), result.model, self._id),
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
        limit, due = self._pace.due_rows(total=total, started=row["started"], done=done, now=now, most=_CHUNK)
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
        phase_end = self._pace.phase_end(row["cancelling_at"], "cancelling")
        if phase_end > now:
            return phase_end
        self._finish(row, "cancelled", expect="cancelling")
        return now

    def _finalize(self, row: Any, now: float) -> float:
        phase_end = self._pace.phase_end(row["finalizing_at"], "finalizing")
        if phase_end > now:
            return phase_end
        self._finish(row, "completed", expect="finalizing")
        return now

    # ---- rows ----------------------------------------------------------------------------
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
        self._faults = RowFaults(self._plan, row["total"], batch_tag=self._lines.tag)

    def _close_files(self) -> None:
        if self._handles is not None:
            for handle in self._handles:
                handle.close()
            self._handles = None

    def _advance(self, row: Any, limit: int, *, end: str | None = None) -> int:
        """Process the next ``limit`` lines (or close their rows with error code ``end``) and
        checkpoint; how many rows were done."""
        source, out_file, err_file = self._handles  # type: ignore[misc]
        faults = self._faults if self._plan.has_row_faults else None
        lines = self._lines
        loads = orjson.loads
        outputs: list[bytes] = []
        errors: list[bytes] = []
        numbers: list[int] = []
        custom_ids: list[str] = []
        bodies: list[Any] = []
        usage = UsageSum()
        completed = failed = 0
        n = row["completed"] + row["failed"]  # rows before this chunk; the next row is number n + 1
        for raw in itertools.islice(source, limit):
            if raw.isspace():
                continue
            n += 1
            request = loads(raw)
            custom_id = request["custom_id"]
            if end is not None:
                errors.append(lines.ended(n, custom_id, end))
                failed += 1
                continue
            if faults is not None:  # fault plans pick rows by 0-based index
                if n - 1 in faults.missing:
                    completed += 1  # counted as done, written nowhere: a lost row
                    continue
                status = faults.failure_status(n - 1)
                if status is not None:
                    errors.append(lines.answered(n, custom_id, status, injected_row_error(status)))
                    failed += 1
                    continue
            numbers.append(n)
            custom_ids.append(custom_id)
            bodies.append(request["body"])
            if len(bodies) == _RESPOND_BATCH:
                done, bad = self._respond(numbers, custom_ids, bodies, outputs, errors, faults, usage)
                completed, failed = completed + done, failed + bad
                numbers, custom_ids, bodies = [], [], []
        if bodies:
            done, bad = self._respond(numbers, custom_ids, bodies, outputs, errors, faults, usage)
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
                " completed = completed + ?, failed = failed + ?, input_tokens = input_tokens + ?,"
                " cached_tokens = cached_tokens + ?, output_tokens = output_tokens + ?,"
                " reasoning_tokens = reasoning_tokens + ? WHERE id = ?",
                (
                    source.tell(), out_file.tell(), err_file.tell(), len(outputs), len(errors), completed, failed,
                    usage.input, usage.cached, usage.output, usage.reasoning, self._id,
                ),
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
        usage: UsageSum,
    ) -> tuple[int, int]:
        """Answer a few requests and encode their lines, adding the answered ones' tokens to
        ``usage``; (completed, failed) among them."""
        if self._responder is None:
            self._responder = responder_from_spec(self._responder_spec)
        replies = self._responder.respond(self._endpoint, bodies)
        answered = self._lines.answered
        completed = failed = 0
        for n, custom_id, (status, body) in zip(numbers, custom_ids, replies, strict=True):
            if 200 <= status < 300:
                completed += 1
                usage.add(body)
                line = answered(n, custom_id, status, body)
                if faults is None:
                    outputs.append(line)
                else:
                    outputs.extend(faults.output_lines(n - 1, line, custom_id))
            else:
                failed += 1
                errors.append(self._lines.unanswered(n, custom_id, body) if status == 0 else answered(n, custom_id, status, body))
        return completed, failed

    # ---- status changes ------------------------------------------------------------------
    def _set_status(self, status: str, now: float, *, expect: str) -> None:
        with self._store.write() as db:
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ? WHERE id = ? AND status = ?",
                (status, int(now), self._id, expect),
            )

    def _finish(self, row: Any, status: str, *, expect: str) -> None:
        """Publish the result files and enter a terminal status (if nobody changed the status meanwhile)."""
        self._close_files()
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
            lifetime = row["output_expires_after"]  # the create's output_expires_after, in real seconds
            expires_at = now + lifetime if lifetime is not None else None
            for file_id, name, size in published:
                db.execute(
                    "INSERT OR IGNORE INTO files (id, filename, purpose, bytes, created_at, expires_at)"
                    " VALUES (?, ?, 'batch_output', ?, ?, ?)",
                    (file_id, name, size, now, expires_at),
                )
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, error_file_id = ? WHERE id = ?",
                (status, now, output_id, error_id, self._id),
            )


def fail_batch(store: Store, batch_id: str, exc: BaseException | None) -> None:
    """Fail an active batch whose step raised: a bug or a broken file must not stall the worker."""
    message = f"The local service failed processing this batch: {exc!r}"
    errors = [{"code": "server_error", "line": None, "message": message, "param": None}]
    with store.write() as db:
        db.execute(
            f"UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ? AND {ACTIVE_WHERE}",
            (int(time.time()), orjson.dumps(errors).decode(), batch_id),
        )
