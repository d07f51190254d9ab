"""The providers' result-line formats, each parsed into one flat :class:`Envelope` per chunk of lines.

A parser reads a line's envelope: its custom_id, HTTP status and, for a line without a usable
answer, its outcome, error code and message. A succeeded line's body goes to the endpoint's reader
(:mod:`batch_pipelines.results.body_readers`), whose values land in one flat list. Both formats
end in the same vocabulary (OpenAI's codes and HTTP statuses), so the join and the retry rules
never ask which format a line came in. A new format is a parser filling an :class:`Envelope`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict

from batch_pipelines.results.outcomes import CANCELLED, EXPIRED, FAILED, INVALID

__all__ = [
    "PARSERS",
    "CorruptLine",
    "Envelope",
    "LineFormat",
    "Parse",
    "Read",
    "Typed",
    "corrupt_line",
    "parse_anthropic",
    "parse_gemini",
    "parse_openai",
]

LineFormat = Literal["openai", "anthropic", "gemini"]

#: A body reader: a succeeded body -> the values of its columns; it raises on a body it does not understand.
Read = Callable[[Any], tuple[Any, ...]]
#: A typed decoder tried before the reader: a line -> an object with .custom_id and .response
#: (.status_code, .body.values()), see body_readers.
Typed = msgspec.json.Decoder
_Failure = tuple[int, str | None, str | None]  # outcome, error code, error message

# A body whose shape surprises a reader: that line is an invalid_output, not a crash.
_BODY_ERRORS = (LookupError, TypeError, AttributeError, ValueError)
_LINE_ERRORS = (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError)
_END_OUTCOMES = {"batch_expired": EXPIRED, "batch_cancelled": CANCELLED}
_CUSTOM_ID_IN_RAW = re.compile(rb'"(?:custom_id|key)"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
_loads = orjson.loads


class CorruptLine(BaseModel):
    """A line that is not a result record (cut short, not JSON, no custom_id...)."""

    model_config = ConfigDict(frozen=True)

    path: str
    line_no: int
    message: str
    #: Recovered from the raw text when the line still shows it (a line cut short, say).
    custom_id: str | None = None


class Envelope:
    """What the lines of one chunk hold, in a few flat lists.

    A list per field every record has, and ``fields``: the endpoint reader's values of every
    record back to back, ``width`` per record (one ``extend`` per line instead of an append per
    field). What only unsuccessful records have is kept sparse, as ``(record index, outcome, error
    code, error message)``: most lines succeed, and each value kept per line costs time in the hot
    loop and again when it becomes an array. Line numbers are kept only for lines that are not
    records (corrupt, blank); the records fill the rest in order.
    """

    def __init__(self, width: int) -> None:
        self.custom_id: list[str] = []
        self.status_code: list[int | None] = []
        self.fields: list[Any] = []
        self.unsuccessful: list[tuple[int, int, str | None, str | None]] = []
        self.corrupt: list[tuple[int, bytes, Exception]] = []
        self.blank: list[int] = []
        self._nothing = (None,) * width

    def fail(self, custom_id: str, status: int | None, failure: _Failure) -> None:
        """A record without a usable answer: no fields, and why."""
        self.fields.extend(self._nothing)
        self.unsuccessful.append((len(self.custom_id), *failure))
        self.custom_id.append(custom_id)
        self.status_code.append(status)

    def skip(self, line_no: int, raw: bytes, exc: Exception) -> None:
        if raw.strip():
            self.corrupt.append((line_no, raw, exc))
        else:
            self.blank.append(line_no)


def parse_openai(lines: list[bytes], line_no: int, out: Envelope, read: Read, typed: Typed | None) -> int:
    """OpenAI-style lines: ``{id, custom_id, response: {status_code, request_id, body} | null, error}``.

    HTTP failures carry ``response.status_code >= 400`` and ``response.body.error``; failures with
    no HTTP answer carry ``error.code`` (batch_expired, batch_cancelled, request_timeout...).
    Classification reads the line, not the file it came from. ``typed``, the endpoint's typed
    decoder if it has one, is tried first; what it does not take, ``read`` reads. Returns the
    number of the last line read.
    """
    # Bound methods in locals and the success paths first and inline: this loop runs once per line.
    loads, add_id, add_status, add_fields = _loads, out.custom_id.append, out.status_code.append, out.fields.extend
    decode = typed.decode if typed is not None else None
    failure: _Failure
    for raw in lines:
        line_no += 1
        if decode is not None:
            try:
                line = decode(raw)
                response = line.response
                if response is not None and 200 <= response.status_code < 300 and response.body is not None:
                    values = response.body.values()
                    if values is not None:
                        add_fields(values)
                        add_id(line.custom_id)
                        add_status(response.status_code)
                        continue
            except msgspec.DecodeError:  # bad JSON or an unexpected type: the general road says what it is
                pass
        try:
            record = loads(raw)
            custom_id = record["custom_id"]
            if type(custom_id) is not str:
                raise TypeError("custom_id is not a string")
            response = record.get("response")
            if response is not None:
                status = response["status_code"]
                body = response.get("body")
                if 200 <= status < 300:
                    try:
                        add_fields(read(body))
                        add_id(custom_id)
                        add_status(status)
                        continue
                    except _BODY_ERRORS as exc:
                        failure = _not_understood(body, exc)
                else:
                    failure = (FAILED, *_http_error(body))
            else:
                status = None
                code, message = _error_fields(record["error"])
                failure = (_END_OUTCOMES.get(code, FAILED), code, message)
        except _LINE_ERRORS as exc:
            out.skip(line_no, raw, exc)
            continue
        out.fail(custom_id, status, failure)
    return line_no


# Error ``type`` of an Anthropic errored result -> the HTTP status it stands for (Anthropic's docs).
_ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def parse_anthropic(lines: list[bytes], line_no: int, out: Envelope, read: Read, typed: Typed | None) -> int:
    """Anthropic Message Batches lines: ``{custom_id, result: {type: succeeded|errored|canceled|expired}}``.

    Canceled and expired results get OpenAI's codes (batch_cancelled, batch_expired) and errored
    ones the HTTP status their error type stands for, so the retry rules read both formats alike.
    """
    failure: _Failure | None
    for raw in lines:
        line_no += 1
        try:
            record = _loads(raw)
            custom_id = record["custom_id"]
            if type(custom_id) is not str:
                raise TypeError("custom_id is not a string")
            result = record["result"]
            kind = result["type"]
            status, body, failure = None, None, None
            if kind == "succeeded":
                status, body = 200, result["message"]
            elif kind == "errored":
                error = result.get("error") or {}
                code, message = _error_fields(error["error"] if type(error.get("error")) is dict else error)
                status, failure = _ANTHROPIC_STATUS.get(code or ""), (FAILED, code, message)
            elif kind == "canceled":
                failure = (CANCELLED, "batch_cancelled", "the batch was canceled before this request ran")
            elif kind == "expired":
                failure = (EXPIRED, "batch_expired", "the batch expired before this request ran")
            else:
                raise ValueError(f"unknown result type {kind!r}")
        except _LINE_ERRORS as exc:
            out.skip(line_no, raw, exc)
            continue
        if failure is None:
            try:
                out.fields.extend(read(body))
                out.custom_id.append(custom_id)
                out.status_code.append(status)
                continue
            except _BODY_ERRORS as exc:
                failure = _not_understood(body, exc)
        out.fail(custom_id, status, failure)
    return line_no


#: google.rpc status of a Gemini error line for a request the batch never ran -> (outcome, OpenAI's code).
_GEMINI_UNRUN = {
    "CANCELLED": (CANCELLED, "batch_cancelled"),
    "DEADLINE_EXCEEDED": (EXPIRED, "batch_expired"),
}


def parse_gemini(lines: list[bytes], line_no: int, out: Envelope, read: Read, typed: Typed | None) -> int:
    """Gemini Batch Mode response lines: ``{key, response: GenerateContentResponse}`` or ``{key, error:
    {code, message, status}}``.

    An error's ``code`` is the HTTP status it stands for and its ``status`` (RESOURCE_EXHAUSTED,
    INTERNAL...) the error code, so the retry rules read it as they read an OpenAI line; a request
    the batch never ran (CANCELLED, DEADLINE_EXCEEDED: the batch ended first) gets OpenAI's codes
    batch_cancelled and batch_expired, with no HTTP status.
    """
    failure: _Failure | None
    for raw in lines:
        line_no += 1
        try:
            record = _loads(raw)
            custom_id = record["key"]
            if type(custom_id) is not str:
                raise TypeError("key is not a string")
            status, body, failure = None, None, None
            if record.get("response") is not None:
                status, body = 200, record["response"]
            else:
                error = record["error"]
                if type(error) is not dict:
                    raise TypeError("a failed line has no error object")
                name, message = error.get("status"), error.get("message")
                message = None if message is None else str(message)
                if name in _GEMINI_UNRUN:
                    outcome, code = _GEMINI_UNRUN[name]
                    failure = (outcome, code, message)
                else:
                    code_value = error.get("code")
                    status = code_value if type(code_value) is int and code_value >= 400 else None
                    failure = (FAILED, None if name is None else str(name), message)
        except _LINE_ERRORS as exc:
            out.skip(line_no, raw, exc)
            continue
        if failure is None:
            try:
                out.fields.extend(read(body))
                out.custom_id.append(custom_id)
                out.status_code.append(status)
                continue
            except _BODY_ERRORS as exc:
                failure = _not_understood(body, exc)
        out.fail(custom_id, status, failure)
    return line_no


Parse = Callable[[list[bytes], int, Envelope, Read, Typed | None], int]
PARSERS: dict[LineFormat, Parse] = {"openai": parse_openai, "anthropic": parse_anthropic, "gemini": parse_gemini}


def _http_error(body: Any) -> tuple[str | None, str | None]:
    """(code, message) of an HTTP failure; its status says enough when the body holds no error object."""
    error = body.get("error") if type(body) is dict else None
    if type(error) is dict:
        return _error_fields(error)
    return None, f"no error object in the answer: {str(body)[:200]}"


def _error_fields(error: Any) -> tuple[str | None, str | None]:
    """(code, message) of an error object; its ``type`` stands in when it has no ``code``."""
    if type(error) is not dict:
        raise TypeError("a failed line has no error object")
    code = error.get("code") or error.get("type")
    message = error.get("message")
    return (None if code is None else str(code)), (None if message is None else str(message))


def _not_understood(body: Any, exc: Exception) -> _Failure:
    what = "a successful answer without a body" if body is None else f"answer not understood: {_describe(exc)}"
    return INVALID, "unexpected_body", what


def _describe(exc: Exception) -> str:
    if isinstance(exc, orjson.JSONDecodeError):
        return f"not valid JSON ({exc})"
    if isinstance(exc, KeyError):
        return f"no {exc} field"
    return str(exc) or type(exc).__name__


def corrupt_line(path: Path | str, line_no: int, raw: bytes, exc: Exception) -> CorruptLine:
    """What a line that is no record says about itself: where it is, why, and its custom_id if it still shows."""
    found = _CUSTOM_ID_IN_RAW.search(raw)
    return CorruptLine(path=str(path), line_no=line_no, message=_describe(exc), custom_id=found.group(1).decode() if found else None)
