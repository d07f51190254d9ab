"""Media content parts: from a cell (path, URL or bytes) to the URL one request carries.

A cell becomes either a base64 ``data:`` URL inlined in the request line, or a reference to a
file uploaded once (``ms://<file_id>`` on Moonshot). Uploading is HTTP, which this layer never
does: the caller passes an uploader callback (the provider layer owns the upload) and gets back
the reference to write. Each distinct content is uploaded once per build; references from earlier
builds can be passed in so a retry uploads nothing again.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from collections import Counter
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from batch_pipelines.requests.values import is_missing

MediaKind = Literal["image", "video"]
MediaTransport = Literal["data_url", "file", "auto"]

# Cells that already are URLs a provider understands go through untouched; file:// does not
# (a provider cannot read the user's disk), it is read like a path.
_URL_RE = re.compile(r"^(https?://|data:|(?!file://)[a-z][a-z0-9+.-]*://)", re.IGNORECASE)

# (offset, magic bytes, mime type): enough to name the formats providers accept without a file name.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (4, b"ftypqt", "video/quicktime"),
    (4, b"ftyp", "video/mp4"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
)


class MediaPart(BaseModel):
    """An image or video content part taken from a column.

    A cell holds a local path (``str``/``Path``, also ``file://``), bytes, or a URL the provider
    reads itself (``https://``, ``data:``, ``ms://<file_id>``: passed through untouched).
    ``transport`` decides how local content travels: ``"data_url"`` inlines it as base64 (a third
    larger: mind the file limit), ``"file"`` uploads it once through the ``upload_media`` callback
    given to :func:`~batch_pipelines.requests.build_request_files` and writes the reference it
    returns, ``"auto"`` uploads content over ``inline_max_bytes`` or used by more than one row and
    inlines the rest. The parts go first in the content of the last user message, before its text
    (Moonshot's layout).
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


@dataclass(frozen=True)
class MediaFile:
    """One media content handed to the uploader; ``kind`` doubles as the upload purpose."""

    name: str
    kind: MediaKind
    mime_type: str
    sha256: str
    data: bytes = field(repr=False)


#: Uploads one media file and returns the URL a request should carry, e.g. ``"ms://<file_id>"``.
MediaUploader = Callable[[MediaFile], str]


class MediaError(ValueError):
    """A cell that cannot become a media part; the message says why."""


def _sniff(data: bytes) -> str | None:
    for offset, magic, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return None


def _identity(value: Any) -> Hashable:
    """What makes two cells the same media (for reuse counting): the path/URL text or the bytes' hash."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).hexdigest()
    return str(value)


class MediaResolver:
    """Turns the cells of one media column into URLs, uploading through ``uploader`` when needed.

    ``refs`` (content sha256 -> reference) is shared across columns and builds, so each content is
    uploaded once.
    """

    def __init__(
        self, part: MediaPart, cells: pd.Series, *, uploader: MediaUploader | None, refs: MutableMapping[str, str]
    ) -> None:
        self.part = part
        self.uploader = uploader
        self.refs = refs
        # Under "auto", content used by more than one row is uploaded whatever its size.
        self.reused: frozenset[Hashable] = frozenset()
        if part.transport == "auto":
            counts = Counter(_identity(v) for v in cells if not is_missing(v))
            self.reused = frozenset(k for k, n in counts.items() if n > 1)
        #: Read and check the media but upload nothing (the build is going to fail anyway).
        self.check_only = False

    def url(self, value: Any) -> str:
        if isinstance(value, str) and _URL_RE.match(value):
            return value
        part = self.part
        name, data = self._load(value)
        digest = hashlib.sha256(data).hexdigest()
        name = name or f"{part.column}-{digest[:16]}"
        mime = part.mime_type or _sniff(data) or mimetypes.guess_type(name)[0]
        if mime is None:
            raise MediaError(f"cannot tell the media type of {name!r}; set MediaPart.mime_type")
        if not mime.startswith(part.kind + "/"):
            raise MediaError(f"{name!r} is {mime}, not {'an image' if part.kind == 'image' else 'a video'}")
        if self._inline(value, data):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        ref = self.refs.get(digest)
        if ref is None and self.check_only:
            return f"unsent:{digest}"
        if ref is None:
            if self.uploader is None:  # the build checks this up front; kept as a guard
                raise MediaError("media needs uploading but no upload_media callback was given")
            ref = self.uploader(MediaFile(name=name, kind=part.kind, mime_type=mime, sha256=digest, data=data))
            self.refs[digest] = ref
        return ref

    def _inline(self, value: Any, data: bytes) -> bool:
        if self.part.transport == "data_url":
            return True
        if self.part.transport == "file":
            return False
        return len(data) <= self.part.inline_max_bytes and _identity(value) not in self.reused

    def _load(self, value: Any) -> tuple[str | None, bytes]:
        """The cell's file name (None for bytes) and content."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return None, bytes(value)
        if isinstance(value, str) and value.lower().startswith("file://"):
            value = value[len("file://") :]
        if isinstance(value, (str, Path)):
            path = Path(value)
            try:
                return path.name, path.read_bytes()
            except OSError as exc:
                raise MediaError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        raise MediaError(f"{type(value).__name__} is not a path, URL or bytes")
