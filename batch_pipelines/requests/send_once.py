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
    """Decides, for one build, which lines go out: the first of each fingerprint with no answer yet.

    Repeats are recognized by the first 64 bits of the fingerprint (:func:`.fingerprint_keys`),
    in numpy: two distinct requests sharing them (two in 2**64) would hold one back wrongly, and
    the results, which match answers by the whole fingerprint, would find it unanswered and send
    it in the next attempt: never a wrong answer.
    """

    def __init__(self, answered: AnswerLookup | None = None) -> None:
        self.answered = answered
        self._sent = np.zeros(0, dtype=np.uint64)  # keys sent so far in this build, sorted

    def hold_back(self, fingerprints: pa.Array) -> np.ndarray:
        """For each line of a chunk, whether it is held back; the others count as sent from now on."""
        keys = fingerprint_keys(fingerprints)
        if self.answered is not None and len(keys):
            held = np.array(self.answered(fingerprints), dtype=bool)
        else:
            held = np.zeros(len(keys), dtype=bool)
        if len(self._sent):
            at = np.minimum(np.searchsorted(self._sent, keys), len(self._sent) - 1)
            held |= self._sent[at] == keys
        candidates = np.flatnonzero(~held)
        new, first = np.unique(keys[candidates], return_index=True)  # sorted, each key once
        repeat = np.ones(len(candidates), dtype=bool)
        repeat[first] = False
        held[candidates[repeat]] = True
        self._sent = np.insert(self._sent, np.searchsorted(self._sent, new), new)
        return held
