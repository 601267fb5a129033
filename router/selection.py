"""Reduces parallel samples to the answer returned: all, first finished, or majority of first m.

Pure bookkeeping: the caller feeds finished samples in the order they finish and asks whether the
selection is decided; the samples still running are then cancelled.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from tandem.api.v1 import inference_pb2

FIRST_FINISHED = inference_pb2.SELECTION_RULE_FIRST_FINISHED
MAJORITY = inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M


@dataclass(slots=True)
class Selection:
    """Tracks finished samples until the rule has picked a winner."""

    rule: int
    num_samples: int
    m: int = 1
    finished: list[tuple[int, str]] = field(default_factory=list)

    @property
    def streams_every_sample(self) -> bool:
        """True when every sample is returned as it is made (no selection)."""
        return self.rule not in (FIRST_FINISHED, MAJORITY) or self.num_samples == 1

    @property
    def num_votes_needed(self) -> int:
        """How many finished samples decide the selection."""
        return 1 if self.rule == FIRST_FINISHED else min(self.m, self.num_samples)

    def add_finished(self, sample_index: int, answer: str) -> None:
        """Records a finished sample and its answer text."""
        self.finished.append((sample_index, answer))

    @property
    def is_decided(self) -> bool:
        """True once enough samples have finished."""
        return len(self.finished) >= self.num_votes_needed

    def winner(self) -> int:
        """The chosen sample: the first finished, or the earliest holder of the majority answer."""
        if self.rule == FIRST_FINISHED:
            return self.finished[0][0]
        votes = collections.Counter(normalize_answer(answer) for _, answer in self.finished)
        best = max(votes.values())
        return next(index for index, answer in self.finished
                    if votes[normalize_answer(answer)] == best)


def normalize_answer(text: str) -> str:
    """The form answers are compared in: the text after any thinking, case and spaces folded."""
    return " ".join(text.split()).lower()
