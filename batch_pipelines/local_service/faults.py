"""Fault plans: the ways the local service misbehaves on purpose, deterministic by seed.

A :class:`FaultPlan` is given service-wide (``BatchEngine(faults=...)`` for batch processing,
``create_app(faults=...)`` for HTTP) and per batch, as JSON in the batch metadata key
``local_faults`` (:data:`FAULTS_METADATA_KEY`)::

    client.batches.create(..., metadata={"local_faults": '{"row_failures": {"429": 0.2}, "seed": 7}'})

A per-batch plan is merged over the service-wide one field by field (only the fields it sets win)
and recorded with the batch at creation, so whichever worker process runs the batch applies it.

Row-level faults (applied while the batch is processed):

- ``row_failures``: ``{status_code: fraction}``; that fraction of rows lands in the error file with
  ``response.status_code`` = the code and an OpenAI error in ``response.body.error``.
- ``validation_error``: the batch fails validation with this error code (``"token_limit_exceeded"``
  is the "enqueued-token queue is full" failure).
- ``expire_after``: the batch expires once this fraction of its rows is done.
- ``corrupt_lines``, ``duplicate_lines``, ``unknown_lines``, ``missing_rows``: that many rows (picked
  by seed) have their output line truncated, written twice, followed by a copy with an unknown
  custom_id, or dropped from both files (the batch still counts a dropped row as completed, as a
  buggy provider would). A picked row that fails by ``row_failures`` is written to the error
  file instead, except for ``missing_rows``, which always go missing.
- ``no_output_file``: the batch completes with ``output_file_id: null`` even though rows succeeded.
- ``row_delay``: seconds each row takes (slow processing: a batch stays ``in_progress`` long
  enough to be cancelled or to expire).

HTTP faults (service-wide only; ``http_faults`` in a per-batch plan is rejected): each
:class:`HttpFault` matches requests by ``fnmatch`` pattern on the path (and optionally the method)
and answers the first ``times`` matches with ``status`` (with ``Retry-After``/``retry-after-ms``
when ``retry_after`` is set) and/or after ``delay`` seconds, or cuts the connection (``drop``: the
client gets a transport error, no HTTP status). By default the call never reaches the service: it
has no effect. With ``after`` the service serves the call first (a batch is created, a file
stored) and only its answer misbehaves: late, replaced by ``status``, or lost with the connection,
the way a gateway or a flaky network loses the answer of a call that took effect.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batch_pipelines.local_service.errors import error_body

__all__ = [
    "FAULTS_METADATA_KEY",
    "FaultPlan",
    "HttpFault",
    "RowFaults",
    "injected_row_error",
    "injected_validation_error",
    "plan_from_metadata",
]

#: Batch metadata key holding a per-batch FaultPlan as JSON.
FAULTS_METADATA_KEY = "local_faults"


class HttpFault(BaseModel):
    """One HTTP misbehaviour: an error status and/or a delay for matching requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: fnmatch pattern on the URL path, e.g. ``"/v1/batches/*"`` or ``"*"``.
    route: str = "*"
    #: Only this HTTP method (``"GET"``, ``"POST"``...); None matches every method.
    method: str | None = None
    #: Status to answer with (429, 500, 503...); None only delays the real answer.
    status: int | None = 429
    #: How many matching calls misbehave (the first N); None: every call.
    times: int | None = 1
    #: Seconds announced in ``Retry-After`` and ``retry-after-ms``; None sends neither header.
    retry_after: float | None = None
    #: Seconds to wait before answering (slow responses).
    delay: float = Field(default=0.0, ge=0)
    #: Cut the connection instead of answering (the client sees no status; ``status`` is ignored).
    drop: bool = False
    #: Serve the call first, then delay, replace (``status``) or drop its answer: the call took effect.
    after: bool = False


class FaultPlan(BaseModel):
    """Deliberate failures; the same seed and input always give the same failures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    row_failures: dict[int, float] = Field(default_factory=dict)
    validation_error: str | None = None
    expire_after: float | None = Field(default=None, ge=0, le=1)
    corrupt_lines: int = Field(default=0, ge=0)
    duplicate_lines: int = Field(default=0, ge=0)
    unknown_lines: int = Field(default=0, ge=0)
    missing_rows: int = Field(default=0, ge=0)
    no_output_file: bool = False
    row_delay: float = Field(default=0.0, ge=0)
    http_faults: tuple[HttpFault, ...] = ()

    @field_validator("row_failures")
    @classmethod
    def _fractions(cls, value: dict[int, float]) -> dict[int, float]:
        if any(not 0 <= f <= 1 for f in value.values()) or sum(value.values()) > 1:
            raise ValueError("row_failures fractions must lie in [0, 1] and sum to at most 1")
        if any(not 400 <= status <= 599 for status in value):
            raise ValueError("row_failures keys must be HTTP error statuses (400..599)")
        return value

    def merged(self, override: FaultPlan) -> FaultPlan:
        """This plan with every field ``override`` sets explicitly taking its value."""
        return self.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})

    @property
    def has_row_faults(self) -> bool:
        return bool(
            self.row_failures
            or self.corrupt_lines
            or self.duplicate_lines
            or self.unknown_lines
            or self.missing_rows
        )

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def plan_from_metadata(metadata: Mapping[str, str] | None) -> FaultPlan | None:
    """The per-batch plan in ``metadata``; ValueError with a readable reason if it is malformed."""
    raw = (metadata or {}).get(FAULTS_METADATA_KEY)
    if raw is None:
        return None
    try:
        plan = FaultPlan.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"metadata.{FAULTS_METADATA_KEY} is not a valid fault plan: {exc}") from None
    if plan.http_faults:
        raise ValueError(f"metadata.{FAULTS_METADATA_KEY}: http_faults are service-wide, not per batch")
    return plan


_ROW_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "The request was rejected as invalid (injected by the local fault plan).", None),
    429: ("rate_limit_error", "Rate limit reached for requests (injected by the local fault plan).", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request (injected by the local fault plan).", None),
}


def injected_row_error(status: int) -> dict[str, Any]:
    """The response body of a row failed by ``row_failures`` with ``status``."""
    default = ("server_error", f"Injected HTTP {status} (local fault plan).", None)
    type_, message, code = _ROW_ERRORS.get(status, default)
    return error_body(message, type_, code=code)


def injected_validation_error(code: str, model: str | None) -> dict[str, Any]:
    """The ``errors.data`` entry of a batch failed by ``validation_error``."""
    if code == "token_limit_exceeded":
        message = (
            f"Enqueued token limit reached for {model or 'this model'} in organization local. "
            "Please try again once some in_progress batches have been completed."
        )
    else:
        message = f"Validation failed with {code} (injected by the local fault plan)."
    return {"code": code, "line": None, "message": message, "param": None}


class RowFaults:
    """Which rows of one batch get which fault (by 0-based input line index), and what they do to its lines.

    Rates use a hash of (seed, line), so they need no memory; counted faults pick exact line
    indices with a seeded sample, memory proportional to the counts only.
    """

    def __init__(self, plan: FaultPlan, total: int, *, batch_tag: str) -> None:
        self._tag = batch_tag
        self._seed = plan.seed
        # Cumulative thresholds so one hash picks at most one failure status per row.
        self._failure_bounds: list[tuple[float, int]] = []
        acc = 0.0
        for status, fraction in sorted(plan.row_failures.items()):
            acc += fraction
            self._failure_bounds.append((acc, status))
        rng = random.Random(plan.seed)
        counted = plan.corrupt_lines + plan.duplicate_lines + plan.unknown_lines + plan.missing_rows
        picks = rng.sample(range(total), min(counted, total))
        self.corrupt = set(picks[: plan.corrupt_lines])
        rest = picks[plan.corrupt_lines :]
        self.duplicate = set(rest[: plan.duplicate_lines])
        rest = rest[plan.duplicate_lines :]
        self.unknown = set(rest[: plan.unknown_lines])
        self.missing = set(rest[plan.unknown_lines :])
        self.expire_at_row = math.ceil(plan.expire_after * total) if plan.expire_after is not None else None

    def failure_status(self, line: int) -> int | None:
        if not self._failure_bounds:
            return None
        u = _unit(self._seed, line)
        for bound, status in self._failure_bounds:
            if u < bound:
                return status
        return None

    def output_lines(self, line: int, encoded: bytes, custom_id: str) -> list[bytes]:
        """What the output file gets for the succeeded row ``line`` whose line is ``encoded``."""
        if line in self.corrupt:
            return [encoded[: len(encoded) // 2]]
        if line in self.duplicate:
            return [encoded, encoded]
        if line in self.unknown:
            stranger = encoded.replace(orjson.dumps(custom_id), orjson.dumps(f"unknown-{self._tag}-{line}"), 1)
            return [encoded, stranger]
        return [encoded]


def _unit(seed: int, n: int) -> float:
    """A uniform number in [0, 1) from (seed, n): splitmix64, stable across processes."""
    z = (seed * 0x9E3779B97F4A7C15 + (n + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return z / 2.0**64
