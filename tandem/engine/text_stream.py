"""Turns a sequence's tokens into text deltas and cuts stop strings, without torch.

The engine and the router (which detokenises the tokens that decode workers stream) share this
code, so a client sees exactly the text the engine alone would produce.
"""

from __future__ import annotations


class TextStream:
    """Turns a sequence's tokens into text deltas and finds stop strings.

    Text that could be the start of a stop string is held back until it is known not to be one,
    so that no part of a stop string is ever streamed. Text that someone else already streamed
    (a prefilled first token, the tokens a fork shares with its parent) is never handed out again
    but still completes stop strings.
    """

    __slots__ = ("_detokenizer", "_stop", "_pending", "_num_streamed")

    def __init__(self, detokenizer, stop: tuple[str, ...]) -> None:
        # detokenizer: an IncrementalDetokenizer already primed with the prompt.
        self._detokenizer = detokenizer
        self._stop = stop
        self._pending = ""  # decoded text not yet handed out (or streamed elsewhere)
        self._num_streamed = 0  # leading characters of _pending that were streamed elsewhere

    @property
    def num_pending(self) -> int:
        """Characters decoded but not streamed yet (held back as a possible stop string's start)."""
        return len(self._pending) - self._num_streamed

    def add(self, token_id: int) -> bool:
        """Decodes one more token; True when the text now contains a stop string (cut before it)."""
        self._pending += self._detokenizer.add(token_id)
        if not self._stop:
            return False
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut < 0:
            return False
        self._pending = self._pending[:cut]
        self._num_streamed = min(self._num_streamed, cut)
        return True

    def mark_streamed(self, num_unstreamed: int = 0) -> None:
        """Counts the decoded text, except its last num_unstreamed characters, as streamed elsewhere."""
        self._num_streamed = max(0, len(self._pending) - num_unstreamed)

    def take(self, is_final: bool) -> str:
        """The text ready to stream: everything when final, else all but a possible stop prefix."""
        end = len(self._pending) - (0 if is_final else self._held_back_length())
        text = self._pending[self._num_streamed : end]
        self._pending = self._pending[end:]
        self._num_streamed = max(0, self._num_streamed - end)
        return text

    def _held_back_length(self) -> int:
        # Longest suffix of the pending text that is a proper prefix of some stop string.
        longest = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
