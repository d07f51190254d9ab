"""Result files read line by line: the reading half of :mod:`batch_pipelines.results`.

A parser per line format (OpenAI's ``response``/``error`` lines, Anthropic's ``result.type``
lines) normalizes each line's envelope: its custom_id, HTTP status and, for a line without a
usable answer, its outcome, error code and message. A succeeded line's body goes to the endpoint's
reader, a function returning the fields the join needs (content, finish reason, tokens) as a
tuple, which lands in one flat list. Every chunk of lines becomes Arrow/NumPy arrays before the
next one is read, so no dict per line is kept and memory stays bounded by a chunk plus the columns.

New formats and endpoints plug in without touching the join: a parser filling an
:class:`_Envelope`, a reader with the names of its columns.

The common line, a chat completion that succeeded, takes a faster road: msgspec decodes it straight
into the few fields the join reads (:class:`_ChatLine`) and skips the rest of the line without
building it, which costs less than building the whole line as dicts. A line that road does not
take (a failure, an unexpected shape or type, bad JSON) goes down the general one instead, so the
fast road only ever speeds up lines whose answer it would not change.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from batch_pipelines.profiles import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES

Outcome = Literal["succeeded", "failed", "invalid_output", "expired", "cancelled", "rejected", "missing"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "invalid_output", "expired", "cancelled", "rejected", "missing")
SUCCEEDED, FAILED, INVALID, EXPIRED, CANCELLED, REJECTED, MISSING = range(len(OUTCOMES))

LineFormat = Literal["openai", "anthropic"]
#: Anthropic Message Batches results: one Messages API response per line (``result.message``).
ANTHROPIC_MESSAGES = "/v1/messages"

TEXT_COLUMNS = ("content", "finish_reason")
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
TEXT = pa.large_string()  # what pandas' str dtype holds
# Line-level columns are held whole until the join knows each line's row: the narrow types keep
# them small (4-byte string offsets, 4-byte token counts); the join widens what it keeps.
_LINE_TEXT = pa.string()

_CHUNK_BYTES = 4 << 20  # lines read and converted at once: bounds the Python objects alive
_loads = orjson.loads
_NO_FIELDS: dict[str, Any] = {}
_CUSTOM_ID_IN_RAW = re.compile(rb'"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One result line, normalized whatever the provider's line format.

    ``outcome`` is the line's own: succeeded (a 2xx answer), failed, expired, cancelled, or
    invalid_output (a 2xx without a body). ``body`` is the response body (OpenAI) or the message
    (Anthropic) of a succeeded line, None otherwise.
    """

    line_no: int
    custom_id: str
    outcome: Outcome
    status_code: int | None
    error_code: str | None
    error_message: str | None
    body: dict[str, Any] | None


class CorruptLine(BaseModel):
    """A line that is not a result record (cut short, not JSON, no custom_id...)."""

    model_config = ConfigDict(frozen=True)

    path: str
    line_no: int
    message: str
    #: Recovered from the raw text when the line still shows it (a line cut short, say).
    custom_id: str | None = None


def iter_result_lines(path: Path, *, line_format: LineFormat = "openai") -> Iterator[ResultLine | CorruptLine]:
    """Stream a result file's lines in bounded memory, corrupt ones included as :class:`CorruptLine`.

    ``line_format`` is ``"openai"`` (``{custom_id, response: {status_code, body} | null, error}``,
    for every OpenAI-style provider) or ``"anthropic"`` (``{custom_id, result: {type, ...}}``).
    A corrupt line does not stop the reading: the lines after it are parsed as usual.
    """
    parse = _PARSERS[line_format]
    line_no = 0
    for lines in _line_chunks(Path(path)):
        envelope = _Envelope(width=1)
        first, line_no = line_no + 1, parse(lines, line_no, envelope, _whole_body, None)
        skipped = {n for n, _, _ in envelope.corrupt} | set(envelope.blank)
        numbers = (n for n in range(first, line_no + 1) if n not in skipped)
        unsuccessful = {i: rest for i, *rest in envelope.unsuccessful}
        records = zip(numbers, envelope.custom_id, envelope.status_code, envelope.fields, strict=True)
        for i, (n, cid, status, body) in enumerate(records):
            outcome, code, message = unsuccessful.get(i, (SUCCEEDED, None, None))
            yield ResultLine(n, cid, OUTCOMES[outcome], status, code, message, body)
        for n, raw, exc in envelope.corrupt:
            yield _corrupt_line(path, n, raw, exc)


def _whole_body(body: Any) -> tuple[dict[str, Any]]:
    if type(body) is not dict:
        raise TypeError("the body is not an object")  # as the join's readers would
    return (body,)


def _line_chunks(path: Path) -> Iterator[list[bytes]]:
    with path.open("rb") as f:
        while lines := f.readlines(_CHUNK_BYTES):
            yield lines


# ---- line formats ------------------------------------------------------------------------------


class _Envelope:
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


_Read = Callable[[Any], tuple[Any, ...]]
_Failure = tuple[int, str | None, str | None]  # outcome, error code, error message
# A body whose shape surprises a reader: that line is an invalid_output, not a crash.
_BODY_ERRORS = (LookupError, TypeError, AttributeError, ValueError)
_LINE_ERRORS = (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError)
_END_OUTCOMES = {"batch_expired": EXPIRED, "batch_cancelled": CANCELLED}


def _parse_openai(lines: list[bytes], line_no: int, out: _Envelope, read: _Read, typed: _Typed | None) -> int:
    """OpenAI-style lines: ``{id, custom_id, response: {status_code, request_id, body} | null, error}``.

    HTTP failures carry ``response.status_code >= 400`` and ``response.body.error``; failures with
    no HTTP answer carry ``error.code`` (batch_expired, batch_cancelled, request_timeout...).
    Classification reads the line, not the file it came from. ``typed``, the endpoint's typed
    decoder if it has one, is tried first; what it does not take, ``read`` reads.
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


def _parse_anthropic(lines: list[bytes], line_no: int, out: _Envelope, read: _Read, typed: _Typed | None) -> int:
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


_PARSERS: dict[str, Callable[[list[bytes], int, _Envelope, _Read, _Typed | None], int]] = {
    "openai": _parse_openai,
    "anthropic": _parse_anthropic,
}


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


def _corrupt_line(path: Path | str, line_no: int, raw: bytes, exc: Exception) -> CorruptLine:
    found = _CUSTOM_ID_IN_RAW.search(raw)
    return CorruptLine(path=str(path), line_no=line_no, message=_describe(exc), custom_id=found.group(1).decode() if found else None)


# ---- what each endpoint's bodies hold ----------------------------------------------------------
# A reader takes a succeeded body and returns the values of its columns: the endpoint's content
# columns, then TOKEN_COLUMNS. A body it does not understand raises (the line then has no fields).


def _chat_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    # The hot path of the common case: written out, no helper calls.
    choice = body["choices"][0]
    text = choice["message"]["content"]
    if type(text) is not str and text is not None:
        raise TypeError("message.content is not text")
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("prompt_tokens_details") or _NO_FIELDS
    return (
        text,
        choice.get("finish_reason"),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("total_tokens"),
        details.get("cached_tokens"),
    )


# The typed road for chat completions: the fields _chat_fields reads and nothing else. Every field
# is as strict as _chat_fields is or stricter (a line it refuses goes to _chat_fields), and a body it
# takes gives what _chat_fields gives for it. gc=False: these objects never hold a cycle, and
# leaving them out of the collector's count keeps a million of them from triggering collections.


class _ChatMessage(msgspec.Struct, gc=False):
    content: str | None


class _ChatChoice(msgspec.Struct, gc=False):
    message: _ChatMessage
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _ChatUsage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _ChatBody(msgspec.Struct, gc=False):
    choices: list[_ChatChoice] = []
    usage: _ChatUsage | None = None

    def values(self) -> tuple[Any, ...] | None:
        """What _chat_fields returns for this body; None when it has no choice (_chat_fields says why)."""
        if not self.choices:
            return None
        choice, usage = self.choices[0], self.usage
        if usage is None:
            return choice.message.content, choice.finish_reason, None, None, None, None
        details = usage.prompt_tokens_details
        cached = None if details is None else details.cached_tokens
        return choice.message.content, choice.finish_reason, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached


class _ChatResponse(msgspec.Struct, gc=False):
    status_code: int
    body: _ChatBody | None = None


class _ChatLine(msgspec.Struct, gc=False):
    custom_id: str
    response: _ChatResponse | None = None


_Typed = msgspec.json.Decoder  # decodes a line to an object with .custom_id and .response (.status_code, .body.values())


def _completion_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    choice = body["choices"][0]
    return (_text(choice["text"]), choice.get("finish_reason"), *_openai_usage(body))


def _responses_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    parts = [
        _text(part["text"])
        for item in body["output"]
        if item.get("type") == "message"
        for part in item["content"]
        if part.get("type") == "output_text"
    ]
    reason = (body.get("incomplete_details") or _NO_FIELDS).get("reason") or body.get("status")
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("input_tokens_details") or _NO_FIELDS
    tokens = (usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens"), details.get("cached_tokens"))
    return ("".join(parts) if parts else None), reason, *tokens


def _message_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    parts = [_text(block["text"]) for block in body["content"] if block.get("type") == "text"]
    usage = body.get("usage") or _NO_FIELDS
    # Anthropic counts cached input apart from input_tokens; OpenAI's prompt_tokens include it.
    fresh, output = usage.get("input_tokens"), usage.get("output_tokens")
    read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
    prompt = None if fresh is None else fresh + (read or 0) + (written or 0)
    total = None if prompt is None or output is None else prompt + output
    return ("".join(parts) if parts else None), body.get("stop_reason"), prompt, output, total, read


def _embedding_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    data = body["data"]
    if len(data) != 1:
        raise ValueError(f"{len(data)} embeddings in one answer; a row sends one input")
    vector = data[0]["embedding"]
    if type(vector) is str:  # encoding_format="base64": little-endian float32
        vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
    elif type(vector) is not list:
        raise TypeError("embedding is neither a list of numbers nor base64")
    return (vector, *_openai_usage(body))


def _moderation_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    result = body["results"][0]
    if type(result["flagged"]) is not bool:
        raise TypeError("results[0].flagged is not a boolean")
    return result["flagged"], result, None, None, None, None  # moderations report no usage


def _openai_usage(body: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    usage = body.get("usage") or _NO_FIELDS
    details = usage.get("prompt_tokens_details") or _NO_FIELDS
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens"), details.get("cached_tokens")


def _text(value: Any) -> str | None:
    if type(value) is not str and value is not None:
        raise TypeError("the answer's text is not a string")
    return value


#: Arrow type of each column a line gives; None keeps Python objects (moderation results).
COLUMN_TYPES: dict[str, pa.DataType | None] = {
    "custom_id": _LINE_TEXT,
    "status_code": pa.int16(),
    "error_code": _LINE_TEXT,
    "error_message": _LINE_TEXT,
    "content": _LINE_TEXT,
    "finish_reason": _LINE_TEXT,
    "embedding": pa.list_(pa.float32()),
    "flagged": pa.bool_(),
    "moderation": None,
    **dict.fromkeys(TOKEN_COLUMNS, pa.int32()),
}
#: endpoint -> (content columns, reader returning their values then those of TOKEN_COLUMNS).
_READERS: dict[str, tuple[tuple[str, ...], _Read]] = {
    CHAT_COMPLETIONS: (TEXT_COLUMNS, _chat_fields),
    RESPONSES: (TEXT_COLUMNS, _responses_fields),
    COMPLETIONS: (TEXT_COLUMNS, _completion_fields),
    EMBEDDINGS: (("embedding",), _embedding_fields),
    MODERATIONS: (("flagged", "moderation"), _moderation_fields),
    ANTHROPIC_MESSAGES: (TEXT_COLUMNS, _message_fields),
}


#: endpoint -> the typed decoder tried before its reader (OpenAI line format only).
_TYPED: dict[str, _Typed] = {CHAT_COMPLETIONS: msgspec.json.Decoder(_ChatLine)}


def content_columns(endpoint: str) -> tuple[str, ...]:
    """The columns an endpoint's answers fill besides the tokens; ValueError for an unknown endpoint."""
    try:
        return _READERS[endpoint][0]
    except KeyError:
        raise ValueError(f"endpoint {endpoint!r} is not one of {', '.join(_READERS)}") from None


def line_format_of(endpoint: str) -> LineFormat:
    return "anthropic" if endpoint == ANTHROPIC_MESSAGES else "openai"


# ---- many files as columns ---------------------------------------------------------------------


@dataclass
class LineTable:
    """Every record line of a set of result files, as columns in reading order."""

    outcome: np.ndarray  # int8 index into OUTCOMES
    #: custom_id, status_code, error_code, error_message, the endpoint's content columns, TOKEN_COLUMNS
    #: (Arrow arrays; Python objects in NumPy).
    columns: dict[str, pa.Array | np.ndarray]
    corrupt: list[CorruptLine]
    #: Index of the first line of each path read, and the file index given with that path.
    starts: np.ndarray
    path_files: np.ndarray

    def file_of(self, lines: np.ndarray) -> np.ndarray:
        """The file index each of ``lines`` came from."""
        return self.path_files[np.searchsorted(self.starts, lines, side="right") - 1]


def read_lines(paths: Sequence[tuple[int, Path]], endpoint: str) -> LineTable:
    """Read ``(file index, path)`` pairs a chunk of lines at a time into one :class:`LineTable`."""
    names = (*content_columns(endpoint), *TOKEN_COLUMNS)
    read, typed = _READERS[endpoint][1], _TYPED.get(endpoint)
    parse = _PARSERS[line_format_of(endpoint)]
    types = {name: COLUMN_TYPES[name] for name in ("custom_id", "status_code", "error_code", "error_message", *names)}
    parts: dict[str, list[Any]] = {name: [] for name in ("outcome", *types)}
    corrupt: list[CorruptLine] = []
    starts, read_so_far = [], 0
    for _, path in paths:
        starts.append(read_so_far)
        line_no = 0
        for lines in _line_chunks(path):
            envelope = _Envelope(width=len(names))
            line_no = parse(lines, line_no, envelope, read, typed)
            del lines
            n = len(envelope.custom_id)
            read_so_far += n
            outcome = np.full(n, SUCCEEDED, dtype=np.int8)
            error_code: pa.Array = pa.nulls(n)  # type null: no memory for the usual chunk without errors
            error_message: pa.Array = error_code
            if envelope.unsuccessful:
                at, outcomes, codes, messages = (list(x) for x in zip(*envelope.unsuccessful))
                outcome[at] = outcomes
                error_code, error_message = _sparse(n, at, codes), _sparse(n, at, messages)
            parts["custom_id"].append(pa.array(envelope.custom_id, types["custom_id"]))
            parts["outcome"].append(outcome)
            parts["status_code"].append(_to_arrow(envelope.status_code, types["status_code"]))
            parts["error_code"].append(error_code)
            parts["error_message"].append(error_message)
            for i, name in enumerate(names):
                parts[name].append(_to_arrow(envelope.fields[i :: len(names)], types[name]))
            corrupt += [_corrupt_line(path, number, raw, exc) for number, raw, exc in envelope.corrupt]
    # Each column's chunks are let go as soon as it is whole: at most one column is held twice.
    return LineTable(
        outcome=np.concatenate(parts.pop("outcome") or [np.zeros(0, np.int8)]),
        columns={name: _column(parts.pop(name), types[name]) for name in list(parts)},
        corrupt=corrupt,
        starts=np.array(starts, dtype=np.int64),
        path_files=np.array([index for index, _ in paths], dtype=np.int64),
    )


def _sparse(n: int, at: list[int], values: list[str | None]) -> pa.Array:
    full: list[str | None] = [None] * n
    for i, value in zip(at, values):
        full[i] = value
    return pa.array(full, _LINE_TEXT)


def _to_arrow(values: list[Any], type_: pa.DataType | None) -> pa.Array | np.ndarray:
    if type_ is None:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    try:
        return pa.array(values, type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # Rare: a provider wrote a field (a token count, a finish reason) with an odd type. The row
        # keeps its answer; that field alone becomes null.
        return pa.array([value if _converts(value, type_) else None for value in values], type_)


def _converts(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([value], type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False
    return True


def _column(chunks: list[Any], type_: pa.DataType | None) -> pa.Array | np.ndarray:
    """One column's chunks as one array."""
    if type_ is None:
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=object)
    if any(c.type != type_ for c in chunks):  # null-typed chunks: an error column's chunks without errors
        if all(pa.types.is_null(c.type) for c in chunks):
            return pa.nulls(sum(len(c) for c in chunks))
        chunks = [c.cast(type_) for c in chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], type_)
