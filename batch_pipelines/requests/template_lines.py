"""Request lines of a template spec, a chunk of rows at a time: the fast path.

A template is compiled once into the constant JSON of a line with holes for the per-row text, and
the holes of a whole chunk are filled with Arrow's element-wise string join. JSON-escaping a
concatenation is concatenating the escaped pieces, so literal template text is escaped once at
compile time and each column's values are escaped on their own, vectorized. A row that cannot
become a request is reported to the :class:`RowReport` and left out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, NamedTuple

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import CHAT_COMPLETIONS, COMPLETIONS, GENERATE_CONTENT, MESSAGES, RESPONSES
from batch_pipelines.requests.custom_ids import CustomIds
from batch_pipelines.requests.json_text import LARGE_TEXT, arrow_text, is_arrow_text, json_escape, lines_of_array
from batch_pipelines.requests.media import MediaError, MediaResolver, MediaUploader
from batch_pipelines.requests.row_report import RowReport
from batch_pipelines.requests.shards import Chunk
from batch_pipelines.requests.spec import RequestSpec, merge_output_format, request_line
from batch_pipelines.requests.templates import Placeholder, parse_template
from batch_pipelines.requests.values import CellError, dumps, valid_utf8

# A marker that never occurs in user text stands where row values go while the line is serialized.
_HOLE_BASE = f"@@hole-{uuid.uuid4().hex}-"
_HOLE_RE = re.compile(rb'"(' + re.escape(_HOLE_BASE.encode()) + rb'[0-9]+@@)"')


class _Slot(NamedTuple):
    """A hole in the line: the custom_id, a template placeholder, or the URL of media part ``media``
    (``piece``: the whole URL, or the media type or base64 data of an inlined one, for Anthropic's
    image blocks)."""

    kind: Literal["id", "field", "media"]
    field: Placeholder | None = None
    media: int = -1
    piece: Literal["url", "media_type", "data"] = "url"


class TemplateLines:
    """Lines of a template spec: a compiled line skeleton filled a chunk of rows at a time."""

    def __init__(
        self,
        df: pd.DataFrame,
        spec: RequestSpec,
        report: RowReport,
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

        body = _skeleton(spec, text_hole, lambda i, piece="url": hole([_Slot("media", media=i, piece=piece)]))
        merge_output_format(body, spec.output_format())
        line = request_line(hole([_Slot("id")]), spec.endpoint, body)
        parts = _cut(dumps(line) + b"\n", holes)
        self.parts = [pa.scalar(p, LARGE_TEXT) if isinstance(p, bytes) else p for p in parts]
        self.slots = list(dict.fromkeys(p for p in parts if isinstance(p, _Slot)))
        self.resolvers = [MediaResolver(part, df[part.column], uploader=uploader, refs=refs) for part in spec.media]

    def chunk(self, start: int, stop: int, ids: CustomIds, skip: np.ndarray | None = None) -> Chunk:
        """The lines of rows ``start..stop``, less bad rows and those ``skip`` marks (not needed)."""
        values = {slot: self._values(slot, start, stop, ids) for slot in self.slots}
        keep = ~self.report.bad[start:stop]  # read after the values: rendering may find problems
        if skip is not None:
            keep &= ~skip
        if not keep.all():  # before the lines are joined: a rebuild may need few of them
            mask = pa.array(keep)
            values = {slot: array.filter(mask) for slot, array in values.items()}
        joined = pc.binary_join_element_wise(*[values.get(p, p) for p in self.parts], pa.scalar("", LARGE_TEXT))
        chunk_ids = values[_Slot("id")]
        data, ends = lines_of_array(joined)
        return Chunk(np.flatnonzero(keep) + start, data, ends, chunk_ids)

    def _values(self, slot: _Slot, start: int, stop: int, ids: CustomIds) -> pa.Array:
        """One slot's JSON-escaped text for rows ``start..stop`` (null for rows out of the build)."""
        if slot.kind == "id":
            return ids.slice(start, stop - start)  # custom_ids need no escaping
        render: Callable[[Any], str]
        if slot.kind == "media":
            resolver = self.resolvers[slot.media]
            resolver.check_only = self.report.failing
            column, render = resolver.part.column, resolver.url
            if slot.piece != "url":
                render = _data_url_piece(resolver.url, slot.piece)
            cells = self.df[column].iloc[start:stop]
        else:
            field = slot.field
            assert field is not None
            column = field.column
            cells = self.df[column].iloc[start:stop]
            if is_arrow_text(cells) and not field.conversion and not field.format_spec:
                return json_escape(arrow_text(cells))  # the fast path: a text column as it is
            render = field.render
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
                if text is not None and not valid_utf8(text):
                    texts[i] = None
                    self.report.row("invalid_utf8", f"{column!r} is not valid UTF-8 text", start + i, column)
            array = pa.array(texts, LARGE_TEXT)
        return json_escape(array)


def _data_url_piece(url: Callable[[Any], str], piece: str) -> Callable[[Any], str]:
    """The media type or the base64 data of the ``data:`` URL a cell becomes."""

    def render(cell: Any) -> str:
        value = url(cell)
        head, sep, data = value.partition(";base64,")
        if not (head.startswith("data:") and sep):
            raise MediaError(f"images go inline as base64 on this endpoint: {value[:40]!r} is a URL or a file reference")
        return head.removeprefix("data:") if piece == "media_type" else data

    return render


def _skeleton(spec: RequestSpec, text_hole: Callable[[str], str], media_hole: Callable[..., str]) -> dict[str, Any]:
    """The request body with markers where row values go."""
    if spec.endpoint == GENERATE_CONTENT:
        return _gemini_skeleton(spec, text_hole, media_hole)
    body: dict[str, Any] = {"model": spec.model}
    messages = [dict(m) for m in spec.messages] if spec.messages is not None else None
    if messages is None and (spec.endpoint in (CHAT_COMPLETIONS, MESSAGES) or spec.media):
        messages = [{"role": "user", "content": spec.input_template}]
    if messages is not None and spec.endpoint == MESSAGES:
        # Anthropic takes the system prompt as a parameter of its own, not as a message.
        system = [m.get("content") for m in messages if m.get("role") == "system"]
        messages = [m for m in messages if m.get("role") != "system"]
        if system:
            body["system"] = _holes("\n\n".join(str(text) for text in system), text_hole)
    if messages is not None:
        if spec.media:
            _attach_media(messages, spec, media_hole)
        body["input" if spec.endpoint == RESPONSES else "messages"] = _holes(messages, text_hole)
    else:
        body["prompt" if spec.endpoint == COMPLETIONS else "input"] = text_hole(spec.input_template or "")
    body.update(spec.body)
    return body


def _gemini_skeleton(spec: RequestSpec, text_hole: Callable[[str], str], media_hole: Callable[..., str]) -> dict[str, Any]:
    """A GenerateContentRequest: system messages as ``systemInstruction``, the others as ``contents``
    (``assistant`` is Gemini's ``model`` role), text as ``{"text"}`` parts, images first in the last
    user turn as ``{"inlineData": {mimeType, data}}``. ``model`` stays in the line for the shard's
    checks; the provider takes it into the batch's URL."""
    body: dict[str, Any] = {"model": spec.model}
    messages = [dict(m) for m in spec.messages] if spec.messages is not None else [{"role": "user", "content": spec.input_template}]
    system = [m.get("content") for m in messages if m.get("role") == "system"]
    turns = [m for m in messages if m.get("role") != "system"]
    last_user = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=-1)
    contents = []
    for i, message in enumerate(turns):
        content = message.get("content")
        if isinstance(content, str):
            parts: list[Any] = [{"text": content}]
        else:  # OpenAI-style parts: their text as Gemini's, anything else as given
            parts = [{"text": p["text"]} if isinstance(p, dict) and p.get("type") == "text" else p for p in content or ()]
        if i == last_user and spec.media:
            media = [{"inlineData": {"mimeType": media_hole(j, "media_type"), "data": media_hole(j, "data")}} for j in range(len(spec.media))]
            parts = media + parts
        contents.append({"role": "model" if message.get("role") == "assistant" else "user", "parts": _holes(parts, text_hole)})
    if system:
        body["systemInstruction"] = {"parts": [{"text": _holes("\n\n".join(str(text) for text in system), text_hole)}]}
    body["contents"] = contents
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


def _attach_media(messages: list[dict[str, Any]], spec: RequestSpec, media_hole: Callable[..., str]) -> None:
    """Put the media parts first in the content of the last user message (the spec checked there is one)."""
    target = [m for m in messages if m.get("role") == "user"][-1]
    chat = spec.endpoint in (CHAT_COMPLETIONS, MESSAGES)  # both take {"type": "text"} parts
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(spec.media):
        if spec.endpoint == MESSAGES:  # {"type": "image", "source": {"type": "base64", ...}}
            source = {"type": "base64", "media_type": media_hole(i, "media_type"), "data": media_hole(i, "data")}
            parts.append({"type": "image", "source": source})
        elif chat:  # {"type": "image_url", "image_url": {"url": ...}}, likewise video_url
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
