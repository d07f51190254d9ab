"""Request files: from DataFrame rows to validated, sharded JSONL.

A user describes once, in a :class:`RequestSpec`, how a row becomes a request body: a template
(chat messages or an input text holding ``{column}`` placeholders, plus fixed body parameters) or
a Python function of the row. :func:`build_request_files` checks every row against the provider's
profile, writes the request lines into shards that respect the profile's limits, and returns a
:class:`RequestManifest`: the shards with size and sha256, the rejected rows, the custom_id map.

Rows are named by a custom_id derived from their key (:func:`custom_ids`), so results join back to
the source whatever order the provider returns them in.

It is fast because a template is compiled once into the constant JSON of a line and rows are
poured into its holes a chunk at a time by Arrow, with vectorized JSON escaping (see ``_lines``
and ``_shards``); memory beyond the DataFrame stays around one chunk of lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, PydanticInvalidForJsonSchema, PydanticUserError, model_validator

from batch_pipelines._lines import (
    CellError,
    FunctionLines,
    TemplateLines,
    arrow_text,
    dumps,
    is_arrow_text,
    is_missing,
    not_json,
    parse_template,
    strings,
)
from batch_pipelines._lines import Field as _Field
from batch_pipelines._media import MediaFile, MediaKind, MediaTransport, MediaUploader
from batch_pipelines._shards import LARGE_TEXT, SHARD_GLOB, Chunk, Limits, Shard, ShardWriter, drop_lines
from batch_pipelines.profiles import ALL_ENDPOINTS, CHAT_COMPLETIONS, CUSTOM_ID_PATTERN, EMBEDDINGS, RESPONSES, ProviderProfile

__all__ = [
    "IDS_NAME",
    "MANIFEST_NAME",
    "SIZE_MARGIN",
    "MediaFile",
    "MediaPart",
    "MediaUploader",
    "Problem",
    "ProblemCode",
    "RejectedRow",
    "RequestManifest",
    "RequestSpec",
    "RequestValidationError",
    "Shard",
    "build_request_files",
    "custom_ids",
    "strict_json_schema",
]

#: Fraction of the profile's byte limit left unused. Providers write "100 MB" without saying
#: whether they mean 10**8 or 100 * 2**20 bytes (4.6 % apart); 5 % covers that and a little more.
SIZE_MARGIN = 0.05
MANIFEST_NAME = "manifest.json"
IDS_NAME = "ids.parquet"

ProblemCode = Literal[
    # the input as a whole is unusable: raised under either policy
    "empty_input",
    "endpoint_not_allowed",
    "missing_column",
    "forbidden_param",
    "unserializable_body",
    "missing_uploader",
    # one row is unusable
    "missing_key",
    "duplicate_key",
    "custom_id_collision",
    "missing_value",
    "invalid_value",
    "invalid_utf8",
    "unserializable",
    "media_error",
    "build_body_error",
    "model_mismatch",
    "too_large",
]

# Rows become lines a chunk at a time: ~_CHUNK_BYTES of lines keeps memory flat whatever the row
# width (text or inline images) while amortizing Arrow's per-call cost. The first chunk is small
# and measures the line size the following ones are cut to.
_CHUNK_BYTES = 4 * 1024 * 1024
_FIRST_CHUNK_ROWS = 64
_SHOWN_ROWS = 10  # rows at fault an error message lists


# ---- the spec ----------------------------------------------------------------------------------


class MediaPart(BaseModel):
    """An image or video content part taken from a column.

    A cell holds a local path (``str``/``Path``, also ``file://``), bytes, or a URL the provider
    reads itself (``https://``, ``data:``, ``ms://<file_id>``: passed through untouched).
    ``transport`` decides how local content travels: ``"data_url"`` inlines it as base64 (a third
    larger: mind the file limit), ``"file"`` uploads it once through the ``upload_media`` callback
    given to :func:`build_request_files` and writes the reference it returns, ``"auto"`` uploads
    content over ``inline_max_bytes`` or used by more than one row and inlines the rest. The parts
    go first in the content of the last user message, before its text (Moonshot's layout).
    """

    model_config = ConfigDict(frozen=True)

    column: str
    kind: MediaKind = "image"
    #: Default: sniffed from the content, else guessed from the file name.
    mime_type: str | None = None
    transport: MediaTransport = "data_url"
    inline_max_bytes: int = 1024 * 1024
    #: OpenAI's image ``detail`` ("low", "high", "auto"); left out when None.
    detail: str | None = None


class RequestSpec(BaseModel):
    """How every row of a table becomes one request; written once per pipeline.

    Give exactly one of:

    - ``messages`` (chat completions, responses): message dicts whose string values are
      ``str.format`` templates over the row's columns: ``"Classify: {text}"``, ``"{price:.2f}"``;
      literal braces are doubled (``{{ }}``).
    - ``input_template``: one such text, sent as ``prompt`` (completions), ``input`` (responses,
      embeddings, moderations) or as the one user message (chat completions).
    - ``build_body``: a function of the row (column -> Python value; numpy scalars already boxed)
      returning the body; ``model`` and the fixed ``body`` parameters fill in what it leaves out.

    ``body`` holds fixed parameters (temperature, max_tokens, ...). ``output_model`` asks for
    structured output: its strict JSON schema goes to ``response_format`` (chat) or
    ``text.format`` (responses). ``key_column`` names the column custom_ids come from (default: the
    DataFrame index).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    endpoint: str = CHAT_COMPLETIONS
    model: str
    messages: list[dict[str, Any]] | None = None
    input_template: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)
    build_body: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    output_model: type[BaseModel] | None = None
    media: list[MediaPart] = Field(default_factory=list)
    key_column: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RequestSpec:
        given = [n for n in ("messages", "input_template", "build_body") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of messages, input_template, build_body (got {given or 'none'})")
        if self.endpoint not in ALL_ENDPOINTS:
            raise ValueError(f"endpoint {self.endpoint!r} is not one of {', '.join(ALL_ENDPOINTS)}")
        if self.messages is not None and self.endpoint not in (CHAT_COMPLETIONS, RESPONSES):
            raise ValueError(f"messages need {CHAT_COMPLETIONS} or {RESPONSES}; use input_template for {self.endpoint}")
        if self.media:
            if self.build_body is not None or self.endpoint not in (CHAT_COMPLETIONS, RESPONSES):
                raise ValueError("media parts need a messages or input_template spec on chat completions or responses")
            if self.endpoint == RESPONSES and any(p.kind == "video" for p in self.media):
                raise ValueError(f"{RESPONSES} takes no video parts")
            if self.messages is not None and not any(m.get("role") == "user" for m in self.messages):
                raise ValueError("media parts go into a user message, and messages has none")
        reserved = {"model", "messages", "input", "prompt"} & set(self.body)
        if reserved:
            raise ValueError(f"body sets {sorted(reserved)}: give them through the spec's own fields")
        if self.output_model is not None:
            if self.endpoint not in (CHAT_COMPLETIONS, RESPONSES):
                raise ValueError(f"output_model needs {CHAT_COMPLETIONS} or {RESPONSES}")
            if "response_format" in self.body or "format" in (self.body.get("text") or {}):
                raise ValueError("body already sets the output format; drop it or output_model")
            strict_json_schema(self.output_model)
        for template in self._templates():
            parse_template(template)
        return self

    def _templates(self) -> Iterator[str]:
        if self.input_template is not None:
            yield self.input_template
        for message in self.messages or ():
            yield from strings(message)

    @property
    def columns(self) -> list[str]:
        """Columns the templates and media parts read, in first-use order."""
        fields = (f.column for t in self._templates() for f in parse_template(t) if isinstance(f, _Field))
        return list(dict.fromkeys([*fields, *(p.column for p in self.media)]))

    def output_format(self) -> dict[str, Any]:
        """The body parameters asking for ``output_model`` (empty without one)."""
        if self.output_model is None:
            return {}
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", self.output_model.__name__)[:64]
        schema = strict_json_schema(self.output_model)
        if self.endpoint == CHAT_COMPLETIONS:
            return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}}
        return {"text": {"format": {"type": "json_schema", "name": name, "strict": True, "schema": schema}}}


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` in the form strict structured output accepts.

    Every object gets ``additionalProperties: false`` and all its properties required; a ``$ref``
    with siblings is inlined; ``default: null`` is dropped. ValueError when the model cannot be
    expressed: a field pydantic cannot put in a schema, or a free-form dict.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"output_model must be a pydantic BaseModel subclass, not {model!r}")
    try:
        schema = model.model_json_schema()
    except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
        raise ValueError(f"output_model {model.__name__} cannot become a JSON schema: {exc}") from None
    return _strict(schema, schema, model.__name__)


def _strict(node: dict[str, Any], root: dict[str, Any], where: str) -> dict[str, Any]:
    if "$ref" in node and len(node) > 1:  # strict mode takes no siblings next to $ref: inline it
        target = root
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    node = dict(node)
    if "default" in node and node["default"] is None:
        del node["default"]
    if node.get("type") == "object":
        if node.get("additionalProperties") not in (None, False):
            raise ValueError(f"output_model: {where} is a free-form mapping; strict structured output needs named fields")
        node["additionalProperties"] = False
        props = node.get("properties", {})
        node["properties"] = {k: _strict(v, root, f"{where}.{k}") for k, v in props.items()}
        node["required"] = list(props)
    for key in ("$defs", "definitions"):
        if key in node:
            node[key] = {k: _strict(v, root, k) for k, v in node[key].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root, f"{where}[]")
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict(v, root, where) for v in node[key]]
    if len(node.get("allOf", ())) == 1:
        node = {**node.pop("allOf")[0], **node}
    return node


# ---- problems ----------------------------------------------------------------------------------


class Problem(BaseModel):
    """One reason a row (or, with ``row`` None, the input as a whole) cannot become a request."""

    model_config = ConfigDict(frozen=True)

    code: ProblemCode
    message: str
    #: Position of the row in the DataFrame given to build_request_files.
    row: int | None = None
    key: Any = None
    column: str | None = None


class RejectedRow(BaseModel):
    """A source row left out of the request files (``quarantine`` policy); ``row`` is its position."""

    model_config = ConfigDict(frozen=True)

    row: int
    key: Any
    #: None when the key itself is missing.
    custom_id: str | None
    problems: list[Problem]

    @property
    def reasons(self) -> list[str]:
        return list(dict.fromkeys(p.code for p in self.problems))

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(p.column for p in self.problems if p.column))

    @property
    def message(self) -> str:
        return "; ".join(p.message for p in self.problems)


class RequestValidationError(ValueError):
    """Rows (or the input as a whole) that cannot become requests; no request file was left behind.

    ``problems`` lists every problem found, ``counts`` counts them per code, and the message names
    the first rows at fault.
    """

    def __init__(self, problems: Sequence[Problem], *, total_rows: int = 0, context: str = "") -> None:
        self.problems = list(problems)
        self.counts = dict(Counter(p.code for p in self.problems))
        self.total_rows = total_rows
        super().__init__(_describe(self.problems, total_rows, context))


def _describe(problems: list[Problem], total_rows: int, context: str) -> str:
    counts = ", ".join(f"{code}: {n}" for code, n in Counter(p.code for p in problems).most_common())
    whole = [p for p in problems if p.row is None]
    by_row: dict[int, list[Problem]] = {}
    for p in problems:
        if p.row is not None:
            by_row.setdefault(p.row, []).append(p)
    where = f" for {context}" if context else ""
    if whole:
        lines = [f"the input cannot become requests{where} ({counts}):", *(f"  {p.message}" for p in whole)]
    else:
        lines = [f"{len(by_row)} of {total_rows} rows cannot become requests{where} ({counts}):"]
    for row in sorted(by_row)[:_SHOWN_ROWS]:
        lines.append(f"  row {row} (key {by_row[row][0].key!r}): " + "; ".join(p.message for p in by_row[row]))
    if len(by_row) > _SHOWN_ROWS:
        lines.append(f"  ... and {len(by_row) - _SHOWN_ROWS} more rows")
    return "\n".join(lines)


def _row_problem(code: ProblemCode, message: str, row: int, key: Any, column: str | None = None) -> Problem:
    return Problem(code=code, message=message, row=row, key=_plain(key), column=column)


def _plain(value: Any) -> Any:
    """A key as a JSON-able Python value, for problem reports and the manifest."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _key_str(value)


# ---- custom ids --------------------------------------------------------------------------------


def custom_ids(keys: pd.Series | pd.Index) -> pd.Series:
    """The custom_id of each key: the key itself when it matches ``^[a-zA-Z0-9_-]{1,64}$``.

    Other keys become ``<slug>-<24 hex digits of sha256(key text)>``, the slug being up to 32 safe
    characters of the key: stable across runs and machines, and still readable. Integer keys are
    their decimal text (also when a missing value made them floats). The result is aligned with ``keys`` (same index for a Series, the keys
    themselves as index for an Index). RequestValidationError for missing keys, duplicate keys, and
    distinct keys that come to one custom_id (``5`` and ``"5"``).
    """
    series = keys.to_series(index=keys) if isinstance(keys, pd.Index) else keys
    unique = keys.is_unique if isinstance(keys, pd.Index) else None
    ids, problems = _custom_ids(series, unique=unique)
    if problems:
        raise RequestValidationError(problems, total_rows=len(series))
    return pd.Series(pd.array(ids.slice(0, len(series)), dtype="str"), index=series.index, name="custom_id")


def _key_text(keys: pd.Series) -> pa.Array:
    """Each key's text (null where missing); Arrow text keys as they are, without Python objects."""
    if is_arrow_text(keys):
        return arrow_text(keys)
    return pa.array([None if is_missing(k) else _key_str(k) for k in keys], LARGE_TEXT)


def _key_str(key: Any) -> str:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, float) and key.is_integer():  # integer keys that a missing value made floats
        return str(int(key))
    if isinstance(key, (dt.date, dt.time)):
        return key.isoformat()
    return key if isinstance(key, str) else str(key)


def _hashed_id(text: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_")[:32] or "k"
    return f"{slug}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:24]}"


class _Ids:
    """The custom_id of every row, null where the key is missing.

    Held as one text array, except for integer keys: their decimal text always is a valid
    custom_id and distinct integers never share one, so they stay integers and become text a
    chunk at a time (a million ids as text at once would be the largest thing built).
    """

    def __init__(self, values: pa.Array) -> None:
        self.values = values
        self.integers = pa.types.is_integer(values.type)

    def slice(self, start: int, length: int) -> pa.Array:
        part = self.values.slice(start, length)
        return pc.cast(part, LARGE_TEXT) if self.integers else part

    def take(self, rows: pa.Array) -> pa.Array:
        part = self.values.take(rows)
        return pc.cast(part, LARGE_TEXT) if self.integers else part

    def at(self, row: int) -> str | None:
        return self.slice(row, 1)[0].as_py()


def _custom_ids(keys: pd.Series, *, unique: bool | None = None) -> tuple[_Ids, list[Problem]]:
    """Each key's custom_id and the problems of the keys.

    ``unique`` says whether the keys are known to be unique (a RangeIndex is), sparing a hash of
    them all.
    """
    integers = pd.api.types.is_integer_dtype(keys.dtype)
    text = pa.array(keys, from_pandas=True) if integers else _key_text(keys)
    missing = text.is_null().to_numpy(zero_copy_only=False)
    unfit = np.zeros(len(keys), dtype=bool)
    if not integers:
        fits = pc.fill_null(pc.match_substring_regex(text, CUSTOM_ID_PATTERN.pattern), False)
        unfit = ~fits.to_numpy(zero_copy_only=False) & ~missing
    ids = text
    if unfit.any():
        hashed = [_hashed_id(t) for t in text.filter(pa.array(unfit)).to_pylist()]
        ids = pc.replace_with_mask(text, pa.array(unfit), pa.array(hashed, LARGE_TEXT))
    problems = [Problem(code="missing_key", message="key is missing", row=int(r)) for r in np.flatnonzero(missing)]
    duplicate = np.zeros(len(keys), dtype=bool)
    if not (unique if unique is not None else keys.is_unique):
        duplicate = keys.duplicated(keep=False).to_numpy() & ~missing
        problems += [_row_problem("duplicate_key", "key occurs more than once", int(r), keys.iloc[r]) for r in np.flatnonzero(duplicate)]
    # Distinct keys share an id only through hashing or mixed key types (5 and "5").
    if unfit.any() or not (integers or is_arrow_text(keys)):
        counts = pc.value_counts(ids)
        shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        clash = pc.fill_null(pc.is_in(ids, shared), False).to_numpy(zero_copy_only=False) & ~duplicate & ~missing
        for r in np.flatnonzero(clash):
            message = f"custom_id {ids[r].as_py()!r} is shared with a different key"
            problems.append(_row_problem("custom_id_collision", message, int(r), keys.iloc[r]))
    return _Ids(ids), problems


# ---- manifest ----------------------------------------------------------------------------------


class RequestManifest(BaseModel):
    """What build_request_files wrote: shards, rejected rows and the custom_id map.

    Every one of the ``rows`` source rows is either in a shard (``requests`` in all) or in
    ``rejected``. The custom_id map (custom_id, key, row, shard of each request) is a Parquet file
    beside the manifest (``ids_path``, read with :meth:`read_ids`) to stay small for millions of rows.
    """

    model_config = ConfigDict(frozen=True)

    provider: str
    endpoint: str
    model: str
    attempt: int
    rows: int
    requests: int
    shards: list[Shard]
    rejected: list[RejectedRow] = Field(default_factory=list)
    ids_path: Path | None = None
    #: sha256 of media content -> the reference it was uploaded as; pass back to reuse on retries.
    media_refs: dict[str, str] = Field(default_factory=dict)

    def read_ids(self) -> pd.DataFrame:
        """The custom_id map: columns custom_id, key, row (position in the source) and shard (index)."""
        if self.ids_path is None:
            return pd.DataFrame({"custom_id": pd.Series(dtype="str"), "key": pd.Series(dtype=object),
                                 "row": pd.Series(dtype="int64"), "shard": pd.Series(dtype="int32")})
        return pq.read_table(self.ids_path).to_pandas()

    def write(self, path: Path) -> Path:
        """Write as JSON, atomically, with file paths relative to ``path``'s folder."""
        path = Path(path)
        base = path.parent.resolve()
        data = self.model_dump(mode="json")
        for shard in data["shards"]:
            shard["path"] = _relative(shard["path"], base)
        if data["ids_path"]:
            data["ids_path"] = _relative(data["ids_path"], base)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path) -> RequestManifest:
        path = Path(path)
        data = orjson.loads(path.read_bytes())
        base = path.parent.resolve()
        for shard in data["shards"]:
            shard["path"] = str(base / shard["path"])
        if data.get("ids_path"):
            data["ids_path"] = str(base / data["ids_path"])
        return cls.model_validate(data)


def _relative(path: str, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:  # outside the manifest's folder: keep it absolute
        return path


# ---- building ----------------------------------------------------------------------------------


def build_request_files(
    df: pd.DataFrame,
    spec: RequestSpec,
    out_dir: Path,
    *,
    profile: ProviderProfile,
    policy: Literal["fail", "quarantine"] = "fail",
    attempt: int = 1,
    upload_media: MediaUploader | None = None,
    media_refs: MutableMapping[str, str] | None = None,
    size_margin: float = SIZE_MARGIN,
    max_requests_per_shard: int | None = None,
) -> RequestManifest:
    """Validate ``df`` against ``spec`` and ``profile`` and write its requests as JSONL shards.

    Writes ``shard-00000.jsonl``..., ``ids.parquet`` and ``manifest.json`` into ``out_dir`` (give
    each attempt its own folder: files of an earlier build there are replaced). No shard holds more
    than the profile's byte limit less ``size_margin`` (newlines counted), its request limit,
    ``max_requests_per_shard``, or (embeddings) its input limit. The same rows and spec always give
    byte-identical files.

    ``policy="fail"`` raises one :class:`RequestValidationError` for all rows at fault and leaves no
    request file behind; ``"quarantine"`` leaves those rows out and lists them in
    ``manifest.rejected``. Problems with the input as a whole (an endpoint the provider lacks, a
    missing column, a forbidden parameter, an empty table) raise under either policy.

    ``upload_media`` is called once per distinct media content that travels as a file (see
    :class:`MediaPart`), never once the build is bound to fail. ``media_refs`` (content sha256 ->
    reference, e.g. a previous manifest's) spares uploads already done and is updated in place, so
    a caller's dict keeps what was uploaded even when the build then fails. ``attempt`` numbers
    retries; custom_ids stay those of the rows' keys.
    """
    if policy not in ("fail", "quarantine"):
        raise ValueError(f"policy must be 'fail' or 'quarantine', not {policy!r}")
    if not 0 <= size_margin < 1:
        raise ValueError(f"size_margin must be in [0, 1), not {size_margin}")
    context = f"{profile.name} {spec.endpoint}"
    _check_input(df, spec, profile, upload_media, context)
    counts = [n for n in (profile.max_requests_per_file, max_requests_per_shard) if n is not None]
    limits = Limits(
        bytes=int(profile.max_file_bytes * (1 - size_margin)),
        requests=min(counts) if counts else None,
        inputs=profile.max_embedding_inputs if spec.endpoint == EMBEDDINGS else None,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob(SHARD_GLOB), out_dir / IDS_NAME, out_dir / MANIFEST_NAME]:
        stale.unlink(missing_ok=True)

    if spec.key_column is None:
        keys, unique = pd.Series(df.index), df.index.is_unique
    else:
        keys, unique = df[spec.key_column].reset_index(drop=True), None
    ids, problems = _custom_ids(keys, unique=unique)
    for column in spec.columns:
        missing = np.flatnonzero(df[column].isna().to_numpy())
        problems += [_row_problem("missing_value", f"{column!r} is missing", int(r), keys.iloc[r], column) for r in missing]
    found = _Found(keys, problems, policy)
    refs = media_refs if media_refs is not None else {}
    lines: TemplateLines | FunctionLines
    if spec.build_body is None:
        lines = TemplateLines(df, spec, found, spec.output_format(), refs, upload_media)
    else:
        lines = FunctionLines(df, spec, profile, found, spec.output_format())
    writer = ShardWriter(out_dir, limits, _key_array(keys), out_dir / IDS_NAME, dry=found.failing)
    try:
        start, size, line_bytes, line_count = 0, _FIRST_CHUNK_ROWS, 0, 0
        while start < len(df):
            stop = min(start + size, len(df))
            chunk = _within_limits(lines.chunk(start, stop, ids), limits, found)
            if found.failing:
                writer.abort()  # and go on checking, so the error counts every problem
            writer.write(chunk)
            line_count += len(chunk.ends)
            line_bytes += int(chunk.ends[-1]) if len(chunk.ends) else 0
            size = max(1, _CHUNK_BYTES * line_count // line_bytes) if line_bytes else size
            start = stop
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    if found.failing:
        raise RequestValidationError(found.problems, total_rows=len(df), context=context)
    shards = [s.model_copy(update={"attempt": attempt}) for s in written]
    manifest = RequestManifest(
        provider=profile.name,
        endpoint=spec.endpoint,
        model=spec.model,
        attempt=attempt,
        rows=len(df),
        requests=sum(s.rows for s in shards),
        shards=shards,
        rejected=found.rejected(ids),
        ids_path=writer.ids_path if writer.wrote_ids else None,
        media_refs=dict(refs),
    )
    if manifest.requests + len(manifest.rejected) != len(df):
        raise AssertionError(f"{manifest.requests} sent + {len(manifest.rejected)} rejected != {len(df)} rows")
    manifest.write(out_dir / MANIFEST_NAME)
    return manifest


def _check_input(
    df: pd.DataFrame, spec: RequestSpec, profile: ProviderProfile, upload_media: MediaUploader | None, context: str
) -> None:
    """Problems with the input as a whole, raised whatever the policy."""
    problems: list[Problem] = []
    if len(df) == 0:
        problems.append(Problem(code="empty_input", message="the DataFrame has no rows"))
    if spec.endpoint not in profile.endpoints:
        message = f"{profile.name} does not serve {spec.endpoint} (only {', '.join(profile.endpoints)})"
        problems.append(Problem(code="endpoint_not_allowed", message=message))
    for column in [spec.key_column, *spec.columns]:
        if column is not None and column not in df.columns:
            message = f"column {column!r} is not in the DataFrame (columns: {list(df.columns)[:20]})"
            problems.append(Problem(code="missing_column", message=message, column=column))
    forbidden = sorted(profile.forbidden_for(spec.model) & set(spec.body))
    if forbidden:
        message = f"{profile.name} rejects {forbidden} for model {spec.model!r}: remove them from body"
        problems.append(Problem(code="forbidden_param", message=message))
    try:
        dumps(spec.body)
        where = not_json(spec.body, "body")
        if where:
            problems.append(Problem(code="unserializable_body", message=where))
    except CellError as exc:
        problems.append(Problem(code="unserializable_body", message=f"body: {exc}"))
    if upload_media is None and any(p.transport != "data_url" for p in spec.media):
        problems.append(Problem(code="missing_uploader", message="media parts may travel as files: pass upload_media"))
    if problems:
        raise RequestValidationError(problems, total_rows=len(df), context=context)


class _Found:
    """Row problems found so far, and the rows they put out of the build."""

    def __init__(self, keys: pd.Series, problems: list[Problem], policy: str) -> None:
        self.keys = keys
        self.policy = policy
        self.problems: list[Problem] = []
        self.bad = np.zeros(len(keys), dtype=bool)
        self.add(problems)

    @property
    def failing(self) -> bool:
        """The build will raise: nothing more is written or uploaded, rows are only checked."""
        return self.policy == "fail" and bool(self.problems)

    def add(self, problems: Sequence[Problem]) -> None:
        self.problems.extend(problems)
        self.bad[[p.row for p in problems]] = True

    def row(self, code: str, message: str, row: int, column: str | None = None) -> None:
        self.add([_row_problem(code, message, row, self.keys.iloc[row], column)])  # type: ignore[arg-type]

    def rejected(self, ids: _Ids) -> list[RejectedRow]:
        by_row: dict[int, list[Problem]] = {}
        for p in self.problems:
            by_row.setdefault(p.row, []).append(p)  # type: ignore[arg-type]
        return [
            RejectedRow(row=row, key=by_row[row][0].key, custom_id=ids.at(row), problems=by_row[row])
            for row in sorted(by_row)
        ]


def _within_limits(chunk: Chunk, limits: Limits, found: _Found) -> Chunk:
    """Drop the lines that alone exceed a file's limits, reporting them as too_large."""
    sizes = np.diff(chunk.ends, prepend=0)
    big = sizes > limits.bytes
    many = chunk.weights > limits.inputs if (limits.inputs is not None and chunk.weights is not None) else np.zeros_like(big)
    if not (big.any() or many.any()):
        return chunk
    for i in np.flatnonzero(big | many):
        if big[i]:
            what = f"{sizes[i]} bytes, over the {limits.bytes}-byte budget of a file"
        else:
            what = f"{chunk.weights[i]} embedding inputs, over {limits.inputs} per file"  # type: ignore[index]
        found.row("too_large", f"request is {what}", int(chunk.rows[i]))
    return drop_lines(chunk, big | many)


def _key_array(keys: pd.Series) -> pa.Array:
    """Keys for the id map: in their own type where Arrow has one, else as text."""
    try:
        array = pa.array(keys, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        array = pa.array([None if is_missing(k) else _key_str(k) for k in keys], pa.string())
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
