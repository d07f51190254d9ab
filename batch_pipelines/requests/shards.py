"""Request lines into shard files within a provider's limits, hashed, with the id map beside them.

Knows nothing of specs or rows' meaning: it receives chunks of finished lines (one contiguous
buffer plus each line's end offset) and cuts them into files that respect a provider's limits,
hashing each file while writing it and recording which shard every custom_id went to.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from batch_pipelines.requests.fingerprints import FINGERPRINT_COLUMN, line_fingerprints
from batch_pipelines.requests.send_once import HELD_BACK

SHARD_NAME = "shard-{:05d}.jsonl"
SHARD_GLOB = "shard-*.jsonl"


class Limits(NamedTuple):
    """What one file may hold; None means no limit."""

    bytes: int
    requests: int | None
    inputs: int | None  # embedding inputs across the file


class Chunk(NamedTuple):
    """Finished request lines of consecutive source rows."""

    rows: np.ndarray  # source position of each line (int64)
    data: memoryview  # the lines back to back, each ending with "\n"
    ends: np.ndarray  # end offset of each line in data (int64)
    ids: pa.Array  # custom_id of each line
    weights: np.ndarray | None = None  # embedding inputs per line; None: one each
    fingerprints: pa.Array | None = None  # of each line, when the build needed them already


class HeldLines(NamedTuple):
    """Lines of a chunk not sent (see :mod:`.send_once`): in the id map all the same, shard HELD_BACK."""

    rows: np.ndarray
    ids: pa.Array
    fingerprints: pa.Array


class Shard(BaseModel):
    """One request file as written."""

    model_config = ConfigDict(frozen=True)

    path: Path
    rows: int
    bytes: int
    sha256: str
    first_custom_id: str
    last_custom_id: str
    attempt: int = 1

    def fingerprint(self, provider: str, endpoint: str) -> str:
        """Identity of this submission: the content, where it goes, and which attempt it is.

        The attempt takes part so that a retry whose rows happen to be exactly those of an expired
        batch makes a new batch instead of re-attaching to the expired one.
        """
        return hashlib.sha256(f"{self.sha256}\n{provider}\n{endpoint}\n{self.attempt}".encode()).hexdigest()


def drop_lines(chunk: Chunk, drop: np.ndarray) -> Chunk:
    """``chunk`` without the lines where ``drop`` is True (the kept lines' bytes are copied, in numpy)."""
    keep = ~drop
    sizes = np.diff(chunk.ends, prepend=0)
    data = np.frombuffer(chunk.data, dtype=np.uint8)[np.repeat(keep, sizes)].tobytes()
    mask = pa.array(keep)
    return Chunk(
        rows=chunk.rows[keep],
        data=memoryview(data),
        ends=np.cumsum(sizes[keep]),
        ids=chunk.ids.filter(mask),
        weights=chunk.weights[keep] if chunk.weights is not None else None,
        fingerprints=chunk.fingerprints.filter(mask) if chunk.fingerprints is not None else None,
    )


class _Piece(NamedTuple):
    """Consecutive lines for one shard; ``full`` closes the shard after them."""

    shard: int
    data: memoryview
    rows: int
    first_id: str
    last_id: str
    full: bool


class ShardWriter:
    """Writes chunks into ``shard-NNNNN.jsonl`` files within ``limits`` and the id map beside them.

    Shards fill greedily in row order, so the same lines always give the same files, however they
    are chunked. A line that alone exceeds a limit must be dropped before (the caller reports it);
    every shard holds at least one line. ``dry`` writers (and aborted ones) write nothing.

    Where the cuts fall is decided here, from line sizes alone; the bytes are written, hashed and
    the id map appended by one worker thread, in order, while the caller builds the next chunk
    (file writes, sha256 and Parquet release the GIL). One chunk at most is in flight, and a
    failure in the worker is raised by the next call.
    """

    def __init__(self, out_dir: Path, limits: Limits, keys: pa.Array, ids_path: Path, *, dry: bool = False) -> None:
        self.out_dir = out_dir
        self.limits = limits
        self.keys = keys
        self.ids_path = ids_path
        self.dry = dry
        self.shards: list[Shard] = []
        # Where the cuts fall (caller's thread): the shard being filled and how full it is.
        self._shard = 0
        self._bytes = self._rows = self._inputs = 0
        # The files (worker thread, or the caller's once the worker is idle).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future[None] | None = None
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._stats = [0, 0, "", ""]  # rows, bytes, first and last custom_id of the open shard
        self._ids: pq.ParquetWriter | None = None

    @property
    def wrote_ids(self) -> bool:
        return self._ids is not None

    def write(self, chunk: Chunk, held: HeldLines | None = None) -> None:
        """Write ``chunk``'s lines; ``held`` lines (not sent) go into the id map only."""
        if self.dry or not (len(chunk.ends) or held is not None):
            return
        pieces, shard_of = self._cut(chunk)
        columns = self._id_columns(chunk.ids, chunk.rows, shard_of)
        self._wait()
        self._pending = self._pool.submit(self._apply, pieces, columns, chunk, held)

    def _cut(self, chunk: Chunk) -> tuple[list[_Piece], np.ndarray]:
        """The chunk's lines as pieces of shards, and the shard of every line."""
        ends = chunk.ends
        starts = np.concatenate(([0], ends[:-1]))
        inputs = None
        if self.limits.inputs is not None:
            inputs = np.cumsum(chunk.weights if chunk.weights is not None else np.ones(len(ends), dtype=np.int64))
        pieces: list[_Piece] = []
        shard_of = np.empty(len(ends), dtype=np.int32)
        i = 0
        while i < len(ends):
            k = int(np.searchsorted(ends, starts[i] + self.limits.bytes - self._bytes, side="right")) - i
            if self.limits.requests is not None:
                k = min(k, self.limits.requests - self._rows)
            done = 0
            if inputs is not None:
                done = int(inputs[i - 1]) if i else 0
                room = done + self.limits.inputs - self._inputs  # type: ignore[operator]
                k = min(k, int(np.searchsorted(inputs, room, side="right")) - i)
            if k <= 0:  # the next line does not fit: this shard is full
                if pieces:
                    pieces[-1] = pieces[-1]._replace(full=True)
                else:
                    pieces.append(_Piece(self._shard, memoryview(b""), 0, "", "", True))
                self._shard += 1
                self._bytes = self._rows = self._inputs = 0
                continue
            data = chunk.data[starts[i] : ends[i + k - 1]]
            pieces.append(_Piece(self._shard, data, k, chunk.ids[i].as_py(), chunk.ids[i + k - 1].as_py(), False))
            self._bytes += len(data)
            self._rows += k
            if inputs is not None:
                self._inputs += int(inputs[i + k - 1]) - done
            shard_of[i : i + k] = self._shard
            i += k
        return pieces, shard_of

    def _apply(self, pieces: list[_Piece], columns: dict[str, pa.Array], chunk: Chunk, held: HeldLines | None) -> None:
        # Hashed here, in the writer's thread, while the caller builds the next chunk.
        fingerprints = chunk.fingerprints
        if fingerprints is None:
            fingerprints = line_fingerprints(chunk.data, chunk.ends, chunk.ids)
        table = pa.table({**columns, FINGERPRINT_COLUMN: fingerprints})
        if held is not None:
            table = pa.concat_tables([table, self._held_table(held)])
        for piece in pieces:
            if piece.rows:
                if self._file is None:
                    self._file = open(self.out_dir / SHARD_NAME.format(piece.shard), "wb")  # noqa: SIM115
                    self._hash = hashlib.sha256()
                    self._stats = [0, 0, piece.first_id, ""]
                self._file.write(piece.data)
                self._hash.update(piece.data)
                self._stats[0] += piece.rows
                self._stats[1] += len(piece.data)
                self._stats[3] = piece.last_id
            if piece.full:
                self._close_file()
        if self._ids is None:
            self._ids = pq.ParquetWriter(self.ids_path, table.schema, use_dictionary=["shard"], write_statistics=False)
        self._ids.write_table(table)

    def _id_columns(self, ids: pa.Array, rows: np.ndarray, shards: np.ndarray) -> dict[str, pa.Array]:
        """The id map's columns for these lines, but the fingerprint."""
        return {
            "custom_id": ids.cast(pa.string()),
            "key": self.keys.take(pa.array(rows)),
            "row": pa.array(rows, pa.int64()),
            "shard": pa.array(shards, pa.int32()),
        }

    def _held_table(self, held: HeldLines) -> pa.Table:
        columns = self._id_columns(held.ids, held.rows, np.full(len(held.rows), HELD_BACK))
        return pa.table({**columns, FINGERPRINT_COLUMN: held.fingerprints.cast(pa.string())})

    def _close_file(self) -> None:
        if self._file is None:
            return
        self._file.close()
        rows, size, first, last = self._stats
        self.shards.append(
            Shard(path=Path(self._file.name), rows=rows, bytes=size, sha256=self._hash.hexdigest(), first_custom_id=first, last_custom_id=last)
        )
        self._file = None

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> list[Shard]:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
        self._close_file()
        if self._ids is not None:
            self._ids.close()
        return self.shards

    def abort(self) -> None:
        """Stop writing and remove what was written: the build is going to fail."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the build is failing already; its own error is the one to raise
            pass
        self._pool.shutdown()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._ids is not None:
            self._ids.close()
            self._ids = None
        for path in [*self.out_dir.glob(SHARD_GLOB), self.ids_path]:
            path.unlink(missing_ok=True)
        self.shards = []
        self.dry = True
