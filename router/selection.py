"""Reduces parallel samples to the answer returned: all, first finished, or majority of first m.

Pure bookkeeping: the caller feeds finished samples in the order they finish and asks whether the
selection is decided; the samples still running are then cancelled. The majority rule votes with
the answers (the text after any thinking) of samples that stopped on their own: a sample cut by
a length limit, the deadline or the cost ceiling has no answer to vote with. When every sample has
finished without enough votes, the majority of the votes there are wins, or, without any vote,
the first sample to finish.
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
    # Every finished sample, in finishing order; votes: (index, answer) of those that stopped on
    # their own.
    finished: list[int] = field(default_factory=list)
    votes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def streams_every_sample(self) -> bool:
        """True when every sample is returned as it is made (no selection)."""
        return self.rule not in (FIRST_FINISHED, MAJORITY) or self.num_samples == 1

    @property
    def num_votes_needed(self) -> int:
        """How many finished samples decide the selection."""
        return 1 if self.rule == FIRST_FINISHED else min(self.m, self.num_samples)

    def add_finished(self, sample_index: int, answer: str, is_stopped_on_own: bool) -> None:
        """Records a finished sample, its answer text, and whether it stopped by itself."""
        self.finished.append(sample_index)
        if is_stopped_on_own:
            self.votes.append((sample_index, answer))

    @property
    def is_decided(self) -> bool:
        """True once enough samples have finished (for the majority rule: enough votes)."""
        if self.rule == FIRST_FINISHED:
            return bool(self.finished)
        return len(self.votes) >= self.num_votes_needed

    def winner(self) -> int:
        """The chosen sample: the first finished, or the earliest holder of the majority answer."""
        if self.rule == FIRST_FINISHED or not self.votes:
            return self.finished[0]
        counts = collections.Counter(normalize_answer(answer) for _, answer in self.votes)
        best = max(counts.values())
        return next(index for index, answer in self.votes
                    if counts[normalize_answer(answer)] == best)


def normalize_answer(text: str) -> str:
    """The form answers are compared in: case and spaces folded."""
    return " ".join(text.split()).lower()
