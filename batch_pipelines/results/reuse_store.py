"""Answers already bought, by request fingerprint, for every run worker that sees the same folder.

Each results run that received answers adds one segment: an Arrow IPC file of its succeeded rows'
fingerprints and answer columns (read memory-mapped: a rerun of a million rows takes nearly all of
them), written under a temporary name and renamed into place, so a
reader never sees half a segment and writers never contend (no lock: two workers write two
segments). A segment's name starts with its creation time in milliseconds; segments older than
the retention are ignored and deleted, so the store does not grow without bound. Where a
fingerprint is in several segments the newest answer wins.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from batch_pipelines.requests import FINGERPRINT_COLUMN, fingerprint_keys

__all__ = ["DEFAULT_RETENTION_DAYS", "KnownAnswers", "ReuseStore"]

#: How long an answer stays reusable unless a pipeline says otherwise: about as long as providers
#: keep a batch's output files (OpenAI 30 days, Anthropic 29).
DEFAULT_RETENTION_DAYS = 30.0
_SUFFIX = ".arrow"
# The two halves of each fingerprint as integers (see fingerprint_keys): a lookup reads only these.
_HIGH, _LOW = "fingerprint_high", "fingerprint_low"
_DAY = 86_400
#: A position is segment * _SEGMENT_ROWS + row: no segment holds 2**40 rows.
_SEGMENT_ROWS = 1 << 40
#: The first halves in ascending order and the row of each: what a lookup binary-searches.
_SORTED_HIGH, _SORTED_ROW = "fingerprint_high_sorted", "fingerprint_high_row"
#: The lookup's columns: not answers.
_KEYS = frozenset({_HIGH, _LOW, _SORTED_HIGH, _SORTED_ROW})


class KnownAnswers:
    """A snapshot of the store: which fingerprints have an answer, and the answers themselves.

    Fingerprints are looked up as integer pairs (:func:`~batch_pipelines.requests.fingerprint_keys`)
    in each segment, newest first (the first found is the newest answer), each match confirmed on
    the second half. A segment keeps its first halves sorted (with their rows) beside its answers,
    so a lookup is a binary search in its memory-mapped columns (a segment written without them,
    by an older version, is scanned). Nothing of the store is held between lookups: memory goes
    with the fingerprints asked, not with the store, which grows with every partition answered
    within the retention.
    """

    def __init__(self, segments: Sequence[Path]) -> None:
        self._segments = list(segments)  # newest first

    def __call__(self, fingerprints: pa.Array) -> np.ndarray:
        """For each fingerprint, whether the store holds an answer to it (an ``AnswerLookup``)."""
        return self.positions(fingerprints) >= 0

    def positions(self, fingerprints: pa.Array) -> np.ndarray:
        """Where each fingerprint's answer is (segment and row, for :meth:`answers`; -1: none)."""
        at = np.full(len(fingerprints), -1, dtype=np.int64)
        if not len(fingerprints) or not self._segments:
            return at
        high, low = fingerprint_keys(fingerprints)
        # Each first half asked once, in order (the binary searches go faster sorted): its newest
        # answer's position and second half. (Two fingerprints sharing a first half, two in
        # 2**64, keep one: the other is sent again.)
        wanted, inverse = np.unique(high, return_inverse=True)
        first = np.full(len(wanted), -1, dtype=np.int64)
        first_low = np.zeros(len(wanted), dtype=np.uint64)
        for number, path in enumerate(self._segments):
            keys = _read(path)
            if keys is None or not keys.num_rows:
                continue
            missing = np.flatnonzero(first < 0)
            if _SORTED_HIGH in keys.column_names:
                column = keys.column(_SORTED_HIGH).to_numpy()
                at_sorted = np.searchsorted(column, wanted[missing])
                hit = at_sorted < len(column)
                hit[hit] = column[at_sorted[hit]] == wanted[missing[hit]]
                targets, rows = missing[hit], keys.column(_SORTED_ROW).to_numpy()[at_sorted[hit]]
            else:  # written before segments kept their sorted halves: scanned
                at_row = pd.Index(wanted[missing]).get_indexer(keys.column(_HIGH).to_numpy())
                rows = np.flatnonzero(at_row >= 0)
                found, pick = np.unique(at_row[rows], return_index=True)
                targets, rows = missing[found], rows[pick]
            first[targets] = number * _SEGMENT_ROWS + rows
            first_low[targets] = keys.column(_LOW).to_numpy()[rows]
            del keys  # unmapped before the next segment is mapped
            if len(targets) == len(missing):
                break
        at = first[inverse]
        at[(at >= 0) & (first_low[inverse] != low)] = -1
        return at

    def answers(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> tuple[pa.Table | None, np.ndarray]:
        """The stored answers at ``positions`` (from :meth:`positions`, none -1), and which were found.

        ``columns``: only those (the ones a segment lacks are left out).

        The table's rows are those of the found positions, in their order. A segment deleted since
        the lookup (another worker's retention) loses its answers: those are not found.
        """
        positions = np.asarray(positions, dtype=np.int64)
        found = np.zeros(len(positions), dtype=bool)
        segment, row = np.divmod(positions, _SEGMENT_ROWS)
        pieces, where = [], []
        for number in np.unique(segment).tolist():
            mine = np.flatnonzero(segment == number)
            table = _read(self._segments[number])
            if table is not None:
                wanted = table.column_names if columns is None else columns
                table = table.select([c for c in wanted if c in table.column_names and c not in _KEYS])
                pieces.append(table.take(pa.array(row[mine])))
                where.append(mine)
                found[mine] = True
        if not pieces:
            return None, found
        table = pa.concat_tables(pieces, promote_options="default") if len(pieces) > 1 else pieces[0]
        return table.take(pa.array(np.argsort(np.concatenate(where), kind="stable"))), found


class ReuseStore:
    """The answers of one pipeline's earlier rounds, in any partition, kept in ``root``."""

    def __init__(self, root: Path, *, retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        if retention_days <= 0:
            raise ValueError(f"retention_days must be positive, not {retention_days}")
        self.root = Path(root)
        self.retention_days = retention_days

    def known(self) -> KnownAnswers:
        """What the store holds now (expired segments left out)."""
        return KnownAnswers(self._live())

    def record(self, answers: pd.DataFrame) -> Path | None:
        """Add ``answers`` (a ``FINGERPRINT_COLUMN`` and answer columns) as one segment; None if empty."""
        if FINGERPRINT_COLUMN not in answers.columns:
            raise ValueError(f"answers need a {FINGERPRINT_COLUMN!r} column")
        self.prune()
        if not len(answers):
            return None
        table = _storable(pa.Table.from_pandas(answers, preserve_index=False))
        high, low = fingerprint_keys(table.column(FINGERPRINT_COLUMN))
        order = np.argsort(high, kind="stable")
        table = table.append_column(_HIGH, pa.array(high)).append_column(_LOW, pa.array(low))
        # The first halves sorted, with each one's row: a lookup is a binary search (answers stay in row order).
        table = table.append_column(_SORTED_HIGH, pa.array(high[order])).append_column(_SORTED_ROW, pa.array(order.astype(np.int64)))
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex}{_SUFFIX}"
        tmp = self.root / f".{name}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, self.root / name)
        return self.root / name

    def prune(self) -> int:
        """Delete the segments older than the retention (and stray temporary files); how many went."""
        gone = 0
        for path, born in self._segments():
            if born < self._cutoff():
                path.unlink(missing_ok=True)
                gone += 1
        for stray in self.root.glob(".*.tmp") if self.root.exists() else ():
            if stray.stat().st_mtime < time.time() - _DAY:  # a writer that died mid-segment
                stray.unlink(missing_ok=True)
        return gone

    def _cutoff(self) -> float:
        return time.time() - self.retention_days * _DAY

    def _segments(self) -> list[tuple[Path, float]]:
        """Every segment with its creation time (epoch seconds), newest first."""
        if not self.root.exists():
            return []
        found = []
        for path in self.root.glob(f"*{_SUFFIX}"):
            stamp = path.name.split("-", 1)[0]
            if stamp.isdigit():
                found.append((path, int(stamp) / 1000))
        return sorted(found, key=lambda item: item[0].name, reverse=True)

    def _live(self) -> list[Path]:
        cutoff = self._cutoff()
        return [path for path, born in self._segments() if born >= cutoff]


def _storable(table: pa.Table) -> pa.Table:
    """Dictionary columns (batch_id) as plain text: segments of other rounds know other categories."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
    return table


def _read(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """A segment's table, memory-mapped; None if it is gone (deleted by another worker's retention since listed)."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except FileNotFoundError:
        return None
    return table.select(columns) if columns is not None else table
