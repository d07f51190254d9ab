"""Line-level validation of a batch input file, as the posed-as provider documents it.

Problems found here do not fail the create call: the batch goes ``failed`` with
``errors.data[{code, line, message, param}]`` (1-based line numbers), as OpenAI and Moonshot do.
Codes follow OpenAI's: ``invalid_json_line``, ``missing_required_parameter``, ``duplicate_custom_id``,
``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks``, plus ``invalid_method`` and
``unsupported_parameter`` (a body parameter the model rejects, e.g. kimi-k2.5's temperature).

Validation is a generator that yields between chunks so a worker can interleave batches, and
streams the file in bounded memory except for custom_id uniqueness, which keeps an 8-byte hash
per row (an ``array('q')``, 8 MB for a million rows); lines whose hashes collide are then checked
exactly in a second pass, so a hash collision can never report a false duplicate.
"""

from __future__ import annotations

from array import array
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from batch_pipelines.profiles import EMBEDDINGS, ProviderProfile

__all__ = ["MAX_REPORTED_ERRORS", "ValidationResult", "validate_input"]

#: Errors listed in a failed batch; more are summarised in one last entry.
MAX_REPORTED_ERRORS = 100
_CHUNK = 8192
_REQUIRED = ("custom_id", "method", "url", "body")


class ValidationResult:
    def __init__(self) -> None:
        self.total = 0
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.model: str | None = None

    def add(self, code: str, line: int | None, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "line": line, "message": message, "param": param})

    def report(self) -> list[dict[str, Any]]:
        """The errors to publish: the first ones plus a count of the rest, never a silent cut."""
        extra = self.error_count - len(self.errors)
        if extra <= 0:
            return self.errors
        summary = f"{extra} more line errors not listed; fix the ones above and check the file again."
        return [*self.errors, {"code": "too_many_errors", "line": None, "message": summary, "param": None}]


def validate_input(
    path: Path, profile: ProviderProfile, endpoint: str
) -> Generator[None, None, ValidationResult]:
    """Check every line of ``path``; yields between chunks, returns the result."""
    result = ValidationResult()
    hashes = array("q")
    remember = hashes.append
    loads = orjson.loads
    limit = profile.max_requests_per_file
    counter = _EmbeddingInputs(profile.max_embedding_inputs) if endpoint == EMBEDDINGS else None
    model: str | None = None  # the model of the previous line: most files have one
    forbidden: frozenset[str] = frozenset()
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not line_no % _CHUNK:
                yield
            try:
                request = loads(raw)
            except orjson.JSONDecodeError:
                if raw.strip():
                    result.add("invalid_json_line", line_no, f"Line {line_no} is not parseable as valid JSON.")
                continue
            if type(request) is not dict:
                result.add("invalid_json_line", line_no, f"Line {line_no} is JSON but not an object.")
                continue
            result.total += 1
            if limit is not None and result.total == limit + 1:
                result.add(
                    "too_many_tasks",
                    line_no,
                    f"The file has more than the {limit} requests a batch may hold (line {line_no} is request {limit + 1}).",
                )
            custom_id = request.get("custom_id")
            body = request.get("body")
            # Fast path: a well-formed line costs one parse and a few lookups.
            if (
                type(custom_id) is not str
                or not custom_id
                or type(body) is not dict
                or request.get("method") != "POST"
                or request.get("url") != endpoint
            ):
                _check_envelope(result, request, line_no, endpoint)
                if type(body) is not dict:
                    continue
            if type(custom_id) is str and custom_id:
                remember(hash(custom_id))
            if body.get("model") != model or type(model) is not str:
                model = body.get("model")
                if not _check_model(result, model, line_no, profile):
                    continue
                forbidden = profile.forbidden_for(model)  # type: ignore[arg-type]
            if forbidden and not forbidden.isdisjoint(body):
                for param in sorted(forbidden.intersection(body)):
                    result.add(
                        "unsupported_parameter",
                        line_no,
                        f"Line {line_no}: {model} on {profile.name} does not accept '{param}'; remove it from the body.",
                        f"body.{param}",
                    )
            if counter is not None:
                counter.add(result, body.get("input"), line_no)
    if result.total == 0 and result.error_count == 0:
        result.add("empty_file", None, "The input file holds no requests.")
    yield from _report_duplicates(path, hashes, result)
    return result


def _check_envelope(result: ValidationResult, request: dict[str, Any], line_no: int, endpoint: str) -> None:
    """Name every problem of a line's custom_id, method, url and body."""
    for key in _REQUIRED:
        if key not in request:
            result.add("missing_required_parameter", line_no, f"Line {line_no} is missing '{key}'.", key)
    custom_id = request.get("custom_id")
    if "custom_id" in request and (not isinstance(custom_id, str) or not custom_id):
        result.add("invalid_custom_id", line_no, f"Line {line_no}: custom_id must be a non-empty string.", "custom_id")
    if "method" in request and request["method"] != "POST":
        result.add("invalid_method", line_no, f"Line {line_no}: method must be POST, got {request['method']!r}.", "method")
    if "url" in request and request["url"] != endpoint:
        result.add(
            "url_mismatch",
            line_no,
            f"Line {line_no}: url {request['url']!r} does not match the batch endpoint {endpoint!r}.",
            "url",
        )
    if "body" in request and not isinstance(request["body"], dict):
        result.add("invalid_json_line", line_no, f"Line {line_no}: body must be a JSON object.", "body")


def _check_model(result: ValidationResult, model: Any, line_no: int, profile: ProviderProfile) -> bool:
    """Check a line's model when it differs from the previous line's; False if it is unusable."""
    if not isinstance(model, str) or not model:
        result.add("missing_required_parameter", line_no, f"Line {line_no}: body.model must be a non-empty string.", "body.model")
        return False
    if result.model is None:
        result.model = model
    elif profile.one_model_per_file and model != result.model:
        result.add(
            "model_mismatch",
            line_no,
            f"Line {line_no}: model {model!r} differs from {result.model!r}; {profile.name} allows one model per file.",
            "body.model",
        )
    return True


class _EmbeddingInputs:
    """Counts embedding inputs across the batch and reports the line that passes the limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.seen = 0

    def add(self, result: ValidationResult, given: Any, line_no: int) -> None:
        if self.limit is None:
            return
        # A list of strings (or of token lists) is several inputs; a string or one token list is one.
        count = len(given) if isinstance(given, list) and given and not isinstance(given[0], int) else 1
        if self.seen <= self.limit < self.seen + count:
            result.add(
                "too_many_tasks",
                line_no,
                f"The batch has more than the {self.limit} embedding inputs allowed (reached at line {line_no}).",
                "body.input",
            )
        self.seen += count


def _report_duplicates(path: Path, hashes: array, result: ValidationResult) -> Generator[None, None, None]:
    """Report every repeated custom_id at the line that repeats it."""
    if len(hashes) < 2:
        return
    ordered = np.frombuffer(hashes, dtype=np.int64)
    ordered.sort()  # in place: the array's own buffer, no second copy
    clashing = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    del ordered
    del hashes[:]
    if not clashing:
        return
    first_seen: dict[str, int] = {}
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no % _CHUNK == 0:
                yield
            try:
                custom_id = orjson.loads(raw).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if not isinstance(custom_id, str) or hash(custom_id) not in clashing:
                continue
            if custom_id in first_seen:
                result.add(
                    "duplicate_custom_id",
                    line_no,
                    f"Line {line_no}: custom_id {custom_id!r} was already used on line {first_seen[custom_id]}.",
                    "custom_id",
                )
            else:
                first_seen[custom_id] = line_no
