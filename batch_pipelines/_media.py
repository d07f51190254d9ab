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
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


def cell_identity(value: Any) -> Hashable:
    """What makes two cells the same media (for reuse counting): the path/URL text or the bytes' hash."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).hexdigest()
    return str(value)


class MediaResolver:
    """Turns the cells of one media column into URLs, uploading through ``uploader`` when needed."""

    def __init__(
        self,
        *,
        column: str,
        kind: MediaKind,
        mime_type: str | None,
        transport: MediaTransport,
        inline_max_bytes: int,
        uploader: MediaUploader | None,
        refs: MutableMapping[str, str],
        reused: frozenset[Hashable] = frozenset(),
    ) -> None:
        self.column = column
        self.kind = kind
        self.mime_type = mime_type
        self.transport = transport
        self.inline_max_bytes = inline_max_bytes
        self.uploader = uploader
        self.refs = refs  # content sha256 -> reference, shared across columns and builds
        self.reused = reused
        #: Read and check the media but upload nothing (the build is going to fail anyway).
        self.check_only = False

    def url(self, value: Any) -> str:
        if isinstance(value, str) and _URL_RE.match(value):
            return value
        name, data = self._load(value)
        digest = hashlib.sha256(data).hexdigest()
        name = name or f"{self.column}-{digest[:16]}"
        mime = self.mime_type or _sniff(data) or mimetypes.guess_type(name)[0]
        if mime is None:
            raise MediaError(f"cannot tell the media type of {name!r}; set MediaPart.mime_type")
        if not mime.startswith(self.kind + "/"):
            raise MediaError(f"{name!r} is {mime}, not {'an image' if self.kind == 'image' else 'a video'}")
        if self._inline(value, data):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        ref = self.refs.get(digest)
        if ref is None and self.check_only:
            return f"unsent:{digest}"
        if ref is None:
            if self.uploader is None:  # the spec checks this up front; kept as a guard
                raise MediaError("media needs uploading but no upload_media callback was given")
            ref = self.uploader(MediaFile(name=name, kind=self.kind, mime_type=mime, sha256=digest, data=data))
            self.refs[digest] = ref
        return ref

    def _inline(self, value: Any, data: bytes) -> bool:
        if self.transport == "data_url":
            return True
        if self.transport == "file":
            return False
        return len(data) <= self.inline_max_bytes and cell_identity(value) not in self.reused

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
