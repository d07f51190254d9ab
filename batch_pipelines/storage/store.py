"""The files of one storage root, on the local disk or any fsspec filesystem.

Paths given to a :class:`Storage` are relative to its root and use ``/``. Writes are atomic for
readers: on a local disk a temporary file renamed into place, on object storage a single put
(an object is never seen half written).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = ["Storage", "StoredFile"]


@dataclass(frozen=True)
class StoredFile:
    """One file of a storage: its path under the root, its size and when it was last written (epoch seconds)."""

    path: str
    size: int
    modified: float


class Storage:
    """A storage root: ``url`` a local path or an fsspec URL; ``options`` the filesystem's (e.g. ``endpoint_url``)."""

    def __init__(self, url: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> None:
        self.url = os.fspath(url)
        if not self.url.strip():
            raise ValueError("a storage URL or path must not be empty")
        try:
            self.fs, root = url_to_fs(self.url, **dict(options or {}))
        except (ImportError, ValueError) as exc:
            raise ValueError(f"storage {self.url!r}: {exc}") from exc
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") if root != "/" else root

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def full(self, path: str = "") -> str:
        """``path`` in the filesystem's own terms (root prefixed)."""
        path = path.strip("/")
        return f"{self.root}/{path}" if path else self.root

    def local_path(self, path: str = "") -> Path:
        """The local file or folder of ``path`` (a local storage only)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not on the local disk")
        return Path(self.full(path))

    # ---- reading ---------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        self.fs.invalidate_cache(self.full(path))
        return bool(self.fs.exists(self.full(path)))

    def read_bytes(self, path: str) -> bytes:
        """The file's content (FileNotFoundError if absent)."""
        return bytes(self.fs.cat_file(self.full(path)))

    def files(self, folder: str = "") -> list[StoredFile]:
        """Every file under ``folder`` (recursively), by path."""
        base = self.full(folder)
        self.fs.invalidate_cache(base)  # another worker may have written since this process listed
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        prefix = self.root.rstrip("/") + "/"
        listed = []
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            name = name if not self.is_local else Path(name).as_posix()
            relative = name[len(prefix) :] if name.startswith(prefix) else name
            listed.append(StoredFile(path=relative, size=int(info.get("size") or 0), modified=_modified(info)))
        return sorted(listed, key=lambda f: f.path)

    def get_file(self, path: str, local: Path) -> Path:
        """Copy ``path`` to the local file ``local`` (replaced atomically)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        self.fs.get_file(self.full(path), str(part))
        os.replace(part, local)
        return local

    # ---- writing ---------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path``, atomically for readers."""
        if self.is_local:
            target = self.local_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)
        else:
            self.fs.pipe_file(self.full(path), data)

    def put_file(self, local: Path, path: str) -> None:
        """Store the local file ``local`` at ``path`` (nothing to do when it is that file already)."""
        if self.is_local:
            target = self.local_path(path)
            if target.resolve() == Path(local).resolve():
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.part")
            shutil.copyfile(local, part)
            os.replace(part, target)
        else:
            self.fs.put_file(str(local), self.full(path))

    def delete(self, paths: Iterable[str]) -> int:
        """Delete the files at ``paths`` (absent ones are skipped); how many were given."""
        full = [self.full(p) for p in paths]
        if not full:
            return 0
        if self.is_local:
            for name in full:
                Path(name).unlink(missing_ok=True)
        else:
            self.fs.rm(full)
        return len(full)


def _modified(info: Mapping[str, Any]) -> float:
    """When a listed file was last written, whatever the filesystem calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0
