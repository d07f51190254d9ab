"""Answers already bought, by request fingerprint, for every run worker that sees the same folder.

Each results run that received answers adds one segment: a Parquet file of its succeeded rows'
fingerprints and answer columns, written under a temporary name and renamed into place, so a
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
import pyarrow.parquet as pq

from batch_pipelines.requests import FINGERPRINT_COLUMN

__all__ = ["DEFAULT_RETENTION_DAYS", "KnownAnswers", "ReuseStore"]

#: How long an answer stays reusable unless a pipeline says otherwise: about as long as providers
#: keep a batch's output files (OpenAI 30 days, Anthropic 29).
DEFAULT_RETENTION_DAYS = 30.0
_SUFFIX = ".parquet"
_DAY = 86_400


class KnownAnswers:
    """A snapshot of the store: which fingerprints have an answer, and the answers themselves."""

    def __init__(self, segments: Sequence[Path]) -> None:
        self._segments = list(segments)  # newest first
        parts = []
        for number, path in enumerate(self._segments):
            column = _read(path, [FINGERPRINT_COLUMN])
            if column is None:
                continue
            fingerprints = column.column(0).to_numpy(zero_copy_only=False)
            parts.append(pd.DataFrame({"segment": np.int32(number), "row": np.arange(len(fingerprints))}, index=fingerprints))
        where = pd.concat(parts) if parts else pd.DataFrame({"segment": [], "row": []}, index=pd.Index([], dtype=object))
        # Newest first, so the first of each fingerprint is its newest answer.
        self._where = where[~where.index.duplicated(keep="first")]
        self._index = self._where.index

    def __len__(self) -> int:
        return len(self._index)

    def __call__(self, fingerprints: pa.Array) -> np.ndarray:
        """For each fingerprint, whether the store holds an answer to it (an ``AnswerLookup``)."""
        return self.positions(fingerprints.to_numpy(zero_copy_only=False)) >= 0

    def positions(self, fingerprints: np.ndarray) -> np.ndarray:
        """Position of each fingerprint among the known ones (-1: unknown)."""
        if not len(self._index) or not len(fingerprints):
            return np.full(len(fingerprints), -1, dtype=np.int64)
        return self._index.get_indexer(fingerprints)

    def answers(self, fingerprints: np.ndarray) -> pd.DataFrame:
        """The stored answer to each known one of ``fingerprints``, indexed by fingerprint (each once).

        A segment gone since the snapshot (deleted by another worker's retention) leaves its
        answers out: look each fingerprint up in the index, do not assume it is there.
        """
        positions = self.positions(np.asarray(fingerprints, dtype=object))
        found = self._where.iloc[np.unique(positions[positions >= 0])]
        pieces = []
        for segment, rows in found.groupby("segment", sort=False)["row"]:
            table = _read(self._segments[int(segment)])
            if table is not None:
                pieces.append(table.take(pa.array(rows.to_numpy())).to_pandas())
        if not pieces:
            return pd.DataFrame(index=pd.Index([], dtype="str", name=FINGERPRINT_COLUMN))
        frame = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
        return frame.set_index(FINGERPRINT_COLUMN)


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
        table = pa.Table.from_pandas(_storable(answers), preserve_index=False)
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex}{_SUFFIX}"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(table, tmp)
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


def _storable(answers: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns (batch_id) as plain text: segments of other rounds know other categories."""
    converted = {c: answers[c].astype("str") for c in answers.columns if isinstance(answers[c].dtype, pd.CategoricalDtype)}
    return answers.assign(**converted) if converted else answers


def _read(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """A segment's table, None if it is gone (deleted by another worker's retention since listed)."""
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        return None
