"""Local files of stored folders, for the code that needs a path.

A provider uploads a shard from a file, result readers and the build read and write files, the
reuse store memory-maps its segments. On a local storage those are the stored files themselves:
nothing is copied, so local disks keep their speed. On object storage a working copy is a
scratch folder (one per step, deleted with it): :meth:`WorkingCopy.pull` fetches a folder's
stored files into it, :meth:`WorkingCopy.push` stores back what changed there, the manifest last,
so a reader that finds a manifest finds the files it names.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

from batch_pipelines.storage.store import Storage

__all__ = ["WorkingCopy"]

#: Files a folder's readers go by: stored after every other file of the folder.
COMMIT_NAMES = ("manifest.json",)


class WorkingCopy:
    """``storage``'s files on the local disk: in place if it is local, else in a scratch folder."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._scratch: Path | None = None
        # Storage path -> (size, modification) of the stored file as last fetched: unchanged, not fetched again.
        self._fetched: dict[str, tuple[int, float]] = {}
        # Storage path -> (size, mtime_ns) of the local file as last fetched or stored: what push compares to.
        self._synced: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> WorkingCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def copies(self) -> bool:
        """Whether files are copied (object storage) rather than used in place (local storage)."""
        return not self.storage.is_local

    def local(self, path: str = "") -> Path:
        """The local path of the storage's ``path``."""
        if not self.copies:
            return self.storage.local_path(path)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="batch_pipelines-"))
        return self._scratch / path if path else self._scratch

    def stored(self, local: Path) -> str:
        """The storage path of the local ``local``."""
        return Path(local).relative_to(self.local()).as_posix()

    def url(self, local: Path) -> str:
        """Where the local ``local`` is stored, as a user names it (a path, or a URL)."""
        if not self.copies:
            return str(local)
        return f"{self.storage.url.rstrip('/')}/{self.stored(local)}"

    def pull(self, folder: Path, names: Collection[str] | None = None, prefixes: Collection[str] | None = None) -> Path:
        """Fetch the stored files under ``folder`` (a local path of this copy; only ``names`` in it, or
        names starting with one of ``prefixes``, if given)."""
        if not self.copies:
            return folder
        base = self.stored(folder)
        for stored in self.storage.files(base):
            name = stored.path[len(base) :].lstrip("/")
            if names is not None and name not in names:
                continue
            if prefixes is not None and not any(name.startswith(p) for p in prefixes):
                continue
            target = self.local(stored.path)
            if self._fetched.get(stored.path) == (stored.size, stored.modified) and target.exists():
                continue
            self.storage.get_file(stored.path, target)
            self._fetched[stored.path] = (stored.size, stored.modified)
            self._synced[stored.path] = _stamp(target)
        return folder

    def push(self, folder: Path, *, exact: bool = False) -> None:
        """Store what changed under ``folder`` since pulled or pushed; delete what was removed there.

        ``exact``: also delete every stored file under ``folder`` that is not there locally (a
        rebuilt attempt, whose files were not all pulled). Hold the folder's lock.
        """
        if not self.copies:
            return
        base = self.stored(folder)
        present = {self.stored(p): p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}
        changed = [path for path, local in present.items() if self._synced.get(path) != _stamp(local)]
        changed.sort(key=lambda path: Path(path).name in COMMIT_NAMES)
        for path in changed:
            self.storage.put_file(present[path], path)
            self._synced[path] = _stamp(present[path])
        known = [f.path for f in self.storage.files(base)] if exact else list(self._synced)
        removed = [path for path in known if path.startswith(base + "/") and path not in present]
        self.storage.delete(removed)
        for path in removed:
            self._synced.pop(path, None)
            self._fetched.pop(path, None)

    def close(self) -> None:
        """Delete the scratch folder (nothing on a local storage)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
            self._fetched.clear()
            self._synced.clear()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
