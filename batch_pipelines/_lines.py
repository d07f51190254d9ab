"""Rows into request lines, a chunk of rows at a time (the engine behind requests.py).

Two ways, one per kind of spec:

- :class:`TemplateLines` compiles a template once into the constant JSON of a line with holes for
  the per-row text, and fills the holes for a whole chunk with Arrow's element-wise string join.
  JSON-escaping a concatenation is concatenating the escaped pieces, so literal template text is
  escaped once at compile time and each column's values are escaped on their own, vectorized.
- :class:`FunctionLines` calls the user's ``build_body`` per row, checks the dict, and serializes
  it with orjson.

Both report a row that cannot become a request through ``report.row(...)`` and leave it out.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import string
import uuid
from collections import Counter
from functools import partial
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines._media import MediaError, MediaResolver, MediaUploader, cell_identity
from batch_pipelines._shards import LARGE_TEXT, Chunk, json_escape, lines_of_array, lines_of_bytes
from batch_pipelines.profiles import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, ProviderProfile

if TYPE_CHECKING:
    from batch_pipelines.requests import MediaPart, RequestSpec

# A marker that never occurs in user text stands where row values go while the line is serialized.
_HOLE_BASE = f"@@hole-{uuid.uuid4().hex}-"
_HOLE_RE = re.compile(rb'"(' + re.escape(_HOLE_BASE.encode()) + rb'[0-9]+@@)"')
# Values with a meaningful text form in a template; anything else is asked to be converted first.
_TEXT_TYPES = (str, int, float, decimal.Decimal, dt.date, dt.time, dt.timedelta)


class Ids(Protocol):
    """The custom_ids of all rows, as text arrays on demand."""

    def slice(self, start: int, length: int) -> pa.Array: ...

    def take(self, rows: pa.Array) -> pa.Array: ...


class Report(Protocol):
    """Where row problems go: ``bad`` marks rows already out of the build; once ``failing``, the
    build only checks rows (media is read and checked but not uploaded)."""

    bad: np.ndarray
    failing: bool

    def row(self, code: str, message: str, row: int, column: str | None = None) -> None: ...


class CellError(ValueError):
    """A value that cannot go into a request; ``code`` is the problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---- templates ---------------------------------------------------------------------------------


class Field(NamedTuple):
    """One ``{column!conversion:format_spec}`` placeholder."""

    column: str
    conversion: str | None
    format_spec: str


def parse_template(template: str) -> list[str | Field]:
    """A template as literal text and fields; ValueError for what ``str.format`` would reject."""
    parts: list[str | Field] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template[:60]!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    for literal, name, format_spec, conversion in parsed:
        if literal:
            parts.append(literal)
        if name is None:
            continue
        if not name:
            raise ValueError(f"template {template[:60]!r} has an empty {{}}: name a column")
        if "{" in (format_spec or ""):
            raise ValueError(f"template {template[:60]!r}: nested fields in a format spec are not supported")
        parts.append(Field(name, conversion, format_spec or ""))
    return parts


def strings(value: Any) -> Iterator[str]:
    """Every string value inside nested dicts and lists (the templates of a messages list)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def merge_output_format(body: dict[str, Any], output_format: Mapping[str, Any]) -> None:
    """Add structured-output parameters unless the body already sets them."""
    for key, value in output_format.items():
        current = body.get(key)
        if current is None:
            body[key] = value
        elif isinstance(current, dict) and isinstance(value, dict):
            body[key] = {**value, **current}


class _Slot(NamedTuple):
    """A hole in the line: the custom_id, a template field, or the URL of media part ``media``."""

    kind: Literal["id", "field", "media"]
    field: Field | None = None
    media: int = -1


class TemplateLines:
    """Lines of a template spec: a compiled line skeleton filled a chunk of rows at a time."""

    def __init__(
        self,
        df: pd.DataFrame,
        spec: RequestSpec,
        report: Report,
        output_format: Mapping[str, Any],
        refs: MutableMapping[str, str],
        uploader: MediaUploader | None,
    ) -> None:
        self.df = df
        self.report = report
        holes: dict[str, list[str | _Slot]] = {}

        def hole(pieces: list[str | _Slot]) -> str:
            marker = f"{_HOLE_BASE}{len(holes)}@@"
            holes[marker] = pieces
            return marker

        def text_hole(template: str) -> str:
            return hole([p if isinstance(p, str) else _Slot("field", p) for p in parse_template(template)])

        body = _skeleton(spec, text_hole, lambda i: hole([_Slot("media", media=i)]))
        merge_output_format(body, output_format)
        line = {"custom_id": hole([_Slot("id")]), "method": "POST", "url": spec.endpoint, "body": body}
        parts = _cut(dumps(line) + b"\n", holes)
        self.parts = [pa.scalar(p, LARGE_TEXT) if isinstance(p, bytes) else p for p in parts]
        self.slots = list(dict.fromkeys(p for p in parts if isinstance(p, _Slot)))
        self.resolvers = [_resolver(df, part, refs, uploader) for part in spec.media]

    def chunk(self, start: int, stop: int, ids: Ids) -> Chunk:
        values = {slot: self._values(slot, start, stop, ids) for slot in self.slots}
        keep = ~self.report.bad[start:stop]  # read after the values: rendering may find problems
        joined = pc.binary_join_element_wise(*[values.get(p, p) for p in self.parts], pa.scalar("", LARGE_TEXT))
        chunk_ids = values[_Slot("id")]
        if not keep.all():
            mask = pa.array(keep)
            joined, chunk_ids = joined.filter(mask), chunk_ids.filter(mask)
        data, ends = lines_of_array(joined)
        return Chunk(np.flatnonzero(keep) + start, data, ends, chunk_ids)

    def _values(self, slot: _Slot, start: int, stop: int, ids: Ids) -> pa.Array:
        """One slot's JSON-escaped text for rows ``start..stop`` (null for rows out of the build)."""
        if slot.kind == "id":
            return ids.slice(start, stop - start)  # custom_ids need no escaping
        render: Callable[[Any], str]
        if slot.kind == "media":
            resolver = self.resolvers[slot.media]
            resolver.check_only = self.report.failing
            column, render = resolver.column, resolver.url
            cells = self.df[column].iloc[start:stop]
        else:
            field = slot.field
            assert field is not None
            column = field.column
            cells = self.df[column].iloc[start:stop]
            if is_arrow_text(cells) and not field.conversion and not field.format_spec:
                return json_escape(arrow_text(cells))  # the fast path: a text column as it is
            render = partial(_render, field=field)
        texts: list[str | None] = []
        bad = self.report.bad[start:stop]
        for i, cell in enumerate(cells.tolist()):
            text = None
            if not bad[i]:
                try:
                    text = render(cell)
                except CellError as exc:
                    self.report.row(exc.code, f"{column!r}: {exc}", start + i, column)
                except MediaError as exc:
                    self.report.row("media_error", f"{column!r}: {exc}", start + i, column)
            texts.append(text)
        try:
            array = pa.array(texts, LARGE_TEXT)
        except (pa.ArrowException, UnicodeEncodeError):  # a lone surrogate somewhere: find it
            for i, text in enumerate(texts):
                if text is not None and not _valid_utf8(text):
                    texts[i] = None
                    self.report.row("invalid_utf8", f"{column!r} is not valid UTF-8 text", start + i, column)
            array = pa.array(texts, LARGE_TEXT)
        return json_escape(array)


def _skeleton(spec: RequestSpec, text_hole: Callable[[str], str], media_hole: Callable[[int], str]) -> dict[str, Any]:
    """The request body with markers where row values go."""
    body: dict[str, Any] = {"model": spec.model}
    messages = [dict(m) for m in spec.messages] if spec.messages is not None else None
    if messages is None and (spec.endpoint == CHAT_COMPLETIONS or spec.media):
        messages = [{"role": "user", "content": spec.input_template}]
    if messages is not None:
        if spec.media:
            _attach_media(messages, spec, media_hole)
        body["messages" if spec.endpoint == CHAT_COMPLETIONS else "input"] = _holes(messages, text_hole)
    else:
        body["prompt" if spec.endpoint == COMPLETIONS else "input"] = text_hole(spec.input_template or "")
    body.update(spec.body)
    return body


def _holes(value: Any, text_hole: Callable[[str], str]) -> Any:
    """Every string in messages becomes a template hole, except markers already placed."""
    if isinstance(value, str):
        return value if value.startswith(_HOLE_BASE) else text_hole(value)
    if isinstance(value, dict):
        return {k: _holes(v, text_hole) for k, v in value.items()}
    if isinstance(value, list):
        return [_holes(v, text_hole) for v in value]
    return value


def _attach_media(messages: list[dict[str, Any]], spec: RequestSpec, media_hole: Callable[[int], str]) -> None:
    """Put the media parts first in the content of the last user message (the spec checked there is one)."""
    target = [m for m in messages if m.get("role") == "user"][-1]
    chat = spec.endpoint == CHAT_COMPLETIONS
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(spec.media):
        if chat:  # {"type": "image_url", "image_url": {"url": ...}}, likewise video_url
            url: dict[str, Any] = {"url": media_hole(i)}
            if part.detail is not None:
                url["detail"] = part.detail
            parts.append({"type": f"{part.kind}_url", f"{part.kind}_url": url})
        else:  # responses: {"type": "input_image", "image_url": ...}
            item = {"type": "input_image", "image_url": media_hole(i)}
            if part.detail is not None:
                item["detail"] = part.detail
            parts.append(item)
    content = target.get("content")
    if isinstance(content, str):
        content = [{"type": "text" if chat else "input_text", "text": content}]
    target["content"] = parts + list(content or [])


def _cut(serialized: bytes, holes: dict[str, list[str | _Slot]]) -> list[bytes | _Slot]:
    """Split a serialized line at its quoted markers into constant bytes and slots."""
    parts: list[bytes | _Slot] = []
    pos = 0
    for match in _HOLE_RE.finditer(serialized):
        parts.append(serialized[pos : match.start()] + b'"')
        for piece in holes[match.group(1).decode()]:
            parts.append(orjson.dumps(piece)[1:-1] if isinstance(piece, str) else piece)
        parts.append(b'"')
        pos = match.end()
    parts.append(serialized[pos:])
    merged: list[bytes | _Slot] = []
    for part in parts:
        if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += part
        elif part != b"":
            merged.append(part)
    return merged


def _resolver(df: pd.DataFrame, part: MediaPart, refs: MutableMapping[str, str], uploader: MediaUploader | None) -> MediaResolver:
    reused: frozenset[Any] = frozenset()
    if part.transport == "auto":
        counts = Counter(cell_identity(v) for v in df[part.column] if not is_missing(v))
        reused = frozenset(k for k, n in counts.items() if n > 1)
    return MediaResolver(
        column=part.column,
        kind=part.kind,
        mime_type=part.mime_type,
        transport=part.transport,
        inline_max_bytes=part.inline_max_bytes,
        uploader=uploader,
        refs=refs,
        reused=reused,
    )


def _render(value: Any, field: Field) -> str:
    """One cell as template text; CellError when it has no meaningful text form."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CellError("invalid_utf8", f"bytes are not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CellError("invalid_value", f"{value} is not a finite number")
    if not isinstance(value, _TEXT_TYPES):
        raise CellError("invalid_value", f"a {type(value).__name__} has no text form here; convert the column or use build_body")
    if field.conversion:
        value = {"r": repr, "s": str, "a": ascii}[field.conversion](value)
    try:
        return format(value, field.format_spec)
    except (ValueError, TypeError) as exc:
        raise CellError("invalid_value", f"cannot format {value!r} with {field.format_spec!r}: {exc}") from None


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-likes
        return False


def is_arrow_text(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow"


def arrow_text(series: pd.Series) -> pa.Array:
    """An Arrow-backed text column (or slice) as one large_string Array, without copying the text."""
    array = pa.array(series)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(LARGE_TEXT)


# ---- a function of the row ---------------------------------------------------------------------


class FunctionLines:
    """Lines of a ``build_body`` spec: one Python dict per row, checked, then orjson."""

    def __init__(
        self, df: pd.DataFrame, spec: RequestSpec, profile: ProviderProfile, report: Report, output_format: Mapping[str, Any]
    ) -> None:
        self.df = df
        self.spec = spec
        self.profile = profile
        self.report = report
        self.output_format = output_format

    def chunk(self, start: int, stop: int, ids: Ids) -> Chunk:
        bad = self.report.bad[start:stop]
        lines: list[bytes] = []
        rows: list[int] = []
        weights: list[int] = []
        chunk_ids = ids.slice(start, stop - start).to_pylist()
        # to_dict boxes numpy scalars into Python ones; missing values stay NaN/None/NaT.
        for i, record in enumerate(self.df.iloc[start:stop].to_dict("records")):
            if bad[i]:
                continue
            try:
                body = self._body(record)
                lines.append(dumps({"custom_id": chunk_ids[i], "method": "POST", "url": self.spec.endpoint, "body": body}))
            except CellError as exc:
                self.report.row(exc.code, str(exc), start + i)
                continue
            rows.append(start + i)
            weights.append(_inputs(body))
        data, ends = lines_of_bytes(lines)
        positions = np.array(rows, dtype=np.int64)
        line_ids = ids.take(pa.array(positions, pa.int64()))
        return Chunk(positions, data, ends, line_ids, np.array(weights, dtype=np.int64) if self.spec.endpoint == EMBEDDINGS else None)

    def _body(self, record: Mapping[str, Any]) -> dict[str, Any]:
        try:
            built = self.spec.build_body(record)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the user's function: any failure is this row's problem
            raise CellError("build_body_error", f"build_body raised {type(exc).__name__}: {exc}") from None
        if not isinstance(built, dict):
            raise CellError("build_body_error", f"build_body returned a {type(built).__name__}, not a dict")
        # Same key order as a template's body: model, the row's own parameters, then the fixed ones.
        body = {"model": self.spec.model, **built}
        for key, value in self.spec.body.items():
            body.setdefault(key, value)
        merge_output_format(body, self.output_format)
        model = body.get("model")
        if self.profile.one_model_per_file and model != self.spec.model:
            message = f"model {model!r} is not the spec's {self.spec.model!r}; {self.profile.name} takes one model per file"
            raise CellError("model_mismatch", message)
        forbidden = sorted(self.profile.forbidden_for(str(model)) & set(body))
        if forbidden:
            raise CellError("forbidden_param", f"{self.profile.name} rejects {forbidden} for model {model!r}")
        where = not_json(body, "body")
        if where:
            raise CellError("invalid_value", where)
        return body


def not_json(value: Any, path: str) -> str | None:
    """Where a body holds a value orjson would write as null (NaN, infinity) or choke on (NaT, NA)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, not a JSON number"
    if value is pd.NaT or value is pd.NA:
        return f"{path} is missing ({value})"
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
        return f"{path} holds NaN or infinite numbers"
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = not_json(v, f"{path}.{k}" if isinstance(value, dict) else f"{path}[{k}]")
        if found:
            return found
    return None


def _inputs(body: Mapping[str, Any]) -> int:
    """Embedding inputs in a body: a list of texts (or of token lists) counts each."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"a {type(value).__name__} is not JSON")


def dumps(value: Any) -> bytes:
    """orjson with numpy scalars and Decimals; CellError (unserializable, invalid_utf8) otherwise."""
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        code = "invalid_utf8" if "UTF-8" in str(exc) else "unserializable"
        raise CellError(code, f"not serializable as JSON: {exc}") from None
