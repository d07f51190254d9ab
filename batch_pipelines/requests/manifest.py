"""The manifest: what one build wrote (shards, rejected rows, the custom_id map), on disk as JSON."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from batch_pipelines.requests.fingerprints import FINGERPRINT_COLUMN
from batch_pipelines.requests.problems import RejectedRow
from batch_pipelines.requests.shards import Shard

MANIFEST_NAME = "manifest.json"
IDS_NAME = "ids.parquet"


class RequestManifest(BaseModel):
    """What build_request_files wrote: shards, rejected rows and the custom_id map.

    Every one of the ``rows`` source rows is in a shard (``requests`` in all), in ``rejected``, or
    held back (``held_back``). The custom_id map (custom_id, key, row, shard of each request) is a Parquet file
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
    #: Rows whose request was not sent: an answer to the same request exists, or another row asks
    #: it in this build (in the id map with shard ``HELD_BACK``; see :mod:`.send_once`).
    held_back: int = 0
    #: What the build read (see :mod:`.source_digest`): equal digests, equal fingerprints. None: unknown.
    source_digest: str | None = None
    #: The spec and profile the lines were made with (see :mod:`.source_digest`). None: unknown.
    spec_digest: str | None = None
    ids_path: Path | None = None
    #: sha256 of media content -> the reference it was uploaded as; pass back to reuse on retries.
    media_refs: dict[str, str] = Field(default_factory=dict)
    _ids: pd.DataFrame | None = PrivateAttr(default=None)

    def read_ids(self) -> pd.DataFrame:
        """The custom_id map: columns custom_id, key, row (position in the source), shard (index)
        and request_fingerprint (see :mod:`.fingerprints`; absent from maps written before it existed).

        Read once per manifest object (a million rows take a while, and the results read the same
        map more than once): do not modify the frame.
        """
        if self._ids is None:
            self._ids = self._read_ids()
        return self._ids

    def __eq__(self, other: object) -> bool:
        """Equal fields (the id map read, if any, is not one)."""
        if not isinstance(other, RequestManifest):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def _read_ids(self) -> pd.DataFrame:
        if self.ids_path is None:
            return pd.DataFrame({"custom_id": pd.Series(dtype="str"), "key": pd.Series(dtype=object),
                                 "row": pd.Series(dtype="int64"), "shard": pd.Series(dtype="int32"),
                                 FINGERPRINT_COLUMN: pd.Series(dtype="str")})
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
