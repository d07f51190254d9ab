"""Answers already bought, by request fingerprint, for every run worker that sees the same folder.

Each results run that received answers adds one segment: two Arrow IPC files, read memory-mapped.
``<name>.arrow`` holds its succeeded rows' fingerprints and answer columns, in row order (a rerun
of a million rows takes nearly all of them); ``<name>.keys.arrow`` the two integer halves of each
fingerprint, sorted, with each one's row: all a lookup reads (24 bytes a row, a fraction of the
answers), so a worker on object storage fetches the keys of every segment and the answers only of
the segments that hold an answer asked for. Each file is written under a temporary name and
renamed into place, the answers first: a reader that finds a segment's keys finds its answers,
and writers never contend (no lock: two workers write two segments). A segment's name starts
with its creation time in milliseconds; segments older than the retention are ignored and
deleted, so the store does not grow without bound. Where a fingerprint is in several segments
the newest answer wins.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
_KEYS_SUFFIX = ".keys.arrow"
# The two halves of each fingerprint as integers (see fingerprint_keys): a lookup reads only these.
_HIGH, _LOW = "fingerprint_high", "fingerprint_low"
_DAY = 86_400
#: A position is segment * _SEGMENT_ROWS + row: no segment holds 2**40 rows.
_SEGMENT_ROWS = 1 << 40
#: The first halves in ascending order, the row of each, and its second half: what a lookup binary-searches.
_SORTED_HIGH, _SORTED_ROW, _SORTED_LOW = "fingerprint_high_sorted", "fingerprint_high_row", "fingerprint_low_sorted"
#: The lookup's columns (in the answers file of a segment an older version wrote): not answers.
_KEYS = frozenset({_HIGH, _LOW, _SORTED_HIGH, _SORTED_ROW, _SORTED_LOW})


@dataclass(frozen=True)
class _Segment:
    answers: Path
    #: None: a segment an older version wrote, its keys beside its answers in one file.
    keys: Path | None


class KnownAnswers:
    """A snapshot of the store: which fingerprints have an answer, and the answers themselves.

    Fingerprints are looked up as integer pairs (:func:`~batch_pipelines.requests.fingerprint_keys`)
    in each segment, newest first (the first found is the newest answer), each match confirmed on
    the second half: a binary search in the segment's memory-mapped keys (a segment an older
    version wrote keeps them in its answers file, or unsorted there: scanned). Nothing of the
    store is held between lookups: memory goes with the fingerprints asked, not with the store,
    which grows with every partition answered within the retention. ``fetch`` makes a segment's
    answers file local before it is read (a working copy of object storage).
    """

    def __init__(self, segments: Sequence[_Segment], fetch: Callable[[Path], Path] | None = None) -> None:
        self._segments = list(segments)  # newest first
        self._fetch = fetch

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
        for number, segment in enumerate(self._segments):
            keys = _read(segment.keys or segment.answers)
            if keys is None or not keys.num_rows:
                continue
            missing = np.flatnonzero(first < 0)
            if _SORTED_HIGH in keys.column_names:
                column = keys.column(_SORTED_HIGH).to_numpy()
                at_sorted = np.searchsorted(column, wanted[missing])
                hit = at_sorted < len(column)
                hit[hit] = column[at_sorted[hit]] == wanted[missing[hit]]
                targets, rows = missing[hit], keys.column(_SORTED_ROW).to_numpy()[at_sorted[hit]]
                if _SORTED_LOW in keys.column_names:
                    lows = keys.column(_SORTED_LOW).to_numpy()[at_sorted[hit]]
                else:
                    lows = keys.column(_LOW).to_numpy()[rows]
            elif _HIGH in keys.column_names:  # written before segments kept their sorted halves: scanned
                at_row = pd.Index(wanted[missing]).get_indexer(keys.column(_HIGH).to_numpy())
                rows = np.flatnonzero(at_row >= 0)
                found, pick = np.unique(at_row[rows], return_index=True)
                targets, rows = missing[found], rows[pick]
                lows = keys.column(_LOW).to_numpy()[rows]
            else:  # answers whose keys are not renamed into place yet: not a segment yet
                continue
            first[targets] = number * _SEGMENT_ROWS + rows
            first_low[targets] = lows
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
        for number in np.unique(segment[positions >= 0]).tolist():
            mine = np.flatnonzero(segment == number)
            path = self._segments[number].answers
            table = _read(self._fetch(path) if self._fetch is not None else path)
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

    def known(self, fetch: Callable[[Path], Path] | None = None) -> KnownAnswers:
        """What the store holds now (expired segments left out); ``fetch``: see :class:`KnownAnswers`."""
        cutoff = self._cutoff()
        return KnownAnswers([segment for segment, born in self._segments() if born >= cutoff], fetch)

    def record(self, answers: pd.DataFrame) -> Path | None:
        """Add ``answers`` (a ``FINGERPRINT_COLUMN`` and answer columns) as one segment; its answers file, None if empty."""
        if FINGERPRINT_COLUMN not in answers.columns:
            raise ValueError(f"answers need a {FINGERPRINT_COLUMN!r} column")
        self.prune()
        if not len(answers):
            return None
        table = _storable(pa.Table.from_pandas(answers, preserve_index=False))
        high, low = fingerprint_keys(table.column(FINGERPRINT_COLUMN))
        order = np.argsort(high, kind="stable")
        keys = pa.table({_SORTED_HIGH: high[order], _SORTED_ROW: order.astype(np.int64), _SORTED_LOW: low[order]})
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex}"
        path = _write(self.root, name + _SUFFIX, table)
        _write(self.root, name + _KEYS_SUFFIX, keys)  # last: the segment is there for lookups once its answers are
        return path

    def lookup_files(self, names: Iterable[str]) -> set[str]:
        """Of the file names in the store's folder, what a lookup reads: each segment's keys (that of an
        older version: its one file). The answers files are read only for the answers asked."""
        names = set(names)
        wanted = set()
        for name in names:
            if name.endswith(_KEYS_SUFFIX):
                if name.removesuffix(_KEYS_SUFFIX) + _SUFFIX in names:
                    wanted.add(name)
            elif name.endswith(_SUFFIX) and name.removesuffix(_SUFFIX) + _KEYS_SUFFIX not in names:
                wanted.add(name)
        return wanted

    def expired(self, names: Iterable[str]) -> list[str]:
        """Of the file names in the store's folder, those of segments older than the retention (keys first)."""
        cutoff = self._cutoff()
        old = [name for name in names if name.endswith(_SUFFIX) and (born := _born(name)) is not None and born < cutoff]
        return sorted(old, key=lambda name: not name.endswith(_KEYS_SUFFIX))

    def prune(self) -> int:
        """Delete the segments older than the retention (and stray temporary files); how many files went."""
        if not self.root.exists():
            return 0
        gone = 0
        for name in self.expired(p.name for p in self.root.iterdir()):
            (self.root / name).unlink(missing_ok=True)
            gone += 1
        for stray in self.root.glob(".*.tmp"):
            if stray.stat().st_mtime < time.time() - _DAY:  # a writer that died mid-segment
                stray.unlink(missing_ok=True)
        return gone

    def _cutoff(self) -> float:
        return time.time() - self.retention_days * _DAY

    def _segments(self) -> list[tuple[_Segment, float]]:
        """Every segment with its creation time (epoch seconds), newest first.

        A segment whose keys are here and its answers not is one whose answers are fetched when read.
        """
        if not self.root.exists():
            return []
        names = {p.name for p in self.root.iterdir()}
        found = []
        for name in names:
            born = _born(name)
            if born is None:
                continue
            if name.endswith(_KEYS_SUFFIX):
                found.append((_Segment(self.root / (name.removesuffix(_KEYS_SUFFIX) + _SUFFIX), self.root / name), born))
            elif name.endswith(_SUFFIX) and name.removesuffix(_SUFFIX) + _KEYS_SUFFIX not in names:
                found.append((_Segment(self.root / name, None), born))
        return sorted(found, key=lambda item: item[0].answers.name, reverse=True)


def _born(name: str) -> float | None:
    """A segment file's creation time from its name (epoch seconds); None: not a segment's."""
    stamp = name.split("-", 1)[0]
    return int(stamp) / 1000 if stamp.isdigit() and not name.startswith(".") else None


def _write(root: Path, name: str, table: pa.Table) -> Path:
    """``table`` as the IPC file ``root/name``, written under a temporary name and renamed into place."""
    tmp = root / f".{name}.tmp"
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, root / name)
    return root / name


def _storable(table: pa.Table) -> pa.Table:
    """Dictionary columns (batch_id) as plain text: segments of other rounds know other categories."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
    return table


def _read(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """A segment file's table, memory-mapped; None if it is gone (deleted by another worker's retention since listed)."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except FileNotFoundError:
        return None
    return table.select(columns) if columns is not None else table
