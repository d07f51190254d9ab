"""The upload receiver: a streamed multipart body, small fields into memory, the file part to disk.

The file part is streamed to a temporary file in the data directory while being counted: a body
announced (Content-Length) or found (while streaming) larger than the limit is refused with a 413
without being read whole, and nothing of it is left behind.

What is held in memory is bounded too, whatever the body: an upload has a handful of parts (the
file, ``purpose``, ``expires_after[anchor]``, ``expires_after[seconds]``), so a body with more
parts than :data:`UPLOAD_LIMITS` allows, or more bytes of fields, or more bytes in all than the
file limit plus the framing, is refused with a 413 at the part or byte that passes the bound,
before the rest is read (a flood of small fields once grew the service by 800 MB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from batch_pipelines.local_service.errors import ServiceError

__all__ = ["UPLOAD_LIMITS", "UploadLimits", "receive_upload"]


@dataclass(frozen=True)
class UploadLimits:
    """What one multipart upload may hold besides the file's own bytes."""

    #: Bytes kept of one field's value (a longer one is cut: no field of an upload needs more).
    field_bytes: int = 4096
    #: Parts in the body: an upload has four at most; the rest is room for a client's extras.
    parts: int = 32
    #: Bytes of every field together, what the receiver holds in memory.
    fields_bytes: int = 32 * 1024
    #: Multipart framing around the file (boundaries, part headers, the fields): the whole body
    #: may be this much larger than the file limit.
    framing_bytes: int = 64 * 1024


UPLOAD_LIMITS = UploadLimits()


async def receive_upload(
    request: Request, *, path: Path, limit: int, bounds: UploadLimits = UPLOAD_LIMITS
) -> tuple[dict[str, str], tuple[str, Path] | None]:
    """Stream a multipart upload: small fields into memory, the file part to ``path``.

    Returns the fields and (client file name, ``path``) of the ``file`` part, None if it has
    none. Raises a 413 ServiceError as soon as the file part passes ``limit`` bytes, or the body
    passes ``bounds`` (its parts, its fields' bytes, its bytes in all).
    """
    body_limit = limit + bounds.framing_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise ServiceError(413, f"File is larger than the {limit} bytes allowed.", code="file_too_large", param="file")
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ServiceError(400, "Uploads must be multipart/form-data with a 'file' part and a 'purpose' field.")

    receiver = _MultipartReceiver(path, limit, bounds)
    parser = MultipartParser(boundary, receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise ServiceError(413, f"The upload is larger than the {body_limit} bytes allowed.", code="request_too_large")
            parser.write(chunk)
            if receiver.too_big:
                raise ServiceError(413, f"File is larger than the {limit} bytes allowed.", code="file_too_large", param="file")
            if receiver.overflow is not None:
                raise ServiceError(413, receiver.overflow, code="request_too_large")
        parser.finalize()
    except ServiceError:
        receiver.discard()
        raise
    except Exception as exc:  # a malformed multipart body
        receiver.discard()
        raise ServiceError(400, f"Malformed multipart body: {exc}") from None
    receiver.close()
    upload = (receiver.filename, receiver.path) if receiver.filename is not None else None
    return receiver.fields, upload


class _MultipartReceiver:
    """Callbacks for python-multipart's streaming parser."""

    def __init__(self, path: Path, limit: int, bounds: UploadLimits) -> None:
        self.path = path
        self.limit = limit
        self.bounds = bounds
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.too_big = False
        #: Why the body passed ``bounds`` (parts or field bytes), None while it has not.
        self.overflow: str | None = None
        self._parts = 0
        self._field_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0

    def callbacks(self) -> dict[str, Callable[..., Any]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.bounds.parts:
            self.overflow = f"The upload has more than {self.bounds.parts} parts; an upload has a file and a few fields."
        self._headers = {}
        self._name = None
        self._value = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file" and b"filename" in options and self._file is None and self.filename is None:
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._file = self.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._size += end - start
            if self._size > self.limit:
                self.too_big = True
                return
            self._file.write(data[start:end])
        elif self.overflow is None and len(self._value) + end - start <= self.bounds.field_bytes:
            self._field_bytes += end - start
            if self._field_bytes > self.bounds.fields_bytes:
                self.overflow = f"The upload's fields are larger than the {self.bounds.fields_bytes} bytes allowed."
                return
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name and self.overflow is None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.fields.clear()  # nothing read is kept past the answer
        self._value = bytearray()
        self.path.unlink(missing_ok=True)
