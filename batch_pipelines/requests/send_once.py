"""Each distinct request sent once: lines already answered, or repeating one sent in this build, are held back.

A row's request is worth paying for only when no answer to the same content exists yet. The build
asks, chunk by chunk, which fingerprints (:mod:`.fingerprints`) already have an answer (the
caller's lookup: a reuse store, say) and remembers the ones it sends, so twenty rows asking the
same thing make one request. Held-back lines stay in the id map (shard :data:`HELD_BACK`): the
results give them the answer of their fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from batch_pipelines.requests.fingerprints import fingerprint_keys

__all__ = ["HELD_BACK", "AnswerLookup", "SendOnce"]

#: The id map's shard of a row whose request was not sent: its answer comes from an identical one.
HELD_BACK = -1

#: fingerprints -> for each, whether an answer to it already exists (True: do not send it).
AnswerLookup = Callable[[pa.Array], np.ndarray]


class SendOnce:
    """Decides, for one build, which lines go out: the first of each fingerprint with no answer yet."""

    def __init__(self, answered: AnswerLookup | None = None) -> None:
        self.answered = answered
        self._sent: set[tuple[int, int]] = set()  # fingerprints sent so far in this build, as integer pairs

    def hold_back(self, fingerprints: pa.Array) -> np.ndarray:
        """For each line of a chunk, whether it is held back; the others count as sent from now on."""
        if self.answered is not None and len(fingerprints):
            held = np.array(self.answered(fingerprints), dtype=bool)
        else:
            held = np.zeros(len(fingerprints), dtype=bool)
        candidates = np.flatnonzero(~held)
        high, low = fingerprint_keys(fingerprints.take(pa.array(candidates)))
        sent, add = self._sent, self._sent.add
        # Sent before (in this chunk or an earlier one): held; otherwise sent now (add gives None).
        repeat = [pair in sent or add(pair) for pair in zip(high.tolist(), low.tolist())]
        held[candidates[np.array(repeat, dtype=bool)]] = True
        return held
